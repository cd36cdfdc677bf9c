//! One bundle being written: the zip on a temporary file in the outbox,
//! its manifest, and the tallies that say how full it is. Sealing writes
//! the manifest and the central directory. Every entry ends with a flush,
//! at which the file publishes how much of it is final, for a transport
//! that sends the bundle while it grows ([`Growing`]). Knows nothing of the
//! source tree or of when a bundle is cut; writes only the bundle's own
//! file.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use unicode_normalization::UnicodeNormalization;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::delta::{Recipe, Signature};
use super::growing::{Growing, Publisher};
use super::limits::Limits;
use super::manifest::{
    CopyEntry, DeltaEntry, DirEntry, FORMAT, FileEntry, FileMeta, LinkEntry, MANIFEST_ENTRY,
    Manifest, PartEntry, delta_entry_name,
};
use super::summary::Summary;
use crate::stamp::Stamp;

/// Buffer for copying a source file into a bundle, and for writing the bundle.
pub(super) const COPY_BUF: usize = 1 << 20;
/// Upper bound of zip headers, central directory record and manifest line per entry.
const ENTRY_OVERHEAD: u64 = 512;
/// Bytes counted for an empty bundle: the manifest's head and the zip's end.
const EMPTY_BUNDLE: u64 = 1024;
/// Bytes a deletion adds to the manifest beyond its path.
const DELETION_OVERHEAD: u64 = 8;

/// The zip a bundle is written through.
pub(super) type BundleZip = ZipWriter<BundleFile>;

/// A bundle being written, not yet sealed.
pub(super) struct OpenBundle {
    pub(super) zip: BundleZip,
    /// Set when the bundle is abandoned: the writer's last words go nowhere.
    discard: Arc<AtomicBool>,
    tmp: tempfile::TempPath,
    /// The bundle as those sending it while it grows see it; sealed by the
    /// cutter once the bundle is on its way, abandoned if dropped first.
    publisher: Publisher,
    manifest: Manifest,
    summary: Summary,
    changes: Vec<(String, Option<FileMeta>)>,
    used: u64,
    /// Bytes of the files the receiver copies from its own (no entry).
    copied: u64,
    /// Files, parts and deletions so far.
    entries: usize,
    /// Names after Unicode NFC normalisation: two equal ones in one bundle
    /// are refused by the receiver, so the second waits for the next bundle.
    normalised: HashSet<String>,
}

/// What a sealed bundle leaves: its file, still under the temporary name,
/// and what it carries.
pub(super) struct Sealed {
    pub(super) tmp: tempfile::TempPath,
    pub(super) publisher: Publisher,
    pub(super) summary: Summary,
    pub(super) changes: Vec<(String, Option<FileMeta>)>,
    /// The paths its copies are made from.
    pub(super) sources: Vec<String>,
}

impl OpenBundle {
    /// Start a bundle from `sender` in `file`, which `tmp` removes unless
    /// the bundle is sealed and persisted; it is cut at `max_size` bytes.
    pub(super) fn new(
        file: File,
        tmp: tempfile::TempPath,
        sender: &str,
        max_size: u64,
    ) -> io::Result<Self> {
        let discard = Arc::new(AtomicBool::new(false));
        let clone = file.try_clone().map_err(|e| with_path(e, &tmp))?;
        let growing = Growing::new(clone, max_size);
        let file = BundleFile {
            file,
            discard: discard.clone(),
            buf: Vec::with_capacity(COPY_BUF),
            pos: 0,
            len: 0,
            finished: 0,
            growing: growing.clone(),
        };
        let mut zip = ZipWriter::new(file);
        // Each entry's end reaches the file, which then publishes it.
        zip.set_flush_on_finish_file(true);
        Ok(Self {
            zip,
            discard,
            tmp,
            publisher: Publisher::new(growing),
            manifest: Manifest {
                format: FORMAT,
                sender: sender.to_owned(),
                seq: 0,
                created: 0,
                files: Vec::new(),
                parts: Vec::new(),
                deletions: Vec::new(),
                abandoned: Vec::new(),
                dirs: Vec::new(),
                links: Vec::new(),
                kept: Vec::new(),
                copies: Vec::new(),
                deltas: Vec::new(),
            },
            summary: Summary::default(),
            changes: Vec::new(),
            used: EMPTY_BUNDLE,
            copied: 0,
            entries: 0,
            normalised: HashSet::new(),
        })
    }

    /// The bundle as those sending it while it grows see it.
    pub(super) fn growing(&self) -> &Arc<Growing> {
        self.publisher.growing()
    }

    /// Whether an entry named `name` of `need` more bytes, that makes the
    /// receiver write `writes` bytes, must go to the next bundle: it would
    /// push the bundle past a limit, or clash with a name in it. An empty
    /// bundle takes anything.
    pub(super) fn is_full_for(
        &self,
        limits: &Limits,
        (need, writes): (u64, u64),
        name: &str,
    ) -> bool {
        self.entries > 0
            && (self.used + need > limits.max_bundle_size
                || self.entries + 1 > limits.max_entries
                || self.summary.bytes + self.copied + writes > limits.max_unpacked
                || self.clashes(name))
    }

    fn clashes(&self, rel: &str) -> bool {
        self.normalised.contains(&rel.nfc().collect::<String>())
    }

    fn note_name(&mut self, rel: &str) {
        self.normalised.insert(rel.nfc().collect());
    }

    /// Nothing in it: everything turned out torn, gone or unreadable.
    pub(super) fn is_empty(&self) -> bool {
        self.manifest.is_empty()
    }

    /// Give the bundle up: whatever the zip writer still writes goes nowhere,
    /// and its file is removed when it is dropped.
    pub(super) fn abandon(&self) {
        self.discard.store(true, Ordering::Relaxed);
    }

    /// Bytes a deletion of `path` adds.
    pub(super) fn deletion_need(path: &str) -> u64 {
        path.len() as u64 + DELETION_OVERHEAD
    }

    pub(super) fn add_deletion(&mut self, path: &str) {
        self.manifest.deletions.push(path.to_owned());
        self.summary.deletions += 1;
        self.used += Self::deletion_need(path);
        self.note_name(path);
        self.entries += 1;
        self.changes.push((path.to_owned(), None));
    }

    /// Bytes a directory or a link of `path` (to `target`) adds.
    pub(super) fn tree_entry_need(path: &str, target: &str) -> u64 {
        (path.len() + target.len()) as u64 + ENTRY_OVERHEAD
    }

    /// Record a directory with `stamp` (its mode travels; it has no entry
    /// in the zip).
    pub(super) fn add_dir(&mut self, rel: &str, stamp: Stamp) {
        self.used += Self::tree_entry_need(rel, "");
        self.note_name(rel);
        self.entries += 1;
        let meta = FileMeta::of(&stamp, String::new());
        self.changes.push((rel.to_owned(), Some(meta)));
        self.manifest.dirs.push(DirEntry {
            path: rel.to_owned(),
            mode: stamp.mode,
        });
    }

    /// Record a symlink to `target` with `stamp`; `hash` is the target's,
    /// what tells a changed link from the one shipped.
    pub(super) fn add_link(&mut self, rel: &str, target: &str, stamp: Stamp, hash: String) {
        self.used += Self::tree_entry_need(rel, target);
        self.note_name(rel);
        self.entries += 1;
        let meta = FileMeta::of(&stamp, hash);
        self.changes.push((rel.to_owned(), Some(meta)));
        self.manifest.links.push(LinkEntry {
            path: rel.to_owned(),
            target: target.to_owned(),
        });
    }

    /// Record a whole file, its entry already written, with its content hash.
    pub(super) fn add_file(&mut self, rel: &str, stamp: Stamp, hash: blake3::Hash) {
        let hash = hash.to_hex().to_string();
        self.summary.bytes += stamp.size;
        self.used += need(rel, stamp.size);
        self.summary.files += 1;
        let entry = self.take_file(rel, stamp, hash);
        self.manifest.files.push(entry);
    }

    /// Count a file the bundle makes at `rel` (one entry, its name taken),
    /// record what the receivers will have there, and return its manifest
    /// entry.
    fn take_file(&mut self, rel: &str, stamp: Stamp, hash: String) -> FileEntry {
        self.note_name(rel);
        self.entries += 1;
        let meta = FileMeta::of(&stamp, hash.clone());
        self.changes.push((rel.to_owned(), Some(meta)));
        FileEntry {
            path: rel.to_owned(),
            size: stamp.size,
            mtime: stamp.mtime,
            mtime_nsec: stamp.mtime_nsec,
            mode: stamp.mode,
            hash,
        }
    }

    /// Record a file the receivers hold with this content already (`hash`):
    /// it has no entry in the zip, only its metadata travels.
    pub(super) fn add_kept(&mut self, rel: &str, stamp: Stamp, hash: blake3::Hash) {
        let hash = hash.to_hex().to_string();
        self.used += Self::tree_entry_need(rel, &hash);
        self.summary.kept += 1;
        let entry = self.take_file(rel, stamp, hash);
        self.manifest.kept.push(entry);
    }

    /// Record a file the receivers make from their own copy at `from`
    /// (content `hash`): it has no entry in the zip.
    pub(super) fn add_copy(&mut self, rel: &str, from: &str, stamp: Stamp, hash: blake3::Hash) {
        let hash = hash.to_hex().to_string();
        self.used += Self::tree_entry_need(rel, &hash) + from.len() as u64;
        self.summary.copied += 1;
        self.copied += stamp.size;
        let f = self.take_file(rel, stamp, hash);
        self.manifest.copies.push(CopyEntry {
            path: f.path,
            from: from.to_owned(),
            size: f.size,
            mtime: f.mtime,
            mtime_nsec: f.mtime_nsec,
            mode: f.mode,
            hash: f.hash,
        });
    }

    /// Record a file the receivers rebuild from the version they hold and
    /// the bytes that changed, by `recipe` from `base`: new content
    /// `hash`, the entry of those bytes already written.
    pub(super) fn add_delta(
        &mut self,
        (rel, stamp, hash): (&str, Stamp, blake3::Hash),
        base: &Signature,
        recipe: &Recipe,
    ) {
        let data = recipe.data_len();
        let recipe = recipe.to_string();
        self.used += need(&delta_entry_name(rel), data) + recipe.len() as u64;
        self.summary.bytes += data;
        self.summary.files += 1;
        self.summary.deltas += 1;
        self.copied += stamp.size - data;
        let f = self.take_file(rel, stamp, hash.to_hex().to_string());
        let base_hash = blake3::Hash::from_bytes(base.hash).to_hex().to_string();
        self.manifest.deltas.push(DeltaEntry {
            path: f.path,
            base_size: base.size,
            base_hash,
            recipe,
            size: f.size,
            mtime: f.mtime,
            mtime_nsec: f.mtime_nsec,
            mode: f.mode,
            hash: f.hash,
        });
    }

    /// Record a part, its entry already written. The first part of a file
    /// claims the file's name in this bundle.
    pub(super) fn add_part(&mut self, part: PartEntry) {
        self.summary.parts += 1;
        self.summary.bytes += part.size;
        self.used += need(&part.entry_name(), part.size);
        self.entries += 1;
        if part.index == 0 {
            self.note_name(&part.path);
        }
        self.manifest.parts.push(part);
    }

    /// The sender gave up part set `set`: its file changed after some of
    /// its parts were packed. The receiver drops what it holds of it.
    pub(super) fn abandon_set(&mut self, set: String) {
        self.manifest.abandoned.push(set);
    }

    /// `rel` will be on the receiver, as `meta` says, once this bundle is applied.
    pub(super) fn ship(&mut self, rel: &str, meta: FileMeta) {
        self.summary.files += 1;
        self.changes.push((rel.to_owned(), Some(meta)));
    }

    /// Number the bundle `seq`, date it, and write its manifest and central
    /// directory. On an error the bundle is abandoned.
    pub(super) fn seal(self, seq: u64) -> io::Result<Sealed> {
        let OpenBundle {
            zip,
            discard,
            tmp,
            publisher,
            mut manifest,
            summary,
            changes,
            ..
        } = self;
        manifest.seq = seq;
        manifest.created = chrono::Utc::now().timestamp();
        seal(zip, &manifest).inspect_err(|_| discard.store(true, Ordering::Relaxed))?;
        let sources = manifest.copies.into_iter().map(|c| c.from).collect();
        Ok(Sealed {
            tmp,
            publisher,
            summary,
            changes,
            sources,
        })
    }
}

/// Write the manifest and the central directory, and flush the file.
fn seal(mut zip: BundleZip, manifest: &Manifest) -> io::Result<()> {
    zip.start_file(
        MANIFEST_ENTRY,
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated),
    )
    .map_err(zip_err)?;
    zip.write_all(&manifest.to_json())?;
    let mut out = zip.finish().map_err(zip_err)?;
    // No fsync: an outbox bundle is dropped at restart and its changes
    // found again by the catch-up, so it never needs to survive a crash.
    out.drain()?;
    out.flush()
}

/// Bytes an entry may add to a bundle: content, a little deflate expansion
/// on incompressible data, headers, central directory and manifest.
pub(super) fn need(name: &str, size: u64) -> u64 {
    size + size / 1000 + 3 * name.len() as u64 + ENTRY_OVERHEAD
}

/// The bundle file under construction, written through a buffer of
/// [`COPY_BUF`] (zip's own small writes would each be a system call).
/// Once the bundle is abandoned after a write error (a full disk),
/// everything written is discarded, so dropping the zip writer neither
/// fails nor prints (zip's `Drop` reports a failed finish on stderr). The
/// temporary file is removed with the bundle.
///
/// zip flushes it at the end of each entry (`set_flush_on_finish_file`),
/// and only then: every byte before that position is final. What of them
/// is in the file is published as such ([`Growing::publish`]); the buffer
/// is emptied into the file at a flush only once it holds [`DRAIN_AT`]
/// bytes, so a bundle of small files is still written in large writes.
/// Its own buffer, not a `BufWriter`, because zip takes that setting only
/// for a writer it could read back; nothing reads this one, and a read is
/// an error.
pub(super) struct BundleFile {
    file: File,
    discard: Arc<AtomicBool>,
    /// Bytes written and not yet in the file: they go at `pos - buf.len()`.
    buf: Vec<u8>,
    /// Position and length as the zip writer sees them (the buffer's
    /// bytes counted).
    pos: u64,
    len: u64,
    /// The end of the last entry finished (the last flush): no byte
    /// before it is written again.
    finished: u64,
    /// Told which bytes in the file are final.
    growing: Arc<Growing>,
}

/// A flush (an entry's end) empties the buffer into the file once it
/// holds this much: a follower of the bundle gets its bytes in steps no
/// larger, and a bundle of small files costs no system call per file.
const DRAIN_AT: usize = 256 << 10;

impl BundleFile {
    fn discarding(&self) -> bool {
        self.discard.load(Ordering::Relaxed)
    }

    fn abandon(&self) {
        self.discard.store(true, Ordering::Relaxed);
    }

    /// Write the buffer into the file. The first failed write abandons
    /// the bundle.
    fn drain(&mut self) -> io::Result<()> {
        if self.discarding() {
            self.buf.clear();
            return Ok(());
        }
        let r = self.file.write_all(&self.buf);
        self.buf.clear();
        r.inspect_err(|_| self.abandon())?;
        self.publish_final();
        Ok(())
    }

    /// Publish the bytes that are both final (before the end of the last
    /// entry finished) and in the file (not in the buffer, which holds the
    /// bytes just before the position).
    fn publish_final(&self) {
        let in_file = self.pos - self.buf.len() as u64;
        self.growing.publish(self.finished.min(in_file));
    }
}

impl Write for BundleFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = if self.discarding() {
            data.len()
        } else if self.buf.len() + data.len() <= COPY_BUF {
            self.buf.extend_from_slice(data);
            data.len()
        } else {
            self.drain()?;
            if data.len() < COPY_BUF {
                self.buf.extend_from_slice(data);
                data.len()
            } else {
                self.file.write(data).inspect_err(|_| self.abandon())?
            }
        };
        self.pos += n as u64;
        self.len = self.len.max(self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.discarding() {
            self.buf.clear();
            return Ok(());
        }
        // zip flushes only at the end of an entry, from its end: nothing
        // before it is patched again (see `growing.rs`).
        self.finished = self.pos;
        if self.buf.len() >= DRAIN_AT {
            self.drain()?;
        }
        self.publish_final();
        Ok(())
    }
}

impl Seek for BundleFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        // zip asks where it is at each entry's start: answered here, with
        // the buffer kept, or each small file would cost a write and a seek.
        let stays = match to {
            SeekFrom::Start(n) => n == self.pos,
            SeekFrom::Current(d) => d == 0,
            SeekFrom::End(_) => false,
        };
        if stays {
            return Ok(self.pos);
        }
        self.drain()?;
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

impl Read for BundleFile {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("a bundle being written is not read back"))
    }
}

pub(super) fn zip_err(e: zip::result::ZipError) -> io::Error {
    io::Error::other(e)
}

/// `e`, its message prefixed with the path it concerns (the source file
/// read, the bundle written).
pub fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::growing::Progress;

    fn open() -> (tempfile::TempDir, OpenBundle) {
        let dir = tempfile::tempdir().unwrap();
        let (file, tmp) = tempfile::NamedTempFile::new_in(dir.path())
            .unwrap()
            .into_parts();
        (dir, OpenBundle::new(file, tmp, "app1", 1 << 30).unwrap())
    }

    fn stamp(size: u64) -> Stamp {
        Stamp {
            dev: 1,
            ino: 2,
            size,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o644,
            kind: crate::stamp::Kind::File,
        }
    }

    #[test]
    fn an_empty_bundle_takes_anything() {
        let (_dir, b) = open();
        let tiny = Limits::new(1, 1, 1);
        assert!(b.is_empty());
        assert!(!b.is_full_for(&tiny, (u64::MAX / 2, u64::MAX / 2), "x"));
    }

    #[test]
    fn a_name_equal_after_nfc_waits_for_the_next_bundle() {
        let (_dir, mut b) = open();
        let roomy = Limits::new(1 << 20, 1 << 30, 1000);
        b.add_file("caf\u{e9}", stamp(3), blake3::hash(b"abc"));
        assert!(b.is_full_for(&roomy, (1, 1), "cafe\u{301}"));
        assert!(!b.is_full_for(&roomy, (1, 1), "other"));
    }

    #[test]
    fn every_limit_cuts_the_bundle() {
        let (_dir, mut b) = open();
        b.add_deletion("gone");
        b.add_file("a", stamp(100), blake3::hash(b"a"));
        let used = EMPTY_BUNDLE + OpenBundle::deletion_need("gone") + need("a", 100);
        let limits = Limits {
            max_unpacked: 1 << 20,
            ..Limits::new(1 << 20, used + 600, 3)
        };
        assert!(!b.is_full_for(&limits, (600, 600), "b"));
        assert!(b.is_full_for(&limits, (601, 601), "b"), "max_bundle_size");
        let two = Limits::new(1 << 20, 1 << 30, 2);
        assert!(b.is_full_for(&two, (1, 1), "b"), "max_entries");
        let unpacked = Limits {
            max_unpacked: 150,
            ..Limits::new(1 << 20, 1 << 30, 10)
        };
        assert!(b.is_full_for(&unpacked, (51, 51), "b"), "max_unpacked");
        assert!(!b.is_full_for(&unpacked, (50, 50), "b"));
        // A copy has no content in the bundle but is written all the same.
        assert!(b.is_full_for(&unpacked, (1, 51), "b"), "a copy's size");
        b.add_copy("c", "a", stamp(40), blake3::hash(b"a"));
        assert!(
            b.is_full_for(&unpacked, (11, 11), "b"),
            "what copies write counts"
        );
    }

    /// How a bundle's entries may be written: streamed through zip, stored
    /// or deflated, and dropped again (a file that changed while read);
    /// or prepared whole beforehand (a small file, compressed in parallel).
    #[derive(Debug, Clone)]
    enum Entry {
        Streamed {
            len: usize,
            deflate: bool,
            abort: bool,
        },
        Prepared {
            len: usize,
            deflate: bool,
        },
    }

    fn writes() -> impl proptest::strategy::Strategy<Value = Vec<Entry>> {
        use proptest::prelude::*;
        let one = prop_oneof![
            (
                0usize..(3 << 20),
                any::<bool>(),
                proptest::bool::weighted(0.2)
            )
                .prop_map(|(len, deflate, abort)| Entry::Streamed {
                    len,
                    deflate,
                    abort
                }),
            (0usize..(256 << 10), any::<bool>())
                .prop_map(|(len, deflate)| Entry::Prepared { len, deflate }),
        ];
        proptest::collection::vec(one, 0..12)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(24))]

        /// The invariant a transport sending a bundle as it grows relies
        /// on (`growing.rs`): whatever the bundle publishes as final, at
        /// every step, is a prefix of the sealed file, which publishes all
        /// of itself once sealed; and zip never reads it back.
        #[test]
        fn every_prefix_published_is_a_prefix_of_the_sealed_bundle(writes in writes()) {
            let (_dir, mut b) = open();
            let path = b.tmp.to_path_buf();
            let g = b.growing().clone();
            let mut seen = Vec::new();
            for (i, w) in writes.iter().enumerate() {
                let name = format!("f{i}");
                let (len, deflate) = match w {
                    Entry::Streamed { len, deflate, .. } | Entry::Prepared { len, deflate } => {
                        (*len, *deflate)
                    }
                };
                let method = if deflate { CompressionMethod::Deflated } else { CompressionMethod::Stored };
                let options = SimpleFileOptions::default().compression_method(method).large_file(len > (1 << 20));
                let data = crate::bundle::noise::noise(len / 2, i as u64)
                    .into_iter()
                    .chain(std::iter::repeat_n(b'a', len - len / 2))
                    .collect::<Vec<u8>>();
                match w {
                    Entry::Streamed { abort, .. } => {
                        b.zip.start_file(&name, options).unwrap();
                        b.zip.write_all(&data).unwrap();
                        if *abort {
                            b.zip.abort_file().unwrap();
                        }
                    }
                    Entry::Prepared { .. } => {
                        let z = zip::write::PreparedZipFile::from_data(&name, options, &data).unwrap();
                        b.zip.add_prepared_file(z).unwrap();
                    }
                }
                let Progress::Packing { final_len } = g.progress() else { panic!("ended early") };
                let on_disk = std::fs::read(&path).unwrap();
                proptest::prop_assert!(on_disk.len() as u64 >= final_len, "published past the file");
                seen.push(on_disk[..final_len as usize].to_vec());
            }
            let sealed = b.seal(7).unwrap();
            let whole = std::fs::read(&sealed.tmp).unwrap();
            proptest::prop_assert_eq!(g.progress(), Progress::Packing { final_len: whole.len() as u64 });
            for (i, prefix) in seen.iter().enumerate() {
                proptest::prop_assert!(whole.starts_with(prefix), "prefix {} of {} bytes changed", i, prefix.len());
            }
            let zip = zip::ZipArchive::new(File::open(&sealed.tmp).unwrap()).unwrap();
            let kept = writes.iter().filter(|w| !matches!(w, Entry::Streamed { abort: true, .. })).count();
            proptest::prop_assert_eq!(zip.len(), kept + 1);
            sealed.publisher.seal(7, whole.len() as u64);
            proptest::prop_assert_eq!(g.progress(), Progress::Sealed { seq: 7, size: whole.len() as u64 });
        }
    }

    #[test]
    fn small_entries_reach_the_file_together_not_one_write_each() {
        let (_dir, mut b) = open();
        let path = b.tmp.to_path_buf();
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for i in 0..50 {
            let z = zip::write::PreparedZipFile::from_data(
                format!("page-{i}.html"),
                options,
                &[b'x'; 1000],
            )
            .unwrap();
            b.zip.add_prepared_file(z).unwrap();
        }
        // 50 entries of about 1 KiB: zip asked where it stood at each one's
        // start, and nothing was written for it.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        for i in 50..400 {
            let z = zip::write::PreparedZipFile::from_data(
                format!("page-{i}.html"),
                options,
                &[b'x'; 1000],
            )
            .unwrap();
            b.zip.add_prepared_file(z).unwrap();
        }
        let written = std::fs::metadata(&path).unwrap().len();
        assert!(written >= DRAIN_AT as u64, "{written} bytes in the file");
        let sealed = b.seal(1).unwrap();
        let zip = zip::ZipArchive::new(File::open(&sealed.tmp).unwrap()).unwrap();
        assert_eq!(zip.len(), 401);
    }

    #[test]
    fn a_sealed_bundle_is_a_zip_with_its_manifest() {
        let (_dir, mut b) = open();
        b.add_deletion("gone");
        let sealed = b.seal(7).unwrap();
        assert_eq!(sealed.summary.deletions, 1);
        assert_eq!(sealed.changes, [("gone".to_owned(), None)]);
        let mut zip = zip::ZipArchive::new(File::open(&sealed.tmp).unwrap()).unwrap();
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(MANIFEST_ENTRY).unwrap(), &mut json).unwrap();
        let m = Manifest::parse(&json).unwrap();
        assert_eq!((m.seq, m.sender.as_str()), (7, "app1"));
        assert_eq!(m.deletions, ["gone"]);
    }
}
