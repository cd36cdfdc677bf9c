//! Files a bundle keeps: reading one below root, and giving it the shipped
//! mtime and the policy's mode and group in place, undoably. Its content
//! is never written: a reader sees the same bytes throughout, only the
//! metadata changes (each change on its own is atomic). Like everything
//! below root, never through a symlink.

use std::fs::{File, FileTimes, Permissions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::SystemTime;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use super::publish::{Publish, Step, op};
use super::root::{BeneathError, Root, split};

/// How a file below root is opened to be read or given its metadata:
/// never through a symlink, never waiting on a fifo.
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK);

/// What a kept file had before the bundle gave it its metadata.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Retimed {
    mode: u32,
    gid: u32,
    mtime: SystemTime,
}

impl Root {
    /// Open the regular file `rel` below root to read it, never through a
    /// symlink. `None` when it, or a directory above it, is missing, or it
    /// is not a regular file (a symlink, a directory).
    pub fn open_file(&self, rel: &str) -> Result<Option<File>, BeneathError> {
        let (dir_comps, name) = split(rel);
        let Some(parent) = self.find_dir(&dir_comps)? else {
            return Ok(None);
        };
        open_regular(&parent, name).map_err(|e| self.err(rel, e))
    }
}

/// The regular file `name` in `parent`, opened with [`FILE_FLAGS`]; `None`
/// if there is none (a symlink is none).
fn open_regular(parent: &OwnedFd, name: &str) -> rustix::io::Result<Option<File>> {
    let fd = match rustix::fs::openat(parent, name, FILE_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = rustix::fs::fstat(&fd)?;
    Ok((FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then(|| File::from(fd)))
}

impl Publish<'_> {
    /// Give the file `rel`, kept as it is, the shipped mtime and the mode
    /// and group the policy gives `shipped_mode`. Undone by putting back
    /// what it had.
    pub fn retime(
        &mut self,
        rel: &str,
        shipped_mode: u32,
        mtime: i64,
        nsec: u32,
    ) -> Result<(), BeneathError> {
        let f = self
            .root
            .open_file(rel)?
            .ok_or_else(|| self.root.err(rel, Errno::NOENT))?;
        let err = |e: std::io::Error| self.root.err(rel, e);
        let st = f.metadata().map_err(err)?;
        let was = Retimed {
            mode: st.mode() & 0o7777,
            gid: st.gid(),
            mtime: st.modified().map_err(err)?,
        };
        self.steps.push(Step::Retimed {
            rel: rel.to_owned(),
            was,
        });
        // Never setuid, setgid or sticky: a bundle must not mint privileged
        // files.
        let mode = self.policy.file_mode(shipped_mode) & 0o777;
        let gid = self.policy.gid();
        op(|| give(&f, mode, gid, crate::stamp::system_time(mtime, nsec)))
            .map_err(|e| self.root.err(rel, e))
    }

    /// The files given their metadata so far: each is synced itself.
    pub(super) fn retimed(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Retimed { rel, .. } => Some(rel.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Make the metadata given to the file `rel` durable.
    pub(super) fn sync_file(&self, rel: &str) -> Result<(), BeneathError> {
        match self.root.open_file(rel)? {
            Some(f) => op(|| rustix::fs::fsync(f.as_fd())).map_err(|e| self.root.err(rel, e)),
            // Gone again: nothing of it to keep.
            None => Ok(()),
        }
    }
}

impl Retimed {
    /// Give `name` in `parent` back what it had.
    pub(super) fn put_back(&self, parent: &OwnedFd, name: &str) -> rustix::io::Result<()> {
        match open_regular(parent, name)? {
            Some(f) => give(&f, self.mode, Some(self.gid), self.mtime),
            None => Err(Errno::NOENT),
        }
    }
}

/// Give `f` `mode` as it is (the caller masks what a bundle gives; an undo
/// puts back whatever bits the file had), group `gid` and mtime `mtime`;
/// its atime stays.
fn give(f: &File, mode: u32, gid: Option<u32>, mtime: SystemTime) -> rustix::io::Result<()> {
    if let Some(gid) = gid {
        // Before the mode: a chown may clear mode bits, never add them.
        rustix::fs::fchown(f, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    let io = |e: std::io::Error| Errno::from_io_error(&e).unwrap_or(Errno::IO);
    f.set_permissions(Permissions::from_mode(mode & 0o7777))
        .map_err(io)?;
    f.set_times(FileTimes::new().set_modified(mtime))
        .map_err(io)
}
