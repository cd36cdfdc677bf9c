//! Writing a received entry's bytes, or root's own, to a file the receiver
//! owns.
//!
//! The zip's headers are not trusted: [`copy_counted`] counts and hashes
//! what actually comes out, so a caller compares it with the manifest.
//! [`finish_file`] gives the file the mode the receiver's policy chose
//! (never setuid/setgid/sticky), its group, and the manifest's mtime. Used
//! for whole files in staging and for parts in their set's data file;
//! writes only the file it is handed, and hands what it wrote to the disk
//! as it goes ([`crate::durable::Writeback`]), since every byte of it is
//! synced before it is published. [`make_stage_dirs`] makes the directories
//! below a stage directory that its staged files sit in.

use std::fs::{File, FileTimes, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::error::{BundleError, entry_err, io_at};
use super::stage_names::StagedKind;
use crate::durable::Writeback;

/// A new file only its owner can read, refused if the name is taken.
pub(super) fn create_private(path: &Path) -> Result<File, BundleError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))
}

/// [`create_private`] for the entry `name` of the directory `dir`, which is
/// `path`'s: one name looked up, not the whole path again.
pub(super) fn create_private_in(
    dir: &std::os::fd::OwnedFd,
    name: &str,
    path: &Path,
) -> Result<File, BundleError> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
        .map(File::from)
        .map_err(|e| io_at(path)(e.into()))
}

/// Make the directories below `stage` that `count` staged files of `kind`
/// sit in (see [`super::stage_names`]).
pub(super) fn make_stage_dirs(
    stage: &Path,
    kind: StagedKind,
    count: usize,
) -> Result<(), BundleError> {
    for dir in kind.dirs(count) {
        let path = stage.join(dir);
        std::fs::create_dir(&path).map_err(io_at(&path))?;
    }
    Ok(())
}

/// Copy an entry, counting bytes: exactly `size` must come out, whatever the
/// headers claimed. What was written is fed to `hasher`.
pub(super) fn copy_counted(
    mut entry: impl Read,
    out: &mut File,
    (size, hasher): (u64, &mut blake3::Hasher),
    name: &str,
    dest: &Path,
    buf: &mut [u8],
) -> Result<(), BundleError> {
    debug_assert!(!buf.is_empty(), "an empty buffer reads as the end");
    let mut total = 0u64;
    // What is copied goes to the disk a stride at a time, as it is synced
    // before it is published or recorded.
    let mut writeback = Writeback::default();
    loop {
        let n = entry
            .read(buf)
            .map_err(|e| entry_err(name, format!("cannot unpack: {e}")))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > size {
            return Err(entry_err(
                name,
                format!("holds more than the {size} bytes declared"),
            ));
        }
        crate::hash::update(hasher, &buf[..n]);
        out.write_all(&buf[..n]).map_err(io_at(dest))?;
        writeback.wrote(out, n as u64).map_err(io_at(dest))?;
    }
    if total != size {
        return Err(entry_err(
            name,
            format!("holds {total} bytes, {size} declared"),
        ));
    }
    Ok(())
}

/// Give the staged file `f` its group, mode and mtime, through its handle,
/// before it is published: a reader never sees it with the wrong owner or
/// mode.
pub(super) fn finish_file(
    f: &File,
    path: &Path,
    (mode, gid): (u32, Option<u32>),
    mtime: i64,
    nsec: u32,
) -> Result<(), BundleError> {
    if let Some(gid) = gid {
        // Before the mode: a chown may clear mode bits, never add them.
        rustix::fs::fchown(f, None, Some(rustix::fs::Gid::from_raw(gid)))
            .map_err(|e| io_at(path)(e.into()))?;
    }
    // Never setuid/setgid/sticky: a bundle must not mint privileged files.
    f.set_permissions(Permissions::from_mode(mode & 0o777))
        .map_err(io_at(path))?;
    f.set_times(FileTimes::new().set_modified(crate::stamp::system_time(mtime, nsec)))
        .map_err(io_at(path))
}

/// What failed while copying bytes into a staged file.
pub(super) enum Failed {
    /// Reading its source: root's file (then not held as listed), or an
    /// entry (then damaged).
    Read(std::io::Error),
    /// What refuses the bundle: writing the staged file (a full disk), or
    /// a damaged entry.
    Refused(BundleError),
}

/// Copy exactly `len` bytes of `from` to the staged file at `dest` and its
/// hasher; a read that fails or ends early is [`Failed::Read`].
pub(super) fn copy_exact(
    from: &mut impl Read,
    mut len: u64,
    (out, dest, hasher): &mut (&mut File, &Path, &mut blake3::Hasher),
    buf: &mut [u8],
) -> Result<(), Failed> {
    while len > 0 {
        let want = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => return Err(Failed::Read(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) => return Err(Failed::Read(e)),
        };
        crate::hash::update(hasher, &buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Failed::Refused(io_at(dest)(e)))?;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::WRITEBACK_EVERY;
    use std::os::unix::fs::MetadataExt;

    fn copy(body: &[u8], size: u64) -> (Result<blake3::Hash, BundleError>, Vec<u8>) {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("f");
        let mut out = create_private(&dest).unwrap();
        let mut hasher = blake3::Hasher::new();
        let got = copy_counted(
            body,
            &mut out,
            (size, &mut hasher),
            "e",
            &dest,
            &mut [0u8; 3],
        );
        (
            got.map(|()| hasher.finalize()),
            std::fs::read(&dest).unwrap(),
        )
    }

    #[test]
    fn exactly_the_declared_bytes_come_out_hashed() {
        let (got, written) = copy(b"abcdefg", 7);
        assert_eq!(got.unwrap(), blake3::hash(b"abcdefg"));
        assert_eq!(written, b"abcdefg");
    }

    #[test]
    fn an_entry_longer_or_shorter_than_declared_is_refused() {
        let (got, written) = copy(b"abcdefg", 5);
        let e = got.unwrap_err().to_string();
        assert!(e.contains("more than the 5 bytes"), "{e}");
        assert!(written.len() <= 5, "wrote past the declared size");
        let e = copy(b"abc", 5).0.unwrap_err().to_string();
        assert!(e.contains("holds 3 bytes, 5 declared"), "{e}");
    }

    #[test]
    fn a_copy_of_several_strides_after_earlier_bytes_lands_exactly_there() {
        // As a part is appended to its set's data: the strides handed to
        // the disk are counted from where the copy starts.
        use std::io::Seek;
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("f");
        let mut out = create_private(&dest).unwrap();
        out.write_all(b"head").unwrap();
        let body: Vec<u8> = (0..(2 * WRITEBACK_EVERY + 5))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut hasher = blake3::Hasher::new();
        let size = body.len() as u64;
        copy_counted(
            &body[..],
            &mut out,
            (size, &mut hasher),
            "e",
            &dest,
            &mut [0u8; 1 << 20],
        )
        .unwrap();
        assert_eq!(hasher.finalize(), blake3::hash(&body));
        assert_eq!(out.stream_position().unwrap(), 4 + size);
        let written = std::fs::read(&dest).unwrap();
        assert_eq!((&written[..4], &written[4..]), (&b"head"[..], &body[..]));
    }

    #[test]
    fn a_finished_file_has_no_special_bits_and_its_mtime() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        let f = create_private(&path).unwrap();
        assert!(create_private(&path).is_err(), "a taken name was reused");
        finish_file(&f, &path, (0o4755, None), 1_000_000_000, 5).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 5));
    }

    #[test]
    fn a_file_made_in_a_held_directory_is_private_new_and_never_a_link_followed() {
        let t = tempfile::tempdir().unwrap();
        let dir = crate::beneath::open_dir_path(t.path()).unwrap();
        let path = t.path().join("f0");
        let mut f = create_private_in(&dir, "f0", &path).unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let e = create_private_in(&dir, "f0", &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("f1")).unwrap();
        assert!(create_private_in(&dir, "f1", &t.path().join("f1")).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }
}
