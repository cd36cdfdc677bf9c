//! Writing and deleting below a root directory through directory handles
//! that never follow symlinks.
//!
//! Every path is walked one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`, and files are placed with `renameat`
//! and removed with `unlinkat` relative to their parent's handle. A symlink
//! planted anywhere inside root (by someone else, or swapped in while we
//! work) therefore cannot redirect a write or a deletion outside root: it
//! is refused. Paths given here have already passed [`crate::paths::validate`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};
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

    /// Open the directory `rel` (components `comps`) below root. With
    /// `create`, missing directories are made and a non-directory in the way
    /// is removed (the shipped tree has a directory there). Returns `None`
    /// when, without `create`, a component is missing or not a directory.
    fn open_dir(&self, comps: &[&str], create: bool) -> Result<Option<OwnedFd>, BeneathError> {
        let mut cur: Option<OwnedFd> = None;
        for (i, c) in comps.iter().enumerate() {
            let here = comps[..=i].join("/");
            let parent = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.fd.as_fd());
            let next = match rustix::fs::openat(parent, *c, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(parent, *c, Mode::from_raw_mode(0o755))
                        .map_err(|e| self.err(&here, e))?;
                    rustix::fs::openat(parent, *c, DIR_FLAGS, Mode::empty())
                        .map_err(|e| self.err(&here, e))?
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                    let st = rustix::fs::statat(parent, *c, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|_| self.err(&here, e))?;
                    match FileType::from_raw_mode(st.st_mode) {
                        FileType::Symlink => return Err(BeneathError::Symlink { path: here }),
                        _ if !create => return Ok(None),
                        _ => {
                            rustix::fs::unlinkat(parent, *c, AtFlags::empty())
                                .map_err(|e| self.err(&here, e))?;
                            rustix::fs::mkdirat(parent, *c, Mode::from_raw_mode(0o755))
                                .map_err(|e| self.err(&here, e))?;
                            rustix::fs::openat(parent, *c, DIR_FLAGS, Mode::empty())
                                .map_err(|e| self.err(&here, e))?
                        }
                    }
                }
                Err(e) => return Err(self.err(&here, e)),
            };
            cur = Some(next);
        }
        Ok(Some(match cur {
            Some(fd) => fd,
            None => rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(|e| self.err("", e))?,
        }))
    }

    /// Refuse `rel` if any directory above it inside root is a symlink,
    /// without changing anything: the check run on every path of a bundle
    /// before its first change, so a refusal leaves root as it was.
    pub fn check(&self, rel: &str) -> Result<(), BeneathError> {
        let (dir_comps, _) = split(rel);
        self.open_dir(&dir_comps, false).map(|_| ())
    }

    /// Move `staged` (a file in `staged_dir`) to `rel` below root in one
    /// rename: readers see the old file or the new one.
    pub fn publish(
        &self,
        rel: &str,
        staged_dir: &OwnedFd,
        staged: &str,
    ) -> Result<(), BeneathError> {
        let (dir_comps, name) = split(rel);
        let parent = self
            .open_dir(&dir_comps, true)?
            .expect("created when missing");
        if let Ok(st) = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
            && FileType::from_raw_mode(st.st_mode) == FileType::Directory
        {
            // The shipped tree has a file where root has a directory.
            remove_tree_at(&parent, name).map_err(|e| self.err(rel, e))?;
        }
        rustix::fs::renameat(staged_dir, staged, &parent, name).map_err(|e| self.err(rel, e))?;
        Ok(())
    }

    /// Remove `rel` (a file, a symlink, or a whole directory) and then the
    /// directories this emptied. Missing is fine.
    pub fn delete(&self, rel: &str) -> Result<(), BeneathError> {
        let (dir_comps, name) = split(rel);
        let Some(parent) = self.open_dir(&dir_comps, false)? else {
            return Ok(()); // a parent is gone: so is the path
        };
        match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                remove_tree_at(&parent, name).map_err(|e| self.err(rel, e))?
            }
            Ok(_) => rustix::fs::unlinkat(&parent, name, AtFlags::empty())
                .map_err(|e| self.err(rel, e))?,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(self.err(rel, e)),
        }
        // Prune directories the deletion emptied, deepest first, never root.
        for depth in (1..=dir_comps.len()).rev() {
            let Some(up) = self.open_dir(&dir_comps[..depth - 1], false)? else {
                break;
            };
            if rustix::fs::unlinkat(&up, dir_comps[depth - 1], AtFlags::REMOVEDIR).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Flush everything written on root's filesystem (data, renames,
    /// unlinks) in one call.
    pub fn syncfs(&self) -> Result<(), BeneathError> {
        rustix::fs::syncfs(&self.fd).map_err(|e| self.err("", e))
    }
}

fn split(rel: &str) -> (Vec<&str>, &str) {
    let mut comps: Vec<&str> = rel.split('/').collect();
    let name = comps.pop().unwrap_or_default();
    (comps, name)
}

/// Remove the directory `name` in `parent` and everything in it, without
/// following any symlink found inside.
fn remove_tree_at(parent: &OwnedFd, name: &str) -> io::Result<()> {
    let dir = rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty())?;
    let mut entries = Vec::new();
    for e in rustix::fs::Dir::read_from(&dir)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        entries.push((e.file_name().to_owned(), e.file_type()));
    }
    for (n, ty) in entries {
        let is_dir = match ty {
            FileType::Directory => true,
            FileType::Unknown => rustix::fs::statat(&dir, n.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)?,
            _ => false,
        };
        if is_dir {
            let name = n
                .to_str()
                .map_err(|_| io::Error::other("non-UTF-8 name inside root"))?;
            remove_tree_at(&dir, name)?;
        } else {
            rustix::fs::unlinkat(&dir, n.as_c_str(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
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
mod tests {
    use super::*;

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
        root.publish("a/b", &stage, "f0").unwrap();
        assert_eq!(std::fs::read(t.path().join("root/a/b")).unwrap(), b"new");
        std::fs::write(t.path().join("stage/f1"), "deep").unwrap();
        root.publish("n/e/w.txt", &stage, "f1").unwrap();
        assert_eq!(
            std::fs::read(t.path().join("root/n/e/w.txt")).unwrap(),
            b"deep"
        );
        root.syncfs().unwrap();
    }

    #[test]
    fn a_symlink_inside_root_cannot_redirect_a_write_or_a_delete() {
        let (t, root, stage) = setup();
        std::fs::write(t.path().join("outside/victim"), "keep").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), t.path().join("root/link")).unwrap();
        std::fs::write(t.path().join("stage/f0"), "evil").unwrap();
        let e = root.publish("link/victim", &stage, "f0").unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e}");
        let e = root.delete("link/victim").unwrap_err();
        assert!(matches!(e, BeneathError::Symlink { .. }), "{e}");
        assert_eq!(
            std::fs::read(t.path().join("outside/victim")).unwrap(),
            b"keep"
        );
        // Deleting the symlink itself removes the link, not its target.
        root.delete("link").unwrap();
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
        root.delete("d").unwrap();
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
        root.delete("a/b/f").unwrap();
        assert!(!t.path().join("root/a").exists());
        assert!(t.path().join("root").exists());
        root.delete("missing/x").unwrap();
    }
}
