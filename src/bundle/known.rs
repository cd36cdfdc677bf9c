//! What the receivers hold of a file about to be packed: nothing known
//! (its bytes travel), the same content here (nothing, or only its
//! metadata, travels), the same content at another path (they copy it),
//! or an older version here that the sender signed (a delta; or, when too
//! much changed, the new signature, so the file is not chunked twice). A
//! file is read here only when something can come of it: one of a size the
//! receivers hold, or one whose old version was signed. Reads the source
//! through [`SourceDir`]; writes nothing.

use super::delta_pack::{Planned, Signatures, Signed, base_of, plan, sign};
use super::limits::Limits;
use super::manifest::FileMeta;
use super::pack::{HeldContent, PackItem};
use crate::source_dir::SourceDir;
use crate::stamp::{Kind, Stamp};

/// What the receivers hold of a file about to be packed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Known {
    /// Other content, or nothing known: its bytes travel.
    New,
    /// The same content, mtime and mode: nothing travels.
    Unchanged,
    /// The same content (this hash) with another mtime or mode: only the
    /// metadata travels.
    Held(blake3::Hash),
    /// Content (this hash) they hold at another path: they copy it.
    Elsewhere(String, blake3::Hash),
    /// An older version here, signed, from which few chunks changed.
    Delta(Box<Planned>),
    /// An older version here, signed, from which too much changed for a
    /// delta to pay: its bytes travel, and this is its new signature, so
    /// it is not chunked again.
    Changed(Signed),
}

/// What a packing run looks things up in.
pub(super) struct Lookups<'a> {
    pub(super) dir: &'a SourceDir,
    /// Where the receivers hold content, for files they may copy.
    pub(super) held: Option<&'a dyn HeldContent>,
    /// The large files' signatures, for deltas.
    pub(super) signs: Option<&'a dyn Signatures>,
}

/// What the receivers hold of `item`, found with `stamp`. A large file
/// whose old version was signed is read once, hashed and chunked, and
/// compared chunk by chunk (unless `may_sign` is false: a file still being
/// written, or overdue, is compared as any other); a delta must fit what a
/// bundle may carry (`limits`).
pub(super) fn known(
    at: &Lookups<'_>,
    (item, stamp): (&PackItem, Stamp),
    (limits, may_sign): (&Limits, bool),
    buf: &mut [u8],
) -> Known {
    let (path, previous) = (item.path.as_str(), item.previous.as_ref());
    let held = at.held.filter(|_| item.reuse);
    let signs = at.signs.filter(|_| item.reuse && may_sign);
    let Some(base) = signs.and_then(|s| base_of(s, path, previous, &stamp)) else {
        return compare(at.dir, (path, stamp), previous, held, buf);
    };
    let Some(signed) = sign(at.dir, (path, stamp), buf, false) else {
        return Known::New;
    };
    match judge(at.dir, (path, stamp), previous, held, signed.hash) {
        Known::New => match plan(base, signed, limits.chunk_size) {
            Ok(planned) if stamp.size <= limits.max_unpacked => Known::Delta(Box::new(planned)),
            Ok(planned) => Known::Changed(planned.new),
            Err(signed) => Known::Changed(signed),
        },
        known => known,
    }
}

/// Compare the file `rel` (found with `stamp`) with what the receivers
/// hold: at its path (`previous`), or, for content worth reusing, anywhere
/// (`held`). Only a file of a size they hold is read here, so a first ship
/// (nothing held) or an edit that changes the size reads nothing twice.
/// Same size, mtime and mode is not proof either: a rewrite within one
/// tick of the filesystem's clock keeps them (found by the kill suite). A
/// file that changes while it is hashed is taken as new: the packer reads
/// it again, checking it holds still. `buf` is the run's copy buffer: a
/// site of small pages is hashed without a buffer allocated per page.
pub(super) fn compare(
    dir: &SourceDir,
    (rel, stamp): (&str, Stamp),
    previous: Option<&FileMeta>,
    held: Option<&dyn HeldContent>,
    buf: &mut [u8],
) -> Known {
    let here = previous.filter(|p| p.kind == Kind::File && p.size == stamp.size);
    let elsewhere = held.filter(|h| h.has_size(stamp.size));
    if here.is_none() && elsewhere.is_none() {
        return Known::New;
    }
    let Ok(hash) = dir
        .open_file(rel)
        .and_then(|f| crate::hash::hash_through(f, buf))
    else {
        return Known::New;
    };
    judge(dir, (rel, stamp), previous, held, hash)
}

/// What the receivers hold of the file `rel` (found with `stamp`), whose
/// content hashed to `hash`, as [`compare`] tells.
fn judge(
    dir: &SourceDir,
    (rel, stamp): (&str, Stamp),
    previous: Option<&FileMeta>,
    held: Option<&dyn HeldContent>,
    hash: blake3::Hash,
) -> Known {
    let here = previous.filter(|p| p.kind == Kind::File && p.size == stamp.size);
    let elsewhere = held.filter(|h| h.has_size(stamp.size));
    let known = match (here, elsewhere) {
        (Some(p), _) if hash.to_hex().as_str() == p.hash => {
            if p.matches(&stamp) {
                return Known::Unchanged;
            }
            Known::Held(hash)
        }
        (_, Some(h)) => match h.path_of(stamp.size, &hash) {
            Some(from) if from != rel => Known::Elsewhere(from, hash),
            _ => return Known::New,
        },
        _ => return Known::New,
    };
    let still = dir
        .stat_afresh(rel)
        .is_ok_and(|st| Stamp::of_stat(&st) == stamp);
    if still { known } else { Known::New }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the receivers were told of `body` written with `stamp`.
    fn held(stamp: &Stamp, body: &[u8]) -> FileMeta {
        let mut m = FileMeta::of(stamp, blake3::hash(body).to_hex().to_string());
        m.racy = false;
        m
    }

    #[test]
    fn only_content_the_receivers_hold_at_the_same_size_is_compared_and_kept() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), "same").unwrap();
        let dir = SourceDir::open(t.path()).unwrap();
        let stamp = Stamp::of_stat(&dir.stat("a").unwrap());
        let mut buf = vec![0u8; 16];
        let same = held(&stamp, b"same");
        assert_eq!(
            compare(&dir, ("a", stamp), Some(&same), None, &mut buf),
            Known::Unchanged
        );
        let older = FileMeta {
            mtime: 1,
            ..same.clone()
        };
        let hash = blake3::hash(b"same");
        assert_eq!(
            compare(&dir, ("a", stamp), Some(&older), None, &mut buf),
            Known::Held(hash)
        );
        let other = held(&stamp, b"SAME");
        assert_eq!(
            compare(&dir, ("a", stamp), Some(&other), None, &mut buf),
            Known::New
        );
        assert_eq!(
            compare(&dir, ("a", stamp), None, None, &mut buf),
            Known::New
        );
        // Another size: new, without a look at the content.
        let bigger = FileMeta { size: 5, ..older };
        assert_eq!(
            compare(&dir, ("a", stamp), Some(&bigger), None, &mut buf),
            Known::New
        );
    }
}
