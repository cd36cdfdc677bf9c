//! Writing and deleting below a root directory through directory handles
//! that never follow symlinks, all or nothing per bundle.
//!
//! Every path is walked one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`, and entries are placed and moved
//! with `renameat`/`linkat` relative to their parent's handle. A symlink
//! planted anywhere inside root (by someone else, or swapped in while we
//! work) therefore cannot redirect a write or a deletion outside root: it
//! is refused. Paths given here have already passed
//! [`crate::paths::validate`].
//!
//! A bundle's changes go through one [`Publish`]. Nothing it replaces or
//! deletes is destroyed until [`Publish::commit`]: a replaced file is kept
//! as a hard link, a deleted entry (a whole directory at once) is moved, into
//! an undo directory outside root on its filesystem, and every step is
//! recorded. When a step fails, [`Publish::roll_back`] walks the record
//! backwards and root is again exactly what it was, the same inodes.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

#[derive(Debug, thiserror::Error)]
pub enum BeneathError {
    #[error("{path}: is a symlink; refusing to write or delete through it")]
    Symlink { path: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// A root directory, held open.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

impl Root {
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::RDONLY,
            Mode::empty(),
        )?;
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    fn err(&self, rel: &str, e: impl Into<io::Error>) -> BeneathError {
        BeneathError::Io {
            path: self.path.join(rel),
            source: e.into(),
        }
    }

    fn dup(&self) -> Result<OwnedFd, BeneathError> {
        rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(|e| self.err("", e))
    }

    /// Open the directory `comps` below root without changing anything.
    /// `None` when a component is missing or not a directory.
    fn find_dir(&self, comps: &[&str]) -> Result<Option<OwnedFd>, BeneathError> {
        let mut cur = self.dup()?;
        for (i, c) in comps.iter().enumerate() {
            cur = match rustix::fs::openat(&cur, *c, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    self.refuse_symlink(&cur, c, &comps[..=i].join("/"), e)?;
                    return Ok(None);
                }
                Err(e) => return Err(self.err(&comps[..=i].join("/"), e)),
            };
        }
        Ok(Some(cur))
    }

    /// Opening `name` in `parent` as a directory failed with `e`: refuse it
    /// if it is a symlink; anything else is a non-directory.
    fn refuse_symlink(
        &self,
        parent: &OwnedFd,
        name: &str,
        here: &str,
        e: Errno,
    ) -> Result<(), BeneathError> {
        let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|_| self.err(here, e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => Err(BeneathError::Symlink {
                path: here.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Refuse `rel` if any directory above it inside root is a symlink,
    /// without changing anything: the check run on every path of a bundle
    /// before its first change, so the usual refusal has nothing to undo.
    pub fn check(&self, rel: &str) -> Result<(), BeneathError> {
        let (dir_comps, _) = split(rel);
        self.find_dir(&dir_comps).map(|_| ())
    }

    /// Start changing root. `undo` is made to keep what the changes replace
    /// or delete: a new directory outside root on root's filesystem (so
    /// entries move there by rename, never by copy).
    pub fn begin(&self, undo: &Path) -> Result<Publish<'_>, BeneathError> {
        let io = |e: io::Error| BeneathError::Io {
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
/// of them fail (see `fault`).
fn op<T>(f: impl FnOnce() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    #[cfg(test)]
    fault::check()?;
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

fn split(rel: &str) -> (Vec<&str>, &str) {
    let mut comps: Vec<&str> = rel.split('/').collect();
    let name = comps.pop().unwrap_or_default();
    (comps, name)
}

/// Open a directory by path for use as a `publish` source.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        path,
        OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?)
}

/// Faults for tests: the changes to root made on this thread are counted,
/// and the one numbered `at` (from 1) fails, or with `sticky` that one and
/// every one after it, roll-back included, as if the process had died there.
/// And [`fault::snapshot`], to tell whether root is exactly as it was.
#[cfg(test)]
pub(crate) mod fault {
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use rustix::io::Errno;

    #[derive(Clone, Copy)]
    struct Plan {
        done: usize,
        at: Option<usize>,
        sticky: bool,
        errno: Errno,
    }

    thread_local! {
        static PLAN: Cell<Plan> = const {
            Cell::new(Plan { done: 0, at: None, sticky: false, errno: Errno::IO })
        };
    }

    /// Start counting from zero, failing change `at` with `errno`.
    pub fn arm(at: Option<usize>, errno: Errno, sticky: bool) {
        PLAN.set(Plan {
            done: 0,
            at,
            sticky,
            errno,
        });
    }

    /// Changes attempted since [`arm`].
    pub fn count() -> usize {
        PLAN.get().done
    }

    /// Every entry below `dir` with its inode, mode and content (a
    /// symlink's target): equal snapshots hold the very same entries.
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

    pub(super) fn check() -> rustix::io::Result<()> {
        let mut p = PLAN.get();
        p.done += 1;
        PLAN.set(p);
        match p.at {
            Some(at) if p.done == at || (p.sticky && p.done > at) => Err(p.errno),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fault::snapshot;
    use super::*;
    use std::collections::BTreeMap;

    fn setup() -> (tempfile::TempDir, Root, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("root")).unwrap();
        std::fs::create_dir_all(t.path().join("stage")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        let root = Root::open(&t.path().join("root")).unwrap();
        let stage = open_dir_path(&t.path().join("stage")).unwrap();
        (t, root, stage)
    }

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
    fn a_symlink_inside_root_cannot_redirect_a_write_or_a_delete() {
        let (t, root, stage) = setup();
        std::fs::write(t.path().join("outside/victim"), "keep").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("root/link")).unwrap();
        std::fs::write(t.path().join("stage/f0"), "evil").unwrap();
        let mut p = root.begin(&t.path().join("undo")).unwrap();
        let e = p.publish("link/victim", &stage, "f0").unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e}");
        let e = p.delete("link/victim").unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e}");
        assert_eq!(
            std::fs::read(t.path().join("outside/victim")).unwrap(),
            b"keep"
        );
        // Deleting the symlink itself removes the link, not its target.
        p.delete("link").unwrap();
        p.commit();
        assert!(t.path().join("outside/victim").exists());
        assert!(!t.path().join("root/link").exists());
    }

    #[test]
    fn deleting_a_tree_with_a_symlink_inside_leaves_the_target_alone() {
        let (t, root, _stage) = setup();
        std::fs::write(t.path().join("outside/victim"), "keep").unwrap();
        std::fs::create_dir_all(t.path().join("root/d/e")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("root/d/e/out"))
            .unwrap();
        let mut p = root.begin(&t.path().join("undo")).unwrap();
        p.delete("d").unwrap();
        p.commit();
        assert!(!t.path().join("root/d").exists());
        assert_eq!(
            std::fs::read(t.path().join("outside/victim")).unwrap(),
            b"keep"
        );
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

    /// A symlink swapped in after [`Root::check`] passed made the publish
    /// fail with the bundle's earlier changes left in root.
    #[test]
    fn a_symlink_planted_after_the_check_is_refused_and_everything_put_back() {
        let (t, root, stage) = setup();
        let r = t.path().join("root");
        std::fs::create_dir_all(r.join("d")).unwrap();
        std::fs::write(r.join("old"), "old").unwrap();
        std::fs::write(r.join("gone"), "gone").unwrap();
        for (f, body) in [("f0", "new old"), ("f1", "new x"), ("f2", "evil")] {
            std::fs::write(t.path().join("stage").join(f), body).unwrap();
        }
        root.check("d/y").unwrap();
        let was = snapshot(&r);
        let mut p = root.begin(&t.path().join("undo")).unwrap();
        p.delete("gone").unwrap();
        p.publish("old", &stage, "f0").unwrap();
        p.publish("new/x", &stage, "f1").unwrap();
        std::fs::remove_dir(r.join("d")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), r.join("d")).unwrap();
        let e = p.publish("d/y", &stage, "f2").unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e}");
        let failed = p.roll_back();
        assert!(failed.is_empty(), "{failed:?}");
        // As before, but for the symlink someone else planted.
        let mut now = snapshot(&r);
        assert!(now.remove("d").unwrap().2.starts_with("-> "));
        let mut was = was;
        was.remove("d");
        assert_eq!(now, was);
        assert!(!t.path().join("outside/y").exists());
        assert!(!t.path().join("undo").exists(), "undo kept after roll-back");
    }

    /// A publish that failed part-way left root half-changed. Root: a file
    /// replaced, a file deleted with the directories it empties, a whole
    /// directory deleted, a directory where a file goes, a file where a
    /// directory goes, a symlink replaced, new files in new directories.
    /// Every change, and the final sync, is made to fail in turn.
    #[test]
    fn a_fault_at_any_step_puts_root_back_exactly() {
        /// The result, the changes counted, and whether directories the
        /// deletion emptied are gone.
        fn run(fail_at: Option<usize>, errno: Errno) -> (Result<(), BeneathError>, usize, bool) {
            let (t, root, stage) = setup();
            let r = t.path().join("root");
            for (rel, body) in [
                ("a.html", "old a"),
                ("deep/er/gone.html", "gone"),
                ("tree/x/y.html", "tree"),
                ("tree/z.html", "tree"),
                ("dirfile/in.html", "dir becomes a file"),
                ("filedir", "file becomes a dir"),
                ("keep/stay.html", "stays"),
            ] {
                std::fs::create_dir_all(r.join(rel).parent().unwrap()).unwrap();
                std::fs::write(r.join(rel), body).unwrap();
            }
            std::os::unix::fs::symlink("a.html", r.join("keep/link")).unwrap();
            let staged = [
                ("a.html", "new a"),
                ("dirfile", "a file now"),
                ("filedir/in.html", "below a former file"),
                ("keep/link", "a file over a symlink"),
                ("n/e/w.html", "new"),
            ];
            for (i, (_, body)) in staged.iter().enumerate() {
                std::fs::write(t.path().join(format!("stage/f{i}")), body).unwrap();
            }
            let was = snapshot(&r);
            fault::arm(fail_at, errno, false);
            let mut p = root.begin(&t.path().join("undo")).unwrap();
            let result = (|| {
                p.delete("deep/er/gone.html")?;
                p.delete("tree")?;
                for (i, (rel, _)) in staged.iter().enumerate() {
                    p.publish(rel, &stage, &format!("f{i}"))?;
                }
                p.sync()
            })();
            let ops = fault::count();
            match &result {
                Ok(()) => {
                    p.commit();
                    let now = util_tree(&r);
                    let want: BTreeMap<String, String> = staged
                        .iter()
                        .map(|(rel, body)| (rel.to_string(), body.to_string()))
                        .chain([("keep/stay.html".into(), "stays".into())])
                        .collect();
                    assert_eq!(now, want, "fault at {fail_at:?}");
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
        fn util_tree(dir: &Path) -> BTreeMap<String, String> {
            snapshot(dir)
                .into_iter()
                .filter(|(_, (_, mode, _))| mode & 0o170000 == 0o100000)
                .map(|(rel, (_, _, body))| (rel, body))
                .collect()
        }

        let (ok, steps, pruned) = run(None, Errno::IO);
        ok.unwrap();
        assert!(pruned, "emptied directories kept");
        assert!(steps > 15, "only {steps} changes counted");
        let mut kept_empty = 0;
        for at in 1..=steps {
            match run(Some(at), Errno::IO) {
                (Err(_), _, _) => {}
                // Pruning is the one change allowed to fail: an emptied
                // directory stays (deep/er, or deep).
                (Ok(()), _, false) => kept_empty += 1,
                (Ok(()), _, true) => panic!("a fault at change {at} went unnoticed"),
            }
        }
        assert_eq!(kept_empty, 2);
        for errno in [Errno::NOSPC, Errno::ACCESS] {
            assert!(run(Some(steps / 2), errno).0.is_err());
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
