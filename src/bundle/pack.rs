//! Packing: stream changed files from the source tree into bundles in the
//! sender's outbox, never holding a whole file or bundle in memory.
//!
//! A file is read once: the bytes go to the zip entry and to BLAKE3 in the
//! same pass. Its size, mtime and inode are checked before and after; a file
//! that changed meanwhile is dropped from the bundle (`abort_file`) and handed
//! back as pending instead of shipping torn. Files over `chunk_size` become
//! parts that may span consecutive bundles; no bundle exceeds
//! `max_bundle_size`. Blocking: run it off the async runtime.

use std::fs::{File, Metadata};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::manifest::{
    FORMAT, FileEntry, FileMeta, MANIFEST_ENTRY, Manifest, PartEntry, part_entry_name,
};
use crate::changes::Op;

const COPY_BUF: usize = 1 << 20;
/// Files this small gain nothing from deflate.
const STORE_BELOW: u64 = 64;
/// Upper bound of zip headers, central directory record and manifest line per entry.
const ENTRY_OVERHEAD: u64 = 512;
/// Files at least this large are sampled before deflating.
const SAMPLE_ABOVE: u64 = 256 << 10;
const SAMPLE_LEN: usize = 64 << 10;

/// One path to pack, with what the receiver last got of it (if known).
#[derive(Debug, Clone)]
pub struct PackItem {
    pub path: String,
    pub op: Op,
    pub previous: Option<FileMeta>,
    /// When set, the file must not have been modified within this long
    /// before it is read: it was judged settled from events, and a rewrite
    /// may have begun since. Unset for forced (max_delay, flush) items.
    pub quiet_for: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub chunk_size: u64,
    pub max_bundle_size: u64,
}

/// A finished bundle in the outbox, ready to send.
#[derive(Debug, Clone)]
pub struct Packed {
    pub seq: u64,
    pub path: PathBuf,
    pub size: u64,
    pub hash: [u8; 32],
    pub summary: Summary,
    /// What the receiver will have once it applies this bundle: `Some`
    /// shipped with this metadata, `None` deleted.
    pub changes: Vec<(String, Option<FileMeta>)>,
}

/// What a bundle carries, for logs and `shipper flush`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub files: u64,
    pub parts: u64,
    pub deletions: u64,
    /// Content bytes (before compression).
    pub bytes: u64,
}

impl Summary {
    pub fn add(&mut self, other: &Summary) {
        self.files += other.files;
        self.parts += other.parts;
        self.deletions += other.deletions;
        self.bytes += other.bytes;
    }
}

/// What one packing run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Paths now on their way to the receiver (every bundle's `changes`).
    pub shipped: Vec<(String, Option<FileMeta>)>,
    /// Paths that changed while being read: still pending.
    pub requeue: Vec<String>,
    pub bundles: Vec<(u64, Summary)>,
    pub unchanged: u64,
}

/// Packs items into bundles. `alloc_seq` hands out (and persists) sequence
/// numbers; `emit` receives each finished bundle and may block to apply
/// back-pressure.
pub struct Packer<'a> {
    pub source: &'a Path,
    pub outbox: &'a Path,
    pub sender: &'a str,
    pub limits: Limits,
    pub alloc_seq: &'a mut dyn FnMut() -> io::Result<u64>,
    pub emit: &'a mut dyn FnMut(Packed) -> io::Result<()>,
    /// Whether an event touched the path since this pack began: its content
    /// is in flux, so it stays pending instead of shipping.
    pub touched: &'a (dyn Fn(&str) -> bool + Sync),
}

struct Open {
    zip: ZipWriter<BufWriter<File>>,
    tmp: tempfile::TempPath,
    manifest: Manifest,
    summary: Summary,
    changes: Vec<(String, Option<FileMeta>)>,
    used: u64,
}

/// The stat fields that say a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    mode: u32,
}

impl Stamp {
    fn of(md: &Metadata) -> Self {
        Self {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            mode: md.mode() & 0o7777,
        }
    }

    fn same_as(&self, meta: &FileMeta) -> bool {
        self.size == meta.size
            && self.mtime == meta.mtime
            && self.mtime_nsec == meta.mtime_nsec
            && self.mode == meta.mode
    }
}

/// Files up to this size are read whole and compressed in parallel.
const PARALLEL_MAX: u64 = 1 << 20;
/// A parallel batch holds at most this many bytes (bounds memory)…
const BATCH_BYTES: u64 = 16 << 20;
/// …and this many files.
const BATCH_FILES: usize = 512;

enum Prepared {
    Ready(FileEntry, Box<zip::write::PreparedZipFile>),
    /// Changed while being read, or an event touched it: stays pending.
    Requeue,
    /// Gone since it was listed.
    Gone,
}

/// Read a small file whole, check it did not change meanwhile, hash it and
/// compress it into a ready zip entry. Runs on a worker thread.
fn prepare_small(
    rel: &str,
    abs: &Path,
    stamp: Stamp,
    touched: &(dyn Fn(&str) -> bool + Sync),
) -> io::Result<Prepared> {
    let mut file = match File::open(abs) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Prepared::Gone),
        Err(e) => return Err(with_path(e, abs)),
    };
    if Stamp::of(&file.metadata()?) != stamp {
        return Ok(Prepared::Requeue);
    }
    let mut content = Vec::with_capacity(stamp.size as usize);
    (&mut file)
        .take(stamp.size + 1)
        .read_to_end(&mut content)
        .map_err(|e| with_path(e, abs))?;
    let after_fd = Stamp::of(&file.metadata()?);
    let after_path = std::fs::symlink_metadata(abs).map(|m| Stamp::of(&m));
    if content.len() as u64 != stamp.size
        || after_fd != stamp
        || after_path.ok() != Some(stamp)
        || touched(rel)
    {
        return Ok(Prepared::Requeue);
    }
    let options = entry_options(worth_deflating(rel, &file, stamp.size), stamp);
    let zipped = zip::write::PreparedZipFile::from_data(rel, options, &content).map_err(zip_err)?;
    let entry = FileEntry {
        path: rel.to_owned(),
        size: stamp.size,
        mtime: stamp.mtime,
        mtime_nsec: stamp.mtime_nsec,
        mode: stamp.mode,
        hash: blake3::hash(&content).to_hex().to_string(),
    };
    Ok(Prepared::Ready(entry, Box::new(zipped)))
}

/// One source file being packed, and the copy buffer to read it with.
struct Source<'a> {
    rel: &'a str,
    abs: &'a Path,
    file: &'a mut File,
    stamp: Stamp,
    buf: &'a mut [u8],
}

enum Outcome {
    Done,
    Torn,
}

impl Packer<'_> {
    pub fn pack(&mut self, items: Vec<PackItem>) -> io::Result<Report> {
        let mut report = Report::default();
        let mut open: Option<Open> = None;
        let mut buf = vec![0u8; COPY_BUF];
        let mut batch: Vec<(String, PathBuf, Stamp)> = Vec::new();
        let mut batch_bytes = 0u64;

        // Deletions first, all in the first bundle.
        for item in items.iter().filter(|i| i.op == Op::Delete) {
            let b = self.ensure_open(&mut open)?;
            b.manifest.deletions.push(item.path.clone());
            b.summary.deletions += 1;
            b.used += item.path.len() as u64 + 8;
            b.changes.push((item.path.clone(), None));
        }
        for item in items.into_iter().filter(|i| i.op == Op::Upsert) {
            let abs = self.source.join(&item.path);
            let md = match std::fs::symlink_metadata(&abs) {
                Ok(md) => md,
                // Gone since the event: its removal is (or will be) an event of its own.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(with_path(e, &abs)),
            };
            if !md.file_type().is_file() {
                // A symlink, device or directory now stands where a shipped
                // file was: the receiver must not keep the old file.
                if item.previous.is_some() {
                    let b = self.ensure_open(&mut open)?;
                    b.manifest.deletions.push(item.path.clone());
                    b.summary.deletions += 1;
                    b.used += item.path.len() as u64 + 8;
                    b.changes.push((item.path.clone(), None));
                }
                tracing::debug!(path = %item.path, "not a regular file, not shipped");
                continue;
            }
            let stamp = Stamp::of(&md);
            // Same size, mtime and mode is not proof: a rewrite within one
            // tick of the filesystem's clock keeps them (found by the kill
            // suite). An event said it changed, so compare the content too.
            if let Some(p) = &item.previous
                && stamp.same_as(p)
                && super::hash_file(&abs).is_ok_and(|h| h.to_hex().as_str() == p.hash)
            {
                report.unchanged += 1;
                continue;
            }
            if (self.touched)(&item.path)
                || item
                    .quiet_for
                    .is_some_and(|q| modified_within(stamp.mtime, stamp.mtime_nsec, q))
            {
                report.requeue.push(item.path.clone());
                continue;
            }
            if stamp.size <= PARALLEL_MAX && stamp.size <= self.limits.chunk_size {
                batch_bytes += stamp.size;
                batch.push((item.path.clone(), abs, stamp));
                if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_FILES {
                    self.pack_batch(&mut open, &mut report, std::mem::take(&mut batch))?;
                    batch_bytes = 0;
                }
                continue;
            }
            let mut file = match File::open(&abs) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(with_path(e, &abs)),
            };
            let src = Source {
                rel: &item.path,
                abs: &abs,
                file: &mut file,
                stamp,
                buf: &mut buf,
            };
            if stamp.size > self.limits.chunk_size {
                self.pack_large(&mut open, &mut report, src)?;
            } else {
                self.pack_small(&mut open, &mut report, src)?;
            }
        }
        if !batch.is_empty() {
            self.pack_batch(&mut open, &mut report, batch)?;
        }
        if let Some(b) = open.take() {
            self.finish(b, &mut report)?;
        }
        Ok(report)
    }

    /// Pack small files: read, check, hash and compress them on every core,
    /// then append the compressed entries in order.
    fn pack_batch(
        &mut self,
        open: &mut Option<Open>,
        report: &mut Report,
        batch: Vec<(String, PathBuf, Stamp)>,
    ) -> io::Result<()> {
        use rayon::prelude::*;
        let touched = self.touched;
        let prepared: Vec<(String, io::Result<Prepared>)> = batch
            .into_par_iter()
            .map(|(rel, abs, stamp)| {
                let r = prepare_small(&rel, &abs, stamp, touched);
                (rel, r)
            })
            .collect();
        for (rel, r) in prepared {
            match r? {
                Prepared::Gone => {}
                Prepared::Requeue => report.requeue.push(rel),
                Prepared::Ready(entry, zipped) => {
                    self.make_room(open, report, need(&rel, entry.size))?;
                    let b = self.ensure_open(open)?;
                    b.zip.add_prepared_file(*zipped).map_err(zip_err)?;
                    b.summary.files += 1;
                    b.summary.bytes += entry.size;
                    b.used += need(&rel, entry.size);
                    let mut meta = entry.meta();
                    meta.racy = modified_within(entry.mtime, entry.mtime_nsec, RACY_WINDOW);
                    b.changes.push((rel, Some(meta)));
                    b.manifest.files.push(entry);
                }
            }
        }
        Ok(())
    }

    fn pack_small(
        &mut self,
        open: &mut Option<Open>,
        report: &mut Report,
        src: Source<'_>,
    ) -> io::Result<()> {
        let Source {
            rel,
            abs,
            file,
            stamp,
            buf,
        } = src;
        self.make_room(open, report, need(rel, stamp.size))?;
        let b = self.ensure_open(open)?;
        b.zip
            .start_file(
                rel,
                entry_options(worth_deflating(rel, file, stamp.size), stamp),
            )
            .map_err(zip_err)?;
        let mut hasher = blake3::Hasher::new();
        let outcome = copy_checked(
            file,
            abs,
            stamp,
            0,
            stamp.size,
            &mut b.zip,
            &mut [&mut hasher],
            buf,
            &|| (self.touched)(rel),
        )?;
        match outcome {
            Outcome::Torn => {
                b.zip.abort_file().map_err(zip_err)?;
                report.requeue.push(rel.to_owned());
            }
            Outcome::Done => {
                let hash = hasher.finalize().to_hex().to_string();
                let entry = FileEntry {
                    path: rel.to_owned(),
                    size: stamp.size,
                    mtime: stamp.mtime,
                    mtime_nsec: stamp.mtime_nsec,
                    mode: stamp.mode,
                    hash,
                };
                let mut meta = entry.meta();
                meta.racy = modified_within(stamp.mtime, stamp.mtime_nsec, RACY_WINDOW);
                b.changes.push((rel.to_owned(), Some(meta)));
                b.manifest.files.push(entry);
                b.summary.files += 1;
                b.summary.bytes += stamp.size;
                b.used += need(rel, stamp.size);
            }
        }
        Ok(())
    }

    fn pack_large(
        &mut self,
        open: &mut Option<Open>,
        report: &mut Report,
        src: Source<'_>,
    ) -> io::Result<()> {
        let Source {
            rel,
            abs,
            file,
            stamp,
            buf,
        } = src;
        let chunk = self.limits.chunk_size;
        let count = stamp.size.div_ceil(chunk);
        let count = u32::try_from(count).map_err(|_| {
            with_path(
                io::Error::other("file needs more than 2^32 parts: raise chunk_size"),
                abs,
            )
        })?;
        let set = set_id(self.sender, rel, stamp);
        let deflate = worth_deflating(rel, file, stamp.size);
        let mut whole = blake3::Hasher::new();
        for index in 0..count {
            let offset = u64::from(index) * chunk;
            let size = chunk.min(stamp.size - offset);
            let name = part_entry_name(&set, index);
            self.make_room(open, report, need(&name, size))?;
            let b = self.ensure_open(open)?;
            b.zip
                .start_file(name.as_str(), entry_options(deflate, stamp))
                .map_err(zip_err)?;
            let mut part = blake3::Hasher::new();
            let outcome = copy_checked(
                file,
                abs,
                stamp,
                offset,
                size,
                &mut b.zip,
                &mut [&mut part, &mut whole],
                buf,
                &|| (self.touched)(rel),
            )?;
            match outcome {
                Outcome::Torn => {
                    b.zip.abort_file().map_err(zip_err)?;
                    if index > 0 {
                        b.manifest.abandoned.push(set.clone());
                    }
                    report.requeue.push(rel.to_owned());
                    return Ok(());
                }
                Outcome::Done => {}
            }
            let last = index + 1 == count;
            let file_hash = last.then(|| whole.finalize().to_hex().to_string());
            b.manifest.parts.push(PartEntry {
                path: rel.to_owned(),
                set: set.clone(),
                index,
                count,
                offset,
                size,
                hash: part.finalize().to_hex().to_string(),
                file_size: stamp.size,
                mtime: stamp.mtime,
                mtime_nsec: stamp.mtime_nsec,
                mode: stamp.mode,
                file_hash: file_hash.clone(),
            });
            b.summary.parts += 1;
            b.summary.bytes += size;
            b.used += need(&name, size);
            if let Some(hash) = file_hash {
                b.summary.files += 1;
                b.changes.push((
                    rel.to_owned(),
                    Some(FileMeta {
                        size: stamp.size,
                        mtime: stamp.mtime,
                        mtime_nsec: stamp.mtime_nsec,
                        mode: stamp.mode,
                        hash,
                        racy: modified_within(stamp.mtime, stamp.mtime_nsec, RACY_WINDOW),
                    }),
                ));
            }
        }
        Ok(())
    }

    /// Finish the open bundle when `need` more bytes would push it past the limit.
    fn make_room(
        &mut self,
        open: &mut Option<Open>,
        report: &mut Report,
        need: u64,
    ) -> io::Result<()> {
        let full = open
            .as_ref()
            .is_some_and(|b| b.used > 0 && b.used + need > self.limits.max_bundle_size);
        if full && let Some(b) = open.take() {
            self.finish(b, report)?;
        }
        Ok(())
    }

    fn ensure_open<'o>(&mut self, open: &'o mut Option<Open>) -> io::Result<&'o mut Open> {
        if open.is_none() {
            let tmp = tempfile::Builder::new()
                .prefix(PACKING_PREFIX)
                .suffix(".zip")
                .tempfile_in(self.outbox)
                .map_err(|e| with_path(e, self.outbox))?;
            let (file, tmp) = tmp.into_parts();
            let zip = ZipWriter::new(BufWriter::with_capacity(COPY_BUF, file));
            *open = Some(Open {
                zip,
                tmp,
                manifest: Manifest {
                    format: FORMAT,
                    sender: self.sender.to_owned(),
                    seq: 0,
                    created: 0,
                    files: Vec::new(),
                    parts: Vec::new(),
                    deletions: Vec::new(),
                    abandoned: Vec::new(),
                },
                summary: Summary::default(),
                changes: Vec::new(),
                used: 1024,
            });
        }
        Ok(open.as_mut().expect("just opened"))
    }

    fn finish(&mut self, mut b: Open, report: &mut Report) -> io::Result<()> {
        if b.manifest.files.is_empty()
            && b.manifest.parts.is_empty()
            && b.manifest.deletions.is_empty()
            && b.manifest.abandoned.is_empty()
        {
            // Everything in it turned out torn or gone: no bundle.
            return Ok(());
        }
        let seq = (self.alloc_seq)()?;
        b.manifest.seq = seq;
        b.manifest.created = chrono::Utc::now().timestamp();
        b.zip
            .start_file(
                MANIFEST_ENTRY,
                SimpleFileOptions::default().compression_method(CompressionMethod::Deflated),
            )
            .map_err(zip_err)?;
        b.zip.write_all(&b.manifest.to_json())?;
        let mut out = b.zip.finish().map_err(zip_err)?;
        out.flush()?;
        // No fsync: an outbox bundle is dropped at restart and its changes
        // found again by the catch-up, so it never needs to survive a crash.
        drop(out.into_inner().map_err(|e| e.into_error())?);
        let path = self.outbox.join(bundle_file_name(seq));
        b.tmp
            .persist(&path)
            .map_err(|e| with_path(e.error, &path))?;
        let size = std::fs::metadata(&path)?.len();
        let hash = super::hash_file(&path).map_err(|e| with_path(e, &path))?;
        report.bundles.push((seq, b.summary));
        report.shipped.extend(b.changes.iter().cloned());
        (self.emit)(Packed {
            seq,
            path,
            size,
            hash: *hash.as_bytes(),
            summary: b.summary,
            changes: b.changes,
        })
    }
}

pub fn bundle_file_name(seq: u64) -> String {
    format!("{seq:020}.zip")
}

/// True for the names the outbox holds: [`bundle_file_name`] and the
/// temporary files bundles are packed in. Only these are cleaned from it.
pub fn is_outbox_name(name: &str) -> bool {
    let finished = name
        .strip_suffix(".zip")
        .is_some_and(|seq| seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()));
    finished || (name.starts_with(PACKING_PREFIX) && name.ends_with(".zip"))
}

/// Bundles are packed under a temporary name starting with this.
const PACKING_PREFIX: &str = ".packing-";

/// A file packed within this long of its last write is recorded as racy.
const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

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

/// Bytes an entry may add to a bundle: content, a little deflate expansion
/// on incompressible data, headers, central directory and manifest.
fn need(name: &str, size: u64) -> u64 {
    size + size / 1000 + 3 * name.len() as u64 + ENTRY_OVERHEAD
}

/// Copy `len` bytes from `offset` into the open zip entry, feeding every
/// hasher, then confirm the file did not change while it was read.
#[allow(clippy::too_many_arguments)]
fn copy_checked(
    file: &mut File,
    abs: &Path,
    stamp: Stamp,
    offset: u64,
    len: u64,
    out: &mut impl Write,
    hashers: &mut [&mut blake3::Hasher],
    buf: &mut [u8],
    touched: &dyn Fn() -> bool,
) -> io::Result<Outcome> {
    if Stamp::of(&file.metadata()?) != stamp {
        return Ok(Outcome::Torn);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).map_err(|e| with_path(e, abs))?;
        if n == 0 {
            // Shorter than it was a moment ago: truncated under us.
            return Ok(Outcome::Torn);
        }
        for h in hashers.iter_mut() {
            h.update(&buf[..n]);
        }
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    // Same inode, same size and mtime, through the handle and through the
    // name: nobody wrote to it or replaced it while we read.
    let after_fd = Stamp::of(&file.metadata()?);
    let after_path = std::fs::symlink_metadata(abs).map(|m| Stamp::of(&m));
    // An event during the read means a writer is at it again, even if the
    // stat fields happen to match.
    if after_fd != stamp || after_path.ok() != Some(stamp) || touched() {
        return Ok(Outcome::Torn);
    }
    Ok(Outcome::Done)
}

fn entry_options(deflate: bool, stamp: Stamp) -> SimpleFileOptions {
    let method = if deflate {
        CompressionMethod::Deflated
    } else {
        CompressionMethod::Stored
    };
    SimpleFileOptions::default()
        .compression_method(method)
        .compression_level(if method == CompressionMethod::Deflated {
            Some(3)
        } else {
            None
        })
        .unix_permissions(stamp.mode)
        .last_modified_time(dos_time(stamp.mtime))
        // Zip64 records once an entry could pass 4 GiB.
        .large_file(stamp.size >= u64::from(u32::MAX) - (1 << 20))
}

/// Whether deflating `file` is worth the CPU: not for tiny files, not for
/// formats known to be compressed, and not for larger files whose first
/// 64 KiB do not shrink by a tenth (random data, unknown archives).
fn worth_deflating(rel: &str, file: &File, size: u64) -> bool {
    if size < STORE_BELOW || is_precompressed(rel) {
        return false;
    }
    if size < SAMPLE_ABOVE {
        return true;
    }
    use std::os::unix::fs::FileExt;
    let mut sample = vec![0u8; SAMPLE_LEN];
    let Ok(n) = file.read_at(&mut sample, 0) else {
        return true;
    };
    let mut enc =
        flate2::write::DeflateEncoder::new(Vec::with_capacity(n), flate2::Compression::fast());
    if enc.write_all(&sample[..n]).is_err() {
        return true;
    }
    enc.finish()
        .is_ok_and(|out| (out.len() as f64) < 0.9 * n as f64)
}

/// Formats that are already compressed: deflate would spend CPU for nothing.
pub fn is_precompressed(rel: &str) -> bool {
    const EXT: &[&str] = &[
        "jpg", "jpeg", "png", "gif", "webp", "avif", "heic", "ico", "mp4", "m4v", "mov", "webm",
        "mkv", "mp3", "m4a", "ogg", "oga", "opus", "flac", "zip", "gz", "tgz", "bz2", "xz", "zst",
        "br", "7z", "rar", "woff", "woff2", "pdf", "jar", "apk", "docx", "xlsx", "pptx", "odt",
    ];
    match rel.rsplit_once('.') {
        Some((_, ext)) if !ext.contains('/') => EXT.iter().any(|e| e.eq_ignore_ascii_case(ext)),
        _ => false,
    }
}

fn dos_time(unix: i64) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    chrono::DateTime::from_timestamp(unix, 0)
        .and_then(|t| {
            zip::DateTime::from_date_and_time(
                u16::try_from(t.year()).ok()?,
                t.month() as u8,
                t.day() as u8,
                t.hour() as u8,
                t.minute() as u8,
                t.second() as u8,
            )
            .ok()
        })
        .unwrap_or_default()
}

fn set_id(sender: &str, rel: &str, stamp: Stamp) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut h = blake3::Hasher::new();
    h.update(sender.as_bytes());
    h.update(&[0]);
    h.update(rel.as_bytes());
    h.update(&stamp.size.to_le_bytes());
    h.update(&stamp.mtime.to_le_bytes());
    h.update(&now.to_le_bytes());
    h.finalize().to_hex()[..24].to_string()
}

fn zip_err(e: zip::result::ZipError) -> io::Error {
    io::Error::other(e)
}

pub fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precompressed_types_are_stored() {
        assert!(is_precompressed("a/photo.JPG"));
        assert!(is_precompressed("font.woff2"));
        assert!(!is_precompressed("index.html"));
        assert!(!is_precompressed("dir.png/file"));
        assert!(!is_precompressed("noext"));
    }

    #[test]
    fn random_data_is_stored_and_text_deflated() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, data: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            File::open(p).unwrap()
        };
        let mut x: u64 = 1;
        let random: Vec<u8> = (0..300_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let text = "<p>hello</p>".repeat(30_000);
        assert!(!worth_deflating(
            "a.bin",
            &write("a.bin", &random),
            random.len() as u64
        ));
        assert!(worth_deflating(
            "b.html",
            &write("b.html", text.as_bytes()),
            text.len() as u64
        ));
        assert!(!worth_deflating(
            "c.png",
            &write("c.png", text.as_bytes()),
            text.len() as u64
        ));
    }

    #[test]
    fn dos_time_clamps_to_the_zip_range() {
        assert_eq!(dos_time(0), zip::DateTime::default());
        let t = dos_time(1_764_000_000);
        assert_eq!(t.year(), 2025);
    }

    #[test]
    fn the_outbox_is_cleaned_only_of_its_own_names() {
        assert!(is_outbox_name(&bundle_file_name(7)));
        assert!(is_outbox_name(".packing-a1B2c3.zip"));
        for other in ["mine.txt", "7.zip", "backup-2019.zip", ".packing-x.part"] {
            assert!(!is_outbox_name(other), "{other}");
        }
    }
}
