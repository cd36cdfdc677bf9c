//! [`Publish`]: the changes one bundle makes below root, all or nothing.
//!
//! Nothing it replaces or deletes is destroyed until [`Publish::commit`]: a
//! replaced file is kept as a hard link, a deleted entry (a whole directory
//! at once) is moved, into an undo directory outside root on its
//! filesystem, and every step is recorded. When a step fails,
//! [`Publish::roll_back`] walks the record backwards and root is again
//! exactly what it was, the same inodes. Every change is made relative to
//! a parent opened by [`Root`], never through a symlink.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;

use super::root::{BeneathError, DIR_FLAGS, Root, open_dir_path, split};

// Root's one way to change anything, kept with what it starts: the
// walking in root.rs needs nothing of this file.
impl Root {
    /// Start changing root. `undo` is made to keep what the changes replace
    /// or delete: a new directory outside root on root's filesystem (so
    /// entries move there by rename, never by copy).
    pub fn begin(&self, undo: &Path) -> Result<Publish<'_>, BeneathError> {
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
        })
    }
}

/// The changes one bundle makes to root, each undoable until
/// [`Publish::commit`]. Dropped uncommitted (a panic), it rolls back.
pub struct Publish<'r> {
    root: &'r Root,
    undo: OwnedFd,
    undo_path: PathBuf,
    /// What was done, in order; each step names the path it changed, whose
    /// parent is opened again (never following a symlink) to undo it.
    steps: Vec<Step>,
    /// Names given in `undo` so far.
    kept: u64,
}

#[derive(Debug)]
enum Step {
    /// Made the directory `rel`, where nothing was.
    Made { rel: String },
    /// Moved the entry at `rel` to `kept` in the undo directory.
    MovedAside { rel: String, kept: String },
    /// Renamed a staged file to `rel`; `kept` in the undo directory is a
    /// hard link to the entry it replaced, if there was one.
    Placed { rel: String, kept: Option<String> },
}

impl Publish<'_> {
    /// Remove `rel` (a file, a symlink, or a whole directory) and then the
    /// directories this emptied. Missing is fine.
    pub fn delete(&mut self, rel: &str) -> Result<(), BeneathError> {
        let (dir_comps, name) = split(rel);
        let Some(parent) = self.root.find_dir(&dir_comps)? else {
            return Ok(()); // a parent is gone: so is the path
        };
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            // Whatever it is, it goes aside whole: a directory in one rename.
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
    pub fn publish(
        &mut self,
        rel: &str,
        staged_dir: &OwnedFd,
        staged: &str,
    ) -> Result<(), BeneathError> {
        let (dir_comps, name) = split(rel);
        let parent = self.make_dir(&dir_comps)?;
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
        });
        Ok(())
    }

    /// Open the directory `comps` below root, making what is missing. A
    /// non-directory in the way is moved aside: the shipped tree has a
    /// directory there.
    fn make_dir(&mut self, comps: &[&str]) -> Result<OwnedFd, BeneathError> {
        let mut cur = self.root.dup()?;
        for (i, c) in comps.iter().enumerate() {
            let here = comps[..=i].join("/");
            cur = match rustix::fs::openat(&cur, *c, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => self.mkdir(&cur, &here, c)?,
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    self.root.refuse_symlink(&cur, c, &here, e)?;
                    self.move_aside(&cur, &here, c)?;
                    self.mkdir(&cur, &here, c)?
                }
                Err(e) => return Err(self.root.err(&here, e)),
            };
        }
        Ok(cur)
    }

    fn mkdir(&mut self, parent: &OwnedFd, rel: &str, name: &str) -> Result<OwnedFd, BeneathError> {
        op(|| rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)))
            .map_err(|e| self.root.err(rel, e))?;
        self.steps.push(Step::Made {
            rel: rel.to_owned(),
        });
        rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| self.root.err(rel, e))
    }

    /// Move `name` in `parent` (which is `rel`) into the undo directory.
    fn move_aside(
        &mut self,
        parent: &OwnedFd,
        rel: &str,
        name: &str,
    ) -> Result<String, BeneathError> {
        let kept = self.next_name();
        op(|| rustix::fs::renameat(parent, name, &self.undo, &kept))
            .map_err(|e| self.root.err(rel, e))?;
        self.steps.push(Step::MovedAside {
            rel: rel.to_owned(),
            kept: kept.clone(),
        });
        Ok(kept)
    }

    fn next_name(&mut self) -> String {
        self.kept += 1;
        format!("k{}", self.kept)
    }

    /// Make every change durable, in one `syncfs` for the whole bundle:
    /// the last step before [`Publish::commit`], and one that may fail too.
    pub fn sync(&mut self) -> Result<(), BeneathError> {
        op(|| rustix::fs::syncfs(&self.root.fd)).map_err(|e| self.root.err("", e))
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
        let mut failed = Vec::new();
        while let Some(step) = self.steps.pop() {
            if let Err(e) = self.undo_step(&step) {
                failed.push(e);
            }
        }
        failed
    }

    fn undo_step(&self, step: &Step) -> Result<(), BeneathError> {
        let (Step::Made { rel } | Step::MovedAside { rel, .. } | Step::Placed { rel, .. }) = step;
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
        }
        .map_err(|e| self.root.err(rel, e))
    }
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        self.undo_steps();
        // Committed, or rolled back: the undo directory holds nothing root
        // needs. std's remove_dir_all never follows a symlink inside.
        let _ = std::fs::remove_dir_all(&self.undo_path);
    }
}

/// Every change to root goes through here, so that tests can make any one
/// of them fail (see `super::fault`).
fn op<T>(f: impl FnOnce() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
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
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::beneath::fault::{self, snapshot};
    use crate::beneath::root::tests::setup;

    #[test]
    fn publish_creates_parents_and_replaces_a_directory_in_the_way() {
        let (t, root, stage) = setup();
        std::fs::create_dir_all(t.path().join("root/a/b/c")).unwrap();
        std::fs::write(t.path().join("root/a/b/c/x"), "old").unwrap();
        std::fs::write(t.path().join("stage/f0"), "new").unwrap();
        std::fs::write(t.path().join("stage/f1"), "deep").unwrap();
        let mut p = root.begin(&t.path().join("undo")).unwrap();
        p.publish("a/b", &stage, "f0").unwrap();
        p.publish("n/e/w.txt", &stage, "f1").unwrap();
        p.sync().unwrap();
        p.commit();
        assert_eq!(std::fs::read(t.path().join("root/a/b")).unwrap(), b"new");
        assert_eq!(
            std::fs::read(t.path().join("root/n/e/w.txt")).unwrap(),
            b"deep"
        );
        assert!(!t.path().join("undo").exists(), "undo kept after commit");
    }

    #[test]
    fn delete_prunes_emptied_directories_but_never_root() {
        let (t, root, _stage) = setup();
        std::fs::create_dir_all(t.path().join("root/a/b")).unwrap();
        std::fs::write(t.path().join("root/a/b/f"), "x").unwrap();
        std::fs::write(t.path().join("root/keep"), "x").unwrap();
        let mut p = root.begin(&t.path().join("undo")).unwrap();
        p.delete("a/b/f").unwrap();
        p.delete("missing/x").unwrap();
        p.commit();
        assert!(!t.path().join("root/a").exists());
        assert!(t.path().join("root").exists());
    }

    /// Root before the fault test's bundle: a file it replaces, a file it
    /// deletes with the directories that empties, a whole directory it
    /// deletes, a directory where it puts a file, a file where it puts a
    /// directory, and a file it leaves alone (with a symlink it replaces).
    const BEFORE: [(&str, &str); 7] = [
        ("a.html", "old a"),
        ("deep/er/gone.html", "gone"),
        ("tree/x/y.html", "tree"),
        ("tree/z.html", "tree"),
        ("dirfile/in.html", "dir becomes a file"),
        ("filedir", "file becomes a dir"),
        ("keep/stay.html", "stays"),
    ];
    /// What the fault test's bundle publishes, staged as `f0`, `f1`, ...
    const STAGED: [(&str, &str); 5] = [
        ("a.html", "new a"),
        ("dirfile", "a file now"),
        ("filedir/in.html", "below a former file"),
        ("keep/link", "a file over a symlink"),
        ("n/e/w.html", "new"),
    ];

    /// Make root as [`BEFORE`] (and `keep/link`) and stage [`STAGED`].
    fn plant_fault_tree(t: &Path) {
        let r = t.join("root");
        for (rel, body) in BEFORE {
            std::fs::create_dir_all(r.join(rel).parent().unwrap()).unwrap();
            std::fs::write(r.join(rel), body).unwrap();
        }
        std::os::unix::fs::symlink("a.html", r.join("keep/link")).unwrap();
        for (i, (_, body)) in STAGED.iter().enumerate() {
            std::fs::write(t.join(format!("stage/f{i}")), body).unwrap();
        }
    }

    /// The fault test's bundle: its two deletions, then [`STAGED`], then
    /// the sync.
    fn make_changes(p: &mut Publish, stage: &OwnedFd) -> Result<(), BeneathError> {
        p.delete("deep/er/gone.html")?;
        p.delete("tree")?;
        for (i, (rel, _)) in STAGED.iter().enumerate() {
            p.publish(rel, stage, &format!("f{i}"))?;
        }
        p.sync()
    }

    /// The regular files below `dir` with their content.
    fn files(dir: &Path) -> BTreeMap<String, String> {
        snapshot(dir)
            .into_iter()
            .filter(|(_, (_, mode, _))| mode & 0o170000 == 0o100000)
            .map(|(rel, (_, _, body))| (rel, body))
            .collect()
    }

    /// Apply the fault test's bundle with change `fail_at` failing with
    /// `errno`, and check root is what the bundle makes it, or, when it
    /// failed, exactly what it was. Returns the result, the changes
    /// counted, and whether directories the deletion emptied are gone.
    fn run_with_fault(
        fail_at: Option<usize>,
        errno: Errno,
    ) -> (Result<(), BeneathError>, usize, bool) {
        let (t, root, stage) = setup();
        let r = t.path().join("root");
        plant_fault_tree(t.path());
        let was = snapshot(&r);
        fault::arm(fail_at, errno, false);
        let mut p = root.begin(&t.path().join("undo")).unwrap();
        let result = make_changes(&mut p, &stage);
        let ops = fault::count();
        match &result {
            Ok(()) => {
                p.commit();
                let want: BTreeMap<String, String> = STAGED
                    .iter()
                    .map(|(rel, body)| (rel.to_string(), body.to_string()))
                    .chain([("keep/stay.html".into(), "stays".into())])
                    .collect();
                assert_eq!(files(&r), want, "fault at {fail_at:?}");
                assert!(!r.join("tree").exists());
            }
            Err(_) => {
                let failed = p.roll_back();
                assert!(failed.is_empty(), "at {fail_at:?}: {failed:?}");
                assert_eq!(snapshot(&r), was, "root changed, fault at {fail_at:?}");
            }
        }
        fault::arm(None, Errno::IO, false);
        assert!(!t.path().join("undo").exists());
        (result, ops, !r.join("deep").exists())
    }

    /// A publish that failed part-way left root half-changed. Every change
    /// of the bundle in [`BEFORE`]/[`STAGED`], and the final sync, is made
    /// to fail in turn.
    #[test]
    fn a_fault_at_any_step_puts_root_back_exactly() {
        let (ok, steps, pruned) = run_with_fault(None, Errno::IO);
        ok.unwrap();
        assert!(pruned, "emptied directories kept");
        assert!(steps > 15, "only {steps} changes counted");
        let mut kept_empty = 0;
        for at in 1..=steps {
            match run_with_fault(Some(at), Errno::IO) {
                (Err(_), _, _) => {}
                // Pruning is the one change allowed to fail: an emptied
                // directory stays (deep/er, or deep).
                (Ok(()), _, false) => kept_empty += 1,
                (Ok(()), _, true) => panic!("a fault at change {at} went unnoticed"),
            }
        }
        assert_eq!(kept_empty, 2);
        for errno in [Errno::NOSPC, Errno::ACCESS] {
            assert!(run_with_fault(Some(steps / 2), errno).0.is_err());
        }
    }

    /// Under `fs.protected_hardlinks` a file of another user cannot be
    /// linked: it is moved aside instead, and the bundle still applies (and
    /// still rolls back).
    #[test]
    fn a_file_that_cannot_be_linked_is_moved_aside_instead() {
        let (t, root, stage) = setup();
        let r = t.path().join("root");
        std::fs::write(r.join("a.html"), "old").unwrap();
        std::fs::write(t.path().join("stage/f0"), "new").unwrap();
        std::fs::write(t.path().join("stage/f1"), "new b").unwrap();
        let was = snapshot(&r);
        // Change 1 is the link of a.html.
        fault::arm(Some(1), Errno::PERM, false);
        let mut p = root.begin(&t.path().join("undo")).unwrap();
        p.publish("a.html", &stage, "f0").unwrap();
        fault::arm(Some(1), Errno::IO, false);
        p.publish("b/b.html", &stage, "f1").unwrap_err();
        assert!(p.roll_back().is_empty());
        assert_eq!(snapshot(&r), was);
        std::fs::write(t.path().join("stage/f0"), "new").unwrap();
        fault::arm(Some(1), Errno::PERM, false);
        let mut p = root.begin(&t.path().join("undo")).unwrap();
        p.publish("a.html", &stage, "f0").unwrap();
        p.commit();
        fault::arm(None, Errno::IO, false);
        assert_eq!(std::fs::read(r.join("a.html")).unwrap(), b"new");
    }
}
