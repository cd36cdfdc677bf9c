//! Packing: stream changed files from the source tree into bundles in the
//! sender's outbox, never holding a whole file or bundle in memory.
//!
//! This file is the [`Packer`]: deletions first, then for each changed path
//! whether it is read now and how (a name that cannot travel, a file gone,
//! not regular, too large, unchanged or busy is settled here), small files
//! read and compressed in parallel batches, the others one at a time. The
//! steps live beside it: `source_read.rs` reads a file, `large.rs` cuts one
//! into parts, `cutter.rs` cuts entries into bundles in the outbox,
//! `writer.rs` writes one bundle's zip, `zip_entry.rs` picks deflate or
//! store, `limits.rs` says how large things may be.
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

use std::io;
use std::path::{Path, PathBuf};

use super::cutter::Cutter;
use super::delta::{Chunker, DELTA_MIN, Signature};
use super::delta_pack::{Planned, base_of, pack_delta, plan, sign};
use super::large::pack_large;
use super::manifest::FileMeta;
use super::source_read::{Outcome, Prepared, ReadMode, Reader, Sinks, Source};
use super::writer::{COPY_BUF, need, zip_err};
use crate::changes::Op;
use crate::source_dir::SourceDir;
use crate::stamp::{Kind, Stamp};

// What other modules use of the sender's side, whichever room it lives in.
pub use super::cutter::{Packed, Report, SkippedLink, bundle_file_name, is_outbox_name};
pub use super::delta_pack::Signatures;
pub use super::limits::{Limits, MIN_CHUNK_SIZE};
pub use super::writer::with_path;
pub use super::zip_entry::is_precompressed;

/// Files up to this size are read whole and compressed in parallel.
const PARALLEL_MAX: u64 = 1 << 20;
/// A parallel batch holds at most this many bytes (bounds memory)…
const BATCH_BYTES: u64 = 16 << 20;
/// …and this many files.
const BATCH_FILES: usize = 512;

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
    /// The receivers' state is known (the path is not in doubt): content
    /// they hold at another path may be reused for it.
    pub reuse: bool,
}

/// Where the receivers hold content, for a file that appears at a new path
/// (see `sender/held.rs`).
pub trait HeldContent: Sync {
    /// Whether they hold some content of `size` bytes that may be reused:
    /// only then is a new file hashed before it is read into a bundle.
    fn has_size(&self, size: u64) -> bool;
    /// A path they hold content of `size` bytes with `hash` at.
    fn path_of(&self, size: u64, hash: &blake3::Hash) -> Option<String>;
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
            reuse: false,
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
    /// Whether files worth deflating are deflated now (`sender.compress`,
    /// the links' measured rate), asked afresh for each file: a link
    /// measured while a run packs changes the files after it.
    pub deflate: &'a (dyn Fn() -> bool + Sync),
    /// How large the run's first bundle may grow, if smaller than the
    /// limits say: while a link is not measured yet, a small first bundle
    /// goes out soon and measures it.
    pub first_bundle_max: Option<u64>,
    /// Where the receivers hold content a new file may be rebuilt from;
    /// `None`: nothing is reused (a whole tree for a new receiver).
    pub held: Option<&'a dyn HeldContent>,
    /// The signatures of large files, for deltas; `None`: no delta is
    /// sent or signed (a whole tree for a new receiver).
    pub signatures: Option<&'a dyn Signatures>,
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
        let mut run = Run {
            source: self.source,
            reader: Reader {
                dir: &dir,
                scratch: self.outbox,
                touched: self.touched,
                deflate: self.deflate,
                buf: vec![0u8; COPY_BUF],
            },
            cut: Cutter {
                outbox: self.outbox,
                sender: self.sender,
                limits: self.limits,
                first_max: self.first_bundle_max,
                closed: Default::default(),
                alloc_seq: &mut *self.alloc_seq,
                emit: &mut *self.emit,
                open: None,
            },
            report,
            batch: Vec::new(),
            batch_bytes: 0,
            held: self.held,
            signs: self.signatures,
        };
        let packed = run.pack_items(items);
        run.cut.end(packed, run.report)
    }
}

/// A small file waiting for its parallel batch.
struct Batched {
    rel: String,
    abs: PathBuf,
    stamp: Stamp,
    how: ReadMode,
}

/// One packing run: the source it reads, the bundles it cuts, what it did,
/// and the small files waiting to be read together.
struct Run<'r> {
    source: &'r Path,
    reader: Reader<'r>,
    cut: Cutter<'r>,
    report: &'r mut Report,
    batch: Vec<Batched>,
    batch_bytes: u64,
    held: Option<&'r dyn HeldContent>,
    signs: Option<&'r dyn Signatures>,
}

impl Run<'_> {
    fn pack_items(&mut self, items: Vec<PackItem>) -> io::Result<()> {
        // Deletions first, so a later bundle may reuse a deleted name;
        // deepest first, so a directory's deletion comes after those of
        // what it held, even across bundles.
        let mut deletions: Vec<&PackItem> = items.iter().filter(|i| i.op == Op::Delete).collect();
        deletions.sort_by_key(|i| std::cmp::Reverse(i.path.matches('/').count()));
        for item in deletions {
            self.cut.add_deletion(self.report, &item.path)?;
            if let Some(signs) = self.signs {
                signs.forget(&item.path);
            }
        }
        for item in items.into_iter().filter(|i| i.op == Op::Upsert) {
            if let Some((stamp, how)) = self.admit(&item)? {
                self.pack_upsert(item.path, stamp, how)?;
            }
        }
        if !self.batch.is_empty() {
            self.pack_batch()?;
        }
        Ok(())
    }

    /// Whether `item` is to be read now, with its stamp, and how. `None`
    /// once it is dealt with: its name cannot travel, it is gone, a
    /// directory or symlink (packed here: they have no content to read),
    /// not a file, too large, unchanged, or busy.
    fn admit(&mut self, item: &PackItem) -> io::Result<Option<(Stamp, ReadMode)>> {
        let path = &item.path;
        if let Err(e) = crate::paths::validate(path) {
            // The receiver would refuse the whole bundle for it.
            let why = format!("{path:?}: name cannot travel: {e}");
            self.report.failed.push((path.clone(), why));
            return Ok(None);
        }
        let st = match self.reader.dir.stat(path) {
            Ok(st) => st,
            // Gone since the event: its removal is (or will be) an event of its own.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                self.report.failed.push((path.clone(), e.to_string()));
                return Ok(None);
            }
        };
        let stamp = Stamp::of_stat(&st);
        match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::RegularFile => {}
            rustix::fs::FileType::Directory => return self.pack_dir(item, stamp).map(|()| None),
            rustix::fs::FileType::Symlink => return self.pack_link(item, stamp).map(|()| None),
            _ => return self.not_shipped(item).map(|()| None),
        }
        let max_file_size = self.cut.limits.max_file_size;
        if stamp.size > max_file_size {
            let why = format!(
                "{}: {} bytes, over the largest file a receiver accepts ({} bytes, its max_file_size)",
                self.source.join(path).display(),
                stamp.size,
                max_file_size
            );
            self.report.failed.push((path.clone(), why));
            return Ok(None);
        }
        let known = self.known(item, stamp);
        if known == Known::Unchanged {
            return Ok(None);
        }
        let busy =
            (self.reader.touched)(path) || item.quiet_for.is_some_and(|q| stamp.modified_within(q));
        if busy && !item.overdue {
            self.report.requeue.push(path.clone());
            return Ok(None);
        }
        match known {
            // The receivers hold this content here already: only the
            // metadata travels.
            Known::Held(hash) => self.cut.add_kept(self.report, path, stamp, hash)?,
            // ...or at another path: they copy it from there.
            // A copy larger than a bundle may unpack to could never be
            // applied, nor one from a path an earlier bundle of this run
            // changed or deleted: the content travels.
            Known::Elsewhere(from, hash) if stamp.size <= self.cut.limits.max_unpacked => {
                if !self.cut.add_copy(self.report, path, (&from, stamp), hash)? {
                    return Ok(Some((stamp, how_to_read(item))));
                }
            }
            Known::Elsewhere(..) => return Ok(Some((stamp, how_to_read(item)))),
            // ...or an older version of it here: the bytes that changed.
            Known::Delta(planned) if !item.overdue => {
                return self.pack_delta(path, stamp, *planned);
            }
            Known::Delta(_) | Known::New | Known::Unchanged => {
                return Ok(Some((stamp, how_to_read(item))));
            }
        }
        Ok(None)
    }

    /// What the receivers hold of `item`, found with `stamp`: a large file
    /// whose old version was signed is signed afresh as it is hashed, and
    /// compared chunk by chunk.
    fn known(&mut self, item: &PackItem, stamp: Stamp) -> Known {
        let (path, previous) = (item.path.as_str(), item.previous.as_ref());
        let reader = &mut self.reader;
        let held = self.held.filter(|_| item.reuse);
        let signs = self.signs.filter(|_| item.reuse);
        let Some(base) = signs.and_then(|s| base_of(s, path, previous, &stamp)) else {
            return compare(reader.dir, (path, stamp), previous, held, &mut reader.buf);
        };
        let Some(signed) = sign(reader.dir, path, stamp, &mut reader.buf) else {
            return Known::New;
        };
        match judge(reader.dir, (path, stamp), previous, held, signed.hash) {
            Known::New => match plan(base, signed, self.cut.limits.chunk_size) {
                Ok(planned) if stamp.size <= self.cut.limits.max_unpacked => {
                    Known::Delta(Box::new(planned))
                }
                _ => Known::New,
            },
            known => known,
        }
    }

    /// Pack the file `rel` as the delta `planned`. `Some` if it must be
    /// read whole after all (gone meanwhile: nothing).
    fn pack_delta(
        &mut self,
        rel: &str,
        stamp: Stamp,
        planned: Planned,
    ) -> io::Result<Option<(Stamp, ReadMode)>> {
        let signs = self.signs.expect("a delta is planned from a signature");
        let abs = self.source.join(rel);
        match self.reader.open(rel, &abs, stamp, ReadMode::Strict) {
            Ok(Some(src)) => pack_delta(&mut self.cut, self.report, src, planned, signs)?,
            Ok(None) => {}
            Err(e) => self.report.failed.push((rel.to_owned(), e.to_string())),
        }
        Ok(None)
    }

    /// A device, socket or pipe now stands where something shipped was:
    /// the receiver must not keep the old one.
    fn not_shipped(&mut self, item: &PackItem) -> io::Result<()> {
        if item.previous.is_some() {
            self.cut.add_deletion(self.report, &item.path)?;
        }
        tracing::debug!(path = %item.path, "not a file, directory or symlink, not shipped");
        Ok(())
    }

    /// The directory `item` with `stamp`: its mode travels, unless the
    /// receivers have it so already.
    fn pack_dir(&mut self, item: &PackItem, stamp: Stamp) -> io::Result<()> {
        if item.previous.as_ref().is_some_and(|p| p.matches(&stamp)) {
            return Ok(());
        }
        self.cut.add_dir(self.report, &item.path, stamp)
    }

    /// The symlink `item` with `stamp`: shipped as a link when its target
    /// stays inside the tree, else skipped (and what the receivers have at
    /// its path deleted: it no longer is what they got).
    fn pack_link(&mut self, item: &PackItem, stamp: Stamp) -> io::Result<()> {
        let path = &item.path;
        let target = match self.reader.dir.read_link(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                self.report.failed.push((path.clone(), e.to_string()));
                return Ok(());
            }
        };
        if let Some(why) = crate::paths::unsafe_link(path, &target) {
            if item.previous.is_some() {
                self.cut.add_deletion(self.report, path)?;
            }
            let (path, target) = (path.clone(), target);
            self.report
                .skipped_links
                .push(SkippedLink { path, target, why });
            return Ok(());
        }
        let hash = blake3::hash(target.as_bytes()).to_hex().to_string();
        let same = |p: &FileMeta| p.kind == Kind::Link && p.hash == hash;
        if item.previous.as_ref().is_some_and(same) {
            return Ok(());
        }
        self.cut.add_link(self.report, path, &target, stamp)
    }

    /// Pack the admitted file `rel`: a small one joins the parallel batch,
    /// a larger one is read now, whole or in parts.
    fn pack_upsert(&mut self, rel: String, stamp: Stamp, how: ReadMode) -> io::Result<()> {
        let abs = self.source.join(&rel);
        let chunk_size = self.cut.limits.chunk_size;
        if stamp.size <= PARALLEL_MAX && stamp.size <= chunk_size {
            self.batch_bytes += stamp.size;
            self.batch.push(Batched {
                rel,
                abs,
                stamp,
                how,
            });
            if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_FILES {
                self.pack_batch()?;
            }
            return Ok(());
        }
        let src = match self.reader.open(&rel, &abs, stamp, how) {
            Ok(Some(src)) => src,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.report.failed.push((rel.clone(), e.to_string()));
                return Ok(());
            }
        };
        // A snapshot's size is the clone's: it decides, not the listed one.
        let signs = self.signs.filter(|_| src.stamp.size >= DELTA_MIN);
        if src.stamp.size > chunk_size {
            pack_large(&mut self.cut, self.report, src, signs)
        } else {
            pack_whole(&mut self.cut, self.report, src, signs)
        }
    }

    /// Pack the batched small files: read, check, hash and compress them on
    /// every core, then append the compressed entries in order.
    fn pack_batch(&mut self) -> io::Result<()> {
        use rayon::prelude::*;
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let reader = &self.reader;
        let prepared: Vec<(Batched, Prepared)> = batch
            .into_par_iter()
            .map(|f| {
                let r = reader.prepare_small(&f.rel, &f.abs, f.stamp, f.how);
                (f, r)
            })
            .collect();
        for (f, r) in prepared {
            match r {
                Prepared::Gone => {}
                Prepared::Lost(why) => self.report.lost(&f.rel, why),
                Prepared::Ready {
                    hash,
                    zipped,
                    overtaken,
                } => {
                    let need = need(&f.rel, f.stamp.size);
                    let b = self.cut.room_for(self.report, need, &f.rel)?;
                    b.zip.add_prepared_file(*zipped).map_err(zip_err)?;
                    if overtaken {
                        self.report.unsettled.push(f.rel.clone());
                    }
                    b.add_file(&f.rel, f.stamp, hash);
                }
            }
        }
        Ok(())
    }
}

/// How an admitted file is read: a snapshot of one that is overdue and
/// still being written (it ships rather than nothing), else strictly.
fn how_to_read(item: &PackItem) -> ReadMode {
    if item.overdue {
        ReadMode::Snapshot
    } else {
        ReadMode::Strict
    }
}

/// What the receivers hold of a file about to be packed.
#[derive(Debug, PartialEq, Eq)]
enum Known {
    /// Other content, or nothing known: its bytes travel.
    New,
    /// The same content, mtime and mode: nothing travels.
    Unchanged,
    /// The same content (this hash) with another mtime or mode: only the
    /// metadata travels.
    Held(blake3::Hash),
    /// Content (this hash) they hold at another path: they copy it.
    Elsewhere(String, blake3::Hash),
    /// An older version here, signed, from which few chunks changed.
    Delta(Box<Planned>),
}

/// Compare the file `rel` (found with `stamp`) with what the receivers
/// hold: at its path (`previous`), or, for content worth reusing, anywhere
/// (`held`). Only a file of a size they hold is read here, so a first ship
/// (nothing held) or an edit that changes the size reads nothing twice.
/// Same size, mtime and mode is not proof either: a rewrite within one
/// tick of the filesystem's clock keeps them (found by the kill suite). A
/// file that changes while it is hashed is taken as new: the packer reads
/// it again, checking it holds still. `buf` is the run's copy buffer: a
/// site of small pages is hashed without a buffer allocated per page.
fn compare(
    dir: &SourceDir,
    (rel, stamp): (&str, Stamp),
    previous: Option<&FileMeta>,
    held: Option<&dyn HeldContent>,
    buf: &mut [u8],
) -> Known {
    let here = previous.filter(|p| p.kind == Kind::File && p.size == stamp.size);
    let elsewhere = held.filter(|h| h.has_size(stamp.size));
    if here.is_none() && elsewhere.is_none() {
        return Known::New;
    }
    let Ok(hash) = dir.open_file(rel).and_then(|f| hash_with(f, buf)) else {
        return Known::New;
    };
    judge(dir, (rel, stamp), previous, held, hash)
}

/// What the receivers hold of the file `rel` (found with `stamp`), whose
/// content hashed to `hash`, as [`compare`] tells.
fn judge(
    dir: &SourceDir,
    (rel, stamp): (&str, Stamp),
    previous: Option<&FileMeta>,
    held: Option<&dyn HeldContent>,
    hash: blake3::Hash,
) -> Known {
    let here = previous.filter(|p| p.kind == Kind::File && p.size == stamp.size);
    let elsewhere = held.filter(|h| h.has_size(stamp.size));
    let known = match (here, elsewhere) {
        (Some(p), _) if hash.to_hex().as_str() == p.hash => {
            if p.matches(&stamp) {
                return Known::Unchanged;
            }
            Known::Held(hash)
        }
        (_, Some(h)) => match h.path_of(stamp.size, &hash) {
            Some(from) if from != rel => Known::Elsewhere(from, hash),
            _ => return Known::New,
        },
        _ => return Known::New,
    };
    let still = dir.stat(rel).is_ok_and(|st| Stamp::of_stat(&st) == stamp);
    if still { known } else { Known::New }
}

/// BLAKE3 of what `f` holds, read through `buf` (large reads hashed on
/// every core).
fn hash_with(mut f: std::fs::File, buf: &mut [u8]) -> io::Result<blake3::Hash> {
    use std::io::Read;
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update_rayon(&buf[..n]);
    }
}

/// Pack the file `src` reads as one entry of the open bundle, signing it
/// into `signs` when given.
fn pack_whole(
    cut: &mut Cutter<'_>,
    report: &mut Report,
    mut src: Source<'_>,
    signs: Option<&dyn Signatures>,
) -> io::Result<()> {
    let (rel, stamp) = (src.rel, src.stamp);
    let b = cut.room_for(report, need(rel, stamp.size), rel)?;
    let options = src.entry_options();
    let mut hasher = blake3::Hasher::new();
    let mut chunker = signs.map(|_| Chunker::default());
    let sinks = Sinks {
        hashers: &mut [&mut hasher],
        chunker: chunker.as_mut(),
    };
    match src.write_entry(&mut b.zip, rel, options, &[(0, stamp.size)], sinks)? {
        Outcome::Lost(why) => report.lost(rel, why),
        Outcome::Copied { overtaken } => {
            if overtaken {
                report.unsettled.push(rel.to_owned());
            }
            let hash = hasher.finalize();
            b.add_file(rel, stamp, hash);
            if let (Some(signs), Some(chunker)) = (signs, chunker) {
                signs.put(rel, &Signature::of(&stamp, hash, chunker));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the receivers were told of `body` written with `stamp`.
    fn held(stamp: &Stamp, body: &[u8]) -> FileMeta {
        let mut m = FileMeta::of(stamp, blake3::hash(body).to_hex().to_string());
        m.racy = false;
        m
    }

    #[test]
    fn only_content_the_receivers_hold_at_the_same_size_is_compared_and_kept() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), "same").unwrap();
        let dir = SourceDir::open(t.path()).unwrap();
        let stamp = Stamp::of_stat(&dir.stat("a").unwrap());
        let mut buf = vec![0u8; 16];
        let same = held(&stamp, b"same");
        assert_eq!(
            compare(&dir, ("a", stamp), Some(&same), None, &mut buf),
            Known::Unchanged
        );
        let older = FileMeta {
            mtime: 1,
            ..same.clone()
        };
        let hash = blake3::hash(b"same");
        assert_eq!(
            compare(&dir, ("a", stamp), Some(&older), None, &mut buf),
            Known::Held(hash)
        );
        let other = held(&stamp, b"SAME");
        assert_eq!(
            compare(&dir, ("a", stamp), Some(&other), None, &mut buf),
            Known::New
        );
        assert_eq!(
            compare(&dir, ("a", stamp), None, None, &mut buf),
            Known::New
        );
        // Another size: new, without a look at the content.
        let bigger = FileMeta { size: 5, ..older };
        assert_eq!(
            compare(&dir, ("a", stamp), Some(&bigger), None, &mut buf),
            Known::New
        );
    }
}
