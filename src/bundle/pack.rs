//! Packing: stream changed files from the source tree into bundles in the
//! sender's outbox, never holding a whole file or bundle in memory.
//!
//! This file is the [`Packer`]: deletions first, then for each changed path
//! whether it is read now and how (a name that cannot travel, a file gone,
//! not regular, too large, unchanged, held by the receivers or busy is
//! settled here), small files read and compressed in parallel batches, the
//! others one at a time. The steps live beside it: `known.rs` says what the
//! receivers hold of a file, `source_read.rs` reads a file, `large.rs` cuts
//! one into parts, `delta_pack.rs` packs a delta, `cutter.rs` cuts entries
//! into bundles in the outbox, `writer.rs` writes one bundle's zip,
//! `zip_entry.rs` picks deflate or store, `limits.rs` says how large things
//! may be.
//!
//! A file is read once into the bundle: the bytes go to the zip entry and
//! to BLAKE3 in the same pass (a file of 4 MiB or more is then noted in
//! [`Report::unsigned`], for the sender to sign off the packing path). Only
//! a file the receivers may hold is read before (`known.rs`): one of a size
//! they hold, or one whose old version was signed, which that read signs
//! afresh (a delta then reads only its changed bytes again).
//!
//! A file's size, mtime and inode are checked before and after; a file
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::cutter::Cutter;
use super::delta::DELTA_MIN;
use super::delta_pack::{Planned, Signing, pack_delta};
use super::growing::Growing;
use super::known::{Known, Lookups, known};
use super::large::pack_large;
use super::manifest::FileMeta;
use super::source_read::{Outcome, Prepared, ReadMode, Reader, Source};
use super::writer::{COPY_BUF, need, zip_err};
use crate::changes::Op;
use crate::source_dir::SourceDir;
use crate::stamp::{Kind, Stamp};

// What other modules use of the sender's side, whichever room it lives in.
pub use super::cutter::{Packed, Report, SkippedLink, Unsigned, bundle_file_name, is_outbox_name};
pub use super::delta_pack::{Signatures, Signed, sign};
pub use super::limits::{FirstBundle, HOLD_MEASURES_FROM, Limits, MIN_CHUNK_SIZE};
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
    /// Told of each bundle as it is opened, which a transport may send as
    /// it grows ([`Growing`]).
    pub opened: &'a dyn Fn(&Arc<Growing>),
    /// Whether an event touched the path since this pack began: its content
    /// is in flux, so it stays pending instead of shipping.
    pub touched: &'a (dyn Fn(&str) -> bool + Sync),
    /// Whether files worth deflating are deflated now (`sender.compress`,
    /// the links' measured rate), asked afresh for each file: a link
    /// measured while a run packs changes the files after it.
    pub deflate: &'a (dyn Fn() -> bool + Sync),
    /// Called once a run's first bundle held small, with at least
    /// [`HOLD_MEASURES_FROM`] stored ([`FirstBundle::stored`]), is out,
    /// before the next file's bytes are read into a bundle (what is read
    /// to decide whether and how it ships, such as hashing a file the
    /// receivers may hold, is not held back): returns once the links are
    /// measured by it (or a bound passed), so `deflate` answers for what
    /// follows by that measure, and no deflate behind the bundle takes the
    /// CPU its measure needs.
    pub await_measure: &'a (dyn Fn() + Sync),
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
        // What is read into a first bundle held small may be stored (see
        // `FirstBundle::stored`).
        let stored = AtomicBool::new(false);
        let deflate = || !stored.load(Ordering::Relaxed) && (self.deflate)();
        let mut run = Run {
            source: self.source,
            reader: Reader {
                dir: &dir,
                scratch: self.outbox,
                touched: self.touched,
                deflate: &deflate,
                buf: vec![0u8; COPY_BUF],
            },
            cut: Cutter {
                outbox: self.outbox,
                sender: self.sender,
                limits: self.limits,
                closed: Default::default(),
                alloc_seq: &mut *self.alloc_seq,
                emit: &mut *self.emit,
                opened: self.opened,
                open: None,
            },
            report,
            batch: Vec::new(),
            batch_bytes: 0,
            held_left: self
                .limits
                .first_bundle
                .map_or(0, |FirstBundle { max, stored }| stored.min(max)),
            stored: &stored,
            await_measure: self.await_measure,
            measure_due: false,
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
    /// Bytes still to be read stored into a first bundle held small
    /// ([`FirstBundle::stored`]); 0 once read, or with no such hold.
    held_left: u64,
    /// Whether the files being read now are stored, whatever `deflate`
    /// says (read by the reader's `deflate`).
    stored: &'r AtomicBool,
    await_measure: &'r (dyn Fn() + Sync),
    /// The held first bundle went out and nothing was read since: the
    /// next read waits for its measure first.
    measure_due: bool,
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
        for item in &deletions {
            self.cut.add_deletion(self.report, &item.path)?;
        }
        let deleted: Vec<String> = deletions.into_iter().map(|i| i.path.clone()).collect();
        for item in items.into_iter().filter(|i| i.op == Op::Upsert) {
            if let Some(admitted) = self.admit(&item)? {
                self.pack_upsert(item.path, admitted)?;
            }
        }
        if !self.batch.is_empty() {
            self.pack_batch()?;
        }
        // Last: a file renamed takes its signature from the deleted path.
        if let Some(signs) = self.signs {
            deleted.iter().for_each(|path| signs.forget(path));
        }
        Ok(())
    }

    /// Whether `item` is to be read now, with its stamp, and how. `None`
    /// once it is dealt with: its name cannot travel, it is gone, a
    /// directory or symlink (packed here: they have no content to read),
    /// not a file, too large, unchanged, or busy.
    fn admit(&mut self, item: &PackItem) -> io::Result<Option<Admitted>> {
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
        let busy =
            (self.reader.touched)(path) || item.quiet_for.is_some_and(|q| stamp.modified_within(q));
        // A file still being written, or overdue, is not read to sign it.
        let may_sign = !busy && !item.overdue;
        let at = Lookups {
            dir: self.reader.dir,
            held: self.held,
            signs: self.signs,
        };
        let limits = &self.cut.limits;
        let known = known(&at, (item, stamp), (limits, may_sign), &mut self.reader.buf);
        if known == Known::Unchanged {
            return Ok(None);
        }
        if busy && !item.overdue {
            self.report.requeue.push(path.clone());
            return Ok(None);
        }
        let read = |signed| {
            let how = how_to_read(item);
            Ok(Some(Admitted { stamp, how, signed }))
        };
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
                    return read(None);
                }
                self.copy_signature(&from, path, hash);
            }
            Known::Elsewhere(..) => return read(None),
            // ...or an older version of it here: the bytes that changed.
            Known::Delta(planned) => self.pack_delta(path, stamp, *planned)?,
            Known::Changed(signed) => return read(Some(signed)),
            Known::New | Known::Unchanged => return read(None),
        }
        Ok(None)
    }

    /// `rel`, with content `hash`, is made by a copy of `from`: it shares
    /// `from`'s signature, so its next change can be a delta too.
    fn copy_signature(&self, from: &str, rel: &str, hash: blake3::Hash) {
        let Some(signs) = self.signs else { return };
        if let Some(sig) = signs.get(from).filter(|s| s.hash == *hash.as_bytes()) {
            signs.put(rel, &sig);
        }
    }

    /// Pack the file `rel` as the delta `planned` (gone meanwhile:
    /// nothing).
    fn pack_delta(&mut self, rel: &str, stamp: Stamp, planned: Planned) -> io::Result<()> {
        let signs = self.signs.expect("a delta is planned from a signature");
        let abs = self.source.join(rel);
        // A delta is deflated as `deflate` says: it does not count
        // against a held first bundle (`read_held`).
        self.stored.store(false, Ordering::Relaxed);
        self.await_due();
        match self.reader.open(rel, &abs, stamp, ReadMode::Strict) {
            Ok(Some(src)) => pack_delta(&mut self.cut, self.report, src, planned, signs)?,
            Ok(None) => {}
            Err(e) => self.report.failed.push((rel.to_owned(), e.to_string())),
        }
        Ok(())
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
    fn pack_upsert(&mut self, rel: String, admitted: Admitted) -> io::Result<()> {
        let Admitted { stamp, how, signed } = admitted;
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
            // A batch ends where the held first bundle's bytes do, so
            // what it stores is no more than they are and one file.
            let ends_hold = self.held_left > 0 && self.batch_bytes >= self.held_left;
            if ends_hold || self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_FILES {
                self.pack_batch()?;
            }
            return Ok(());
        }
        let ends_hold = self.read_held(stamp.size)?;
        self.pack_read(&rel, (&abs, stamp, how), signed)?;
        if ends_hold {
            self.end_hold()?;
        }
        Ok(())
    }

    /// Read the file `rel` (at `abs`, found with `stamp`) into the open
    /// bundle now, whole or in parts.
    fn pack_read(
        &mut self,
        rel: &str,
        (abs, stamp, how): (&Path, Stamp, ReadMode),
        signed: Option<Signed>,
    ) -> io::Result<()> {
        let chunk_size = self.cut.limits.chunk_size;
        let src = match self.reader.open(rel, abs, stamp, how) {
            Ok(Some(src)) => src,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.report.failed.push((rel.to_owned(), e.to_string()));
                return Ok(());
            }
        };
        // A snapshot's size is the clone's: it decides, not the listed one.
        let signs = self.signs.filter(|_| src.stamp.size >= DELTA_MIN);
        let signing = signs.map(|s| match signed {
            Some(signed) => Signing::Done(s, signed),
            None => Signing::Later,
        });
        if src.stamp.size > chunk_size {
            pack_large(&mut self.cut, self.report, src, signing)
        } else {
            pack_whole(&mut self.cut, self.report, src, signing)
        }
    }

    /// About to read `bytes` (one file, or a batch): they are stored if
    /// they begin within the held first bundle's bytes and fit in what is
    /// left of them, give or take one small file (a larger file is read as
    /// any other: storing it could cost a slow link far more than the
    /// hold), and counted against them. Whether the hold ends with them:
    /// then, once they are in, the first bundle is sealed
    /// ([`Run::end_hold`]); one too large for the hold ends it before it
    /// is read.
    fn read_held(&mut self, bytes: u64) -> io::Result<bool> {
        if self.held_left > 0 && bytes > self.held_left + PARALLEL_MAX {
            self.end_hold()?;
        }
        self.await_due();
        let within = self.held_left > 0;
        self.stored.store(within, Ordering::Relaxed);
        if within {
            self.report.held_stored += bytes;
        }
        self.held_left = self.held_left.saturating_sub(bytes);
        Ok(within && self.held_left == 0)
    }

    /// The held first bundle's bytes are read. If they are enough to
    /// measure a link by ([`HOLD_MEASURES_FROM`]), seal it, so it goes out
    /// now rather than when the next entry finds it full (unless an entry
    /// the hold read did so already), and have the next read wait for the
    /// links' measure of it ([`Run::await_due`]).
    fn end_hold(&mut self) -> io::Result<()> {
        self.held_left = 0;
        if self.report.held_stored < HOLD_MEASURES_FROM {
            return Ok(());
        }
        if self.report.bundles.is_empty() {
            self.cut.seal(self.report)?;
        }
        // Sealed empty (all it held gone), nothing went out to wait for.
        self.measure_due = !self.report.bundles.is_empty();
        Ok(())
    }

    /// Before a file is read that may be deflated: if the held first
    /// bundle just went out, wait for its measure, so the file is deflated
    /// or not by it rather than by none. (A run that ends with the hold
    /// waits for nothing.)
    fn await_due(&mut self) {
        if std::mem::take(&mut self.measure_due) {
            (self.await_measure)();
        }
    }

    /// Pack the batched small files: read, check, hash and compress them on
    /// every core, then append the compressed entries in order.
    fn pack_batch(&mut self) -> io::Result<()> {
        use rayon::prelude::*;
        let batch = std::mem::take(&mut self.batch);
        let bytes = std::mem::take(&mut self.batch_bytes);
        let ends_hold = self.read_held(bytes)?;
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
        if ends_hold {
            self.end_hold()?;
        }
        Ok(())
    }
}

/// A file to read now, with its stamp, how it is read, and its signature
/// when it was signed while the receivers' copy was looked at.
struct Admitted {
    stamp: Stamp,
    how: ReadMode,
    signed: Option<Signed>,
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

/// Pack the file `src` reads as one entry of the open bundle, signing it
/// as `signing` says.
fn pack_whole(
    cut: &mut Cutter<'_>,
    report: &mut Report,
    mut src: Source<'_>,
    signing: Option<Signing<'_>>,
) -> io::Result<()> {
    let (rel, stamp) = (src.rel, src.stamp);
    let b = cut.room_for(report, need(rel, stamp.size), rel)?;
    let options = src.entry_options();
    let mut hasher = blake3::Hasher::new();
    match src.write_entry(
        &mut b.zip,
        rel,
        options,
        &[(0, stamp.size)],
        Some(&mut hasher),
    )? {
        Outcome::Lost(why) => report.lost(rel, why),
        Outcome::Copied { overtaken } => {
            if overtaken {
                report.unsettled.push(rel.to_owned());
            }
            let hash = hasher.finalize();
            b.add_file(rel, stamp, hash);
            if let Some(signing) = signing {
                signing.store(report, rel, (stamp, hash));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::delta::Signature;
    use std::sync::atomic::AtomicUsize;

    /// Signatures that count how often one is asked for (the file is then
    /// read whole to sign it) and hold none.
    #[derive(Default)]
    struct Asked(AtomicUsize);

    impl Signatures for Asked {
        fn get(&self, _: &str) -> Option<Signature> {
            self.0.fetch_add(1, Ordering::Relaxed);
            None
        }
        fn put(&self, _: &str, _: &Signature) {}
        fn forget(&self, _: &str) {}
    }

    /// Found by review: a large file still being written (an event touched
    /// it) was read whole to sign it before it was found busy and left
    /// pending, at every cut while it was written. Now a busy or overdue
    /// file is not looked up for a delta at all.
    #[test]
    fn a_busy_large_file_is_not_read_to_sign_it() {
        let t = tempfile::tempdir().unwrap();
        let (src, out) = (t.path().join("src"), t.path().join("out"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(src.join("big"), vec![7u8; DELTA_MIN as usize]).unwrap();
        let dir = SourceDir::open(&src).unwrap();
        let stamp = Stamp::of_stat(&dir.stat("big").unwrap());
        let previous = FileMeta::of(&stamp, blake3::hash(b"older").to_hex().to_string());
        let item = PackItem {
            previous: Some(previous),
            reuse: true,
            ..PackItem::upsert("big")
        };
        for (busy, asked_when_settled) in [(true, 0), (false, 1)] {
            let asked = Asked::default();
            let report = Packer {
                source: &src,
                outbox: &out,
                sender: "test",
                limits: Limits::new(64 << 20, 256 << 20, 100),
                alloc_seq: &mut || Ok(1),
                emit: &mut |_| Ok(()),
                opened: &|_| {},
                touched: &|_| busy,
                deflate: &|| false,
                await_measure: &|| {},
                held: None,
                signatures: Some(&asked),
            }
            .pack(vec![item.clone()])
            .unwrap();
            assert_eq!(report.requeue.len(), usize::from(busy));
            assert_eq!(
                asked.0.load(Ordering::Relaxed),
                asked_when_settled,
                "busy: {busy}"
            );
        }
    }

    #[test]
    fn a_file_whose_directory_was_swapped_before_it_was_read_does_not_ship() {
        // A deploy swaps `a` for a new release without the file after the
        // run reached `a`: the old file, still readable through the
        // directory the run reached, must not ship as if it were in `a`.
        // Small (read whole), large (streamed) and overdue (a snapshot).
        for (name, size, overdue) in [
            ("x", 100, false),
            ("big", PARALLEL_MAX as usize + 1, false),
            ("late", 100, true),
        ] {
            let t = tempfile::tempdir().unwrap();
            let (src, out) = (t.path().join("src"), t.path().join("out"));
            std::fs::create_dir_all(src.join("a")).unwrap();
            std::fs::create_dir_all(src.join("a.new")).unwrap();
            std::fs::create_dir_all(&out).unwrap();
            std::fs::write(src.join("a").join(name), vec![b'o'; size]).unwrap();
            std::fs::write(src.join("a.new/y"), "new release").unwrap();
            let swapped = std::sync::atomic::AtomicBool::new(false);
            // Asked first as the run admits the file, once it reached `a`.
            let touched = |_: &str| {
                if !swapped.swap(true, Ordering::Relaxed) {
                    std::fs::rename(src.join("a"), src.join("a.old")).unwrap();
                    std::fs::rename(src.join("a.new"), src.join("a")).unwrap();
                }
                false
            };
            let mut emitted = Vec::new();
            let rel = format!("a/{name}");
            let item = PackItem {
                overdue,
                ..PackItem::upsert(&rel)
            };
            let report = Packer {
                source: &src,
                outbox: &out,
                sender: "test",
                limits: Limits::new(64 << 20, 256 << 20, 100),
                alloc_seq: &mut || Ok(1),
                emit: &mut |p| {
                    emitted.push(p.path);
                    Ok(())
                },
                opened: &|_| {},
                touched: &touched,
                deflate: &|| false,
                await_measure: &|| {},
                held: None,
                signatures: None,
            }
            .pack(vec![item])
            .unwrap();
            assert!(swapped.load(Ordering::Relaxed), "{rel}");
            assert!(report.shipped.is_empty(), "{rel}: {:?}", report.shipped);
            for bundle in emitted {
                let zip = zip::ZipArchive::new(std::fs::File::open(bundle).unwrap()).unwrap();
                assert!(zip.index_for_name(&rel).is_none(), "the old {rel} shipped");
            }
        }
    }
}

/// Pack `items` from `src` into bundles in `out` within `limits`,
/// deflating what is worth it, as a sender with nothing held or signed
/// would; the bundles' paths, in order. For tests.
#[cfg(test)]
pub(super) fn pack_for_test(
    src: &Path,
    out: &Path,
    limits: Limits,
    items: Vec<PackItem>,
) -> Vec<PathBuf> {
    pack_watched((src, out, limits, items), &|| true, &|_| {}).0
}

/// [`pack_for_test`], deflating as `deflate` says, with `await_measure`
/// told how many bundles were emitted each time the packer awaits a
/// measure; the bundles' paths, in order, and the run's report.
#[cfg(test)]
pub(super) fn pack_watched(
    (src, out, limits, items): (&Path, &Path, Limits, Vec<PackItem>),
    deflate: &(dyn Fn() -> bool + Sync),
    await_measure: &(dyn Fn(usize) + Sync),
) -> (Vec<PathBuf>, Report) {
    let emitted = std::sync::Mutex::new(Vec::new());
    let mut seq = 0;
    let report = Packer {
        source: src,
        outbox: out,
        sender: "test",
        limits,
        alloc_seq: &mut || {
            seq += 1;
            Ok(seq)
        },
        emit: &mut |p| {
            emitted.lock().unwrap().push(p.path);
            Ok(())
        },
        opened: &|_| {},
        touched: &|_| false,
        deflate,
        await_measure: &|| await_measure(emitted.lock().unwrap().len()),
        held: None,
        signatures: None,
    }
    .pack(items)
    .unwrap();
    (emitted.into_inner().unwrap(), report)
}

#[cfg(test)]
mod held_first_tests {
    use super::*;
    use zip::CompressionMethod::{Deflated, Stored};

    /// A fresh source holding `files` (name, bytes), an empty outbox
    /// beside it, the items that upsert each file, and limits with the
    /// first bundle held as `first` says.
    fn source_of(
        files: &[(impl AsRef<str>, Vec<u8>)],
        first: Option<FirstBundle>,
    ) -> (tempfile::TempDir, PathBuf, PathBuf, Vec<PackItem>, Limits) {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("src"), dir.path().join("out"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        for (name, bytes) in files {
            std::fs::write(src.join(name.as_ref()), bytes).unwrap();
        }
        let items = files
            .iter()
            .map(|(n, _)| PackItem::upsert(n.as_ref()))
            .collect();
        let limits = Limits {
            first_bundle: first,
            ..Limits::new(64 << 20, 256 << 20, 1000)
        };
        (dir, src, out, items, limits)
    }

    /// Pack `files` (name, bytes) from a fresh source with deflate on and
    /// the first bundle held to `first` bytes; each bundle's pages, with
    /// their method and size, in order.
    fn pack(files: &[(impl AsRef<str>, Vec<u8>)], first: Option<u64>) -> Vec<Pages> {
        let held = first.map(|max| FirstBundle { max, stored: max });
        let (_dir, src, out, items, limits) = source_of(files, held);
        pages_of(&pack_for_test(&src, &out, limits, items))
    }

    /// One bundle's pages, with their method and size, in order.
    type Pages = Vec<(zip::CompressionMethod, u64)>;

    /// Each bundle's pages.
    fn pages_of(bundles: &[PathBuf]) -> Vec<Pages> {
        bundles
            .iter()
            .map(|path| {
                let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
                let mut pages = Vec::new();
                for i in 0..zip.len() {
                    let e = zip.by_index(i).unwrap();
                    if e.name().is_ok_and(|n| n.starts_with('p')) {
                        pages.push((e.compression(), e.size()));
                    }
                }
                pages
            })
            .collect()
    }

    /// `n` pages of `len` bytes, named `p00`, `p01`...
    fn pages(n: usize, len: usize) -> Vec<(String, Vec<u8>)> {
        (0..n).map(|i| (format!("p{i:02}"), page(len, i))).collect()
    }

    /// A page of `len` bytes that deflates well, unlike any other seed's.
    fn page(len: usize, seed: usize) -> Vec<u8> {
        let mut page = format!("<p>page {seed}: the same words again</p>\n")
            .repeat(len / 30)
            .into_bytes();
        page.truncate(len);
        page
    }

    #[test]
    fn a_first_bundle_held_small_is_stored_and_what_follows_deflated() {
        // 24 pages of 512 KiB, the first bundle held to 4 MiB.
        let files = pages(24, 512 << 10);
        let bundles = pack(&files, Some(4 << 20));
        assert!(bundles.len() >= 2, "{bundles:?}");
        assert!(
            bundles[0].iter().all(|(m, _)| *m == Stored),
            "{:?}",
            bundles[0]
        );
        assert!(bundles[0].iter().map(|(_, n)| n).sum::<u64>() <= 4 << 20);
        let stored: u64 = bundles
            .iter()
            .flatten()
            .filter(|(m, _)| *m == Stored)
            .map(|(_, n)| n)
            .sum();
        assert!(stored <= (4 << 20) + PARALLEL_MAX, "{stored} bytes stored");
        // Stored first, then deflated: the hold is read once.
        let methods: Vec<_> = bundles.iter().flatten().map(|(m, _)| *m).collect();
        let first_deflated = methods.iter().position(|m| *m == Deflated);
        let first_deflated = first_deflated.expect("pages after the hold deflated");
        assert!(
            methods[first_deflated..].iter().all(|m| *m == Deflated),
            "{methods:?}"
        );
        // Unheld, every page is deflated.
        let unheld = pack(&files, None);
        assert!(
            unheld.iter().flatten().all(|(m, _)| *m == Deflated),
            "{unheld:?}"
        );
    }

    /// Pack `files` as [`pack`] does, with a link that is measured fast
    /// when the packer awaits its measure: each bundle's pages, how many
    /// bundles had been emitted each time it awaited, and how many bytes
    /// it stored in its hold.
    fn pack_measured(
        files: &[(impl AsRef<str>, Vec<u8>)],
        first: FirstBundle,
    ) -> (Vec<Pages>, Vec<usize>, u64) {
        let (_dir, src, out, items, limits) = source_of(files, Some(first));
        let awaited = std::sync::Mutex::new(Vec::new());
        let measured_fast = AtomicBool::new(false);
        let (emitted, report) = pack_watched(
            (&src, &out, limits, items),
            &|| !measured_fast.load(Ordering::Relaxed),
            &|emitted| {
                awaited.lock().unwrap().push(emitted);
                measured_fast.store(true, Ordering::Relaxed);
            },
        );
        let awaited = awaited.into_inner().unwrap();
        (pages_of(&emitted), awaited, report.held_stored)
    }

    #[test]
    fn the_held_first_bundle_goes_out_and_is_measured_before_the_files_after_it_are_read() {
        // 24 pages of 512 KiB, the first bundle held to 4 MiB: the packer
        // awaits the measure once, with that bundle out, and the link
        // measured fast stores every page after it. (Read before the
        // measure, the next batch would be deflated, as for a link not
        // measured.)
        let files = pages(24, 512 << 10);
        let (bundles, awaited, _) = pack_measured(&files, held(4 << 20));
        assert_eq!(awaited, [1], "{bundles:?}");
        assert!(bundles[0].len() <= 8, "{bundles:?}");
        assert!(
            bundles.iter().flatten().all(|(m, _)| *m == Stored),
            "{bundles:?}"
        );
        assert_eq!(bundles.iter().flatten().count(), 24);

        // A file too large for what is left of the hold ends it before it
        // is read: the first bundle goes out, then it is read, stored.
        let files = [("p1", page(5 << 20, 1)), ("p2", page(10 << 20, 2))];
        let (bundles, awaited, _) = pack_measured(&files, held(8 << 20));
        assert_eq!(awaited, [1], "{bundles:?}");
        assert_eq!(bundles.len(), 2, "{bundles:?}");
        assert!(
            bundles.iter().flatten().all(|(m, _)| *m == Stored),
            "{bundles:?}"
        );

        // A run that ends with its hold has nothing to wait for.
        let (bundles, awaited, _) = pack_measured(&files[..1], held(8 << 20));
        assert_eq!(awaited, [0usize; 0], "{bundles:?}");
        let (bundles, awaited, _) = pack_measured(&files[..1], held(5 << 20));
        assert_eq!(awaited, [0usize; 0], "{bundles:?}");
    }

    /// A first bundle held to `max` bytes, all stored.
    fn held(max: u64) -> FirstBundle {
        FirstBundle { max, stored: max }
    }

    #[test]
    fn a_hold_with_too_little_stored_to_measure_by_is_not_waited_for() {
        let files = pages(24, 128 << 10);
        // Nothing left to store: no wait, and what follows is deflated.
        let deflated = FirstBundle {
            max: 4 << 20,
            stored: 0,
        };
        let (bundles, awaited, _) = pack_measured(&files, deflated);
        assert_eq!(awaited, [0usize; 0], "{bundles:?}");
        assert!(bundles.iter().flatten().all(|(m, _)| *m == Deflated));
        // 512 KiB left to store (an earlier run stored the rest): they
        // are stored, too few to measure by, and not waited for.
        let (bundles, awaited, stored) = pack_measured(
            &files,
            FirstBundle {
                max: 4 << 20,
                stored: 512 << 10,
            },
        );
        assert_eq!(awaited, [0usize; 0], "{bundles:?}");
        assert_eq!(stored, 512 << 10, "what the run spent of the budget");
        let stored = bundles.iter().flatten().filter(|(m, _)| *m == Stored);
        assert_eq!(stored.count(), 4, "{bundles:?}");
        // 3 MiB stored, then a file too large for the rest: too few stored
        // to measure by, so not waited for.
        let files3 = [("p1", page(3 << 20, 1)), ("p2", page(6 << 20, 2))];
        let (bundles, awaited, stored) = pack_measured(&files3, held(4 << 20));
        assert_eq!(awaited, [0usize; 0], "{bundles:?}");
        assert_eq!(stored, 3 << 20);
        // A first file too large for the hold ends it before anything is
        // stored: nothing went out to wait for, and it is deflated.
        let files = [("p1", page(6 << 20, 1)), ("p2", page(128 << 10, 2))];
        let (bundles, awaited, _) = pack_measured(&files, held(4 << 20));
        assert_eq!(awaited, [0usize; 0], "{bundles:?}");
        assert!(bundles.iter().flatten().all(|(m, _)| *m == Deflated));
    }

    #[test]
    fn a_file_larger_than_the_hold_left_is_deflated_as_any_other() {
        // 3 MiB (read alone, not batched), then 6 MiB, against a 4 MiB hold.
        let files = [("p1", page(3 << 20, 1)), ("p2", page(6 << 20, 2))];
        let methods: Vec<_> = pack(&files, Some(4 << 20)).into_iter().flatten().collect();
        assert_eq!(methods.len(), 2, "{methods:?}");
        assert_eq!(methods[0].0, Stored, "{methods:?}");
        assert_eq!(methods[1].0, Deflated, "{methods:?}");
    }
}
