//! Applying a verified bundle to a root: stage, then publish.
//!
//! One code path for the network and for `shipper replay`. A bundle is
//! checked as a whole before root is touched: [`open`] checks the manifest
//! and the zip (see [`super::verify`]), and every file's bytes are counted
//! and hashed while they are unpacked (on every core) into a staging
//! directory on root's filesystem but outside root; parts go to their set
//! ([`super::part_sets`]) and a completed file is staged like the others.
//! Files made from root's own (kept, copied, rebuilt from a delta) are
//! checked and staged first, so a bundle refused for what root lacks has
//! stored nothing.
//! The staged files are made durable (when one `syncfs` will do it, the
//! bundle and then each file are handed to the disk as they are staged,
//! so that sync does not write them all at once), then deletions are
//! applied and staged files renamed into place, so
//! a reader of root sees each file as its old or its new version, never a
//! partial one and never a temporary name. Publishing is all or nothing: if
//! any change to root fails, the ones made are undone and the bundle is
//! refused with root as it was (see [`crate::beneath::Publish`]). Blocking:
//! run it off the async runtime.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{beneath_err, damaged, io_at};
use super::kept::check_and_copy;
use super::manifest::{FileEntry, Manifest};
use super::part_sets::{drop_part_set, store_part};
use super::part_tree::PartHashes;
use super::rebuild::stage_deltas;
use super::stage_names::{PER_DIR, StagedKind};
use super::summary::Summary;
use super::unpack::{copy_counted, create_private_in, finish_file, make_stage_dirs};
use super::verify::OpenedZip;
use crate::beneath::{self, BeneathError, Publish, Root};
use crate::durable::EarlyWriteback;

// The receiver's side of bundles was one file; these keep the paths other
// modules use to reach it.
pub use super::error::BundleError;
pub use super::part_sets::expire_part_sets;
pub use super::target::{KeepAs, Target, default_staging, sibling_staging};
pub use super::verify::{DEFAULT_MAX_ENTRIES, Limits, Opened, open};

/// At most the bytes read from the zip at a time while unpacking.
const UNPACK_BUFFER_BYTES: usize = 1 << 20;

/// The smallest buffer entries are unpacked through: never empty, so an
/// entry holding more than its declared size (even of 0) is always caught.
const UNPACK_BUFFER_MIN: usize = 8 << 10;

/// A bundle gets one more unpacking worker (up to one per core) for every
/// this many whole files: fewer are not worth opening the zip again.
const FILES_PER_WORKER: usize = 16;

/// The buffer to unpack entries of these sizes through: no larger than
/// the largest needs (zeroing it is paid once a bundle, and most bundles
/// are a few small files).
fn unpack_buffer(sizes: impl Iterator<Item = u64>) -> Vec<u8> {
    crate::hash::read_buffer(sizes, UNPACK_BUFFER_MIN, UNPACK_BUFFER_BYTES)
}

/// What applying a bundle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub seq: u64,
    pub summary: Summary,
    /// Files that became visible in root (whole files and completed parts).
    pub published: u64,
    /// Their paths in root, for the `on_apply` hook.
    pub written: Vec<String>,
    /// The paths the bundle deleted.
    pub deleted: Vec<String>,
}

/// Apply an opened bundle to `target`. Root is touched only after every
/// file of the bundle is staged and verified.
pub fn apply(target: &Target, mut b: Opened) -> Result<Applied, BundleError> {
    if target.snapshot {
        copy_kept(&mut b.manifest);
    }
    let m = &b.manifest;
    let stage = target.stage_dir(&m.sender, m.seq);
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

/// Root's files are shared with older snapshots: a file kept with new
/// metadata is made a copy of itself (a reflink where the filesystem makes
/// one), given its metadata and renamed into place, never changed where
/// it is.
fn copy_kept(m: &mut Manifest) {
    let own = |k: FileEntry| super::manifest::CopyEntry {
        from: k.path.clone(),
        path: k.path,
        size: k.size,
        mtime: k.mtime,
        mtime_nsec: k.mtime_nsec,
        mode: k.mode,
        hash: k.hash,
    };
    let kept = std::mem::take(&mut m.kept);
    m.copies.extend(kept.into_iter().map(own));
}

fn stage_and_publish(
    target: &Target,
    b: &mut Opened,
    stage: &Path,
) -> Result<Applied, BundleError> {
    // First: a bundle refused for what root lacks has stored nothing.
    let m = &b.manifest;
    let mut made = Vec::new();
    if !(m.kept.is_empty() && m.copies.is_empty() && m.deltas.is_empty()) {
        let root = Root::open(&target.root).map_err(io_at(&target.root))?;
        made = check_and_copy(&root, target, m, stage)?;
        made.extend(stage_deltas(&root, target, &mut b.zip, m, stage)?);
    }
    let stage_fd = beneath::open_dir_path(stage).map_err(io_at(stage))?;
    let early = early_writeback(target, b);
    let staged = stage_entries(target, b, (stage, &stage_fd), early.as_ref());
    if let Some(early) = early {
        early.finish();
    }
    let mut staged = staged?;
    staged.files.extend(made);
    let m = &b.manifest;
    // Staged data and metadata must be durable before it is renamed into
    // root, or a crash could publish an empty file.
    make_staged_durable(&staged.files, stage, &stage_fd)?;
    // So is the receiver's write-ahead record of this publish, which a
    // crash from here on must find. Synced only now, not when the bundle
    // was named there: an fsync then committed the filesystem's journal,
    // which waited for the bundle's bytes, handed to the disk as they
    // arrived (`super::arrival`), before the first file was unpacked.
    if b.write_ahead {
        let dir = crate::durable::parent_of(&b.path);
        crate::durable::sync_dir(dir).map_err(io_at(dir))?;
    }
    publish_staged(target, m, &staged.files, stage, &stage_fd)?;
    // Only now: until the file is published for good, a re-send must
    // still find its parts.
    for set in &staged.completed {
        drop_part_set(&target.parts, set);
    }
    let summary = Summary {
        files: (m.files.len() + staged.completed.len() + m.deltas.len()) as u64,
        parts: m.parts.len() as u64,
        deletions: m.deletions.len() as u64,
        bytes: m.content_bytes(),
        kept: m.kept.len() as u64,
        copied: m.copies.len() as u64,
        deltas: m.deltas.len() as u64,
    };
    Ok(Applied {
        seq: m.seq,
        summary,
        published: staged.files.len() as u64,
        written: staged.files.iter().map(|(rel, _)| rel.clone()).collect(),
        deleted: m.deletions.clone(),
    })
}

/// What staging a bundle left in its stage directory.
struct Staged {
    /// Each file to publish, by its path in root, with its staged copy.
    files: Vec<(String, PathBuf)>,
    /// The part sets whose files are among them.
    completed: Vec<String>,
}

/// Unpack and check every whole file into `stage`, store every part in its
/// set, stage each file a set completes, and drop the sets the sender
/// abandoned.
fn stage_entries(
    target: &Target,
    b: &mut Opened,
    (stage, stage_fd): (&Path, &OwnedFd),
    early: Option<&EarlyWriteback>,
) -> Result<Staged, BundleError> {
    let mut staged = Staged {
        files: stage_files(target, b, (stage, stage_fd), early)?,
        completed: Vec::new(),
    };
    let (zip, m) = (&mut b.zip, &b.manifest);
    make_stage_dirs(stage, StagedKind::Link, m.links.len())?;
    let mut buf = unpack_buffer(m.parts.iter().map(|p| p.size));
    let hashes = PartHashes::of_format(m.format);
    for p in &m.parts {
        let name = p.entry_name();
        let entry = zip.by_name(&name)?;
        if let Some(data) = store_part(&target.parts, &target.policy, (p, hashes), entry, &mut buf)?
        {
            // Numbered by the files staged, not the parts read: so are the
            // directories made, and as many files are staged as numbered.
            let (kind, j) = (StagedKind::Part, staged.completed.len());
            if let Some(dir) = kind.dir(j).filter(|_| j % PER_DIR == 0) {
                let dir = stage.join(dir);
                fs::create_dir(&dir).map_err(io_at(&dir))?;
            }
            let dest = stage.join(kind.path(j));
            // Linked, not moved: until the file is published, a crash and a
            // re-send must still find the assembled data.
            link_or_copy(&data, &dest)?;
            staged.files.push((p.path.clone(), dest));
            staged.completed.push(p.set.clone());
        }
    }
    for set in &m.abandoned {
        drop_part_set(&target.parts, set);
    }
    for (k, l) in m.links.iter().enumerate() {
        let dest = stage.join(StagedKind::Link.path(k));
        stage_link(&l.target, &dest, target.policy.gid())?;
        staged.files.push((l.path.clone(), dest));
    }
    Ok(staged)
}

/// Unpack and check the bundle's whole files into `stage` (the `i`th at
/// [`StagedKind::File`]'s path `i`), inflating, hashing and writing on
/// every core: each worker reads the bundle through a clone of the opened
/// zip (its directory parsed once, its place in the file its own) and
/// takes every `workers`th file, so both walk the zip forwards. The first
/// failure refuses the bundle. Returns each file's path in root with its
/// staged copy, in manifest order. Each staged file is handed to `early`,
/// if given.
fn stage_files(
    target: &Target,
    b: &mut Opened,
    (stage, stage_fd): (&Path, &OwnedFd),
    early: Option<&EarlyWriteback>,
) -> Result<Vec<(String, PathBuf)>, BundleError> {
    use rayon::prelude::*;
    let m = &b.manifest;
    let workers = rayon::current_num_threads()
        .min(m.files.len().div_ceil(FILES_PER_WORKER))
        .max(1);
    make_stage_dirs(stage, StagedKind::File, m.files.len())?;
    // Once one worker fails, the others stop at their next file.
    let failed = AtomicBool::new(false);
    let share = |zip: &mut OpenedZip, w: usize| {
        let mut buf = unpack_buffer(m.files.iter().skip(w).step_by(workers).map(|f| f.size));
        let mut dirs = StageDirs::new(stage, stage_fd);
        for i in (w..m.files.len()).step_by(workers) {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            let kind = StagedKind::File;
            let (name, dest) = (kind.name(i), stage.join(kind.path(i)));
            let out = dirs
                .of(dest.parent().unwrap_or(stage))
                .map_err(beneath_err)
                .and_then(|dir| stage_file(target, zip, &m.files[i], (dir, &name, &dest), &mut buf))
                .inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
            if let Some(early) = early {
                early.hand(out);
            }
        }
        Ok::<_, BundleError>(())
    };
    if workers == 1 {
        // A small bundle (the usual one): no thread is worth starting.
        share(&mut b.zip, 0)?;
    } else {
        let zip = &b.zip;
        (0..workers)
            .into_par_iter()
            .try_for_each(|w| share(&mut zip.clone(), w))?;
    }
    let staged = m.files.iter().enumerate();
    Ok(staged
        .map(|(i, f)| (f.path.clone(), stage.join(StagedKind::File.path(i))))
        .collect())
}

/// Unpack the whole file `f` to `dest` (the entry `name` of the directory
/// `dir`, the stage directory or one below it), check its size and hash against the manifest,
/// and give it the mode, group and mtime it is published with. Returns
/// the file, still open.
fn stage_file(
    target: &Target,
    zip: &mut OpenedZip,
    f: &FileEntry,
    (dir, name, dest): (&OwnedFd, &str, &Path),
    buf: &mut [u8],
) -> Result<File, BundleError> {
    let mut out = create_private_in(dir, name, dest)?;
    let entry = zip.by_name(&f.path)?;
    let mut hasher = blake3::Hasher::new();
    copy_counted(entry, &mut out, (f.size, &mut hasher), &f.path, dest, buf)?;
    if hasher.finalize().to_hex().as_str() != f.hash {
        return Err(damaged(&f.path, "content does not match its hash"));
    }
    let perms = (target.policy.file_mode(f.mode), target.policy.gid());
    finish_file(&out, dest, perms, f.mtime, f.mtime_nsec)?;
    Ok(out)
}

/// Make what `staged` holds in `stage` durable. A few files get an fsync
/// each, then the stage directory one; more get one `syncfs` of the whole
/// filesystem instead (an fsync per file made many small files the
/// slowest part of applying). `syncfs` also flushes everything else
/// pending there, such as the received bundle itself, which need not
/// survive a crash: a bundle of parts or of a few files is not held up by
/// it. (A completed part set's data was fsynced as its parts were stored;
/// its staged link, the same inode, is synced again for its mode and mtime.)
fn make_staged_durable(
    staged: &[(String, PathBuf)],
    stage: &Path,
    stage_fd: &OwnedFd,
) -> Result<(), BundleError> {
    if syncs_filesystem(staged.len()) {
        return rustix::fs::syncfs(stage_fd).map_err(|e| io_at(stage)(e.into()));
    }
    for (_, path) in staged {
        let is_file = path.symlink_metadata().map_err(io_at(path))?.is_file();
        if is_file {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(io_at(path))?;
        }
    }
    rustix::fs::fsync(stage_fd).map_err(|e| io_at(stage)(e.into()))
}

// Files synced one by one are all in the stage directory, whose fsync
// makes their names durable: none of a kind sits below it until there
// are more than `SYNC_EACH_MAX` of all kinds.
const _: () = assert!(beneath::SYNC_EACH_MAX < PER_DIR);

/// Whether making `staged` files durable takes one `syncfs` of the whole
/// filesystem rather than an fsync each (see [`make_staged_durable`]).
pub(super) fn syncs_filesystem(staged: usize) -> bool {
    staged > beneath::SYNC_EACH_MAX
}

/// When the bundle's staged files will be made durable by one `syncfs`,
/// a thread that hands the bundle, then each file as it is staged, to the
/// disk: that sync would otherwise write them all at once while the apply
/// waits, after the unpacking left the disk idle (bench/timeline.py, row
/// 1: 0.6 s of both cores waiting on the disk after the last file was
/// staged). Not for a bundle of parts or of a few files: those are synced
/// file by file, and the bundle, never synced then, is often archived and
/// pruned before it would be written at all. The bundle is handed only if
/// the sync would write it, on staging's filesystem (an archived bundle
/// replayed from elsewhere is not), and a network bundle is usually on its
/// way already (`super::arrival`).
fn early_writeback(target: &Target, b: &Opened) -> Option<EarlyWriteback> {
    // Its whole files and links are staged whatever else is.
    if !syncs_filesystem(b.manifest.files.len() + b.manifest.links.len()) {
        return None;
    }
    let early = EarlyWriteback::start()?;
    if target.shares_filesystem(crate::durable::parent_of(&b.path))
        && let Ok(bundle) = File::open(&b.path)
    {
        early.hand(bundle);
    }
    Some(early)
}

/// Make the symlink `dest` in the stage, pointing to `target` (checked to
/// stay inside the tree with the manifest), with the policy's group: it is
/// published like a file, by one rename over the old path.
fn stage_link(target: &str, dest: &Path, gid: Option<u32>) -> Result<(), BundleError> {
    std::os::unix::fs::symlink(target, dest).map_err(io_at(dest))?;
    if let Some(gid) = gid {
        std::os::unix::fs::lchown(dest, None, Some(gid)).map_err(io_at(dest))?;
    }
    Ok(())
}

/// Delete and rename into root what the bundle changes, all or nothing.
fn publish_staged(
    target: &Target,
    m: &Manifest,
    staged: &[(String, PathBuf)],
    stage: &Path,
    stage_fd: &OwnedFd,
) -> Result<(), BundleError> {
    // Root is changed only through handles that never follow symlinks.
    let root = Root::open(&target.root).map_err(io_at(&target.root))?;
    let dirs = m.dirs.iter().map(|d| &d.path);
    let replaced: HashSet<&str> = dirs
        .clone()
        .chain(&m.deletions)
        .map(String::as_str)
        .collect();
    // A check looks at the directories above a path: the files of one
    // directory (most of a bundle's paths) need it once.
    let mut checked_dirs = HashSet::new();
    for rel in m
        .deletions
        .iter()
        .chain(dirs)
        .chain(staged.iter().map(|(rel, _)| rel))
        .chain(m.kept.iter().map(|k| &k.path))
    {
        let checked = checked_part(rel, &replaced);
        let above = checked.rsplit_once('/').map_or("", |(dir, _)| dir);
        if checked_dirs.insert(above) {
            root.check(checked).map_err(beneath_err)?;
        }
    }
    // All or nothing: what the bundle replaces or deletes is kept aside in
    // the stage directory (on root's filesystem) until it is committed, and
    // put back if any step fails. A crash part-way is not undone but
    // finished: the receiver applies the bundle again at its next start.
    let mut publish = root
        .begin(&stage.join("undo"), &target.policy)
        .map_err(beneath_err)?;
    let mut dirs = StageDirs::new(stage, stage_fd);
    if let Err(e) = publish_all(&mut publish, m, staged, &mut dirs) {
        for failed in publish.roll_back() {
            tracing::error!(sender = %m.sender, seq = m.seq, error = %failed, "could not undo a change of a bundle that failed; that path stays as the bundle made it");
        }
        return Err(beneath_err(e));
    }
    match &target.keep {
        // Fails whole: dropped unkept, the publish puts root back.
        Some(k) => {
            let with: Vec<(&str, &[u8])> = k
                .with
                .iter()
                .map(|(n, c)| (n.as_str(), c.as_slice()))
                .collect();
            publish.keep(&k.record, &with).map_err(beneath_err)?;
        }
        None => publish.commit(),
    }
    Ok(())
}

/// What of `rel` is checked for symlinks before root is changed: up to
/// the shallowest directory above it that the bundle ships or deletes
/// (`replaced`), since a symlink there (a link the source made a directory)
/// is moved aside by the bundle, not written through. Below it, a symlink
/// is still refused, only later: publishing never follows one.
fn checked_part<'a>(rel: &'a str, replaced: &HashSet<&str>) -> &'a str {
    rel.match_indices('/')
        .map(|(slash, _)| &rel[..slash])
        .find(|dir| replaced.contains(dir))
        .unwrap_or(rel)
}

/// Every change a bundle makes to root, in order, ending with the sync
/// that makes them durable before the bundle is acknowledged: deletions,
/// deepest first (so a deleted directory is looked at once what the bundle
/// deletes inside it is gone); directories, shallowest first; then files
/// and links; then the metadata of the files it keeps.
fn publish_all(
    publish: &mut Publish,
    m: &Manifest,
    staged: &[(String, PathBuf)],
    stage: &mut StageDirs,
) -> Result<(), BeneathError> {
    let depth = |p: &str| p.matches('/').count();
    let mut deletions: Vec<&String> = m.deletions.iter().collect();
    deletions.sort_by_key(|d| std::cmp::Reverse(depth(d)));
    for d in deletions {
        publish.delete(d)?;
    }
    let mut dirs: Vec<_> = m.dirs.iter().collect();
    dirs.sort_by_key(|d| depth(&d.path));
    for d in dirs {
        publish.make_shipped_dir(&d.path, d.mode)?;
    }
    for (rel, src) in staged {
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let dir = src.parent().unwrap_or(stage.path);
        publish.publish(rel, stage.of(dir)?, name)?;
    }
    for k in &m.kept {
        publish.retime(&k.path, k.mode, k.mtime, k.mtime_nsec)?;
    }
    // Renames live in the directories: one syncfs covers them all.
    publish.sync()
}

/// A stage directory's handle, and the handle of the directory below it
/// that was last asked for: a bundle's staged files are walked in order,
/// so each directory is opened about once, and never more than one at a
/// time is held.
struct StageDirs<'a> {
    path: &'a Path,
    fd: &'a OwnedFd,
    below: Option<(PathBuf, OwnedFd)>,
}

impl<'a> StageDirs<'a> {
    fn new(path: &'a Path, fd: &'a OwnedFd) -> Self {
        Self {
            path,
            fd,
            below: None,
        }
    }

    /// The handle of `dir`: the stage directory or one below it.
    fn of(&mut self, dir: &Path) -> Result<&OwnedFd, BeneathError> {
        if dir == self.path {
            return Ok(self.fd);
        }
        let below = match self.below.take() {
            Some((at, fd)) if at == dir => (at, fd),
            _ => {
                let fd = beneath::open_dir_path(dir).map_err(|source| BeneathError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
                (dir.to_owned(), fd)
            }
        };
        Ok(&self.below.insert(below).1)
    }
}

/// Stage the data of a completed set without taking it from the set.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), BundleError> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            // EXDEV: state_dir is on another filesystem than root.
            fs::copy(from, to).map_err(io_at(to))?;
            File::open(to).and_then(|f| f.sync_all()).map_err(io_at(to))
        }
        Err(e) => Err(io_at(to)(e)),
    }
}

fn remove_all(path: &Path) -> Result<(), BundleError> {
    crate::places::remove_tree(path).map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beneath::fault;
    use crate::bundle::pack::{self, PackItem};
    use crate::changes::Op;
    use rustix::io::Errno;

    #[test]
    fn the_unpack_buffer_is_never_empty_and_no_larger_than_needed() {
        // It was 1 MiB, zeroed, for every bundle of a few small files;
        // empty, it would let an entry of size 0 hold bytes unseen.
        let len = |sizes: &[u64]| unpack_buffer(sizes.iter().copied()).len();
        assert_eq!(len(&[]), UNPACK_BUFFER_MIN);
        assert_eq!(len(&[0, 0]), UNPACK_BUFFER_MIN);
        assert_eq!(len(&[100, 20_000, 3]), 20_001);
        assert_eq!(len(&[5 << 30]), UNPACK_BUFFER_BYTES);
    }

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
            reuse: false,
        };
        let items = files
            .iter()
            .map(|f| item(f, Op::Upsert))
            .chain(deletions.iter().map(|d| item(d, Op::Delete)))
            .collect();
        let limits = pack::Limits::new(4096, max_size, 1000);
        pack::pack_for_test(src, dir, limits, items)
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
            policy: crate::perms::Policy::default(),
            keep: None,
            snapshot: false,
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
        let deletions = ["tree", "gone/deep/old.html", "tree/x/y.html"];
        let zip = pack_bundle(&src, t.path(), &deletions);
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
        // The hook is told of every file published, the one completed
        // from parts included, and of every deletion.
        let mut files: Vec<_> = crate::beneath::fault::snapshot(&src)
            .into_iter()
            .filter(|(_, (_, _, body))| !body.is_empty())
            .map(|(k, _)| k)
            .collect();
        let mut written = applied.written.clone();
        files.sort();
        written.sort();
        assert_eq!(written, files);
        assert_eq!(
            applied.deleted,
            ["gone/deep/old.html", "tree/x/y.html", "tree"]
        );
        assert_eq!(shape(fault::snapshot(&target.root)), shape(want.clone()));

        let (mut kept_empty, mut healed) = (0, 0);
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
                Ok(_) if target.root.join("gone").exists() || target.root.join("tree").exists() => {
                    kept_empty += 1;
                    continue;
                }
                // ...or removed after all by the deletion of `tree` itself.
                Ok(_) => {
                    healed += 1;
                    continue;
                }
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
        // Kept: gone/deep (so gone), gone, tree/x (so tree). Healed: tree.
        // Any other fault going unnoticed would count here too.
        assert_eq!((kept_empty, healed), (3, 1));
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

    /// A bundle's 10,000 files were staged in one directory, where each
    /// file's creation and rename searched the directory's entries (12% of
    /// a receiver's time on a tree of small files).
    #[test]
    fn a_bundle_of_many_files_is_staged_a_few_to_a_directory_and_published_whole() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let count = 2 * PER_DIR + 10;
        for i in 0..count {
            let p = src.join(format!("d{}/page{i}.html", i % 3));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, format!("page {i}")).unwrap();
        }
        let zip = pack_bundle(&src, t.path(), &[]);
        let target = old_root(&t.path().join("run"));
        let mut b = open(&zip, &Limits::default()).unwrap();
        assert_eq!(b.manifest.files.len(), count);
        let stage = target.stage_dir(&b.manifest.sender, b.manifest.seq);
        fs::create_dir_all(&stage).unwrap();
        let stage_fd = beneath::open_dir_path(&stage).unwrap();
        let staged = stage_entries(&target, &mut b, (&stage, &stage_fd), None).unwrap();

        let entries = |dir: &Path| {
            let mut names: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        let top = entries(&stage);
        assert_eq!(top.len(), PER_DIR + 2, "{top:?}");
        assert!(top.contains(&"f-1".to_string()) && top.contains(&"f-2".to_string()));
        assert_eq!(entries(&stage.join("f-1")).len(), PER_DIR);
        assert_eq!(entries(&stage.join("f-2")).len(), 10);
        for (rel, path) in &staged.files {
            assert_eq!(fs::read(path).unwrap(), fs::read(src.join(rel)).unwrap());
        }

        let m = &b.manifest;
        publish_staged(&target, m, &staged.files, &stage, &stage_fd).unwrap();
        for i in 0..count {
            let rel = format!("d{}/page{i}.html", i % 3);
            assert_eq!(
                fs::read(target.root.join(&rel)).unwrap(),
                format!("page {i}").as_bytes()
            );
        }
        for dir in ["", "f-1", "f-2"] {
            let left = entries(&stage.join(dir));
            assert!(
                left.iter().all(|n| n.starts_with("f-") || n == "undo"),
                "{left:?}"
            );
        }
    }

    /// A file completed by the 70th part of a bundle is its first file
    /// staged from parts: numbered by files staged, it sits in the stage
    /// directory, which a bundle of a few staged files syncs file by file
    /// (numbered by parts read, it sat below it, its directory unsynced).
    #[test]
    fn a_file_completed_by_a_late_part_is_staged_where_its_sync_reaches() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let video = crate::bundle::noise(70 * 4096, 7);
        fs::write(src.join("video.bin"), &video).unwrap();
        let zip = pack_bundle(&src, t.path(), &[]);
        let target = old_root(&t.path().join("run"));
        fs::create_dir_all(&target.parts).unwrap();
        let mut b = open(&zip, &Limits::default()).unwrap();
        assert_eq!(b.manifest.parts.len(), 70);
        let stage = target.stage_dir(&b.manifest.sender, b.manifest.seq);
        fs::create_dir_all(&stage).unwrap();
        let stage_fd = beneath::open_dir_path(&stage).unwrap();
        let staged = stage_entries(&target, &mut b, (&stage, &stage_fd), None).unwrap();
        assert_eq!(staged.files, [("video.bin".to_string(), stage.join("p0"))]);
        assert!(!syncs_filesystem(staged.files.len()));
        assert_eq!(fs::read(stage.join("p0")).unwrap(), video);
        assert_eq!(fs::read_dir(&stage).unwrap().count(), 1);
    }

    /// A bundle refused at its last file, one staged below the stage
    /// directory: root is as it was, staging empty; sent again, it applies
    /// whole.
    #[test]
    fn a_bundle_staged_a_few_to_a_directory_refused_at_its_last_file_leaves_root_as_it_was() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let count = PER_DIR + 3;
        for i in 0..count {
            fs::create_dir_all(src.join("pages")).unwrap();
            fs::write(src.join(format!("pages/p{i:03}.html")), format!("new {i}")).unwrap();
        }
        let zip = pack_bundle(&src, t.path(), &[]);
        let target = old_root(&t.path().join("run"));
        let was = fault::snapshot(&target.root);
        fault::arm(None, Errno::IO, false);
        let clean = old_root(&t.path().join("clean"));
        apply(&clean, open(&zip, &Limits::default()).unwrap()).unwrap();
        let changes = fault::count();
        // The last changes are the syncs of root and of pages/; the one
        // before them, the last file's rename.
        fault::arm(Some(changes - 2), Errno::NOSPC, false);
        let e = apply(&target, open(&zip, &Limits::default()).unwrap()).unwrap_err();
        fault::arm(None, Errno::IO, false);
        assert!(e.is_disk_full(), "{e}");
        let last = format!("pages/p{:03}.html", count - 1);
        assert!(e.to_string().contains(&last), "{e}");
        assert_eq!(fault::snapshot(&target.root), was);
        assert_eq!(fs::read_dir(&target.staging).unwrap().count(), 0);
        apply(&target, open(&zip, &Limits::default()).unwrap()).unwrap();
        assert_eq!(
            fs::read(target.root.join(&last)).unwrap(),
            format!("new {}", count - 1).as_bytes()
        );
    }

    /// A bundle of whole files (enough for every worker) and of a file
    /// in parts, written as `pack_bundle` does: the pages' bodies and the
    /// video's bytes, random so that they are stored as they are.
    fn pages_and_video(src: &Path) -> (Vec<Vec<u8>>, Vec<u8>) {
        fs::create_dir_all(src.join("pages")).unwrap();
        let noise = crate::bundle::noise;
        let pages: Vec<Vec<u8>> = (0..4 * FILES_PER_WORKER as u64)
            .map(|i| noise(3000, i))
            .collect();
        for (i, body) in pages.iter().enumerate() {
            fs::write(src.join(format!("pages/{i:02}.html")), body).unwrap();
        }
        let video = noise(40_000, u64::MAX);
        fs::write(src.join("video.bin"), &video).unwrap();
        (pages, video)
    }

    /// A bundle of whole files and parts applies whole; damage to a page
    /// or a part, first or last, refuses it with root and staging as they
    /// were, and the bundle sent again then applies, its set gone once
    /// published.
    #[test]
    fn a_bundle_of_files_and_parts_damaged_anywhere_is_refused_whole_and_applies_sent_again() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let (pages, video) = pages_and_video(&src);
        let zip = pack_bundle(&src, t.path(), &[]);
        let opened = open(&zip, &Limits::default()).unwrap();
        assert!(
            opened.manifest.parts.len() > 2,
            "the video did not travel in parts"
        );
        assert_eq!(opened.manifest.files.len(), pages.len());
        drop(opened);

        let bytes = fs::read(&zip).unwrap();
        let damaged = |name: &str, needle: &[u8]| {
            let at = bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap();
            let mut copy = bytes.clone();
            copy[at + needle.len() / 2] ^= 0x55;
            let path = t.path().join(name);
            fs::write(&path, copy).unwrap();
            path
        };
        let last = pages.len() - 1;
        for (name, needle) in [
            ("first-page", &pages[0][..64]),
            ("last-page", &pages[last][..64]),
            ("first-part", &video[..64]),
            ("last-part", &video[video.len() - 64..]),
        ] {
            let target = old_root(&t.path().join(name));
            let was = fault::snapshot(&target.root);
            let bad = damaged(&format!("{name}.zip"), needle);
            apply(&target, open(&bad, &Limits::default()).unwrap()).unwrap_err();
            assert_eq!(fault::snapshot(&target.root), was, "{name} changed root");
            assert_eq!(fs::read_dir(&target.staging).unwrap().count(), 0, "{name}");
            let applied = apply(&target, open(&zip, &Limits::default()).unwrap()).unwrap();
            assert_eq!(applied.published as usize, pages.len() + 1, "{name}");
            for (i, body) in pages.iter().enumerate() {
                let got = fs::read(target.root.join(format!("pages/{i:02}.html"))).unwrap();
                assert_eq!(&got, body, "{name}: page {i}");
            }
            assert_eq!(
                fs::read(target.root.join("video.bin")).unwrap(),
                video,
                "{name}"
            );
            let left = fault::snapshot(&target.parts);
            assert!(left.is_empty(), "{name}: set kept: {:?}", left.keys());
        }
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
        // mkdir, its mode, rename into place, sync.
        for at in 1..=4 {
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
