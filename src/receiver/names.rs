//! The file names the receiver gives bundles: in `publishing/` and the
//! archive ([`archive_name`]), and in `incoming/` while one is received
//! ([`incoming_name`]). Only names these functions give are ever cleaned
//! up or pruned as shipper's own. Pure: no I/O.

use crate::bundle::manifest::valid_sender_id;

/// How a bundle is named in `publishing/` and the archive: by the key of
/// its sender (`Sender::key`) and its sequence.
pub fn archive_name(key: &str, seq: u64) -> String {
    format!("{key}-{seq:020}.zip")
}

/// The sender key and sequence in a name made by [`archive_name`]; `None`
/// for any other name, or a key that is not safe in a file name.
pub fn parse_archive_name(name: &str) -> Option<(&str, u64)> {
    let (key, seq) = name.strip_suffix(".zip")?.rsplit_once('-')?;
    if seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) || !valid_sender_id(key) {
        return None;
    }
    Some((key, seq.parse().ok()?))
}

/// True for names [`archive_name`] gives: only these are pruned from the
/// archive or finished from `publishing`.
pub(super) fn is_archive_name(name: &str) -> bool {
    parse_archive_name(name).is_some()
}

/// How a bundle is named in `incoming/` while it is received: by its
/// sender's key, its sequence and the session receiving it.
pub(super) fn incoming_name(sender: &str, seq: u64, session: u64) -> String {
    format!("{sender}-{seq}-{session}.zip.part")
}

/// True for names [`incoming_name`] gives, and for the session-less
/// `{sender}-{seq}.zip.part` of earlier versions.
pub(super) fn is_incoming_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".zip.part") else {
        return false;
    };
    let with_session = stem
        .rsplit_once('-')
        .filter(|(_, s)| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|(stem, _)| sender_and_seq(stem));
    with_session.is_some() || sender_and_seq(stem).is_some()
}

/// Split `{sender}-{digits}` into a valid sender id and its digits.
fn sender_and_seq(stem: &str) -> Option<(&str, &str)> {
    let (sender, seq) = stem.rsplit_once('-')?;
    let digits = !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit());
    (digits && valid_sender_id(sender)).then_some((sender, seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Fingerprint;

    #[test]
    fn archive_names_give_back_their_sender_and_sequence() {
        let fp = Fingerprint::of(b"cert").to_string();
        for (key, seq) in [("cms", 1), ("a-b.c", 42), (fp.as_str(), u64::MAX)] {
            assert_eq!(
                parse_archive_name(&archive_name(key, seq)),
                Some((key, seq))
            );
        }
        for name in [
            "cms-1.zip",
            "cms-00000000000000000001.zip.part",
            "00000000000000000001.zip",
            "-00000000000000000001.zip",
            "a/b-00000000000000000001.zip",
            "cms-0000000000000000000x.zip",
            "cms-99999999999999999999.zip",
        ] {
            assert_eq!(parse_archive_name(name), None, "{name}");
        }
    }

    #[test]
    fn only_names_shipper_gives_are_its_own() {
        assert!(is_archive_name(&archive_name("web-1.example", 7)));
        assert!(is_incoming_name(&incoming_name("web-1", 7, 3)));
        for other in [
            "backup-2019.zip",
            "web-00000000000000000007.zip.bak",
            "has space-00000000000000000007.zip",
            "-00000000000000000007.zip",
            "web-0000000000000000000x.zip",
        ] {
            assert!(!is_archive_name(other), "{other}");
        }
        for other in [
            "notes.zip.part",
            "web-.zip.part",
            "web-7.zip",
            "web-7-.zip.part",
        ] {
            assert!(!is_incoming_name(other), "{other}");
        }
    }
}
