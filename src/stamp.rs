//! The stat fields that tell whether a file changed (and what [`Kind`] of
//! entry it is): one [`Stamp`] for the
//! walk that compares the tree with what was shipped and for the packer
//! that checks a file did not change while it was read, the one test of
//! whether a stamp matches what was shipped ([`Stat::matches`]), and the
//! one test of how recently a file was written, and the one conversion of
//! an mtime as a manifest carries it into a time ([`system_time`]). Reads the clock
//! (`modified_within`, and through it the manifest's racy mark), nothing
//! else.

use std::os::unix::fs::MetadataExt;

/// A file packed within this long of its last write is recorded as racy.
pub const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// What a path is: shipper ships regular files, directories and symlinks.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A regular file (or anything else the walk does not ship).
    #[default]
    File,
    Dir,
    Link,
}

impl Kind {
    fn of_mode(st_mode: u32) -> Self {
        match rustix::fs::FileType::from_raw_mode(st_mode as _) {
            rustix::fs::FileType::Directory => Self::Dir,
            rustix::fs::FileType::Symlink => Self::Link,
            _ => Self::File,
        }
    }

    pub fn is_file(&self) -> bool {
        *self == Self::File
    }
}

/// Identity (device, inode), size, mtime, mode and kind of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    pub kind: Kind,
}

impl Stamp {
    pub fn of(md: &std::fs::Metadata) -> Self {
        Self {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            mode: md.mode() & 0o7777,
            kind: Kind::of_mode(md.mode()),
        }
    }

    #[allow(clippy::unnecessary_cast)] // field types differ between targets
    pub fn of_stat(st: &rustix::fs::Stat) -> Self {
        Self {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as u32,
            mode: st.st_mode as u32 & 0o7777,
            kind: Kind::of_mode(st.st_mode as u32),
        }
    }

    /// Whether the file was written within `window` before now.
    pub fn modified_within(&self, window: std::time::Duration) -> bool {
        modified_within(self.mtime, self.mtime_nsec, window)
    }
}

/// What is shipped of a stat, and compared with a [`Stamp`] found later:
/// kind, size, mtime and mode (identity is not shipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
}

impl Stat {
    /// Whether a file with `stamp` has the kind, size, mtime and mode
    /// shipped. A directory is its kind and mode only: its mtime and size
    /// change with every entry made in it.
    pub fn matches(&self, stamp: &Stamp) -> bool {
        if stamp.kind != self.kind {
            return false;
        }
        if self.kind == Kind::Dir {
            return stamp.mode == self.mode;
        }
        stamp.size == self.size
            && stamp.mtime == self.mtime
            && stamp.mtime_nsec == self.mtime_nsec
            && stamp.mode == self.mode
    }
}

/// True when the file's mtime lies within `window` before now. A future
/// mtime (clock set back, or set by hand) says nothing: not recent.
pub fn modified_within(mtime: i64, mtime_nsec: u32, window: std::time::Duration) -> bool {
    let Ok(secs) = u64::try_from(mtime) else {
        return false;
    };
    let modified =
        std::time::UNIX_EPOCH + std::time::Duration::new(secs, mtime_nsec.min(999_999_999));
    std::time::SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age < window)
}

/// The time an mtime of `secs` and `nsec` (as a manifest carries it) names,
/// before the epoch too; nanoseconds past a second are taken as 999,999,999.
pub fn system_time(secs: i64, nsec: u32) -> std::time::SystemTime {
    use std::time::{Duration, UNIX_EPOCH};
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_before_the_epoch_and_oversized_nanoseconds_are_kept_in_range() {
        assert_eq!(
            system_time(-2, 500),
            UNIX_EPOCH - Duration::from_secs(2) + Duration::from_nanos(500)
        );
        assert_eq!(
            system_time(1, u32::MAX),
            UNIX_EPOCH + Duration::from_secs(1) + Duration::from_nanos(999_999_999)
        );
    }
}
