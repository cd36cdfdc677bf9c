//! Undoing a publish long after it was committed: [`Publish::keep`] keeps
//! what a bundle's changes replaced and deleted, with the record of those
//! changes, as a directory of its own (a *record*) instead of discarding
//! them; [`undo_kept`] puts root back as it was before them, from the
//! record, and can be run again after a crash part-way.
//!
//! A record holds the undo directory's entries (hard links of replaced
//! files, entries moved aside whole) and `steps.json`, the changes in the
//! order made. Undoing walks them backwards, each change at most once in
//! effect however often it is run: a kept entry already put back is gone
//! from the record; a directory already removed is missing; a placed file
//! is removed or replaced only while `rel` is still the very file placed
//! (its inode), so nothing put there since, by shipper or anyone, is ever
//! deleted. A change that cannot be undone for that reason is reported and
//! left as it is. Root is changed only through handles that never follow
//! symlinks, like every publish.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, RenameFlags};
use rustix::io::Errno;

use super::links::{DIR as LINK_DIR, link_dir};
use super::publish::{FileId, Publish, Step, op};
use super::root::{BeneathError, DIR_FLAGS, Root, open_dir_path, split};

/// The changes of a record, in the order made.
pub const RECORD_STEPS: &str = "steps.json";

/// How an undo puts back what a record kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Moved out of the record into root: the very entries come back, and
    /// a replaced file comes back by one rename over the newer one. For a
    /// root readers see.
    Move,
    /// Hard-linked from the record (a directory as a new tree of links),
    /// the record left whole: for a snapshot no reader sees yet, which a
    /// crash may throw away, so the record must still hold everything.
    Link,
}

impl Publish<'_> {
    /// Keep the changes, and what they replaced and deleted, as the new
    /// directory `record` (on root's filesystem; its parent must exist),
    /// with the files `with` (name, content) beside the steps. Durable when
    /// it returns: the record can undo the changes after any crash.
    pub fn keep(mut self, record: &Path, with: &[(&str, &[u8])]) -> Result<(), BeneathError> {
        let undo = self.undo_path.clone();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |e: std::io::Error| BeneathError::Io { path, source: e }
        };
        let steps = serde_json::to_vec(&self.steps).map_err(|e| io(&undo)(e.into()))?;
        for (name, content) in [(RECORD_STEPS, steps.as_slice())]
            .into_iter()
            .chain(with.iter().copied())
        {
            let path = undo.join(name);
            std::fs::File::create_new(&path)
                .and_then(|mut f| f.write_all(content).and_then(|()| f.sync_all()))
                .map_err(io(&path))?;
        }
        rustix::fs::fsync(&self.undo).map_err(|e| io(&undo)(e.into()))?;
        std::fs::rename(&undo, record).map_err(io(record))?;
        let parent = record.parent().unwrap_or(Path::new("/"));
        crate::durable::sync_dir(parent).map_err(io(parent))?;
        // Kept: nothing to undo now, nothing to remove when dropped.
        self.steps.clear();
        self.undo_path = Default::default();
        Ok(())
    }
}

/// The changes `record` keeps, in the order made.
fn read_steps(record: &Path) -> Result<Vec<Step>, BeneathError> {
    let io = |e: std::io::Error| BeneathError::Io {
        path: record.join(RECORD_STEPS),
        source: e,
    };
    let bytes = std::fs::read(record.join(RECORD_STEPS)).map_err(io)?;
    serde_json::from_slice(&bytes).map_err(|e| io(e.into()))
}

/// The paths an undo of `record` brings an entry back to (a file the
/// bundle replaced or an entry it deleted, a directory with what is below
/// it): what root holds there afterwards may be older than the source.
pub fn restores(record: &Path) -> Result<Vec<String>, BeneathError> {
    Ok(read_steps(record)?
        .iter()
        .filter(|s| {
            matches!(
                s,
                Step::MovedAside { .. } | Step::Placed { kept: Some(_), .. }
            )
        })
        .map(|s| s.rel().to_owned())
        .collect())
}

/// Put root back as it was before the changes `record` keeps (see
/// [`Publish::keep`]), last change first, and sync root's filesystem.
/// Returns the changes left as they are, each naming its path and why:
/// what was put at that path since is never touched. Running it again
/// after it stopped part-way (an error, a crash) finishes it. The record
/// itself is left for the caller to remove.
pub fn undo_kept(root: &Root, record: &Path, how: Restore) -> Result<Vec<String>, BeneathError> {
    let steps = read_steps(record)?;
    let kept = open_dir_path(record).map_err(|e| BeneathError::Io {
        path: record.to_owned(),
        source: e,
    })?;
    let mut left = Vec::new();
    for step in steps.iter().rev() {
        if let Some(why) = in_the_way(step.rel(), undo_one(root, (&kept, how), step))? {
            left.push(why);
        }
    }
    op(|| rustix::fs::syncfs(&root.fd)).map_err(|e| root.err("", e))?;
    Ok(left)
}

/// A change that cannot be undone because root changed in its way since
/// (a symlink, or a file where a directory was, on the path): left as it
/// is and reported, like one changed since; any other error stops the undo.
fn in_the_way(
    rel: &str,
    undone: Result<Option<String>, BeneathError>,
) -> Result<Option<String>, BeneathError> {
    let blocked =
        |e: &std::io::Error| matches!(Errno::from_io_error(e), Some(Errno::LOOP | Errno::NOTDIR));
    match undone {
        Err(BeneathError::Symlink { path }) => Ok(Some(format!(
            "{rel}: {path} is a symlink now; left as it is"
        ))),
        Err(BeneathError::Io { source, .. }) if blocked(&source) => Ok(Some(format!(
            "{rel}: something on its path is no longer a directory; left as it is"
        ))),
        other => other,
    }
}

/// Undo one kept change if it is not undone yet; `Some(why)` when it is
/// left as it is.
fn undo_one(
    root: &Root,
    (kept, how): (&OwnedFd, Restore),
    step: &Step,
) -> Result<Option<String>, BeneathError> {
    let rel = step.rel();
    let (dir_comps, name) = split(rel);
    let Some(parent) = root.find_dir(&dir_comps)? else {
        return Ok(match step {
            // Its directory is gone: so is what was made or placed there.
            Step::Made { .. } | Step::Placed { kept: None, .. } => None,
            _ => Some(format!("{rel}: its directory is gone")),
        });
    };
    let at = (&parent, name);
    match step {
        Step::Made { .. } => match op(|| rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)) {
            // Removed already; or not a directory now (what an earlier
            // change of the bundle moved aside is back there).
            Ok(()) | Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(Errno::NOTEMPTY | Errno::EXIST) => Ok(Some(format!(
                "{rel}: a directory the bundle made now holds entries it did not ship; kept"
            ))),
            Err(e) => Err(root.err(rel, e)),
        },
        Step::MovedAside { kept: k, .. } => put_back((kept, k, how), at).map_err(|e| root.err(rel, e)).map(
            |done| {
                (!done).then(|| {
                    format!("{rel}: something was put there since; the entry deleted from there is not put back")
                })
            },
        ),
        Step::Placed { kept: k, placed, .. } => unplace((kept, k.as_deref(), how), placed, at)
            .map_err(|e| root.err(rel, e))
            .map(|done| {
                (!done).then(|| {
                    format!("{rel}: changed since the bundle placed it; its earlier version is not put back")
                })
            }),
        Step::Moded { mode, gid, .. } => {
            match rustix::fs::openat(&parent, name, DIR_FLAGS, Mode::empty()) {
                Ok(dir) => op(|| {
                    rustix::fs::fchown(&dir, None, Some(Gid::from_raw(*gid)))?;
                    rustix::fs::fchmod(&dir, Mode::from_raw_mode(*mode))
                })
                .map(|()| None)
                .map_err(|e| root.err(rel, e)),
                Err(Errno::NOENT) => Ok(None),
                Err(e) => Err(root.err(rel, e)),
            }
        }
        // Records for snapshots have none (a kept file is copied there):
        // a file shared with older snapshots is never changed in place.
        Step::Retimed { .. } if how == Restore::Link => Ok(Some(format!(
            "{rel}: its earlier mode and mtime are not put back in a snapshot, whose files older ones share"
        ))),
        Step::Retimed { was, .. } => match op(|| was.put_back(&parent, name)) {
            Ok(()) | Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(root.err(rel, e)),
        },
    }
}

/// The inode of `name` in `dir`, if there is such an entry.
fn inode(dir: &OwnedFd, name: &str) -> rustix::io::Result<Option<u64>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st.st_ino)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Put the entry `k` of the record back at `name` in `parent`, where the
/// bundle deleted it. False when something else is there now (left).
fn put_back(
    (kept, k, how): (&OwnedFd, &str, Restore),
    (parent, name): (&OwnedFd, &str),
) -> rustix::io::Result<bool> {
    let Some(k_ino) = inode(kept, k)? else {
        return Ok(true); // moved back already
    };
    if how == Restore::Link {
        return match inode(parent, name)? {
            None => op(|| link_entry(kept, k, parent, name)).map(|()| true),
            Some(here) => Ok(here == k_ino),
        };
    }
    match op(|| rustix::fs::renameat_with(kept, k, parent, name, RenameFlags::NOREPLACE)) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Undo placing the file `placed` at `name` in `parent`: put back the
/// entry `k` of the record it replaced, or remove it. False when the
/// placed file was replaced, changed or deleted since and something is
/// left to put back (left as it is).
fn unplace(
    (kept, k, how): (&OwnedFd, Option<&str>, Restore),
    placed: &FileId,
    (parent, name): (&OwnedFd, &str),
) -> rustix::io::Result<bool> {
    let k = match k {
        Some(k) => inode(kept, k)?.map(|k_ino| (k, k_ino)),
        None => None,
    };
    let here = FileId::of(parent, name)?;
    if k.is_some_and(|(_, k_ino)| here.map(|h| h.ino()) == Some(k_ino)) {
        return Ok(true); // put back already (linked)
    }
    if here.as_ref() != Some(placed) {
        // Undone already, with nothing left to put back; or changed since.
        return Ok(k.is_none());
    }
    match (k, how) {
        // Over the placed file in one rename: readers go back to the old one.
        (Some((k, _)), Restore::Move) => op(|| rustix::fs::renameat(kept, k, parent, name)),
        (Some((k, _)), Restore::Link) => op(|| {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
            rustix::fs::linkat(kept, k, parent, name, AtFlags::empty())
        }),
        (None, _) => op(|| rustix::fs::unlinkat(parent, name, AtFlags::empty())),
    }
    .map(|()| true)
}

/// Hard-link the entry `k` of the record (a directory: as a new tree of
/// links) to `name` in `parent`.
fn link_entry(kept: &OwnedFd, k: &str, parent: &OwnedFd, name: &str) -> rustix::io::Result<()> {
    let st = rustix::fs::statat(kept, k, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::linkat(kept, k, parent, name, AtFlags::empty());
    }
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
    let from = rustix::fs::openat(kept, k, LINK_DIR, Mode::empty())?;
    let to = rustix::fs::openat(parent, name, LINK_DIR, Mode::empty())?;
    link_dir(&from, &to)
}

#[cfg(test)]
#[path = "undo_tests.rs"]
mod tests;
