//! Crash-safe writes of state files and directory syncs.
//!
//! Owns the one recipe every durable write in shipper follows: write to a
//! temporary name in the same directory, fsync the file, rename it over the
//! final name, fsync the directory. A crash at any point leaves either the
//! old or the new content, never a mix ([`write_atomic`], or
//! [`write_atomic_with`] for content streamed rather than held). State that
//! grows by records is appended instead, one [`journal_line`] per record: a
//! crash can tear only the last line, which [`read_journal`] drops with
//! anything after it.
//! [`is_disk_full`] is the one test of a write that failed for want of
//! space; [`start_writeback`] hands bytes written to the disk early, so
//! the sync that makes them durable later waits less, and [`Writeback`]
//! does so a stride at a time as a file is written, [`EarlyWriteback`]
//! file by file on a thread of its own; [`give_back_cache`]
//! lets the kernel reclaim the memory of bytes once they are durable.
//! Nothing else belongs here.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::Path;

/// True when a write failed because the filesystem ran out of space or
/// quota: the one test the receiver's refusals, its metrics and its log
/// share.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// What a file being written by [`write_atomic`] is named with, until the
/// rename: one a crash left behind is shipper's to remove.
pub const TEMP_PREFIX: &str = ".shipper-tmp-";

/// Whether `name` is one [`write_atomic`] gives a file while writing it.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Replace `path` with `bytes` so that a crash leaves the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Replace `path` with what `write` writes, as [`write_atomic`] does, for
/// content too large to hold in memory at once (written through a buffer).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let dir = parent_of(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    let mut buffered = io::BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
    write(&mut buffered)?;
    buffered.flush()?;
    drop(buffered);
    // The data must be on disk before the rename makes it visible under the final name.
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename itself lives in the directory; without this it can be lost on power failure.
    sync_dir(dir)
}

/// Create `dir` private to this user (0700), or accept an existing one
/// nobody else can write to: whoever can write a service's state can make
/// it ship or apply anything.
pub fn private_dir(dir: &Path, key: &str) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(md) => {
            let mode = md.permissions().mode() & 0o777;
            if mode & 0o022 != 0 {
                return Err(format!(
                    "{key} {} is writable by group or others (mode {mode:o}): chmod 700 it",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{key}: creating {}: {e}", dir.display())),
    }
}

/// One record of an append-only journal: `<16 hex of BLAKE3(json)> <json>\n`.
pub fn journal_line<T: serde::Serialize>(record: &T) -> Vec<u8> {
    let json = serde_json::to_vec(record).expect("journal record serializes");
    let mut line = journal_checksum(&json).into_bytes();
    line.push(b' ');
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// Decode journal bytes: the records up to the first torn or corrupt line,
/// and how many bytes they span (where the next record is to be appended).
pub fn journal_lines<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> (Vec<T>, usize) {
    let mut records = Vec::new();
    let good = read_journal(bytes, |r| records.push(r)).expect("reading from memory");
    (records, good as usize)
}

/// Read a journal from `r` one line at a time (never whole: it may be as
/// large as the state it records), handing each record to `each`, up to
/// the first torn or corrupt line. Returns how many bytes the records
/// handed span (where the next record is to be appended).
pub fn read_journal<T: serde::de::DeserializeOwned>(
    mut r: impl io::BufRead,
    mut each: impl FnMut(T),
) -> io::Result<u64> {
    let mut line = Vec::new();
    let mut good = 0u64;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        // Torn: no newline yet (or nothing at all).
        let Some(body) = line.strip_suffix(b"\n") else {
            break;
        };
        let Some(record) = journal_record(body) else {
            break;
        };
        each(record);
        good += n as u64;
    }
    Ok(good)
}

/// One journal line without its newline, if its checksum holds and it parses.
fn journal_record<T: serde::de::DeserializeOwned>(line: &[u8]) -> Option<T> {
    let (sum, json) = line.split_at_checked(16)?;
    let json = json.strip_prefix(b" ").unwrap_or(b"");
    if sum != journal_checksum(json).as_bytes() {
        return None;
    }
    serde_json::from_slice::<T>(json).ok()
}

fn journal_checksum(json: &[u8]) -> String {
    blake3::hash(json).to_hex()[..16].to_string()
}

/// Start writing `len` bytes of `file` from `offset` (`len` 0: to its
/// end) to the disk, without waiting for them and without making them
/// durable: only an fsync or syncfs does that, and it then finds them
/// written or on their way instead of writing them all while the caller
/// waits. A hint: where the system has no such call, or it fails,
/// nothing happens.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor is open for as long as `file` is borrowed;
        // the call reads no memory of ours.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Let the kernel drop the page cache holding `len` bytes of `file` from
/// `offset` (`len` 0: to its end), once they are durable and nothing will
/// read them soon: so a large file assembled piece by piece does not push
/// what readers of root use out of memory, and the next piece is written
/// into the pages this one gave back. Pages still dirty are left (the call
/// would start their writeback), so call it only after an fsync of them.
/// A hint: where the system has no such call, or it fails, nothing happens.
pub fn give_back_cache(file: &File, offset: u64, len: u64) {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    {
        let _ = rustix::fs::fadvise(
            file,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    let _ = (file, offset, len);
}

/// How many written bytes [`Writeback`] hands to the disk at a time: a
/// file written this way is synced before it is published or recorded,
/// and that sync then waits for little more than the last stride.
/// (bench/timeline.py, 1 GiB file: the receiver's wait on the disk fell
/// from about 0.55 to 0.2 s, the ship from 2.17-2.26 to 1.87-2.05 s; the
/// bulk corpus, whose files are mostly smaller than a stride, was
/// unchanged.)
pub const WRITEBACK_EVERY: u64 = 8 << 20;

/// Hands what is written to a file to the disk ([`start_writeback`]) once
/// [`WRITEBACK_EVERY`] bytes have come since the last time: asked once a
/// stride, not once a write or once a file, as most files are smaller.
#[derive(Debug, Default)]
pub struct Writeback {
    /// Bytes written since the last stride was handed over.
    pending: u64,
}

impl Writeback {
    /// `n` more bytes were just written to `file`, ending at its position.
    pub fn wrote(&mut self, file: &mut File, n: u64) -> io::Result<()> {
        self.pending += n;
        if self.pending >= WRITEBACK_EVERY {
            let end = file.stream_position()?;
            start_writeback(file, end - self.pending, self.pending);
            self.pending = 0;
        }
        Ok(())
    }
}

/// Hands whole files to the disk ([`start_writeback`]) on a thread of its
/// own, so whoever finished them goes on at once: a call may wait while the
/// disk's queue is full. For files one sync will make durable together
/// later, which would otherwise write them all at once while the caller
/// waits. [`EarlyWriteback::finish`] waits for what was handed to be on its
/// way.
#[derive(Debug)]
pub struct EarlyWriteback {
    files: std::sync::mpsc::SyncSender<File>,
    thread: std::thread::JoinHandle<()>,
}

/// At most this many files wait for [`EarlyWriteback`]'s thread, each
/// holding a descriptor open: once the disk is this far behind, whoever
/// hands the next one waits for it, not for a descriptor limit to refuse a
/// file it creates.
const EARLY_WRITEBACK_QUEUE: usize = 64;

impl EarlyWriteback {
    /// `None` if no thread could be started: then nothing is written early.
    pub fn start() -> Option<Self> {
        let (files, handed) = std::sync::mpsc::sync_channel::<File>(EARLY_WRITEBACK_QUEUE);
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for f in handed {
                    start_writeback(&f, 0, 0);
                }
            })
            .ok()?;
        Some(Self { files, thread })
    }

    /// Write `file` to the disk soon (it is closed once handed over);
    /// waits while [`EARLY_WRITEBACK_QUEUE`] files are waiting already.
    pub fn hand(&self, file: File) {
        // The thread ends only once every sender is gone.
        let _ = self.files.send(file);
    }

    /// Wait until every file handed is on its way to the disk.
    pub fn finish(self) {
        drop(self.files);
        let _ = self.thread.join();
    }
}

/// fsync a directory so that renames and unlinks in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_writeback_takes_more_files_than_it_queues_and_keeps_them_whole() {
        let dir = tempfile::tempdir().unwrap();
        let early = EarlyWriteback::start().unwrap();
        let n = 3 * EARLY_WRITEBACK_QUEUE;
        for i in 0..n {
            let path = dir.path().join(format!("f{i}"));
            let mut f = File::create(&path).unwrap();
            f.write_all(format!("page {i}").as_bytes()).unwrap();
            early.hand(f);
        }
        early.finish();
        for i in 0..n {
            let got = std::fs::read_to_string(dir.path().join(format!("f{i}"))).unwrap();
            assert_eq!(got, format!("page {i}"));
        }
    }

    #[test]
    fn private_dir_is_created_0700_and_a_shared_one_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        private_dir(&p, "sender.state_dir").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&p, "sender.state_dir").unwrap_err();
        assert!(
            e.contains("sender.state_dir") && e.contains("writable"),
            "{e}"
        );
    }

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary files left behind");
    }
}
