//! Test-only: a picture of a tree precise enough to tell whether root is
//! exactly as it was, the very same entries and not copies of them.
//!
//! One copy for both kinds of test: compiled into the library's unit tests
//! (`#[cfg(test)]`, re-exported by `beneath::fault`) and, by `#[path]`,
//! into the integration tests in `tests/it`, which cannot see the
//! library's test-only items. So it names nothing of this crate: std and
//! walkdir only.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Every entry below `dir` (directories, files, symlinks) with its inode,
/// mode and content (a symlink's target): equal snapshots mean the very
/// same entries are there, not copies of them.
pub fn snapshot(dir: &Path) -> BTreeMap<String, (u64, u32, String)> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let md = e.path().symlink_metadata().unwrap();
            let body = if md.is_file() {
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned()
            } else if md.is_symlink() {
                format!("-> {}", std::fs::read_link(e.path()).unwrap().display())
            } else {
                String::new()
            };
            let rel = e.path().strip_prefix(dir).unwrap().to_string_lossy();
            (rel.into_owned(), (md.ino(), md.mode(), body))
        })
        .collect()
}
