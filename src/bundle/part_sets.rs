//! The receiver's store of part sets: a large file's parts, arriving
//! across bundles, assembled until the file is whole.
//!
//! A part set on disk, in the directory of its sender: `SET.data`, the file
//! as assembled so far, and `SET.parts`, its journal: a first line naming
//! the file, then one line per part stored, each a durable::journal_line.
//! Storing a part appends one line, so N parts cost N lines, never a
//! rewrite of all that came before. A crash can tear only the last line;
//! it is dropped, and the part it would have recorded is stored again when
//! the bundle is re-sent (its data is cut back to where it starts).
//!
//! A set is dropped once its file is published or its sender abandons it
//! (both by the caller, `drop_part_set`), when a new set starts for the
//! same path, and when it lies idle for longer than `part_ttl`
//! ([`expire_part_sets`]). Writes only in the parts directory it is handed,
//! never in root.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::error::{BundleError, damaged, entry_err, io_at};
use super::manifest::{PartEntry, valid_set_id};
use super::part_tree::{PartHashes, file_hash, parse_cv, part_len_of};
use super::unpack::{copy_counted, finish_file};
use crate::durable;
use crate::perms::Policy;

/// One line of a part set's journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PartLine {
    /// The first line: which file the set assembles.
    Set {
        path: String,
        count: u32,
        file_size: u64,
        /// How long each part but the last is, when the part hashes are
        /// chaining values of the file's BLAKE3 tree; absent for a set of
        /// plain part hashes (manifest format 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part_len: Option<u64>,
    },
    /// Part `index` is stored, with this hash.
    Part { index: u32, hash: String },
}

/// What the receiver holds of one part set, beside its data file.
#[derive(Debug)]
struct PartState {
    path: String,
    count: u32,
    file_size: u64,
    /// Each part's length but the last's, for a set hashed as a tree.
    part_len: Option<u64>,
    /// Hash of each part received so far, in order.
    hashes: Vec<String>,
    /// Where the journal's good lines end: the next line goes here.
    journal_len: u64,
}

/// How a set's journal is named after its set.
const JOURNAL_SUFFIX: &str = ".parts";

/// How a set's data is named after its set.
const DATA_SUFFIX: &str = ".data";

/// What a set's files are named: the journal, the data, and the state file
/// an earlier version rewrote whole (expired like the others, never read).
const PART_SET_SUFFIXES: [&str; 3] = [JOURNAL_SUFFIX, DATA_SUFFIX, ".json"];

/// Each sender's directory of sets below the parts directory is named
/// with this and its key.
pub(super) const SENDER_DIR_PREFIX: &str = "from-";

/// How far a journal's first line is read: it names one path and two
/// numbers, far less than this.
const MAX_FIRST_LINE_BYTES: u64 = 64 << 10;

fn part_state_path(dir: &Path, set: &str) -> PathBuf {
    dir.join(format!("{set}{JOURNAL_SUFFIX}"))
}

fn part_data_path(dir: &Path, set: &str) -> PathBuf {
    dir.join(format!("{set}{DATA_SUFFIX}"))
}

/// Remove every file of a set; what is already gone is no error.
pub(super) fn drop_part_set(dir: &Path, set: &str) {
    for suffix in PART_SET_SUFFIXES {
        let _ = fs::remove_file(dir.join(format!("{set}{suffix}")));
    }
}

fn load_part_state(dir: &Path, set: &str) -> Option<PartState> {
    let bytes = fs::read(part_state_path(dir, set)).ok()?;
    let (lines, good) = durable::journal_lines::<PartLine>(&bytes);
    let mut lines = lines.into_iter();
    let Some(PartLine::Set {
        path,
        count,
        file_size,
        part_len,
    }) = lines.next()
    else {
        return None;
    };
    let mut hashes = Vec::new();
    for line in lines {
        match line {
            PartLine::Part { index, hash } if index as usize == hashes.len() => hashes.push(hash),
            // Only shipper writes these, in order: a journal that says
            // otherwise is not one to complete a file from.
            _ => return None,
        }
    }
    Some(PartState {
        path,
        count,
        file_size,
        part_len,
        hashes,
        journal_len: good as u64,
    })
}

/// Start the journal of a new set: its first line, durable before any
/// part is recorded after it.
fn start_part_set(
    dir: &Path,
    p: &PartEntry,
    part_len: Option<u64>,
) -> Result<PartState, BundleError> {
    let line = durable::journal_line(&PartLine::Set {
        path: p.path.clone(),
        count: p.count,
        file_size: p.file_size,
        part_len,
    });
    let journal = part_state_path(dir, &p.set);
    durable::write_atomic(&journal, &line).map_err(io_at(&journal))?;
    Ok(PartState {
        path: p.path.clone(),
        count: p.count,
        file_size: p.file_size,
        part_len,
        hashes: Vec::new(),
        journal_len: line.len() as u64,
    })
}

/// Append the record of part `index` to the set's journal, after its good
/// lines (a torn tail is cut off first).
fn record_part(
    dir: &Path,
    set: &str,
    state: &mut PartState,
    hash: &str,
) -> Result<(), BundleError> {
    let journal = part_state_path(dir, set);
    let line = durable::journal_line(&PartLine::Part {
        index: state.hashes.len() as u32,
        hash: hash.to_owned(),
    });
    let mut f = OpenOptions::new()
        .write(true)
        .open(&journal)
        .map_err(io_at(&journal))?;
    cut_at(&mut f, state.journal_len, &journal)?;
    f.write_all(&line).map_err(io_at(&journal))?;
    // The record must survive a crash before the bundle is acknowledged.
    f.sync_data().map_err(io_at(&journal))?;
    state.journal_len += line.len() as u64;
    state.hashes.push(hash.to_owned());
    Ok(())
}

/// Cut `f` back to `len` bytes and write from there on: whatever a crash
/// left after the last good record goes.
fn cut_at(f: &mut File, len: u64, path: &Path) -> Result<(), BundleError> {
    f.set_len(len).map_err(io_at(path))?;
    f.seek(io::SeekFrom::Start(len)).map_err(io_at(path))?;
    Ok(())
}

/// Append one part to its set, its hash taken as `hashes` says. Returns
/// the data file once the set is complete and its whole-file hash checks
/// out.
pub(super) fn store_part(
    dir: &Path,
    policy: &Policy,
    (p, hashes): (&PartEntry, PartHashes),
    entry: impl Read,
    buf: &mut [u8],
) -> Result<Option<PathBuf>, BundleError> {
    let name = p.entry_name();
    let part_len = match hashes {
        PartHashes::Bytes => None,
        PartHashes::Tree => match part_len_of(p.index, p.count, p.offset, p.size) {
            Some(len) => Some(len),
            None => {
                return Err(entry_err(
                    &name,
                    "part does not lie on its file's hash tree",
                ));
            }
        },
    };
    let Some(mut state) = open_part_set(dir, p, part_len)? else {
        return Ok(None);
    };
    if state.path != p.path
        || state.count != p.count
        || state.file_size != p.file_size
        || state.part_len != part_len
    {
        return Err(entry_err(
            &name,
            "part disagrees with earlier parts of its set",
        ));
    }
    let have = state.hashes.len() as u32;
    if p.index < have {
        // Re-sent bundle: this part is already stored.
        if state.hashes[p.index as usize] != p.hash {
            return Err(entry_err(
                &name,
                "differs from the stored copy of this part",
            ));
        }
    } else if p.index > have {
        // Refused; the set is dropped too, so a re-send of this bundle is
        // treated as a set whose start was lost instead of refused forever.
        drop_part_set(dir, &p.set);
        return Err(entry_err(
            &name,
            format!("parts {have}..{} of this set never arrived", p.index),
        ));
    } else {
        append_part(dir, (p, hashes), &mut state, entry, buf)?;
    }
    if p.index + 1 < p.count {
        return Ok(None);
    }
    complete_part_set(dir, policy, p, &state).map(Some)
}

/// The set part `p` belongs to, as its journal holds it, or started anew
/// by its first part; `None` when its start is not here.
fn open_part_set(
    dir: &Path,
    p: &PartEntry,
    part_len: Option<u64>,
) -> Result<Option<PartState>, BundleError> {
    match load_part_state(dir, &p.set) {
        Some(s) => Ok(Some(s)),
        None if p.index == 0 => {
            supersede_sets_of(dir, &p.path);
            start_part_set(dir, p, part_len).map(Some)
        }
        None => {
            // Earlier parts were lost with this receiver's state, or
            // expired: the file cannot be completed from this set; the
            // sender ships it again when it next changes.
            tracing::warn!(path = %p.path, set = %p.set, part = p.index, "part of a set whose start this receiver does not hold; dropped");
            Ok(None)
        }
    }
}

/// Write part `p`, the next one its set lacks, at its offset in the set's
/// data, check its hash and record it.
fn append_part(
    dir: &Path,
    (p, hashes): (&PartEntry, PartHashes),
    state: &mut PartState,
    entry: impl Read,
    buf: &mut [u8],
) -> Result<(), BundleError> {
    let name = p.entry_name();
    let data_path = part_data_path(dir, &p.set);
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&data_path)
        .map_err(io_at(&data_path))?;
    // The parts recorded must all be there: data shorter than the journal
    // says (lost, or restored from an older copy) would be filled with
    // zeros by cutting it to length, and a set whose whole-file hash is
    // merged from its parts' would publish them.
    let have = out.metadata().map_err(io_at(&data_path))?.len();
    if have < p.offset {
        drop_part_set(dir, &p.set);
        return Err(damaged(
            &name,
            format!(
                "the set's data holds {have} bytes, its journal records {}",
                p.offset
            ),
        ));
    }
    // Drop any tail a crash left after the last recorded part.
    cut_at(&mut out, p.offset, &data_path)?;
    let mut hasher = hashes.hasher(p.offset);
    copy_counted(
        entry,
        &mut out,
        (p.size, &mut hasher),
        &name,
        &data_path,
        buf,
    )?;
    if hashes.finish(&hasher) != p.hash {
        let _ = out.set_len(p.offset);
        return Err(damaged(&name, "part does not match its hash"));
    }
    // The data before its record: a recorded part is always there.
    out.sync_all().map_err(io_at(&data_path))?;
    if hashes == PartHashes::Tree {
        // Durable, and not read back to complete the set (its whole-file
        // hash is merged from the parts'): its memory goes to the next
        // part, not to a file the size of the set held in the page cache.
        // From the set's start, so pages straddling an earlier part's end
        // (parts smaller than a page or a large folio) go too.
        durable::give_back_cache(&out, 0, p.offset + p.size);
    }
    record_part(dir, &p.set, state, &p.hash)
}

/// The set's data once its last part `p` is stored: its size and
/// whole-file hash checked, the policy's mode and group and the file's
/// mtime given. A set hashed as a tree has its whole-file hash merged
/// from its parts' hashes; one of plain part hashes is read back whole.
fn complete_part_set(
    dir: &Path,
    policy: &Policy,
    p: &PartEntry,
    state: &PartState,
) -> Result<PathBuf, BundleError> {
    let name = p.entry_name();
    let data_path = part_data_path(dir, &p.set);
    let len = fs::metadata(&data_path).map_err(io_at(&data_path))?.len();
    if len != p.file_size {
        return Err(entry_err(
            &name,
            format!("assembled {len} bytes, file has {}", p.file_size),
        ));
    }
    let whole = match state.part_len {
        Some(part_len) => state
            .hashes
            .iter()
            .map(|h| parse_cv(h))
            .collect::<Option<Vec<_>>>()
            .and_then(|cvs| file_hash(&cvs, part_len, p.file_size)),
        None => Some(crate::hash::hash_file(&data_path).map_err(io_at(&data_path))?),
    };
    if whole.map(|h| h.to_hex()).as_deref() != p.file_hash.as_deref() {
        drop_part_set(dir, &p.set);
        return Err(damaged(
            &p.path,
            "assembled file does not match its whole-file hash",
        ));
    }
    let f = File::open(&data_path).map_err(io_at(&data_path))?;
    let perms = (policy.file_mode(p.mode), policy.gid());
    finish_file(&f, &data_path, perms, p.mtime, p.mtime_nsec)?;
    Ok(data_path)
}

/// The path a set's journal names, from its first line alone.
fn part_set_path(dir: &Path, set: &str) -> Option<String> {
    use std::io::BufRead;
    let f = File::open(part_state_path(dir, set)).ok()?;
    let mut first = Vec::new();
    io::BufReader::new(f)
        .take(MAX_FIRST_LINE_BYTES)
        .read_until(b'\n', &mut first)
        .ok()?;
    match durable::journal_lines::<PartLine>(&first).0.pop() {
        Some(PartLine::Set { path, .. }) => Some(path),
        _ => None,
    }
}

/// A new set for a path replaces any older, unfinished one.
fn supersede_sets_of(dir: &Path, path: &str) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(set) = name.to_str().and_then(|n| n.strip_suffix(JOURNAL_SUFFIX)) else {
            continue;
        };
        if part_set_path(dir, set).is_some_and(|p| p == path) {
            drop_part_set(dir, set);
        }
    }
}

/// Remove the part sets below `parts` (the receiver's, one directory per
/// sender) that no part was added to for `ttl`: their sender gave them up
/// without saying so (the file went away, its state was lost), and nothing
/// else would ever remove them. Only names shipper gives a set's files are
/// looked at. Returns how many sets were removed.
pub fn expire_part_sets(parts: &Path, ttl: Duration, now: SystemTime) -> usize {
    let Ok(rd) = fs::read_dir(parts) else {
        return 0;
    };
    let mut dirs = vec![parts.to_owned()];
    dirs.extend(
        rd.flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(SENDER_DIR_PREFIX))
            })
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path()),
    );
    let mut removed = 0;
    for dir in dirs {
        // A set's last activity is the newest of its files.
        let mut last: std::collections::HashMap<String, SystemTime> = Default::default();
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(set) = name.to_str().and_then(|n| {
                PART_SET_SUFFIXES
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .filter(|set| valid_set_id(set))
            }) else {
                continue;
            };
            let Ok(modified) = e.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            let t = last.entry(set.to_owned()).or_insert(modified);
            *t = (*t).max(modified);
        }
        for (set, t) in last {
            let idle = now.duration_since(t).unwrap_or_default();
            if idle > ttl {
                tracing::info!(set, dir = %dir.display(), idle_secs = idle.as_secs(), "part set idle for over part_ttl; removed");
                drop_part_set(&dir, &set);
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &[u8] = b"aaaabbbbcc";

    /// Part `index` of DATA in parts of 4 bytes.
    fn part(index: u32) -> (PartEntry, &'static [u8]) {
        let offset = index as usize * 4;
        let bytes = &DATA[offset..(offset + 4).min(DATA.len())];
        let p = PartEntry {
            path: "big".into(),
            set: "s1".into(),
            index,
            count: 3,
            offset: offset as u64,
            size: bytes.len() as u64,
            hash: blake3::hash(bytes).to_hex().to_string(),
            file_size: DATA.len() as u64,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o644,
            file_hash: (index == 2).then(|| blake3::hash(DATA).to_hex().to_string()),
        };
        (p, bytes)
    }

    fn store(dir: &Path, index: u32) -> Option<PathBuf> {
        let (p, bytes) = part(index);
        put(dir, (&p, PartHashes::Bytes), bytes).unwrap()
    }

    /// Store part `p` (hashed as `hashes` says) of `bytes` in `dir`.
    fn put(
        dir: &Path,
        p: (&PartEntry, PartHashes),
        bytes: &[u8],
    ) -> Result<Option<PathBuf>, BundleError> {
        store_part(dir, &Policy::default(), p, bytes, &mut [0u8; 64])
    }

    /// Part `index` of `data` in tree-hashed parts of 1 KiB, as a sender
    /// of manifest format 2 writes it.
    fn tree_part(data: &[u8], index: u32) -> (PartEntry, &[u8]) {
        tree_part_of(data, index, 1024)
    }

    /// Part `index` of `data` in tree-hashed parts of `len` bytes.
    fn tree_part_of(data: &[u8], index: u32, len: usize) -> (PartEntry, &[u8]) {
        let (offset, count) = (index as usize * len, data.len().div_ceil(len) as u32);
        let bytes = &data[offset..(offset + len).min(data.len())];
        let mut h = PartHashes::Tree.hasher(offset as u64);
        h.update(bytes);
        let p = PartEntry {
            index,
            count,
            offset: offset as u64,
            size: bytes.len() as u64,
            hash: PartHashes::Tree.finish(&h),
            file_size: data.len() as u64,
            file_hash: (index + 1 == count).then(|| blake3::hash(data).to_hex().to_string()),
            ..part(0).0
        };
        (p, bytes)
    }

    #[cfg(target_os = "linux")]
    fn page_size() -> usize {
        // SAFETY: sysconf reads no memory of ours.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
    }

    /// How many of the first `len` bytes of `path` are in the page cache,
    /// in pages (mincore of a read-only mapping).
    #[cfg(target_os = "linux")]
    fn cached_pages(path: &Path, len: usize) -> usize {
        use std::os::fd::AsRawFd;
        let f = File::open(path).unwrap();
        let page = page_size();
        let mut present = vec![0u8; len.div_ceil(page)];
        // SAFETY: a private read-only mapping of `len` bytes of a file at
        // least that long, unmapped before return; mincore writes one byte
        // per page into `present`, which holds one per page.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(at, libc::MAP_FAILED, "mmap {}", path.display());
            let rc = libc::mincore(at, len, present.as_mut_ptr());
            libc::munmap(at, len);
            assert_eq!(rc, 0, "mincore {}", path.display());
        }
        present.iter().filter(|b| *b & 1 == 1).count()
    }

    /// A directory on the disk the project is on: a tmpfs /tmp keeps its
    /// pages whatever it is advised.
    #[cfg(target_os = "linux")]
    fn dir_on_disk() -> tempfile::TempDir {
        tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_stored_part_leaves_the_page_cache_once_durable_and_a_plain_hashed_one_stays() {
        // Parts of 256 KiB: whole pages, so each can be given back whole.
        const LEN: usize = 256 << 10;
        let data: Vec<u8> = (0..3 * LEN as u32).map(|i| (i * 13) as u8).collect();
        let dir = dir_on_disk();
        let (p, bytes) = tree_part_of(&data, 0, LEN);
        put(dir.path(), (&p, PartHashes::Tree), bytes).unwrap();
        let stored = part_data_path(dir.path(), &p.set);
        assert_eq!(
            cached_pages(&stored, LEN),
            0,
            "a durable tree-hashed part still holds the page cache ({} is on a \
             filesystem whose pages fadvise cannot drop?)",
            dir.path().display()
        );
        // The set still completes from what the disk holds.
        let mut done = None;
        for i in 1..3 {
            let (p, bytes) = tree_part_of(&data, i, LEN);
            done = put(dir.path(), (&p, PartHashes::Tree), bytes).unwrap();
        }
        assert_eq!(fs::read(done.expect("complete")).unwrap(), data);

        // Plain part hashes read the whole file back once complete: kept.
        let dir = dir_on_disk();
        let (mut p, bytes) = tree_part_of(&data, 0, LEN);
        p.hash = blake3::hash(bytes).to_hex().to_string();
        put(dir.path(), (&p, PartHashes::Bytes), bytes).unwrap();
        let stored = part_data_path(dir.path(), &p.set);
        assert_eq!(cached_pages(&stored, LEN), LEN / page_size());
    }

    #[test]
    fn a_tree_hashed_set_completes_on_its_merged_hash_and_nothing_else() {
        let data: Vec<u8> = (0..2600u32).map(|i| (i * 7) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let mut done = None;
        for i in 0..3 {
            let (p, bytes) = tree_part(&data, i);
            done = put(dir.path(), (&p, PartHashes::Tree), bytes).unwrap();
        }
        assert_eq!(fs::read(done.expect("complete")).unwrap(), data);

        // The same parts with a whole-file hash that is not theirs.
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            let (mut p, bytes) = tree_part(&data, i);
            p.set = "s2".into();
            if i == 2 {
                p.file_hash = Some(blake3::hash(b"other").to_hex().to_string());
            }
            let got = put(dir.path(), (&p, PartHashes::Tree), bytes);
            assert_eq!(got.is_err(), i == 2, "part {i}");
        }
        assert!(
            load_part_state(dir.path(), "s2").is_none(),
            "the set is dropped"
        );
    }

    #[test]
    fn a_set_whose_data_lost_recorded_parts_is_refused_not_filled_with_zeros() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 13 + 1) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let put_tree = |i: u32| {
            let (p, b) = tree_part(&data, i);
            put(dir.path(), (&p, PartHashes::Tree), b)
        };
        put_tree(0).unwrap();
        put_tree(1).unwrap();
        // The data lost what the journal records (a disk, an operator's copy).
        fs::write(part_data_path(dir.path(), "s1"), b"").unwrap();
        let e = put_tree(2).unwrap_err().to_string();
        assert!(e.contains("journal records 2048"), "{e}");
        assert!(
            load_part_state(dir.path(), "s1").is_none(),
            "the set is dropped"
        );
    }

    #[test]
    fn a_set_begun_with_plain_part_hashes_takes_no_tree_hashed_part() {
        let data = vec![5u8; 2600];
        let dir = tempfile::tempdir().unwrap();
        let (p0, b0) = tree_part(&data, 0);
        let plain = PartEntry {
            hash: blake3::hash(b0).to_hex().to_string(),
            ..p0
        };
        put(dir.path(), (&plain, PartHashes::Bytes), b0).unwrap();
        let (p1, b1) = tree_part(&data, 1);
        let e = put(dir.path(), (&p1, PartHashes::Tree), b1).unwrap_err();
        assert!(
            e.to_string().contains("disagrees with earlier parts"),
            "{e}"
        );
        // And a part off the tree is refused before anything is written.
        let (mut p, b) = tree_part(&data, 0);
        p.set = "s3".into();
        p.size = 1000;
        let e = put(dir.path(), (&p, PartHashes::Tree), &b[..1000]).unwrap_err();
        assert!(e.to_string().contains("hash tree"), "{e}");
        assert!(!part_data_path(dir.path(), "s3").exists());
    }

    #[test]
    fn a_journal_torn_at_any_point_of_its_last_line_loses_only_that_part() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), 0);
        let journal = part_state_path(dir.path(), "s1");
        let one = fs::read(&journal).unwrap();
        store(dir.path(), 1);
        let two = fs::read(&journal).unwrap();
        assert!(two.starts_with(&one));
        for cut in one.len()..two.len() {
            fs::write(&journal, &two[..cut]).unwrap();
            let state = load_part_state(dir.path(), "s1").unwrap();
            assert_eq!(state.hashes.len(), 1, "cut at {cut}");
            assert_eq!(state.journal_len, one.len() as u64);
        }
        // The re-sent part is stored again after the last good line.
        store(dir.path(), 1);
        assert_eq!(fs::read(&journal).unwrap(), two);
        let done = store(dir.path(), 2).expect("complete");
        assert_eq!(fs::read(done).unwrap(), DATA);
    }

    #[test]
    fn expiry_removes_idle_sets_and_nothing_shipper_did_not_name() {
        let parts = tempfile::tempdir().unwrap();
        let dir = parts.path().join("from-app1");
        fs::create_dir_all(&dir).unwrap();
        store(&dir, 0);
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        fs::write(dir.join("bad id.data"), "mine").unwrap();
        let ttl = Duration::from_secs(3600);
        let now = SystemTime::now();
        assert_eq!(expire_part_sets(parts.path(), ttl, now), 0);
        assert!(part_state_path(&dir, "s1").exists());
        let later = now + ttl + Duration::from_secs(60);
        assert_eq!(expire_part_sets(parts.path(), ttl, later), 1);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["bad id.data", "notes.txt"]);
    }
}
