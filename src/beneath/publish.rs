//! [`Publish`]: the changes one bundle makes below root, all or nothing.
//!
//! Nothing it replaces or deletes is destroyed until [`Publish::commit`]: a
//! replaced file is kept as a hard link, a deleted entry (a whole directory
//! at once) is moved, into an undo directory outside root on its
//! filesystem, and every step is recorded. When a step fails,
//! [`Publish::roll_back`] walks the record backwards and root is again
//! exactly what it was, the same inodes. Every change is made relative to
//! a parent opened by [`Root`], never through a symlink. [`Publish::sync`]
//! makes the changes durable: the directories they touched one by one, or
//! the whole filesystem at once when they are many.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Gid, Mode};
use rustix::io::Errno;

use super::retime::Retimed;
use super::root::{BeneathError, DIR_FLAGS, Root, open_dir_path, split};
use crate::perms::{DEFAULT_DIR_MODE, Policy};

// Root's one way to change anything, kept with what it starts: the
// walking in root.rs needs nothing of this file.
impl Root {
    /// Start changing root. `undo` is made to keep what the changes replace
    /// or delete: a new directory outside root on root's filesystem (so
    /// entries move there by rename, never by copy). Directories made are
    /// given `policy`'s dir mode and group.
    pub fn begin(&self, undo: &Path, policy: &Policy) -> Result<Publish<'_>, BeneathError> {
        let io = |e: std::io::Error| BeneathError::Io {
            path: undo.to_owned(),
            source: e,
        };
        std::fs::create_dir(undo).map_err(io)?;
        let undo_fd = open_dir_path(undo).map_err(io)?;
        Ok(Publish {
            root: self,
            undo: undo_fd,
            undo_path: undo.to_owned(),
            steps: Vec::new(),
            kept: 0,
            policy: policy.clone(),
            last_dir: None,
        })
    }
}

/// The changes one bundle makes to root, each undoable until
/// [`Publish::commit`]. Dropped uncommitted (a panic), it rolls back.
pub struct Publish<'r> {
    pub(super) root: &'r Root,
    pub(super) undo: OwnedFd,
    /// Empty once the undo directory became a record (`undo.rs`).
    pub(super) undo_path: PathBuf,
    /// What was done, in order; each step names the path it changed, whose
    /// parent is opened again (never following a symlink) to undo it.
    pub(super) steps: Vec<Step>,
    /// Names given in `undo` so far.
    kept: u64,
    /// The mode and group of directories made (and of files kept).
    pub(super) policy: Policy,
    /// The directory a file was last published in, by its path, held open:
    /// a bundle's files come a directory at a time. Let go, confirmed still
    /// at its path, for another, before anything is moved aside or deleted
    /// (it may be that directory, or above it), and before the sync.
    last_dir: Option<(String, Arc<OwnedFd>)>,
}

/// One change to root and what undoes it. Kept with a bundle's record
/// (see `undo.rs`) as JSON, so a publish can be undone long after it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Step {
    /// Made the directory `rel`, where nothing was.
    Made { rel: String },
    /// Moved the entry at `rel` to `kept` in the undo directory.
    MovedAside { rel: String, kept: String },
    /// Renamed a staged file to `rel`; `kept` in the undo directory is a
    /// hard link to the entry it replaced, if there was one. `placed` is
    /// the file placed: an undo long after touches `rel` only while it is
    /// still that file.
    Placed {
        rel: String,
        kept: Option<String>,
        placed: FileId,
    },
    /// Gave the directory `rel`, which had `mode` and `gid`, another mode
    /// or group.
    Moded { rel: String, mode: u32, gid: u32 },
    /// Gave the file `rel`, kept as it was, another mode, group or mtime
    /// (see `retime.rs`): it had these.
    Retimed { rel: String, was: Retimed },
}

/// What tells a file placed in root from one put at its path since: its
/// inode (a number a filesystem may give again once the file is deleted),
/// size and mtime (which a write in place, or a file made anew, changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct FileId {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    /// The entry `name` in `dir` (never followed), if there is one.
    pub(super) fn of(dir: &OwnedFd, name: &str) -> rustix::io::Result<Option<Self>> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Self {
                ino: st.st_ino,
                size: st.st_size as u64,
                mtime: st.st_mtime,
                mtime_nsec: st.st_mtime_nsec as i64,
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn ino(&self) -> u64 {
        self.ino
    }
}

impl Step {
    /// The path below root the step changed.
    pub(super) fn rel(&self) -> &str {
        let (Step::Made { rel }
        | Step::MovedAside { rel, .. }
        | Step::Placed { rel, .. }
        | Step::Moded { rel, .. }
        | Step::Retimed { rel, .. }) = self;
        rel
    }
}

/// A bundle whose changes touch at most this many directories (or stage at
/// most this many files) syncs each; more, one `syncfs` of the filesystem.
pub const SYNC_EACH_MAX: usize = 32;

/// The directories `steps` changed, each once, "" for root: the parent of
/// every path changed, and the directories made or given a mode themselves.
fn changed_dirs(steps: &[Step]) -> std::collections::BTreeSet<&str> {
    fn parent(rel: &str) -> &str {
        rel.rsplit_once('/').map_or("", |(dir, _)| dir)
    }
    let mut dirs = std::collections::BTreeSet::new();
    for step in steps {
        match step {
            Step::Made { rel } | Step::Moded { rel, .. } => {
                dirs.insert(parent(rel));
                dirs.insert(rel.as_str());
            }
            Step::MovedAside { rel, .. } | Step::Placed { rel, .. } => {
                dirs.insert(parent(rel));
            }
            // A file's own metadata: synced with the file (see `sync`).
            Step::Retimed { .. } => {}
        }
    }
    dirs
}

impl Publish<'_> {
    /// Remove `rel` (a file, a symlink, or an empty directory) and then the
    /// directories this emptied. Missing is fine. A directory that still
    /// holds something (after the bundle's own deletions, which come
    /// first) is kept: shipper never deletes what it did not put there.
    pub fn delete(&mut self, rel: &str) -> Result<(), BeneathError> {
        self.let_go_of_dir()?;
        let (dir_comps, name) = split(rel);
        let Some(parent) = self.root.find_dir(&dir_comps)? else {
            return Ok(()); // a parent is gone: so is the path
        };
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                if !self.prune(&parent, rel, name)? {
                    tracing::warn!(
                        path = rel,
                        "a directory deleted in the source is kept: it holds entries the sender did not ship"
                    );
                    return Ok(());
                }
            }
            Ok(_) => self.move_aside(&parent, rel, name).map(drop)?,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.root.err(rel, e)),
        }
        // Prune directories the deletion emptied, deepest first, never root.
        for depth in (1..=dir_comps.len()).rev() {
            let Some(up) = self.root.find_dir(&dir_comps[..depth - 1])? else {
                break;
            };
            if !self.prune(&up, &dir_comps[..depth].join("/"), dir_comps[depth - 1])? {
                break;
            }
        }
        Ok(())
    }

    /// Move the directory `name` in `parent` aside if it is empty; false
    /// when it is not, is gone, or cannot be moved (an empty directory left
    /// behind does not fail a bundle, as it never did), which ends pruning.
    fn prune(&mut self, parent: &OwnedFd, rel: &str, name: &str) -> Result<bool, BeneathError> {
        let Ok(dir) = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) else {
            return Ok(false);
        };
        // Looked at first so that a directory still in use is never hidden,
        // even for a moment.
        if !is_empty(&dir).unwrap_or(false) {
            return Ok(false);
        }
        let Ok(kept) = self.move_aside(parent, rel, name) else {
            return Ok(false);
        };
        // Something created in it meanwhile is put back with it (`dir`
        // still refers to the moved directory).
        if !is_empty(&dir).map_err(|e| self.root.err(rel, e))? {
            op(|| rustix::fs::renameat(&self.undo, &kept, parent, name))
                .map_err(|e| self.root.err(rel, e))?;
            self.steps.pop();
            return Ok(false);
        }
        Ok(true)
    }

    /// Move `staged` (a file in `staged_dir`) to `rel` below root, making
    /// the directories above it.
    ///
    /// A file (or symlink) already at `rel` is first hard-linked into the
    /// undo directory and then replaced by one rename, so readers see the
    /// old file or the new one, never the path missing; moving it aside
    /// instead would leave the path empty between the two renames. Where no
    /// link can be made (another user's file under
    /// `fs.protected_hardlinks`, a file at its link limit) it is moved
    /// aside after all: the bundle still applies, with that short gap. A
    /// directory where the shipped tree has a file is moved aside whole:
    /// there is no way to put a file where a directory is in one step.
    ///
    /// Most files a bundle publishes are new (all of a first ship's): each
    /// is first renamed into place only if nothing is there
    /// (`RENAME_NOREPLACE`), with no look at `rel` before; what is there
    /// makes that rename fail, and is kept as above.
    pub fn publish(
        &mut self,
        rel: &str,
        staged_dir: &OwnedFd,
        staged: &str,
    ) -> Result<(), BeneathError> {
        let (dir_comps, name) = split(rel);
        let parent = self.make_dir(&dir_comps)?;
        let placed = FileId::of(staged_dir, staged)
            .map_err(|e| self.root.err(rel, e))?
            .ok_or_else(|| self.root.err(rel, Errno::NOENT))?;
        let flags = rustix::fs::RenameFlags::NOREPLACE;
        match op(|| rustix::fs::renameat_with(staged_dir, staged, &parent, name, flags)) {
            Ok(()) => {
                self.steps.push(Step::Placed {
                    rel: rel.to_owned(),
                    kept: None,
                    placed,
                });
                return Ok(());
            }
            // Something is there; or the filesystem cannot tell (then the
            // plain rename below says what else is wrong, if anything).
            Err(Errno::EXIST | Errno::INVAL | Errno::NOSYS) => {}
            Err(e) => return Err(self.root.err(rel, e)),
        }
        let kept = match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => None,
            Err(e) => return Err(self.root.err(rel, e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                self.move_aside(&parent, rel, name)?;
                None
            }
            Ok(_) => {
                let kept = self.next_name();
                match op(|| rustix::fs::linkat(&parent, name, &self.undo, &kept, AtFlags::empty()))
                {
                    Ok(()) => Some(kept),
                    Err(Errno::PERM | Errno::MLINK) => {
                        self.move_aside(&parent, rel, name)?;
                        None
                    }
                    Err(e) => return Err(self.root.err(rel, e)),
                }
            }
        };
        op(|| rustix::fs::renameat(staged_dir, staged, &parent, name))
            .map_err(|e| self.root.err(rel, e))?;
        self.steps.push(Step::Placed {
            rel: rel.to_owned(),
            kept,
            placed,
        });
        Ok(())
    }

    /// Make the directory `rel` the bundle ships, the source's mode being
    /// `shipped_mode`, or give an existing one the policy's mode and group.
    /// Anything else at `rel` (a file, a symlink: never followed) is moved
    /// aside: the shipped tree has a directory there.
    pub fn make_shipped_dir(&mut self, rel: &str, shipped_mode: u32) -> Result<(), BeneathError> {
        let mode = self.policy.dir_mode(shipped_mode);
        let (dir_comps, name) = split(rel);
        let parent = self.make_dir(&dir_comps)?;
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let (was, gid) = (st.st_mode & 0o7777, st.st_gid);
                if was == mode && self.policy.gid().is_none_or(|g| g == gid) {
                    return Ok(());
                }
                let dir = rustix::fs::openat(&parent, name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| self.root.err(rel, e))?;
                self.steps.push(Step::Moded {
                    rel: rel.to_owned(),
                    mode: was,
                    gid,
                });
                self.give_mode(&dir, rel, mode)
            }
            Ok(_) => {
                self.move_aside(&parent, rel, name)?;
                self.mkdir(&parent, rel, name, mode).map(drop)
            }
            Err(Errno::NOENT) => self.mkdir(&parent, rel, name, mode).map(drop),
            Err(e) => Err(self.root.err(rel, e)),
        }
    }

    /// Open the directory `comps` below root, making what is missing. A
    /// non-directory in the way is moved aside: the shipped tree has a
    /// directory there.
    fn make_dir(&mut self, comps: &[&str]) -> Result<Arc<OwnedFd>, BeneathError> {
        let rel = comps.join("/");
        if let Some((held, fd)) = &self.last_dir
            && *held == rel
        {
            return Ok(Arc::clone(fd));
        }
        self.let_go_of_dir()?;
        // A directory the bundle does not ship itself: the policy's mode
        // for one the sender had as 0755.
        let implicit = self.policy.dir_mode(DEFAULT_DIR_MODE);
        let mut cur = self.root.dup()?;
        for (i, c) in comps.iter().enumerate() {
            let here = comps[..=i].join("/");
            cur = match rustix::fs::openat(&cur, *c, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => self.mkdir(&cur, &here, c, implicit)?,
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    self.root.refuse_symlink(&cur, c, &here, e)?;
                    self.move_aside(&cur, &here, c)?;
                    self.mkdir(&cur, &here, c, implicit)?
                }
                Err(e) => return Err(self.root.err(&here, e)),
            };
        }
        let cur = Arc::new(cur);
        self.last_dir = Some((rel, Arc::clone(&cur)));
        Ok(cur)
    }

    /// Make the directory `name` in `parent` (which is `rel`) with `mode`
    /// and the policy's group.
    fn mkdir(
        &mut self,
        parent: &OwnedFd,
        rel: &str,
        name: &str,
        mode: u32,
    ) -> Result<OwnedFd, BeneathError> {
        // Private until given its mode and group: nothing is in it yet, so
        // nobody is kept from anything.
        op(|| rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)))
            .map_err(|e| self.root.err(rel, e))?;
        self.steps.push(Step::Made {
            rel: rel.to_owned(),
        });
        let dir = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| self.root.err(rel, e))?;
        self.give_mode(&dir, rel, mode)?;
        Ok(dir)
    }

    /// Give the directory `dir` (which is `rel`) `mode` and the policy's
    /// group, through its handle: umask never narrows it.
    fn give_mode(&self, dir: &OwnedFd, rel: &str, mode: u32) -> Result<(), BeneathError> {
        if let Some(gid) = self.policy.gid() {
            op(|| rustix::fs::fchown(dir, None, Some(Gid::from_raw(gid))))
                .map_err(|e| self.root.err(rel, e))?;
        }
        op(|| rustix::fs::fchmod(dir, Mode::from_raw_mode(mode))).map_err(|e| self.root.err(rel, e))
    }

    /// Move `name` in `parent` (which is `rel`) into the undo directory.
    fn move_aside(
        &mut self,
        parent: &OwnedFd,
        rel: &str,
        name: &str,
    ) -> Result<String, BeneathError> {
        // The directory held open may be this one, or below it.
        self.let_go_of_dir()?;
        let kept = self.next_name();
        op(|| rustix::fs::renameat(parent, name, &self.undo, &kept))
            .map_err(|e| self.root.err(rel, e))?;
        self.steps.push(Step::MovedAside {
            rel: rel.to_owned(),
            kept: kept.clone(),
        });
        Ok(kept)
    }

    /// Let go of the directory held open (`last_dir`) once it is confirmed
    /// still at its path in root. Had something else moved it meanwhile,
    /// the files published into it since would have left root unseen: an
    /// error instead, so the bundle is rolled back and taken again.
    fn let_go_of_dir(&mut self) -> Result<(), BeneathError> {
        let Some((rel, held)) = self.last_dir.take() else {
            return Ok(());
        };
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let same = |now: &OwnedFd| -> rustix::io::Result<bool> {
            let (a, b) = (rustix::fs::fstat(now)?, rustix::fs::fstat(&*held)?);
            Ok((a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
        };
        match self.root.find_dir(&comps)? {
            Some(now) if same(&now).map_err(|e| self.root.err(&rel, e))? => Ok(()),
            _ => Err(self.root.err(
                &rel,
                std::io::Error::other(
                    "moved by something else while this bundle published into it",
                ),
            )),
        }
    }

    fn next_name(&mut self) -> String {
        self.kept += 1;
        format!("k{}", self.kept)
    }

    /// Make every change durable: the last step before [`Publish::commit`],
    /// and one that may fail too. The directories the steps changed (the
    /// parent of each path changed, and each directory made or given a
    /// mode) get an fsync each when there are at most [`SYNC_EACH_MAX`];
    /// more get one `syncfs` of root's filesystem. Nothing changed, nothing
    /// to sync (a bundle of parts that completes no file).
    pub fn sync(&mut self) -> Result<(), BeneathError> {
        self.let_go_of_dir()?;
        let dirs = changed_dirs(&self.steps);
        let retimed = self.retimed();
        if dirs.len() + retimed.len() > SYNC_EACH_MAX {
            return op(|| rustix::fs::syncfs(&self.root.fd)).map_err(|e| self.root.err("", e));
        }
        for rel in retimed {
            self.sync_file(rel)?;
        }
        for rel in dirs {
            let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
            // Gone again (a directory a later step moved aside), or now a
            // symlink the bundle placed there: what changed is its entry,
            // in its parent, which is among the directories changed.
            match self.root.find_dir(&comps) {
                Ok(Some(dir)) => {
                    op(|| rustix::fs::fsync(&dir)).map_err(|e| self.root.err(rel, e))?;
                }
                Ok(None) | Err(BeneathError::Symlink { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Keep the changes: what they replaced and deleted is removed.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Undo every change, last first. Returns what could not be undone
    /// (empty when root is as it was). Whatever could not be put back is
    /// where the bundle was taking it: a deletion stays done, a file stays
    /// replaced.
    pub fn roll_back(mut self) -> Vec<BeneathError> {
        self.undo_steps()
    }

    fn undo_steps(&mut self) -> Vec<BeneathError> {
        self.last_dir = None;
        let mut failed = Vec::new();
        while let Some(step) = self.steps.pop() {
            if let Err(e) = self.undo_step(&step) {
                failed.push(e);
            }
        }
        failed
    }

    fn undo_step(&self, step: &Step) -> Result<(), BeneathError> {
        let rel = step.rel();
        let (dir_comps, name) = split(rel);
        let parent = self
            .root
            .find_dir(&dir_comps)?
            .ok_or_else(|| self.root.err(rel, Errno::NOENT))?;
        match step {
            Step::Made { .. } => op(|| rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)),
            // Over the new file in one rename: readers go back to the old one.
            Step::MovedAside { kept, .. }
            | Step::Placed {
                kept: Some(kept), ..
            } => op(|| rustix::fs::renameat(&self.undo, kept, &parent, name)),
            Step::Placed { kept: None, .. } => {
                op(|| rustix::fs::unlinkat(&parent, name, AtFlags::empty()))
            }
            Step::Moded { mode, gid, .. } => op(|| {
                let dir = rustix::fs::openat(&parent, name, DIR_FLAGS, Mode::empty())?;
                rustix::fs::fchown(&dir, None, Some(Gid::from_raw(*gid)))?;
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(*mode))
            }),
            Step::Retimed { was, .. } => op(|| was.put_back(&parent, name)),
        }
        .map_err(|e| self.root.err(rel, e))
    }
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        self.undo_steps();
        // Committed, or rolled back: the undo directory holds nothing root
        // needs. std's remove_dir_all never follows a symlink inside.
        if !self.undo_path.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.undo_path);
        }
    }
}

/// Every change to root goes through here, so that tests can make any one
/// of them fail (see `super::fault`).
pub(super) fn op<T>(f: impl FnOnce() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    #[cfg(test)]
    super::fault::check()?;
    f()
}

fn is_empty(dir: &OwnedFd) -> rustix::io::Result<bool> {
    for e in rustix::fs::Dir::read_from(dir)? {
        let n = e?.file_name().to_bytes().to_owned();
        if n != b"." && n != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
#[path = "publish_tests.rs"]
pub(super) mod tests;
