//! Trees of hard links: a copy of a directory tree in which every entry
//! but a directory is a hard link of the original's (symlinks included,
//! never followed) and every directory a new one with the original's mode
//! and group. Snapshots for `publish = "tree"` are made so, and an entry a
//! rollback puts back into one.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Make `to` a copy of the tree at `from` in which every entry but a
/// directory is a hard link of `from`'s (symlinks included, never
/// followed), and every directory a new one with the same mode and group.
pub fn link_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let src = rustix::fs::open(from, DIR, Mode::empty())?;
    rustix::fs::mkdir(to, Mode::from_raw_mode(0o700))?;
    let dst = rustix::fs::open(to, DIR, Mode::empty())?;
    link_dir(&src, &dst).map_err(Into::into)
}

pub(super) const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY);

/// Link every entry of `src` into the new, empty directory `dst`, each
/// subdirectory as soon as it is met (so open handles stay two per level),
/// and give `dst` `src`'s mode and group.
pub(super) fn link_dir(src: &OwnedFd, dst: &OwnedFd) -> rustix::io::Result<()> {
    for entry in rustix::fs::Dir::read_from(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let st = rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700))?;
            let s = rustix::fs::openat(src, name, DIR, Mode::empty())?;
            let d = rustix::fs::openat(dst, name, DIR, Mode::empty())?;
            link_dir(&s, &d)?;
        } else {
            rustix::fs::linkat(src, name, dst, name, AtFlags::empty())?;
        }
    }
    // Its mode and group last: a directory read-only to its owner still
    // took its entries.
    let st = rustix::fs::fstat(src)?;
    rustix::fs::fchown(dst, None, Some(rustix::fs::Gid::from_raw(st.st_gid)))?;
    rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777))
}
