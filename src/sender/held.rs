//! Where the receivers hold each content: size and BLAKE3 hash -> one path
//! they have it at, so a file that appears at a new path (a rename, a move,
//! a copy) is rebuilt by the receiver from its own copy instead of
//! travelling again.
//!
//! Only files of at least [`MIN_REUSE`] bytes are listed: below that the
//! bytes saved are about what the manifest entry naming the copy costs, and
//! a tree of a million small files (`bench/tree.py`) keeps its memory. Each
//! entry is a size, a hash and a path (some 100 bytes with the B-tree's
//! share). Kept up to date by [`super::shipped::Shipped`], which owns the
//! per-path state: a path that changes, goes or falls in doubt leaves the
//! index. Shared with the packer (which runs on a blocking thread) behind a
//! lock taken per lookup. No I/O: it reads neither the disk nor the clock.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::bundle::pack::HeldContent;
use crate::ledger::Meta;
use crate::stamp::Kind;

/// Files smaller than this are never rebuilt from another path.
pub(super) const MIN_REUSE: u64 = 16 << 10;

/// Size and hash -> a path the receivers hold that content at.
#[derive(Debug, Default)]
pub(super) struct HeldIndex(BTreeMap<(u64, [u8; 32]), Box<str>>);

/// The index as the sender and its packer share it.
pub(super) type SharedIndex = Arc<RwLock<HeldIndex>>;

/// The key `meta` is listed under, if it is listed at all.
fn key(meta: &Meta) -> Option<(u64, [u8; 32])> {
    let listed = meta.kind == Kind::File && meta.size >= MIN_REUSE;
    listed
        .then_some(meta.hash().map(|h| (meta.size, *h)))
        .flatten()
}

impl HeldIndex {
    /// `path` is held as `meta` says now.
    pub(super) fn add(&mut self, path: &str, meta: &Meta) {
        if let Some(k) = key(meta) {
            self.0.entry(k).or_insert_with(|| path.into());
        }
    }

    /// `path` no longer holds what `was` says (changed, gone, in doubt).
    pub(super) fn remove(&mut self, path: &str, was: &Meta) {
        if let Some(k) = key(was)
            && self.0.get(&k).is_some_and(|p| &**p == path)
        {
            self.0.remove(&k);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// What the packer asks of the index.
pub(super) struct Lookup(pub(super) SharedIndex);

impl HeldContent for Lookup {
    fn has_size(&self, size: u64) -> bool {
        let index = self.0.read().unwrap_or_else(|e| e.into_inner());
        let mut at = index.0.range((size, [0; 32])..=(size, [0xff; 32]));
        at.next().is_some()
    }

    fn path_of(&self, size: u64, hash: &blake3::Hash) -> Option<String> {
        let index = self.0.read().unwrap_or_else(|e| e.into_inner());
        index
            .0
            .get(&(size, *hash.as_bytes()))
            .map(|p| p.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::FileMeta;

    fn meta(size: u64, body: &[u8]) -> Meta {
        let hash = blake3::hash(body).to_hex().to_string();
        Meta::from(FileMeta {
            size,
            mtime: 1,
            mtime_nsec: 0,
            mode: 0o644,
            hash,
            racy: false,
            kind: Kind::File,
        })
    }

    #[test]
    fn content_is_found_by_size_and_hash_until_its_path_changes() {
        let shared = SharedIndex::default();
        let (big, small) = (meta(MIN_REUSE, b"photo"), meta(MIN_REUSE - 1, b"icon"));
        {
            let mut held = shared.write().unwrap();
            held.add("img/a.jpg", &big);
            held.add("img/copy.jpg", &big);
            held.add("icon.png", &small);
            assert_eq!(held.len(), 1, "one entry per content, none for small files");
        }
        let look = Lookup(shared.clone());
        let hash = blake3::hash(b"photo");
        assert!(look.has_size(MIN_REUSE) && !look.has_size(MIN_REUSE - 1));
        assert_eq!(look.path_of(MIN_REUSE, &hash).as_deref(), Some("img/a.jpg"));
        assert_eq!(look.path_of(MIN_REUSE + 1, &hash), None, "another size");
        shared.write().unwrap().remove("img/copy.jpg", &big);
        assert!(
            look.path_of(MIN_REUSE, &hash).is_some(),
            "not the path listed"
        );
        shared.write().unwrap().remove("img/a.jpg", &big);
        assert_eq!(look.path_of(MIN_REUSE, &hash), None);
        assert!(!look.has_size(MIN_REUSE));
    }
}
