//! Root's listing for `shipper verify`: every regular file below root with
//! the BLAKE3 of its content. A file is read only when its inode, size,
//! mtime or ctime changed since the last listing: the hashes are cached in
//! `state_dir/root-hashes` (rewritten durably when they changed), so a
//! second listing of an unchanged root reads no file. A file modified
//! within [`RACY`] of the listing is hashed but not cached: a rewrite in
//! the same tick of the clock would keep its stamp.
//!
//! Never lists `.shipper/` (reserved), names that are not UTF-8 or not a
//! valid shipped path (nothing could ship them), nor read anything through
//! a symlink ([`SourceDir`]). Blocking: call off the runtime.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::drift::Hash;
use crate::durable;
use crate::paths::{self, RESERVED_DIR};
use crate::source_dir::SourceDir;

/// The cache's file name in the receiver's state_dir.
pub const CACHE_FILE: &str = "root-hashes";
/// Files written this recently are not cached (see the module header).
const RACY: Duration = Duration::from_secs(2);
/// One listing at a time per process: two would race on the cache file.
static LISTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Root's files in path order, and how many of them were read.
#[derive(Debug, Default)]
pub struct RootListing {
    pub files: Vec<(String, Hash)>,
    pub hashed: u64,
}

/// What a file's hash was cached with: if any differs, it is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Key {
    fn of(md: &std::fs::Metadata) -> Self {
        Self {
            ino: md.ino(),
            size: md.len(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

/// List `root`, with the cache in `state_dir`. An unreadable cache is
/// rebuilt; an unreadable file or directory is an error naming it.
pub fn list(root: &Path, state_dir: &Path) -> io::Result<RootListing> {
    let _one = LISTING.lock().unwrap_or_else(|e| e.into_inner());
    let cache_path = state_dir.join(CACHE_FILE);
    let cache = read_cache(&cache_path);
    let mut out = RootListing::default();
    let mut keep: Vec<(String, Key, Hash)> = Vec::new();
    let dir = SourceDir::open(root)?;
    for (path, md) in walk(root)? {
        let key = Key::of(&md);
        let hash = match cache.get(&path) {
            Some((k, h)) if *k == key => *h,
            _ => match dir.hash_file(&path) {
                Ok(hash) => {
                    out.hashed += 1;
                    hash
                }
                // Replaced or removed since the walk (a bundle published
                // meanwhile): not listed, as if the walk came a moment later.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            },
        };
        if !crate::stamp::modified_within(md.mtime(), md.mtime_nsec() as u32, RACY) {
            keep.push((path.clone(), key, hash));
        }
        out.files.push((path, hash));
    }
    let changed = out.hashed > 0 || keep.len() != cache.len();
    if changed {
        write_cache(&cache_path, &keep).map_err(|e| with_path(e, &cache_path))?;
    }
    Ok(out)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Every regular file below `root` that could be shipped, in path order.
fn walk(root: &Path) -> io::Result<Vec<(String, std::fs::Metadata)>> {
    let mut files = Vec::new();
    let entries = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == RESERVED_DIR));
    for entry in entries {
        let entry = entry.map_err(|e| {
            let at = e
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            io::Error::other(format!("{at}: {e}"))
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let Some(rel) = paths::relative(root, entry.path()) else {
            continue;
        };
        if paths::validate(&rel).is_err() {
            continue;
        }
        let md = entry.metadata().map_err(io::Error::other)?;
        files.push((rel, md));
    }
    // Sorted by name per directory is not sorted by path ("a/b" < "a.b").
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// One cache line: `hash ino size mtime mtime_nsec ctime ctime_nsec path`.
fn cache_line(path: &str, k: &Key, h: &Hash) -> String {
    format!(
        "{} {} {} {} {} {} {} {path}\n",
        data_encoding::HEXLOWER.encode(h),
        k.ino,
        k.size,
        k.mtime.0,
        k.mtime.1,
        k.ctime.0,
        k.ctime.1
    )
}

fn parse_line(line: &str) -> Option<(String, (Key, Hash))> {
    let mut f = line.splitn(8, ' ');
    let mut hash = [0u8; 32];
    let hex = f.next()?;
    (hex.len() == 64).then_some(())?;
    data_encoding::HEXLOWER
        .decode_mut(hex.as_bytes(), &mut hash)
        .ok()?;
    let mut n = || f.next()?.parse::<i64>().ok();
    let (ino, size, m, mn, c, cn) = (n()?, n()?, n()?, n()?, n()?, n()?);
    let key = Key {
        ino: ino as u64,
        size: size as u64,
        mtime: (m, mn),
        ctime: (c, cn),
    };
    Some((f.next()?.to_owned(), (key, hash)))
}

/// The cached hashes; a line that does not parse is left out (its file is
/// read again), and a missing or unreadable cache is empty.
fn read_cache(path: &Path) -> HashMap<String, (Key, Hash)> {
    let Ok(f) = File::open(path) else {
        return HashMap::new();
    };
    io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| parse_line(&l))
        .collect()
}

/// Replace the cache, crash-safe: a torn cache would only cost reads, but
/// one file or the other is simpler to reason about.
fn write_cache(path: &Path, entries: &[(String, Key, Hash)]) -> io::Result<()> {
    durable::write_atomic_with(path, |w| {
        for (p, k, h) in entries {
            w.write_all(cache_line(p, k, h).as_bytes())?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_lines_round_trip_paths_with_spaces() {
        let k = Key {
            ino: 7,
            size: 3,
            mtime: (-1, 5),
            ctime: (2, 999_999_999),
        };
        let line = cache_line("a b/c d.html", &k, &[9; 32]);
        let (p, (k2, h)) = parse_line(line.trim_end_matches('\n')).unwrap();
        assert_eq!((p.as_str(), k2, h), ("a b/c d.html", k, [9; 32]));
        assert!(parse_line("zz 1 2 3 4 5 6 a").is_none());
    }

    /// The second listing of an unchanged root reads nothing; an edited
    /// file is read again, and the listing is in path order.
    #[test]
    fn an_unchanged_root_is_listed_from_the_cache() {
        let (root, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (p, body) in [("a.b", "1"), ("a/b", "2"), (".shipper/x", "3")] {
            let at = root.path().join(p);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(&at, body).unwrap();
            // Old enough to be cached.
            let old = std::time::SystemTime::now() - Duration::from_secs(60);
            File::options()
                .write(true)
                .open(&at)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let first = list(root.path(), state.path()).unwrap();
        let names: Vec<_> = first.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["a.b", "a/b"]);
        assert_eq!(first.hashed, 2);
        assert_eq!(first.files[0].1, *blake3::hash(b"1").as_bytes());
        let second = list(root.path(), state.path()).unwrap();
        assert_eq!((second.hashed, second.files), (0, first.files));
        std::fs::write(root.path().join("a/b"), "22").unwrap();
        let third = list(root.path(), state.path()).unwrap();
        assert_eq!(third.hashed, 1);
        assert_eq!(third.files[1].1, *blake3::hash(b"22").as_bytes());
    }
}
