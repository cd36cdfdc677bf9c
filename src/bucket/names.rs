//! The names of shipper's objects under a bucket's prefix. Pure.
//!
//! Each sender has a folder of its own, named by its fingerprint: two
//! senders sharing a prefix never write the same key, and a receiver
//! lists each allowed sender's folder from its own position there. A
//! bundle is two objects: `b/FINGERPRINT/SEQ.zip`, the bundle as the
//! network carries it, then its seal ([`super::seal`]), written once the
//! zip is whole: `b/FINGERPRINT/SEQ.seal` for a bundle of the chain every
//! receiver follows, `b/FINGERPRINT/SEQ.base` for a member of a base (a
//! whole tree, which only a receiver catching up takes). Receivers list
//! seals only, so a zip still being uploaded is never taken. A base is
//! complete once `bases/FINGERPRINT/FIRST` holds a copy of its last
//! member's seal. SEQ and FIRST have 20 digits: the store lists keys in
//! byte order, which is then sequence order.

use crate::tls::Fingerprint;

/// The folder of bundles under the prefix.
pub const BUNDLES: &str = "b";
/// The folder of complete bases under the prefix.
pub const BASES: &str = "bases";

/// What a listed seal seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// A bundle of the chain.
    Chain,
    /// A member of a base.
    Member,
}

impl Kind {
    fn suffix(self) -> &'static str {
        match self {
            Kind::Chain => "seal",
            Kind::Member => "base",
        }
    }
}

/// The folder of `sender`'s bundles, relative to the prefix.
pub fn sender_dir(sender: &Fingerprint) -> String {
    format!("{BUNDLES}/{sender}")
}

/// The zip of `sender`'s bundle `seq`, relative to the prefix.
pub fn zip_name(sender: &Fingerprint, seq: u64) -> String {
    format!("{}/{seq:020}.zip", sender_dir(sender))
}

/// The seal of `sender`'s bundle `seq` of the chain, relative to the prefix.
pub fn seal_name(sender: &Fingerprint, seq: u64) -> String {
    listed_name(sender, seq, Kind::Chain)
}

/// The seal of `sender`'s bundle `seq`, of `kind`, relative to the prefix.
pub fn listed_name(sender: &Fingerprint, seq: u64, kind: Kind) -> String {
    format!("{}/{seq:020}.{}", sender_dir(sender), kind.suffix())
}

/// The folder of `sender`'s complete bases, relative to the prefix.
pub fn bases_dir(sender: &Fingerprint) -> String {
    format!("{BASES}/{sender}")
}

/// The object saying that `sender`'s base beginning at `first` is
/// complete, relative to the prefix.
pub fn base_end_name(sender: &Fingerprint, first: u64) -> String {
    format!("{}/{first:020}", bases_dir(sender))
}

/// The sequence and kind a seal's name (relative to the prefix) in
/// `sender`'s folder gives; `None` for any other name (a zip, another
/// folder, a stranger's object).
pub fn listed_seq(sender: &Fingerprint, rel: &str) -> Option<(u64, Kind)> {
    let (seq, suffix) = in_folder(&sender_dir(sender), rel)?;
    let kind = [Kind::Chain, Kind::Member]
        .into_iter()
        .find(|k| suffix == Some(k.suffix()))?;
    Some((seq, kind))
}

/// The sequence of any object of `sender`'s bundles (zip or seal) by its
/// name relative to the prefix: what pruning goes by.
pub fn bundle_object_seq(sender: &Fingerprint, rel: &str) -> Option<u64> {
    let (seq, suffix) = in_folder(&sender_dir(sender), rel)?;
    matches!(suffix, Some("zip" | "seal" | "base")).then_some(seq)
}

/// The first member of the complete base an end object's name (relative
/// to the prefix) names, in `sender`'s folder of bases.
pub fn base_end_first(sender: &Fingerprint, rel: &str) -> Option<u64> {
    match in_folder(&bases_dir(sender), rel)? {
        (first, None) => Some(first),
        _ => None,
    }
}

/// `dir/DIGITS[.SUFFIX]`: the 20 digits read, and the suffix.
fn in_folder<'a>(dir: &str, rel: &'a str) -> Option<(u64, Option<&'a str>)> {
    let name = rel.strip_prefix(dir)?.strip_prefix('/')?;
    let (digits, suffix) = match name.split_once('.') {
        Some((d, s)) => (d, Some(s)),
        None => (name, None),
    };
    let seq = (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()?;
    Some((seq, suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence of a chain seal's name in `sender`'s folder.
    fn seal_seq(sender: &Fingerprint, rel: &str) -> Option<u64> {
        listed_seq(sender, rel)
            .filter(|(_, k)| *k == Kind::Chain)
            .map(|(s, _)| s)
    }

    #[test]
    fn names_list_in_sequence_order_and_read_back_in_their_senders_folder() {
        let (a, b) = (Fingerprint::of(b"a"), Fingerprint::of(b"b"));
        let names: Vec<String> = [10, 9, 100, u64::MAX].map(|s| seal_name(&a, s)).into();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, [9, 10, 100, u64::MAX].map(|s| seal_name(&a, s)));
        for seq in [0, 1, 42, u64::MAX] {
            assert_eq!(seal_seq(&a, &seal_name(&a, seq)), Some(seq));
            assert_eq!(seal_seq(&a, &zip_name(&a, seq)), None);
            assert_eq!(seal_seq(&b, &seal_name(&a, seq)), None, "another sender's");
        }
        let dir = sender_dir(&a);
        for other in [
            format!("{dir}/1.seal"),
            format!("{dir}/0000000000000000000x.seal"),
            format!("{dir}/99999999999999999999.seal"),
            format!("{dir}x/00000000000000000001.seal"),
            "b/00000000000000000001.seal".to_owned(),
        ] {
            assert_eq!(seal_seq(&a, &other), None, "{other}");
        }
    }

    #[test]
    fn members_and_ends_of_bases_read_back_apart_from_the_chain() {
        let (a, b) = (Fingerprint::of(b"a"), Fingerprint::of(b"b"));
        for seq in [0, 7, u64::MAX] {
            let member = listed_name(&a, seq, Kind::Member);
            assert_eq!(listed_seq(&a, &member), Some((seq, Kind::Member)));
            assert_eq!(seal_seq(&a, &member), None, "not a bundle of the chain");
            assert_eq!(
                listed_seq(&a, &seal_name(&a, seq)),
                Some((seq, Kind::Chain))
            );
            assert_eq!(listed_seq(&b, &member), None, "another sender's");
            for object in [member, seal_name(&a, seq), zip_name(&a, seq)] {
                assert_eq!(bundle_object_seq(&a, &object), Some(seq), "{object}");
            }
            let end = base_end_name(&a, seq);
            assert_eq!(base_end_first(&a, &end), Some(seq));
            assert_eq!(base_end_first(&b, &end), None);
            assert_eq!(listed_seq(&a, &end), None);
            assert_eq!(bundle_object_seq(&a, &end), None);
        }
        let dir = sender_dir(&a);
        for other in [
            format!("{dir}/00000000000000000001.other"),
            format!("{dir}/00000000000000000001"),
            format!("{}/00000000000000000001.base", bases_dir(&a)),
        ] {
            assert_eq!(listed_seq(&a, &other), None, "{other}");
            assert_eq!(bundle_object_seq(&a, &other), None, "{other}");
        }
        assert_eq!(
            base_end_first(&a, &format!("{}/00000000000000000001.x", bases_dir(&a))),
            None
        );
    }
}
