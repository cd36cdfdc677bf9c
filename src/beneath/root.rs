//! A root directory held open, and paths below it walked one component at
//! a time with `openat(O_DIRECTORY | O_NOFOLLOW)`, so that a symlink
//! anywhere inside root is refused, never followed. Looks only: every
//! change to root goes through [`super::Publish`].

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
    pub(super) fd: OwnedFd,
    path: PathBuf,
}

/// How every directory below root is opened: never through a symlink.
pub(super) const DIR_FLAGS: OFlags = OFlags::DIRECTORY
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

    /// `e` as it concerns `rel` below root.
    pub(super) fn err(&self, rel: &str, e: impl Into<io::Error>) -> BeneathError {
        BeneathError::Io {
            path: self.path.join(rel),
            source: e.into(),
        }
    }

    /// A handle of root itself, to walk down from.
    pub(super) fn dup(&self) -> Result<OwnedFd, BeneathError> {
        rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(|e| self.err("", e))
    }

    /// Open the directory `comps` below root without changing anything.
    /// `None` when a component is missing or not a directory.
    pub(super) fn find_dir(&self, comps: &[&str]) -> Result<Option<OwnedFd>, BeneathError> {
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
    pub(super) fn refuse_symlink(
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
}

/// `rel` as the directories above it and its own name.
pub(super) fn split(rel: &str) -> (Vec<&str>, &str) {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::beneath::fault::snapshot;

    /// A temp dir with `root`, `stage` and `outside` in it; root opened,
    /// stage opened as a publish source.
    pub(in crate::beneath) fn setup() -> (tempfile::TempDir, Root, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("root")).unwrap();
        std::fs::create_dir_all(t.path().join("stage")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        let root = Root::open(&t.path().join("root")).unwrap();
        let stage = open_dir_path(&t.path().join("stage")).unwrap();
        (t, root, stage)
    }

    // What a symlink inside root does to a write or a deletion asked below
    // root, whenever it was planted: nothing outside root.

    #[test]
    fn a_symlink_inside_root_cannot_redirect_a_write_or_a_delete() {
        let (t, root, stage) = setup();
        std::fs::write(t.path().join("outside/victim"), "keep").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("root/link")).unwrap();
        std::fs::write(t.path().join("stage/f0"), "evil").unwrap();
        let mut p = root
            .begin(&t.path().join("undo"), &crate::perms::Policy::default())
            .unwrap();
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
        let mut p = root
            .begin(&t.path().join("undo"), &crate::perms::Policy::default())
            .unwrap();
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

    #[test]
    fn deleting_a_tree_with_a_symlink_inside_leaves_the_target_alone() {
        // Its entries first, as a bundle orders them; the link goes, not
        // what it points to.
        let (t, root, _stage) = setup();
        std::fs::write(t.path().join("outside/victim"), "keep").unwrap();
        std::fs::create_dir_all(t.path().join("root/d/e")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("root/d/e/out"))
            .unwrap();
        let mut p = root
            .begin(&t.path().join("undo"), &crate::perms::Policy::default())
            .unwrap();
        for d in ["d/e/out", "d/e", "d"] {
            p.delete(d).unwrap();
        }
        p.commit();
        assert!(!t.path().join("root/d").exists());
        assert_eq!(
            std::fs::read(t.path().join("outside/victim")).unwrap(),
            b"keep"
        );
    }
}
