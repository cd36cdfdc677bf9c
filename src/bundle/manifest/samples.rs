//! A consistent manifest and its entries for the manifest's tests to bend.

use super::format::{FORMAT, FileEntry, Manifest, PartEntry};

/// A valid BLAKE3 hash in hex.
pub(super) const H: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

pub(super) fn file(path: &str) -> FileEntry {
    FileEntry {
        path: path.into(),
        size: 1,
        mtime: 0,
        mtime_nsec: 0,
        mode: 0o644,
        hash: H.into(),
    }
}

pub(super) fn part(index: u32, count: u32) -> PartEntry {
    PartEntry {
        path: "big".into(),
        set: "s1".into(),
        index,
        count,
        offset: u64::from(index) * 1024,
        size: 1024,
        hash: H.into(),
        file_size: u64::from(count) * 1024,
        mtime: 0,
        mtime_nsec: 0,
        mode: 0o644,
        file_hash: (index + 1 == count).then(|| H.to_string()),
    }
}

pub(super) fn manifest() -> Manifest {
    Manifest {
        format: FORMAT,
        sender: "app1".into(),
        seq: 1,
        created: 0,
        files: vec![file("a/b.html")],
        parts: vec![part(0, 2), part(1, 2)],
        deletions: vec!["old".into()],
        abandoned: vec![],
        dirs: vec![],
        links: vec![],
        kept: vec![],
        copies: vec![],
        deltas: vec![],
    }
}
