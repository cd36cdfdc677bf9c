//! Applying a bundle to a root: verify, stage, publish.
//!
//! One code path for the network and for `shipper replay`. A bundle is
//! checked as a whole before root is touched: the manifest parses and is
//! consistent, the zip holds exactly the entries the manifest names, and
//! every file's bytes are counted and hashed while they are unpacked into a
//! staging directory on root's filesystem but outside root. Only then are
//! deletions applied and staged files renamed into place, so a reader of
//! root sees each file as its old or its new version, never a partial one
//! and never a temporary name. Publishing is all or nothing: if any change
//! to root fails, the ones made are undone and the bundle is refused with
//! root as it was (see [`crate::beneath::Publish`]). Blocking: run it off
//! the async runtime.

use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use zip::ZipArchive;

use super::Summary;
use super::manifest::{
    Counts, MANIFEST_ENTRY, Manifest, ManifestError, PartEntry, max_manifest_bytes,
};
use super::zip_end::{self, ZipEndError};
use crate::beneath::{self, BeneathError, Publish, Root};
use crate::durable;
use crate::proto::frame::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a readable zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("entry {entry:?}: {reason}")]
    Entry { entry: String, reason: String },
    #[error("{0}")]
    Whole(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

fn entry_err(entry: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Entry {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

/// Where a bundle is applied.
#[derive(Debug, Clone)]
pub struct Target {
    pub root: PathBuf,
    /// On root's filesystem, outside root.
    pub staging: PathBuf,
    /// Parts of large files received so far.
    pub parts: PathBuf,
}

impl BundleError {
    /// How to tell the sender: an I/O error (a full disk) may pass, a
    /// bundle that breaks a rule will break it every time it is sent.
    /// Parts are the exception: a set the receiver lost is dropped, so the
    /// same bundle sent again is taken.
    pub fn refusal(&self) -> Refusal {
        use super::manifest::ManifestError as M;
        match self {
            BundleError::Io { .. } if self.is_disk_full() => {
                Refusal::retry(format!("receiver disk full: {self}"))
            }
            BundleError::Io { .. } => Refusal::retry(self.to_string()),
            BundleError::Entry { entry, .. } if entry.starts_with(".shipper/parts/") => {
                Refusal::retry(self.to_string())
            }
            BundleError::Entry { entry, .. } => Refusal::permanent(
                crate::paths::validate(entry).is_ok().then(|| entry.clone()),
                self.to_string(),
            ),
            BundleError::Manifest(
                M::Path { path, .. } | M::Duplicate { path } | M::Part { path, .. },
            ) => Refusal::permanent(Some(path.clone()), self.to_string()),
            BundleError::Manifest(_) | BundleError::Zip(_) | BundleError::Whole(_) => {
                Refusal::permanent(None, self.to_string())
            }
        }
    }

    /// True when the filesystem ran out of space (or quota).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, BundleError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded))
    }
}

impl Target {
    /// Create the directories and check that staging shares root's filesystem.
    pub fn prepare(&self) -> Result<(), BundleError> {
        for d in [&self.root, &self.staging, &self.parts] {
            fs::create_dir_all(d).map_err(io_at(d))?;
        }
        let root_dev = fs::metadata(&self.root).map_err(io_at(&self.root))?.dev();
        let staging_dev = fs::metadata(&self.staging)
            .map_err(io_at(&self.staging))?
            .dev();
        if root_dev != staging_dev {
            return Err(BundleError::Io {
                path: self.staging.clone(),
                source: io::Error::other(format!(
                    "staging directory is on another filesystem than root {}: files could not be renamed into place atomically (set receiver.staging_dir)",
                    self.root.display()
                )),
            });
        }
        Ok(())
    }

    /// The same target with a directory of part sets of its own for one
    /// sender, so no sender completes, supersedes or drops another's sets.
    /// `key` is a valid sender id or a fingerprint; the prefix keeps "." and
    /// ".." from naming anything but a directory of their own.
    pub fn for_sender(&self, key: &str) -> Target {
        Target {
            parts: self.parts.join(format!("from-{key}")),
            ..self.clone()
        }
    }

    /// Remove what an interrupted apply left in staging: only shipper's
    /// own stage directories, whatever else a configured staging holds.
    pub fn clean_staging(&self) -> Result<(), crate::places::PlaceError> {
        crate::places::remove_own(&self.staging, |name| name.starts_with(STAGE_PREFIX))
    }
}

/// Every directory a bundle is staged in is named with this, so that
/// cleaning staging never removes anything shipper did not make.
const STAGE_PREFIX: &str = ".shipper-stage-";

/// Staging for `root` when none is configured: `state_dir/staging` if that
/// is on root's filesystem, else [`sibling_staging`].
pub fn default_staging(root: &Path, state_dir: &Path) -> PathBuf {
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    if dev(root).is_some() && dev(root) == dev(state_dir) {
        return state_dir.join("staging");
    }
    sibling_staging(root)
}

/// A hidden directory beside root, so on its filesystem but outside it.
pub fn sibling_staging(root: &Path) -> PathBuf {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    durable::parent_of(root).join(format!(".{name}.shipper-staging"))
}

/// A bundle whose zip structure and manifest have been checked.
pub struct Opened {
    zip: ZipArchive<File>,
    pub manifest: Manifest,
    pub path: PathBuf,
}

/// What applying a bundle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub seq: u64,
    pub summary: Summary,
    /// Files that became visible in root (whole files and completed parts).
    pub published: u64,
}

/// Files, parts and deletions a receiver accepts in one bundle by default.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Caps on what one bundle may ask of the receiver, whatever it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files, parts and deletions together.
    pub max_entries: usize,
    /// Largest single file (whole files and files assembled from parts).
    pub max_file_size: u64,
    /// Bytes all entries of one bundle may unpack to.
    pub max_unpacked: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_file_size: 64 << 30,
            max_unpacked: 16 << 30,
        }
    }
}

/// Open `path`, read its manifest and check that the zip holds exactly the
/// entries the manifest names, each a regular file of the declared size,
/// within `limits`. Nothing is written.
pub fn open(path: &Path, limits: &Limits) -> Result<Opened, BundleError> {
    let mut file = File::open(path).map_err(io_at(path))?;
    // The zip crate indexes the whole central directory it is pointed at:
    // its count and size are checked first, from the end records alone.
    let most = limits.max_entries.saturating_add(1) as u64;
    let dir = match zip_end::read(&mut file, most) {
        Ok(dir) => dir,
        Err(ZipEndError::Io(e)) => return Err(io_at(path)(e)),
        Err(ZipEndError::TooMany { claimed }) => {
            return Err(BundleError::Whole(format!(
                "{claimed} zip entries, over the limit of {}",
                limits.max_entries
            )));
        }
        Err(ZipEndError::Layout(m)) => {
            return Err(BundleError::Zip(zip::result::ZipError::InvalidArchive(
                m.into(),
            )));
        }
    };
    if dir.size > most.saturating_mul(MAX_CENTRAL_HEADER_BYTES) {
        return Err(BundleError::Whole(format!(
            "a central directory of {} bytes, over the {} bytes that {} entries need at most",
            dir.size,
            most.saturating_mul(MAX_CENTRAL_HEADER_BYTES),
            limits.max_entries
        )));
    }
    let mut zip = ZipArchive::new(file)?;
    if zip.len() > limits.max_entries.saturating_add(1) {
        return Err(entry_err(
            "",
            format!(
                "{} zip entries, over the limit of {}",
                zip.len(),
                limits.max_entries
            ),
        ));
    }
    if zip.has_overlapping_entries()? {
        return Err(entry_err(
            "",
            "zip entries overlap (the same bytes under two names)",
        ));
    }
    let manifest = {
        let entry = zip
            .by_name(MANIFEST_ENTRY)
            .map_err(|_| entry_err(MANIFEST_ENTRY, "missing: not a shipper bundle"))?;
        // What the entry limit lets a manifest need, not what it claims:
        // its header may lie, so reading stops one byte past the bound.
        let bound = max_manifest_bytes(limits.max_entries);
        let too_large = |size: u64| {
            entry_err(
                MANIFEST_ENTRY,
                format!(
                    "manifest of {size} bytes, over the {bound} bytes that {} entries need at most",
                    limits.max_entries
                ),
            )
        };
        if entry.size() > bound {
            return Err(too_large(entry.size()));
        }
        let mut bytes = Vec::new();
        entry
            .take(bound + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| entry_err(MANIFEST_ENTRY, e.to_string()))?;
        if bytes.len() as u64 > bound {
            return Err(too_large(bytes.len() as u64));
        }
        // Counted before anything is built or normalised per entry.
        check_counts(&Counts::of(&bytes)?, limits)?;
        Manifest::parse(&bytes)?
    };
    check_limits(&manifest, limits)?;
    // After the manifest, whose own check names a duplicated path.
    if zip.has_duplicate_names() {
        return Err(BundleError::Whole(
            "the zip holds two entries under one name".into(),
        ));
    }
    let mut expected: std::collections::HashMap<String, u64> = manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), f.size))
        .chain(manifest.parts.iter().map(|p| (p.entry_name(), p.size)))
        .collect();
    if expected.len() != manifest.files.len() + manifest.parts.len() {
        return Err(BundleError::Whole("manifest names an entry twice".into()));
    }
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i)?;
        let name = entry.name()?.into_owned();
        if name == MANIFEST_ENTRY {
            continue;
        }
        let Some(size) = expected.remove(&name) else {
            return Err(entry_err(&name, "in the zip but not in the manifest"));
        };
        // Only regular files: no directories, symlinks, devices, fifos or
        // other special types, whatever the name says.
        let special = entry
            .unix_mode()
            .is_some_and(|m| m & 0o170000 != 0 && m & 0o170000 != 0o100000);
        if !entry.is_file() || entry.is_symlink() || special {
            return Err(entry_err(&name, "not a regular file entry"));
        }
        if entry.size() != size {
            return Err(entry_err(
                &name,
                format!("zip says {} bytes, manifest says {size}", entry.size()),
            ));
        }
    }
    if let Some(name) = expected.keys().next() {
        return Err(entry_err(name, "in the manifest but not in the zip"));
    }
    Ok(Opened {
        zip,
        manifest,
        path: path.to_owned(),
    })
}

/// Longest central directory header an entry of a bundle needs: the fixed
/// part, a name of at most [`crate::paths::MAX_PATH_BYTES`], and extra
/// fields (Zip64 sizes, timestamps) well under 1 KiB.
const MAX_CENTRAL_HEADER_BYTES: u64 =
    zip_end::HEADER_FIXED + crate::paths::MAX_PATH_BYTES as u64 + 1024;

fn check_counts(c: &Counts, limits: &Limits) -> Result<(), BundleError> {
    check_entries(c.entries(), limits)?;
    // An abandoned set is one a file of this bundle's sender gave up; they
    // cost little, but no more of them than entries.
    if c.abandoned.0 > limits.max_entries {
        return Err(entry_err(
            MANIFEST_ENTRY,
            format!(
                "{} abandoned part sets, over the limit of {}",
                c.abandoned.0, limits.max_entries
            ),
        ));
    }
    Ok(())
}

fn check_entries(entries: usize, limits: &Limits) -> Result<(), BundleError> {
    if entries > limits.max_entries {
        return Err(entry_err(
            MANIFEST_ENTRY,
            format!(
                "{entries} entries, over the limit of {}",
                limits.max_entries
            ),
        ));
    }
    Ok(())
}

fn check_limits(m: &Manifest, limits: &Limits) -> Result<(), BundleError> {
    check_entries(m.files.len() + m.parts.len() + m.deletions.len(), limits)?;
    let mut total: u64 = 0;
    for (path, size) in m
        .files
        .iter()
        .map(|f| (&f.path, f.size))
        .chain(m.parts.iter().map(|p| (&p.path, p.file_size)))
    {
        if size > limits.max_file_size {
            return Err(entry_err(
                path,
                format!("{size} bytes, over the limit of {}", limits.max_file_size),
            ));
        }
    }
    for size in m
        .files
        .iter()
        .map(|f| f.size)
        .chain(m.parts.iter().map(|p| p.size))
    {
        total = total.saturating_add(size);
    }
    if total > limits.max_unpacked {
        return Err(entry_err(
            MANIFEST_ENTRY,
            format!(
                "unpacks to {total} bytes, over the limit of {}",
                limits.max_unpacked
            ),
        ));
    }
    Ok(())
}

/// Apply an opened bundle to `target`. Root is touched only after every
/// file of the bundle is staged and verified.
pub fn apply(target: &Target, mut b: Opened) -> Result<Applied, BundleError> {
    let m = &b.manifest;
    let stage = target
        .staging
        .join(format!("{STAGE_PREFIX}{}-{}", m.sender, m.seq));
    remove_all(&stage)?;
    fs::create_dir_all(&stage).map_err(io_at(&stage))?;
    if !m.parts.is_empty() {
        fs::create_dir_all(&target.parts).map_err(io_at(&target.parts))?;
    }
    let result = stage_and_publish(target, &mut b, &stage);
    // Whatever happened, leave no staged copies behind.
    let _ = fs::remove_dir_all(&stage);
    result
}

fn stage_and_publish(
    target: &Target,
    b: &mut Opened,
    stage: &Path,
) -> Result<Applied, BundleError> {
    let m = b.manifest.clone();
    let mut staged: Vec<(String, PathBuf)> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for (i, f) in m.files.iter().enumerate() {
        let dest = stage.join(format!("f{i}"));
        let mut out = create_private(&dest)?;
        let entry = b.zip.by_name(&f.path)?;
        let hash = copy_counted(entry, &mut out, f.size, &f.path, &dest, &mut buf)?;
        if hash.to_hex().as_str() != f.hash {
            return Err(entry_err(&f.path, "content does not match its hash"));
        }
        finish_file(&out, &dest, f.mode, f.mtime, f.mtime_nsec)?;
        staged.push((f.path.clone(), dest));
    }
    let mut completed = Vec::new();
    for (j, p) in m.parts.iter().enumerate() {
        let name = p.entry_name();
        let entry = b.zip.by_name(&name)?;
        if let Some(data) = store_part(&target.parts, p, entry, &mut buf)? {
            let dest = stage.join(format!("p{j}"));
            // Linked, not moved: until the file is published, a crash and a
            // re-send must still find the assembled data.
            link_or_copy(&data, &dest)?;
            staged.push((p.path.clone(), dest));
            completed.push(p.set.clone());
        }
    }
    for set in &m.abandoned {
        drop_part_set(&target.parts, set);
    }
    // Staged data and metadata must be durable before it is renamed into
    // root, or a crash could publish an empty file. One syncfs for the
    // whole bundle instead of an fsync per file (per-file fsync made many
    // small files the slowest part of applying).
    let stage_fd = beneath::open_dir_path(stage).map_err(io_at(stage))?;
    rustix::fs::syncfs(&stage_fd).map_err(|e| io_at(stage)(e.into()))?;

    // Root is changed only through handles that never follow symlinks.
    let root = Root::open(&target.root).map_err(io_at(&target.root))?;
    for rel in m.deletions.iter().chain(staged.iter().map(|(rel, _)| rel)) {
        root.check(rel).map_err(beneath_err)?;
    }
    // All or nothing: what the bundle replaces or deletes is kept aside in
    // the stage directory (on root's filesystem) until it is committed, and
    // put back if any step fails. A crash part-way is not undone but
    // finished: the receiver applies the bundle again at its next start.
    let mut publish = root.begin(&stage.join("undo")).map_err(beneath_err)?;
    if let Err(e) = publish_all(&mut publish, &m.deletions, &staged, &stage_fd) {
        for failed in publish.roll_back() {
            tracing::error!(sender = %m.sender, seq = m.seq, error = %failed, "could not undo a change of a bundle that failed; that path stays as the bundle made it");
        }
        return Err(beneath_err(e));
    }
    publish.commit();
    // Only now: until the file is published for good, a re-send must
    // still find its parts.
    for set in &completed {
        drop_part_set(&target.parts, set);
    }
    let summary = Summary {
        files: m.files.len() as u64 + completed.len() as u64,
        parts: m.parts.len() as u64,
        deletions: m.deletions.len() as u64,
        bytes: m.content_bytes(),
    };
    Ok(Applied {
        seq: m.seq,
        summary,
        published: staged.len() as u64,
    })
}

/// Every change a bundle makes to root, in order, ending with the sync
/// that makes them durable before the bundle is acknowledged.
fn publish_all(
    publish: &mut Publish,
    deletions: &[String],
    staged: &[(String, PathBuf)],
    stage_fd: &OwnedFd,
) -> Result<(), BeneathError> {
    for d in deletions {
        publish.delete(d)?;
    }
    for (rel, src) in staged {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        publish.publish(rel, stage_fd, name)?;
    }
    // Renames live in the directories: one syncfs covers them all.
    publish.sync()
}

fn create_private(path: &Path) -> Result<File, BundleError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))
}

/// Copy an entry, counting bytes: exactly `size` must come out, whatever the
/// headers claimed. Returns the BLAKE3 of what was written.
fn copy_counted(
    mut entry: impl Read,
    out: &mut File,
    size: u64,
    name: &str,
    dest: &Path,
    buf: &mut [u8],
) -> Result<blake3::Hash, BundleError> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let n = entry
            .read(buf)
            .map_err(|e| entry_err(name, format!("cannot unpack: {e}")))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > size {
            return Err(entry_err(
                name,
                format!("holds more than the {size} bytes declared"),
            ));
        }
        if n >= 256 << 10 {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(io_at(dest))?;
    }
    if total != size {
        return Err(entry_err(
            name,
            format!("holds {total} bytes, {size} declared"),
        ));
    }
    Ok(hasher.finalize())
}

fn finish_file(f: &File, path: &Path, mode: u32, mtime: i64, nsec: u32) -> Result<(), BundleError> {
    // Never setuid/setgid/sticky: a bundle must not mint privileged files.
    f.set_permissions(Permissions::from_mode(mode & 0o777))
        .map_err(io_at(path))?;
    f.set_times(FileTimes::new().set_modified(system_time(mtime, nsec)))
        .map_err(io_at(path))
}

fn system_time(secs: i64, nsec: u32) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsec
    }
}

// ------------------------------------------------------------------ parts
//
// A part set on disk, in the directory of its sender: `SET.data`, the file
// as assembled so far, and `SET.parts`, its journal: a first line naming
// the file, then one line per part stored, each a durable::journal_line.
// Storing a part appends one line, so N parts cost N lines, never a
// rewrite of all that came before. A crash can tear only the last line;
// it is dropped, and the part it would have recorded is stored again when
// the bundle is re-sent (its data is cut back to where it starts).

/// One line of a part set's journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PartLine {
    /// The first line: which file the set assembles.
    Set {
        path: String,
        count: u32,
        file_size: u64,
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
    /// Hash of each part received so far, in order.
    hashes: Vec<String>,
    /// Where the journal's good lines end: the next line goes here.
    journal_len: u64,
}

/// What a set's files are named: the journal, the data, and the state file
/// an earlier version rewrote whole (expired like the others, never read).
const PART_SET_SUFFIXES: [&str; 3] = [".parts", ".data", ".json"];

fn part_state_path(dir: &Path, set: &str) -> PathBuf {
    dir.join(format!("{set}.parts"))
}

fn part_data_path(dir: &Path, set: &str) -> PathBuf {
    dir.join(format!("{set}.data"))
}

fn drop_part_set(dir: &Path, set: &str) {
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
        hashes,
        journal_len: good as u64,
    })
}

/// Start the journal of a new set: its first line, durable before any
/// part is recorded after it.
fn start_part_set(dir: &Path, p: &PartEntry) -> Result<PartState, BundleError> {
    let line = durable::journal_line(&PartLine::Set {
        path: p.path.clone(),
        count: p.count,
        file_size: p.file_size,
    });
    let journal = part_state_path(dir, &p.set);
    durable::write_atomic(&journal, &line).map_err(io_at(&journal))?;
    Ok(PartState {
        path: p.path.clone(),
        count: p.count,
        file_size: p.file_size,
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
    f.set_len(state.journal_len).map_err(io_at(&journal))?;
    use std::io::Seek;
    f.seek(io::SeekFrom::Start(state.journal_len))
        .map_err(io_at(&journal))?;
    f.write_all(&line).map_err(io_at(&journal))?;
    // The record must survive a crash before the bundle is acknowledged.
    f.sync_data().map_err(io_at(&journal))?;
    state.journal_len += line.len() as u64;
    state.hashes.push(hash.to_owned());
    Ok(())
}

/// Append one part to its set. Returns the data file once the set is
/// complete and its whole-file hash checks out.
fn store_part(
    dir: &Path,
    p: &PartEntry,
    entry: impl Read,
    buf: &mut [u8],
) -> Result<Option<PathBuf>, BundleError> {
    let name = p.entry_name();
    let data_path = part_data_path(dir, &p.set);
    let mut state = match load_part_state(dir, &p.set) {
        Some(s) => s,
        None if p.index == 0 => {
            supersede_sets_of(dir, &p.path);
            start_part_set(dir, p)?
        }
        None => {
            // Earlier parts were lost with this receiver's state, or
            // expired: the file cannot be completed from this set; the
            // sender ships it again when it next changes.
            tracing::warn!(path = %p.path, set = %p.set, part = p.index, "part of a set whose start this receiver does not hold; dropped");
            return Ok(None);
        }
    };
    if state.path != p.path || state.count != p.count || state.file_size != p.file_size {
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
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&data_path)
            .map_err(io_at(&data_path))?;
        // Drop any tail a crash left after the last recorded part.
        out.set_len(p.offset).map_err(io_at(&data_path))?;
        use std::io::Seek;
        out.seek(io::SeekFrom::Start(p.offset))
            .map_err(io_at(&data_path))?;
        let hash = copy_counted(entry, &mut out, p.size, &name, &data_path, buf)?;
        if hash.to_hex().as_str() != p.hash {
            let _ = out.set_len(p.offset);
            return Err(entry_err(&name, "part does not match its hash"));
        }
        // The data before its record: a recorded part is always there.
        out.sync_all().map_err(io_at(&data_path))?;
        record_part(dir, &p.set, &mut state, &p.hash)?;
    }
    if p.index + 1 < p.count {
        return Ok(None);
    }
    let len = fs::metadata(&data_path).map_err(io_at(&data_path))?.len();
    if len != p.file_size {
        return Err(entry_err(
            &name,
            format!("assembled {len} bytes, file has {}", p.file_size),
        ));
    }
    let whole = super::hash_file(&data_path).map_err(io_at(&data_path))?;
    if Some(whole.to_hex().as_str()) != p.file_hash.as_deref() {
        drop_part_set(dir, &p.set);
        return Err(entry_err(
            &p.path,
            "assembled file does not match its whole-file hash",
        ));
    }
    let f = File::open(&data_path).map_err(io_at(&data_path))?;
    finish_file(&f, &data_path, p.mode, p.mtime, p.mtime_nsec)?;
    Ok(Some(data_path))
}

/// The path a set's journal names, from its first line alone.
fn part_set_path(dir: &Path, set: &str) -> Option<String> {
    use std::io::BufRead;
    let f = File::open(part_state_path(dir, set)).ok()?;
    let mut first = Vec::new();
    io::BufReader::new(f)
        .take(64 << 10)
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
        let Some(set) = name.to_str().and_then(|n| n.strip_suffix(".parts")) else {
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
                    .is_some_and(|n| n.starts_with("from-"))
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
                    .filter(|set| super::manifest::valid_set_id(set))
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

fn link_or_copy(from: &Path, to: &Path) -> Result<(), BundleError> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(18) => {
            // EXDEV: state_dir is on another filesystem than root.
            fs::copy(from, to).map_err(io_at(to))?;
            File::open(to).and_then(|f| f.sync_all()).map_err(io_at(to))
        }
        Err(e) => Err(io_at(to)(e)),
    }
}

// -------------------------------------------------------------- publishing

fn beneath_err(e: BeneathError) -> BundleError {
    match e {
        BeneathError::Symlink { path } => entry_err(
            &path,
            "is a symlink inside root; refusing to write or delete through it",
        ),
        BeneathError::Io { path, source } => BundleError::Io { path, source },
    }
}

fn remove_all(path: &Path) -> Result<(), BundleError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
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
        store_part(dir, &p, bytes, &mut [0u8; 64]).unwrap()
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

    use crate::beneath::fault;
    use crate::bundle::pack::{self, PackItem, Packer};
    use crate::changes::Op;
    use rustix::io::Errno;

    /// Bundles of `src`'s files (large ones in parts of 4 KiB) and
    /// `deletions`, in `dir`, none over `max_size` bytes.
    fn pack_bundles(src: &Path, dir: &Path, deletions: &[&str], max_size: u64) -> Vec<PathBuf> {
        let mut files: Vec<String> = walkdir::WalkDir::new(src)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().strip_prefix(src).unwrap().to_string_lossy().into())
            .collect();
        files.sort();
        let item = |path: &str, op| PackItem {
            path: path.into(),
            op,
            previous: None,
            quiet_for: None,
            overdue: false,
        };
        let items = files
            .iter()
            .map(|f| item(f, Op::Upsert))
            .chain(deletions.iter().map(|d| item(d, Op::Delete)))
            .collect();
        let mut out = Vec::new();
        let mut seq = 0;
        Packer {
            source: src,
            outbox: dir,
            sender: "test",
            limits: pack::Limits::new(4096, max_size, 1000),
            alloc_seq: &mut || {
                seq += 1;
                Ok(seq)
            },
            emit: &mut |p| {
                out.push(p.path);
                Ok(())
            },
            touched: &|_| false,
        }
        .pack(items)
        .unwrap();
        out
    }

    fn pack_bundle(src: &Path, dir: &Path, deletions: &[&str]) -> PathBuf {
        let mut bundles = pack_bundles(src, dir, deletions, 1 << 20);
        assert_eq!(bundles.len(), 1);
        bundles.pop().unwrap()
    }

    /// Root before the bundle: what it replaces, deletes, and turns from a
    /// file into a directory and back.
    fn old_root(dir: &Path) -> Target {
        let target = Target {
            root: dir.join("root"),
            staging: dir.join("staging"),
            parts: dir.join("parts"),
        };
        target.prepare().unwrap();
        for (rel, body) in [
            ("a.html", "old a"),
            ("c", "a file where a directory goes"),
            ("dir/inner.html", "in a directory where a file goes"),
            ("gone/deep/old.html", "deleted, its directories pruned"),
            ("tree/x/y.html", "deleted with its tree"),
            ("keep/stay.html", "untouched"),
        ] {
            let p = target.root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        target
    }

    /// A bundle that failed part-way left root half-changed; and since its
    /// completed part sets were dropped before the end, a re-send could no
    /// longer publish the large file.
    #[test]
    fn a_fault_at_any_change_refuses_the_bundle_with_root_as_it_was() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        for (rel, body) in [
            ("a.html", "new a".to_string()),
            ("b/new/n.html", "in new directories".into()),
            ("big/file.bin", "0123456789abcdef".repeat(700)),
            ("c/x.html", "below a former file".into()),
            ("dir", "a file where a directory was".into()),
            ("z.html", "new z".into()),
        ] {
            let p = src.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        let zip = pack_bundle(&src, t.path(), &["gone/deep/old.html", "tree"]);
        let mut want = crate::beneath::fault::snapshot(&src);
        want.insert("keep".into(), Default::default());
        want.insert("keep/stay.html".into(), (0, 0, "untouched".into()));
        let shape = |s: std::collections::BTreeMap<String, (u64, u32, String)>| {
            s.into_iter()
                .map(|(k, (_, _, body))| (k, body))
                .collect::<Vec<_>>()
        };
        let apply_once = |target: &Target| apply(target, open(&zip, &Limits::default())?);

        let run = t.path().join("clean");
        let target = old_root(&run);
        fault::arm(None, Errno::IO, false);
        let applied = apply_once(&target).unwrap();
        let changes = fault::count();
        assert_eq!(applied.published, 6);
        assert!(applied.summary.parts > 1, "no file travelled in parts");
        assert_eq!(shape(fault::snapshot(&target.root)), shape(want.clone()));

        let mut kept_empty = 0;
        for at in 1..=changes {
            let run = t.path().join(format!("fault-{at}"));
            let target = old_root(&run);
            let was = fault::snapshot(&target.root);
            fault::arm(Some(at), Errno::NOSPC, false);
            let result = apply_once(&target);
            fault::arm(None, Errno::IO, false);
            let e = match result {
                Err(e) => e,
                // Pruning may fail alone: an emptied directory stays.
                Ok(_) if target.root.join("gone").exists() => {
                    kept_empty += 1;
                    continue;
                }
                Ok(_) => panic!("a fault at change {at} went unnoticed"),
            };
            assert!(e.is_disk_full(), "fault at change {at}: {e}");
            assert_eq!(
                fault::snapshot(&target.root),
                was,
                "root changed by a bundle refused at change {at}"
            );
            assert_eq!(fs::read_dir(&target.staging).unwrap().count(), 0);
            // Sent again once the fault is gone, it applies whole.
            apply_once(&target).unwrap();
            assert_eq!(
                shape(fault::snapshot(&target.root)),
                shape(want.clone()),
                "after a fault at change {at}"
            );
        }
        assert_eq!(kept_empty, 2, "gone/deep and gone");
    }

    /// A crash part-way is not undone but finished: the receiver cleans
    /// staging (with what was kept aside) and applies the bundle again.
    #[test]
    fn a_crash_part_way_is_finished_by_applying_the_bundle_again() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("b/new")).unwrap();
        fs::write(src.join("a.html"), "new a").unwrap();
        fs::write(src.join("b/new/n.html"), "new").unwrap();
        fs::write(src.join("dir"), "file").unwrap();
        let zip = pack_bundle(&src, t.path(), &["gone/deep/old.html"]);
        let target = old_root(&t.path().join("run"));
        let was = fault::snapshot(&target.root);
        // Everything from the fifth change on fails, undoing included.
        fault::arm(Some(5), Errno::IO, true);
        apply(&target, open(&zip, &Limits::default()).unwrap()).unwrap_err();
        fault::arm(None, Errno::IO, false);
        assert_ne!(
            fault::snapshot(&target.root),
            was,
            "the crash changed nothing"
        );
        target.clean_staging().unwrap();
        apply(&target, open(&zip, &Limits::default()).unwrap()).unwrap();
        assert_eq!(fs::read(target.root.join("a.html")).unwrap(), b"new a");
        assert_eq!(fs::read(target.root.join("dir")).unwrap(), b"file");
        assert_eq!(fs::read(target.root.join("b/new/n.html")).unwrap(), b"new");
        assert!(!target.root.join("gone").exists());
        assert_eq!(
            fs::read(target.root.join("keep/stay.html")).unwrap(),
            b"untouched"
        );
        assert_eq!(fs::read_dir(&target.staging).unwrap().count(), 0);
    }

    /// A completed part set was dropped before the publish was through: a
    /// bundle refused after that, sent again, found its first parts gone
    /// and the large file never arrived.
    #[test]
    fn a_refused_bundle_keeps_the_part_set_it_completed_for_the_re_send() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let big: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        fs::create_dir_all(src.join("big")).unwrap();
        fs::write(src.join("big/file.bin"), &big).unwrap();
        let bundles = pack_bundles(&src, t.path(), &[], 12 << 10);
        assert!(bundles.len() > 1, "the file did not span bundles");
        let (last, first) = bundles.split_last().unwrap();
        // mkdir, rename into place, sync.
        for at in 1..=3 {
            let target = old_root(&t.path().join(format!("fault-{at}")));
            for b in first {
                apply(&target, open(b, &Limits::default()).unwrap()).unwrap();
            }
            fault::arm(Some(at), Errno::IO, false);
            apply(&target, open(last, &Limits::default()).unwrap()).unwrap_err();
            fault::arm(None, Errno::IO, false);
            assert!(!target.root.join("big").exists());
            let a = apply(&target, open(last, &Limits::default()).unwrap()).unwrap();
            assert_eq!(a.published, 1, "fault at change {at}");
            assert_eq!(fs::read(target.root.join("big/file.bin")).unwrap(), big);
        }
    }
}
