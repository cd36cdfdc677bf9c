//! Reading below the source directory without ever following a symlink.
//!
//! The sender reads what lies below `source` and nothing else. A directory
//! swapped for a symlink between a walk and a read (by mistake, or by
//! someone hoping to publish `/etc/ssl/private` into a web root) must not
//! redirect a read outside the tree. Every directory opened here is reached
//! from a handle on `source` with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, or, on kernels without `openat2`, one component
//! at a time with `O_NOFOLLOW`; a file or symlink is then looked up by its
//! one name in its directory, never followed. A symlink anywhere on the way
//! is an error naming the path. Paths given here are shipped paths
//! (validated, `/` separated). Blocking.
//!
//! The last few directories reached are held open for the life of the
//! `SourceDir` (one packing run, one verify): the files of a directory are
//! read one after another, and each then costs a lookup of its one name
//! instead of opening every directory on its path again (each open raising
//! inotify events on the sender's own watch). Each use of a held directory
//! first confirms it is still the one at its path (one stat of the path, no
//! open, no event); one renamed or replaced since is let go and reached
//! afresh. A file read is confirmed once more after the read, by its whole
//! path looked up afresh ([`SourceDir::stat_afresh`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// The source directory, held open.
pub struct SourceDir {
    fd: OwnedFd,
    path: PathBuf,
    /// Directories below `fd` reached lately, the latest first; at most
    /// [`HELD_DIRS`].
    held: Mutex<Vec<Held>>,
}

/// A directory held open: its shipped path, and its device and inode when
/// it was reached, which the directory at that path must still have for
/// the handle to be used.
struct Held {
    dir: String,
    fd: Arc<OwnedFd>,
    id: (u64, u64),
}

/// How many directories a [`SourceDir`] holds open: enough for the few a
/// run's parallel readers work in at once, where one directory's files end
/// and the next's begin.
const HELD_DIRS: usize = 8;

const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);
const FILE: OFlags = OFlags::NOFOLLOW
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY)
    .union(OFlags::NOCTTY);

impl SourceDir {
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(path, DIR, Mode::empty()).map_err(|e| at(path, e.into()))?;
        Ok(Self {
            fd,
            path: path.to_owned(),
            held: Mutex::new(Vec::new()),
        })
    }

    /// Open the file `rel` for reading. A symlink anywhere on the way, the
    /// last component included, is refused.
    pub fn open_file(&self, rel: &str) -> io::Result<File> {
        self.in_parent(rel, |dir, name| {
            rustix::fs::openat(dir, name, FILE, Mode::empty())
        })
        .map(File::from)
    }

    /// BLAKE3 of the content of the file at `rel` (`shipper verify`
    /// hashes a receiver's root this way too: no symlink followed there
    /// either).
    pub fn hash_file(&self, rel: &str) -> io::Result<[u8; 32]> {
        let f = self.open_file(rel)?;
        let at_rel = |e| at(&self.path.join(rel), e);
        let len = f.metadata().map_err(at_rel)?.len();
        let hash = crate::hash::hash_reader(f, len).map_err(at_rel)?;
        Ok(*hash.as_bytes())
    }

    /// The metadata of `rel` itself (not what a symlink there points to),
    /// reached without following a symlink in its directories.
    pub fn stat(&self, rel: &str) -> io::Result<rustix::fs::Stat> {
        self.in_parent(rel, |dir, name| {
            rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// The metadata of `rel` itself, its whole path looked up afresh from
    /// the source (no directory held open is used): what confirms that a
    /// file read through a held directory is still the one at `rel`. A
    /// symlink above `rel` is followed, so this is for comparing with a
    /// file already opened, never for choosing what to read.
    pub fn stat_afresh(&self, rel: &str) -> io::Result<rustix::fs::Stat> {
        match rel {
            "" | "." | ".." => Err(Errno::INVAL),
            _ if rel.split('/').any(|c| c == "..") => Err(Errno::INVAL),
            _ => rustix::fs::statat(&self.fd, rel, AtFlags::SYMLINK_NOFOLLOW),
        }
        .map_err(|e| self.error(rel, e))
    }

    /// The target of the symlink `rel`, as written (never resolved),
    /// reached without following a symlink in its directories. A target
    /// that is not UTF-8 cannot travel: an error.
    pub fn read_link(&self, rel: &str) -> io::Result<String> {
        let target = self.in_parent(rel, |dir, name| {
            rustix::fs::readlinkat(dir, name, Vec::new())
        })?;
        target
            .into_string()
            .map_err(|_| self.error(rel, Errno::ILSEQ))
    }

    /// `op` on the directory `rel` is in and its name there, the name one
    /// component that stays in that directory; an error names `rel`.
    fn in_parent<T>(
        &self,
        rel: &str,
        op: impl FnOnce(BorrowedFd<'_>, &str) -> Result<T, Errno>,
    ) -> io::Result<T> {
        let (parent, name) = self.parent_of(rel)?;
        let dir = parent.as_ref().map_or(self.fd.as_fd(), |p| p.as_fd());
        match name {
            // Not a name in that directory (`dir/`, `dir/..`): refused.
            "" | "." | ".." => Err(Errno::INVAL),
            name => op(dir, name),
        }
        .map_err(|e| self.error(rel, e))
    }

    /// The directory `rel` is in, opened beneath the source or held open
    /// since (`None`: the source itself), and its name there.
    fn parent_of<'r>(&self, rel: &'r str) -> io::Result<(Option<Arc<OwnedFd>>, &'r str)> {
        let Some((dir, name)) = rel.rsplit_once('/') else {
            return Ok((None, rel));
        };
        let found = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let found = held.iter().find(|h| h.dir == dir);
            found.map(|h| (Arc::clone(&h.fd), h.id))
        };
        if let Some((fd, id)) = found {
            // Still the directory at that path? (Renamed away, or swapped
            // for another or a symlink: reached afresh below.)
            let now = rustix::fs::statat(&self.fd, dir, AtFlags::SYMLINK_NOFOLLOW);
            if now.is_ok_and(|st| (st.st_dev, st.st_ino) == id) {
                return Ok((Some(fd), name));
            }
        }
        let opened = self.open_dir_beneath(dir).map_err(|e| self.error(rel, e))?;
        let st = rustix::fs::fstat(&opened).map_err(|e| self.error(rel, e))?;
        let fd = Arc::new(opened);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        // Another reader may have reached it meanwhile, or it was let go.
        held.retain(|h| h.dir != dir);
        held.truncate(HELD_DIRS - 1);
        held.insert(
            0,
            Held {
                dir: dir.to_owned(),
                fd: Arc::clone(&fd),
                id: (st.st_dev, st.st_ino),
            },
        );
        Ok((Some(fd), name))
    }

    /// Open the directory `rel` beneath the source, refusing a symlink
    /// anywhere on the way (`ELOOP`, which [`SourceDir::error`] names; on a
    /// kernel without `openat2`, `ENOTDIR` for a symlink as the last
    /// component).
    fn open_dir_beneath(&self, rel: &str) -> Result<OwnedFd, Errno> {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        // Without O_NOFOLLOW: a symlink as the last component is then
        // refused by RESOLVE_NO_SYMLINKS as one, not as "not a directory".
        let flags = DIR.difference(OFlags::NOFOLLOW);
        match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), how) {
            Err(Errno::NOSYS) => self.open_by_components(rel, DIR),
            r => r,
        }
    }

    /// The same walk for kernels without `openat2` (before Linux 5.6).
    fn open_by_components(&self, rel: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
        let mut comps: Vec<&str> = rel.split('/').collect();
        let last = comps.pop().unwrap_or_default();
        let mut cur: Option<OwnedFd> = None;
        for c in comps {
            if c == ".." || c == "." || c.is_empty() {
                return Err(Errno::INVAL);
            }
            let parent = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.fd.as_fd());
            cur = Some(rustix::fs::openat(parent, c, DIR, Mode::empty())?);
        }
        if last == ".." || last == "." || last.is_empty() {
            return Err(Errno::INVAL);
        }
        let parent = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.fd.as_fd());
        rustix::fs::openat(parent, last, flags, Mode::empty())
    }

    fn error(&self, rel: &str, e: Errno) -> io::Error {
        let path = self.path.join(rel);
        match e {
            Errno::LOOP | Errno::XDEV => io::Error::other(format!(
                "{}: reached through a symlink, so not read (only what lies below the source is shipped)",
                path.display()
            )),
            e => at(&path, e.into()),
        }
    }
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn reads_below_the_source_but_never_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("dir")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(src.join("dir/page.html"), "page").unwrap();
        std::fs::write(t.path().join("outside/secret"), "secret").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), src.join("swapped")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside/secret"), src.join("link")).unwrap();
        let s = SourceDir::open(&src).unwrap();
        let mut text = String::new();
        s.open_file("dir/page.html")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "page");
        for rel in ["swapped/secret", "link"] {
            let e = s.open_file(rel).unwrap_err();
            assert!(e.to_string().contains("symlink"), "{rel}: {e}");
        }
        assert!(s.stat("swapped/secret").is_err());
        // The link itself can be looked at, not followed.
        let st = s.stat("link").unwrap();
        assert_eq!(
            rustix::fs::FileType::from_raw_mode(st.st_mode),
            rustix::fs::FileType::Symlink
        );
        for rel in [&["dir", "page.html"][..], &["swapped", "secret"]] {
            let flags = FILE;
            let r = s.open_by_components(&rel.join("/"), flags);
            assert_eq!(r.is_ok(), rel[0] == "dir", "{rel:?}");
        }
    }

    #[test]
    fn a_held_directory_is_used_only_while_it_is_still_the_one_at_its_path() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("dir")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(src.join("dir/a.html"), "a").unwrap();
        std::fs::write(src.join("dir/b.html"), "b").unwrap();
        std::fs::write(t.path().join("outside/b.html"), "secret").unwrap();
        let s = SourceDir::open(&src).unwrap();
        assert!(s.stat("dir/a.html").is_ok());
        // The directory is swapped for a symlink out of the source: the
        // handle held on the real one is let go, and the link refused.
        std::fs::rename(src.join("dir"), src.join("moved")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), src.join("dir")).unwrap();
        let e = s.open_file("dir/b.html").unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let mut text = String::new();
        s.open_file("moved/b.html")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "b");
        // Renamed away and replaced by another directory: that one is read.
        std::fs::remove_file(src.join("dir")).unwrap();
        std::fs::rename(src.join("moved"), src.join("old")).unwrap();
        std::fs::create_dir(src.join("moved")).unwrap();
        let e = s.stat("moved/b.html").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        // A name that leaves its directory is never looked up.
        for rel in ["..", "old/..", "old/.", "old/"] {
            for e in [s.stat(rel).unwrap_err(), s.open_file(rel).unwrap_err()] {
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{rel}: {e}");
            }
        }
        // At most HELD_DIRS directories stay open.
        for i in 0..HELD_DIRS + 3 {
            std::fs::create_dir(src.join(format!("d{i}"))).unwrap();
            std::fs::write(src.join(format!("d{i}/f")), "").unwrap();
            assert!(s.stat(&format!("d{i}/f")).is_ok());
        }
        assert_eq!(s.held.lock().unwrap().len(), HELD_DIRS);
    }
}
