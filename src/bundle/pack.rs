//! Packing: stream changed files from the source tree into bundles in the
//! sender's outbox, never holding a whole file or bundle in memory.
//!
//! A file is read once: the bytes go to the zip entry and to BLAKE3 in the
//! same pass. Its size, mtime and inode are checked before and after; a file
//! that changed meanwhile is dropped from the bundle (`abort_file`) and handed
//! back as pending instead of shipping torn, unless it is overdue (it reached
//! `max_delay` without settling): then a snapshot of it ships, a reflink
//! clone where the filesystem can make one, else the bytes as they stood when
//! the read began (for an append-only writer, a true prefix). Files over
//! `chunk_size` become parts that may span consecutive bundles; no bundle
//! exceeds `max_bundle_size` or `max_entries`.
//!
//! A file that cannot be read (permissions, I/O error) or whose name cannot
//! travel costs only that file: it is reported in [`Report::failed`] and the
//! rest ships. Only an error writing the bundle itself stops a run; the
//! bundles finished before it are still in the report. Blocking: run it off
//! the async runtime.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::Summary;
use super::manifest::{
    FORMAT, FileEntry, FileMeta, MANIFEST_ENTRY, Manifest, PartEntry, part_entry_name,
};
use crate::changes::Op;
use crate::source_dir::SourceDir;
use crate::stamp::Stamp;

const COPY_BUF: usize = 1 << 20;
/// Smallest part accepted: below this the per-part overhead dominates.
pub const MIN_CHUNK_SIZE: u64 = 4 << 10;
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
    /// It reached `max_delay` without settling: if it will not hold still,
    /// ship a snapshot rather than nothing.
    pub overdue: bool,
}

impl PackItem {
    /// `path` is new or changed; nothing is known of what was shipped.
    pub fn upsert(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            op: Op::Upsert,
            previous: None,
            quiet_for: None,
            overdue: false,
        }
    }

    /// `path` is gone.
    pub fn delete(path: impl Into<String>) -> Self {
        Self {
            op: Op::Delete,
            ..Self::upsert(path)
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub chunk_size: u64,
    pub max_bundle_size: u64,
    /// Files, parts and deletions in one bundle (the receiver refuses more).
    pub max_entries: usize,
    /// Largest file a receiver accepts: a larger one cannot travel.
    pub max_file_size: u64,
    /// Content bytes one bundle may unpack to.
    pub max_unpacked: u64,
}

impl Limits {
    /// The sender's own limits with no receiver's narrower ones applied.
    pub fn new(chunk_size: u64, max_bundle_size: u64, max_entries: usize) -> Self {
        Self {
            chunk_size,
            max_bundle_size,
            max_entries,
            max_file_size: u64::MAX,
            max_unpacked: u64::MAX,
        }
    }

    /// Narrowed to what a receiver accepts; parts shrink so two fit in one
    /// of its bundles.
    pub fn within(self, a: &crate::proto::frame::Accepts) -> Self {
        let max_bundle_size = self.max_bundle_size.min(a.max_bundle_size);
        Self {
            chunk_size: self.chunk_size.min(max_bundle_size / 2).max(MIN_CHUNK_SIZE),
            max_bundle_size,
            max_entries: self
                .max_entries
                .min(usize::try_from(a.max_entries).unwrap_or(usize::MAX))
                .max(2),
            max_file_size: self.max_file_size.min(a.max_file_size),
            max_unpacked: self.max_unpacked.min(a.max_unpacked),
        }
    }
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
    /// For this receiver only (by its place in `sender.receiver`): part of
    /// a whole tree for a receiver that needs one. `None`: for every one.
    pub only: Option<usize>,
}

/// What one packing run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Paths now on their way to the receiver (every bundle's `changes`).
    pub shipped: Vec<(String, Option<FileMeta>)>,
    /// Paths that changed while being read: still pending.
    pub requeue: Vec<String>,
    /// Paths that could not be packed, with why (the error names the path):
    /// still pending, to be retried.
    pub failed: Vec<(String, String)>,
    /// Overdue paths shipped as a snapshot while still being written: they
    /// ship again once they settle.
    pub unsettled: Vec<String>,
    pub bundles: Vec<(u64, Summary)>,
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
    zip: ZipWriter<BufWriter<BundleFile>>,
    /// Set when the bundle is abandoned: the writer's last words go nowhere.
    discard: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tmp: tempfile::TempPath,
    manifest: Manifest,
    summary: Summary,
    changes: Vec<(String, Option<FileMeta>)>,
    used: u64,
    /// Files, parts and deletions so far.
    entries: usize,
    /// Names after Unicode NFC normalisation: two equal ones in one bundle
    /// are refused by the receiver, so the second waits for the next bundle.
    normalised: std::collections::HashSet<String>,
}

impl Open {
    fn clashes(&self, rel: &str) -> bool {
        use unicode_normalization::UnicodeNormalization;
        self.normalised.contains(&rel.nfc().collect::<String>())
    }

    fn note_name(&mut self, rel: &str) {
        use unicode_normalization::UnicodeNormalization;
        self.normalised.insert(rel.nfc().collect());
        self.entries += 1;
    }
}

/// The bundle file under construction. Once the bundle is abandoned after a
/// write error (a full disk), everything written is discarded, so dropping
/// the zip writer neither fails nor prints (zip's `Drop` reports a failed
/// finish on stderr). The temporary file is removed with the bundle.
struct BundleFile {
    file: File,
    discard: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Position and length as the zip writer sees them once discarding.
    pos: u64,
    len: u64,
}

impl BundleFile {
    fn discarding(&self) -> bool {
        self.discard.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn abandon(&self) {
        self.discard
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Write for BundleFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = if self.discarding() {
            buf.len()
        } else {
            // The first failed write abandons the bundle.
            self.file.write(buf).inspect_err(|_| self.abandon())?
        };
        self.pos += n as u64;
        self.len = self.len.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.discarding() {
            return Ok(());
        }
        self.file.flush().inspect_err(|_| self.abandon())
    }
}

impl Seek for BundleFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        if !self.discarding() {
            self.pos = self.file.seek(to).inspect_err(|_| self.abandon())?;
            self.len = self.len.max(self.pos);
            return Ok(self.pos);
        }
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

/// How a read must treat a file that changes under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadMode {
    /// Any change while reading: the file is torn, it stays pending.
    Strict,
    /// Overdue: take the first `stamp.size` bytes whatever happens after the
    /// read began; only a file that got shorter is torn.
    Snapshot,
}

/// Files up to this size are read whole and compressed in parallel.
const PARALLEL_MAX: u64 = 1 << 20;
/// A parallel batch holds at most this many bytes (bounds memory)…
const BATCH_BYTES: u64 = 16 << 20;
/// …and this many files.
const BATCH_FILES: usize = 512;

enum Prepared {
    /// Ready to append; `overtaken`: a snapshot whose file moved on meanwhile.
    Ready {
        entry: FileEntry,
        zipped: Box<zip::write::PreparedZipFile>,
        overtaken: bool,
    },
    /// Changed while being read, or an event touched it: stays pending.
    Requeue,
    /// Gone since it was listed.
    Gone,
    /// Could not be read: the error names the path.
    Failed(io::Error),
}

/// Read a small file whole, check it did not change meanwhile, hash it and
/// compress it into a ready zip entry. Runs on a worker thread.
fn prepare_small(
    dir: &SourceDir,
    rel: &str,
    abs: &Path,
    stamp: Stamp,
    how: ReadMode,
    touched: &(dyn Fn(&str) -> bool + Sync),
) -> Prepared {
    let at = |e: io::Error| Prepared::Failed(with_path(e, abs));
    let mut file = match dir.open_file(rel) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Prepared::Gone,
        Err(e) => return Prepared::Failed(e),
    };
    let before = match file.metadata() {
        Ok(md) => Stamp::of(&md),
        Err(e) => return at(e),
    };
    if how == ReadMode::Strict && before != stamp {
        return Prepared::Requeue;
    }
    let mut content = Vec::with_capacity(stamp.size as usize);
    let limit = match how {
        ReadMode::Strict => stamp.size + 1,
        ReadMode::Snapshot => stamp.size,
    };
    if let Err(e) = (&mut file).take(limit).read_to_end(&mut content) {
        return at(e);
    }
    if content.len() as u64 != stamp.size {
        return Prepared::Requeue;
    }
    let after_fd = file.metadata().map(|m| Stamp::of(&m));
    let after_path = dir.stat(rel).map(|st| Stamp::of_stat(&st));
    let moved = after_fd.ok() != Some(stamp) || after_path.ok() != Some(stamp) || touched(rel);
    if moved && how == ReadMode::Strict {
        return Prepared::Requeue;
    }
    let options = entry_options(worth_deflating(rel, &file, stamp.size), stamp);
    let zipped = match zip::write::PreparedZipFile::from_data(rel, options, &content) {
        Ok(z) => z,
        Err(e) => return at(zip_err(e)),
    };
    let entry = FileEntry {
        path: rel.to_owned(),
        size: stamp.size,
        mtime: stamp.mtime,
        mtime_nsec: stamp.mtime_nsec,
        mode: stamp.mode,
        hash: blake3::hash(&content).to_hex().to_string(),
    };
    Prepared::Ready {
        entry,
        zipped: Box::new(zipped),
        overtaken: moved,
    }
}

/// One source file being packed, and the copy buffer to read it with.
struct Source<'a> {
    dir: &'a SourceDir,
    rel: &'a str,
    abs: &'a Path,
    file: &'a mut File,
    stamp: Stamp,
    how: ReadMode,
    buf: &'a mut [u8],
}

enum Outcome {
    Done,
    /// A snapshot read whose file moved on meanwhile: what shipped is the
    /// file as it stood when the read began, not as it is now.
    Overtaken,
    Torn,
    /// The source could not be read: the error names the path.
    Unreadable(io::Error),
}

/// A small file waiting for its parallel batch.
struct Batched {
    rel: String,
    abs: PathBuf,
    stamp: Stamp,
    how: ReadMode,
}

impl Packer<'_> {
    /// Pack `items`; see [`Packer::pack_into`].
    pub fn pack(&mut self, items: Vec<PackItem>) -> io::Result<Report> {
        let mut report = Report::default();
        self.pack_into(items, &mut report)?;
        Ok(report)
    }

    /// Pack `items` into bundles, recording what happened in `report`. On
    /// an error writing a bundle, the bundles already finished (emitted) are
    /// in `report` and the one being written is discarded; items not in the
    /// report were not packed.
    pub fn pack_into(&mut self, items: Vec<PackItem>, report: &mut Report) -> io::Result<()> {
        let dir = SourceDir::open(self.source)?;
        let mut open: Option<Open> = None;
        let result = self.pack_items(&dir, items, report, &mut open);
        if let Some(b) = open.take() {
            match &result {
                Ok(()) => return self.finish(b, report),
                Err(_) => b.discard.store(true, std::sync::atomic::Ordering::Relaxed),
            }
        }
        result
    }

    fn pack_items(
        &mut self,
        dir: &SourceDir,
        items: Vec<PackItem>,
        report: &mut Report,
        open: &mut Option<Open>,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; COPY_BUF];
        let mut batch: Vec<Batched> = Vec::new();
        let mut batch_bytes = 0u64;

        // Deletions first, so a later bundle may reuse a deleted name.
        for item in items.iter().filter(|i| i.op == Op::Delete) {
            self.add_deletion(open, report, &item.path)?;
        }
        for item in items.into_iter().filter(|i| i.op == Op::Upsert) {
            if let Err(e) = crate::paths::validate(&item.path) {
                // The receiver would refuse the whole bundle for it.
                report.failed.push((
                    item.path.clone(),
                    format!("{:?}: name cannot travel: {e}", item.path),
                ));
                continue;
            }
            let abs = self.source.join(&item.path);
            let st = match dir.stat(&item.path) {
                Ok(st) => st,
                // Gone since the event: its removal is (or will be) an event of its own.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    report.failed.push((item.path, e.to_string()));
                    continue;
                }
            };
            let regular = rustix::fs::FileType::from_raw_mode(st.st_mode)
                == rustix::fs::FileType::RegularFile;
            if !regular {
                // A symlink, device or directory now stands where a shipped
                // file was: the receiver must not keep the old file.
                if item.previous.is_some() {
                    self.add_deletion(open, report, &item.path)?;
                }
                tracing::debug!(path = %item.path, "not a regular file, not shipped");
                continue;
            }
            let stamp = Stamp::of_stat(&st);
            if stamp.size > self.limits.max_file_size {
                report.failed.push((
                    item.path.clone(),
                    format!(
                        "{}: {} bytes, over the largest file a receiver accepts ({} bytes, its max_file_size)",
                        abs.display(),
                        stamp.size,
                        self.limits.max_file_size
                    ),
                ));
                continue;
            }
            // Same size, mtime and mode is not proof: a rewrite within one
            // tick of the filesystem's clock keeps them (found by the kill
            // suite). An event said it changed, so compare the content too.
            if let Some(p) = &item.previous
                && stamp.matches(p)
                && dir
                    .open_file(&item.path)
                    .and_then(super::hash_reader)
                    .is_ok_and(|h| h.to_hex().as_str() == p.hash)
            {
                continue;
            }
            let busy = (self.touched)(&item.path)
                || item.quiet_for.is_some_and(|q| stamp.modified_within(q));
            if busy && !item.overdue {
                report.requeue.push(item.path.clone());
                continue;
            }
            // Overdue and still being written: a snapshot ships rather than nothing.
            let how = if item.overdue {
                ReadMode::Snapshot
            } else {
                ReadMode::Strict
            };
            if stamp.size <= PARALLEL_MAX && stamp.size <= self.limits.chunk_size {
                batch_bytes += stamp.size;
                batch.push(Batched {
                    rel: item.path,
                    abs,
                    stamp,
                    how,
                });
                if batch_bytes >= BATCH_BYTES || batch.len() >= BATCH_FILES {
                    self.pack_batch(dir, open, report, std::mem::take(&mut batch))?;
                    batch_bytes = 0;
                }
                continue;
            }
            let opened = match how {
                ReadMode::Snapshot => snapshot(dir, &item.path, self.outbox),
                ReadMode::Strict => dir.open_file(&item.path).map(|f| (f, stamp)),
            };
            let (mut file, stamp) = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    report.failed.push((item.path, e.to_string()));
                    continue;
                }
            };
            let src = Source {
                dir,
                rel: &item.path,
                abs: &abs,
                file: &mut file,
                stamp,
                how,
                buf: &mut buf,
            };
            if stamp.size > self.limits.chunk_size {
                self.pack_large(open, report, src)?;
            } else {
                self.pack_small(open, report, src)?;
            }
        }
        if !batch.is_empty() {
            self.pack_batch(dir, open, report, batch)?;
        }
        Ok(())
    }

    fn add_deletion(
        &mut self,
        open: &mut Option<Open>,
        report: &mut Report,
        path: &str,
    ) -> io::Result<()> {
        self.make_room(open, report, path.len() as u64 + 8, path)?;
        let b = self.ensure_open(open)?;
        b.manifest.deletions.push(path.to_owned());
        b.summary.deletions += 1;
        b.used += path.len() as u64 + 8;
        b.note_name(path);
        b.changes.push((path.to_owned(), None));
        Ok(())
    }

    /// Record a whole file added to the open bundle.
    fn add_file(b: &mut Open, entry: FileEntry, stamp: Stamp) {
        b.summary.files += 1;
        b.summary.bytes += entry.size;
        b.used += need(&entry.path, entry.size);
        b.note_name(&entry.path);
        b.changes
            .push((entry.path.clone(), Some(stamp.meta(entry.hash.clone()))));
        b.manifest.files.push(entry);
    }

    /// Pack small files: read, check, hash and compress them on every core,
    /// then append the compressed entries in order.
    fn pack_batch(
        &mut self,
        dir: &SourceDir,
        open: &mut Option<Open>,
        report: &mut Report,
        batch: Vec<Batched>,
    ) -> io::Result<()> {
        use rayon::prelude::*;
        let touched = self.touched;
        let prepared: Vec<(Batched, Prepared)> = batch
            .into_par_iter()
            .map(|f| {
                let r = prepare_small(dir, &f.rel, &f.abs, f.stamp, f.how, touched);
                (f, r)
            })
            .collect();
        for (f, r) in prepared {
            match r {
                Prepared::Gone => {}
                Prepared::Requeue => report.requeue.push(f.rel),
                Prepared::Failed(e) => report.failed.push((f.rel, e.to_string())),
                Prepared::Ready {
                    entry,
                    zipped,
                    overtaken,
                } => {
                    self.make_room(open, report, need(&f.rel, entry.size), &f.rel)?;
                    let b = self.ensure_open(open)?;
                    b.zip.add_prepared_file(*zipped).map_err(zip_err)?;
                    if overtaken {
                        report.unsettled.push(f.rel.clone());
                    }
                    Self::add_file(b, entry, f.stamp);
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
        let mut src = src;
        let (rel, stamp) = (src.rel, src.stamp);
        self.make_room(open, report, need(rel, stamp.size), rel)?;
        let touched = self.touched;
        let b = self.ensure_open(open)?;
        let deflate = worth_deflating(rel, src.file, stamp.size);
        b.zip
            .start_file(rel, entry_options(deflate, stamp))
            .map_err(zip_err)?;
        let mut hasher = blake3::Hasher::new();
        let outcome = copy_checked(
            &mut src,
            0,
            stamp.size,
            &mut b.zip,
            &mut [&mut hasher],
            &|| touched(rel),
        )?;
        match outcome {
            Outcome::Torn => {
                b.zip.abort_file().map_err(zip_err)?;
                report.requeue.push(rel.to_owned());
            }
            Outcome::Unreadable(e) => {
                b.zip.abort_file().map_err(zip_err)?;
                report.failed.push((rel.to_owned(), e.to_string()));
            }
            Outcome::Done | Outcome::Overtaken => {
                let entry = FileEntry {
                    path: rel.to_owned(),
                    size: stamp.size,
                    mtime: stamp.mtime,
                    mtime_nsec: stamp.mtime_nsec,
                    mode: stamp.mode,
                    hash: hasher.finalize().to_hex().to_string(),
                };
                if matches!(outcome, Outcome::Overtaken) {
                    report.unsettled.push(rel.to_owned());
                }
                Self::add_file(b, entry, stamp);
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
        let mut src = src;
        let (rel, abs, stamp) = (src.rel, src.abs, src.stamp);
        let chunk = self.limits.chunk_size;
        let Ok(count) = u32::try_from(stamp.size.div_ceil(chunk)) else {
            let e = io::Error::other("file needs more than 2^32 parts: raise chunk_size");
            report
                .failed
                .push((rel.to_owned(), with_path(e, abs).to_string()));
            return Ok(());
        };
        let set = set_id(self.sender, rel, stamp);
        let deflate = worth_deflating(rel, src.file, stamp.size);
        let touched = self.touched;
        let mut whole = blake3::Hasher::new();
        let mut overtaken = false;
        for index in 0..count {
            let offset = u64::from(index) * chunk;
            let size = chunk.min(stamp.size - offset);
            let name = part_entry_name(&set, index);
            self.make_room(open, report, need(&name, size), &name)?;
            let b = self.ensure_open(open)?;
            b.zip
                .start_file(name.as_str(), entry_options(deflate, stamp))
                .map_err(zip_err)?;
            let mut part = blake3::Hasher::new();
            let outcome = copy_checked(
                &mut src,
                offset,
                size,
                &mut b.zip,
                &mut [&mut part, &mut whole],
                &|| touched(rel),
            )?;
            let failure = match outcome {
                Outcome::Done => None,
                Outcome::Overtaken => {
                    overtaken = true;
                    None
                }
                Outcome::Torn => Some(None),
                Outcome::Unreadable(e) => Some(Some(e)),
            };
            if let Some(error) = failure {
                b.zip.abort_file().map_err(zip_err)?;
                if index > 0 {
                    b.manifest.abandoned.push(set.clone());
                }
                match error {
                    None => report.requeue.push(rel.to_owned()),
                    Some(e) => report.failed.push((rel.to_owned(), e.to_string())),
                }
                return Ok(());
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
            b.entries += 1;
            if index == 0 {
                b.note_name(rel);
                b.entries -= 1;
            }
            if let Some(hash) = file_hash {
                b.summary.files += 1;
                if overtaken {
                    report.unsettled.push(rel.to_owned());
                }
                b.changes.push((rel.to_owned(), Some(stamp.meta(hash))));
            }
        }
        Ok(())
    }

    /// Finish the open bundle when an entry of `need` more bytes named
    /// `name` would push it past a limit, or clash with a name in it.
    fn make_room(
        &mut self,
        open: &mut Option<Open>,
        report: &mut Report,
        need: u64,
        name: &str,
    ) -> io::Result<()> {
        let limits = self.limits;
        let full = open.as_ref().is_some_and(|b| {
            b.entries > 0
                && (b.used + need > limits.max_bundle_size
                    || b.entries + 1 > limits.max_entries
                    || b.summary.bytes + need > limits.max_unpacked
                    || b.clashes(name))
        });
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
            let discard = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let file = BundleFile {
                file,
                discard: discard.clone(),
                pos: 0,
                len: 0,
            };
            let zip = ZipWriter::new(BufWriter::with_capacity(COPY_BUF, file));
            *open = Some(Open {
                zip,
                discard,
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
                entries: 0,
                normalised: Default::default(),
            });
        }
        Ok(open.as_mut().expect("just opened"))
    }

    fn finish(&mut self, b: Open, report: &mut Report) -> io::Result<()> {
        let Open {
            zip,
            discard,
            tmp,
            mut manifest,
            summary,
            changes,
            ..
        } = b;
        let abandon = || discard.store(true, std::sync::atomic::Ordering::Relaxed);
        if manifest.files.is_empty()
            && manifest.parts.is_empty()
            && manifest.deletions.is_empty()
            && manifest.abandoned.is_empty()
        {
            // Everything in it turned out torn, gone or unreadable: no bundle.
            abandon();
            return Ok(());
        }
        let seq = (self.alloc_seq)().inspect_err(|_| abandon())?;
        manifest.seq = seq;
        manifest.created = chrono::Utc::now().timestamp();
        seal(zip, &manifest).inspect_err(|_| abandon())?;
        let path = self.outbox.join(bundle_file_name(seq));
        tmp.persist(&path).map_err(|e| with_path(e.error, &path))?;
        let size = std::fs::metadata(&path)
            .map_err(|e| with_path(e, &path))?
            .len();
        let hash = super::hash_file(&path).map_err(|e| with_path(e, &path))?;
        (self.emit)(Packed {
            seq,
            path,
            size,
            hash: *hash.as_bytes(),
            summary,
            changes: changes.clone(),
            only: None,
        })?;
        // Only a bundle handed on is on its way: if `emit` failed, its
        // changes stay pending.
        report.bundles.push((seq, summary));
        report.shipped.extend(changes);
        Ok(())
    }
}

/// Write the manifest and the central directory, and flush the file.
fn seal(mut zip: ZipWriter<BufWriter<BundleFile>>, manifest: &Manifest) -> io::Result<()> {
    zip.start_file(
        MANIFEST_ENTRY,
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated),
    )
    .map_err(zip_err)?;
    zip.write_all(&manifest.to_json())?;
    let out = zip.finish().map_err(zip_err)?;
    // No fsync: an outbox bundle is dropped at restart and its changes
    // found again by the catch-up, so it never needs to survive a crash.
    out.into_inner().map_err(|e| e.into_error())?.flush()
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

/// Bytes an entry may add to a bundle: content, a little deflate expansion
/// on incompressible data, headers, central directory and manifest.
fn need(name: &str, size: u64) -> u64 {
    size + size / 1000 + 3 * name.len() as u64 + ENTRY_OVERHEAD
}

/// Copy `len` bytes from `offset` into the open zip entry, feeding every
/// hasher. A strict read then confirms the file did not change meanwhile;
/// a snapshot read only needs the bytes to be there. An error reading the
/// source is an outcome; an error writing the bundle is the `Err`.
fn copy_checked(
    src: &mut Source<'_>,
    offset: u64,
    len: u64,
    out: &mut impl Write,
    hashers: &mut [&mut blake3::Hasher],
    touched: &dyn Fn() -> bool,
) -> io::Result<Outcome> {
    let strict = src.how == ReadMode::Strict;
    let at = |e: io::Error| Outcome::Unreadable(with_path(e, src.abs));
    match src.file.metadata() {
        Ok(md) if strict && Stamp::of(&md) != src.stamp => return Ok(Outcome::Torn),
        Ok(_) => {}
        Err(e) => return Ok(at(e)),
    }
    if let Err(e) = src.file.seek(SeekFrom::Start(offset)) {
        return Ok(at(e));
    }
    let mut left = len;
    while left > 0 {
        let want = src
            .buf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match src.file.read(&mut src.buf[..want]) {
            Ok(n) => n,
            Err(e) => return Ok(at(e)),
        };
        if n == 0 {
            // Shorter than it was a moment ago: truncated under us.
            return Ok(Outcome::Torn);
        }
        for h in hashers.iter_mut() {
            h.update(&src.buf[..n]);
        }
        out.write_all(&src.buf[..n])?;
        left -= n as u64;
    }
    // Same inode, same size and mtime, through the handle and through the
    // name: nobody wrote to it or replaced it while we read. (Through the
    // name alone for a snapshot, whose handle may be a clone.)
    let after_fd = src.file.metadata().map(|m| Stamp::of(&m));
    let after_path = src.dir.stat(src.rel).map(|st| Stamp::of_stat(&st));
    // An event during the read means a writer is at it again, even if the
    // stat fields happen to match.
    let moved = after_path.ok() != Some(src.stamp) || touched();
    match (strict, moved || after_fd.ok() != Some(src.stamp)) {
        (true, true) => Ok(Outcome::Torn),
        (true, false) => Ok(Outcome::Done),
        (false, _) if moved => Ok(Outcome::Overtaken),
        (false, _) => Ok(Outcome::Done),
    }
}

/// Open an overdue file that is still being written for a snapshot read:
/// a reflink clone in `scratch` where the filesystem can make one (it holds
/// still, whatever the writer does), else the file itself, of which the
/// first `size` bytes as stated now will be read. Returns the file to read
/// and the stamp to ship (the original's, with the clone's size).
fn snapshot(dir: &SourceDir, rel: &str, scratch: &Path) -> io::Result<(File, Stamp)> {
    let original = dir.open_file(rel)?;
    let stamp = Stamp::of(&original.metadata()?);
    if let Ok(clone) = tempfile::tempfile_in(scratch)
        && rustix::fs::ioctl_ficlone(&clone, &original).is_ok()
    {
        let size = clone.metadata()?.len();
        return Ok((clone, Stamp { size, ..stamp }));
    }
    Ok((original, stamp))
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
