//! The ledger: what the receiver has acknowledged, per path, kept durably in
//! the sender's state_dir so a restart ships only what changed meanwhile,
//! and which paths a receiver may hold in a state it does not know.
//!
//! On disk: `acked.snapshot` (one JSON object, see `snapshot.rs`) and
//! `acked.journal`, one line per record, each line
//! `<16 hex of BLAKE3(json)> <json>\n` ([`durable::journal_line`]). A record is either an acknowledged
//! bundle or a bundle about to go out ([`ShippingRecord`], written before it
//! can reach a receiver): a receiver may apply a bundle and the sender crash
//! before its acknowledgement is recorded, so until then the paths it
//! carries are *in doubt* and a restart ships them again whatever the
//! acknowledged state says, deletions included. A crash can leave a torn
//! last line; [`decode_journal`] drops it and anything after it.
//!
//! In memory the ledger holds the per-path state only from [`Ledger::open`]
//! until [`Ledger::take_files`] hands it to the sender, which keeps the one
//! copy of it (see `sender/shipped.rs`); from then on the ledger holds what
//! was acknowledged since the snapshot, and compacts by merging that into
//! the snapshot file as it streams it into a new one (temp, fsync, rename,
//! fsync dir) once the journal outgrows the snapshot or what changed since
//! reaches a quarter of it. Folding is pure; only [`Ledger::open`],
//! [`Ledger::record`], [`Ledger::shipping`] and compaction touch files.
//!
//! - `files.rs`: [`Meta`] and [`Files`]: the per-path state, compactly.
//! - `snapshot.rs`: the snapshot file, read and merged as a stream.
//! - `tests.rs`: the ledger's tests.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::manifest::FileMeta;
use crate::durable;

mod files;
mod snapshot;

pub use files::{Files, Meta};
use snapshot::Snapshot;

/// One acknowledged bundle: each path now has `Some(meta)` or was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    pub seq: u64,
    pub changes: Vec<(String, Option<FileMeta>)>,
}

/// Bundle `seq`, carrying `paths`, may reach a receiver from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippingRecord {
    pub seq: u64,
    pub paths: Vec<String>,
}

/// One journal line. Untagged, so journals written before shipping records
/// existed read as they are (an acknowledgement has `changes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Acked(AckRecord),
    Shipping(ShippingRecord),
}

impl Record {
    fn seq(&self) -> u64 {
        match self {
            Record::Acked(r) => r.seq,
            Record::Shipping(r) => r.seq,
        }
    }
}

/// Fold `r` into the last sequence acknowledged and the paths in doubt.
/// Pure.
fn fold_doubt(acked_seq: &mut u64, in_doubt: &mut BTreeMap<String, u64>, r: &Record) {
    match r {
        Record::Shipping(s) => {
            for path in &s.paths {
                let latest = in_doubt.entry(path.clone()).or_default();
                *latest = (*latest).max(s.seq);
            }
        }
        Record::Acked(a) => {
            for (path, _) in &a.changes {
                // Known again, unless a later bundle not yet acknowledged
                // carries it too.
                if in_doubt.get(path).is_some_and(|&s| s <= a.seq) {
                    in_doubt.remove(path);
                }
            }
            *acked_seq = (*acked_seq).max(a.seq);
        }
    }
}

impl Snapshot {
    /// Fold one record in. Pure.
    fn apply(&mut self, r: &Record) {
        fold_doubt(&mut self.acked_seq, &mut self.in_doubt, r);
        if let Record::Acked(a) = r {
            for (path, meta) in &a.changes {
                self.files.set(path, meta.as_ref().map(Meta::from));
            }
        }
    }
}

pub struct Ledger {
    dir: PathBuf,
    acked_seq: u64,
    in_doubt: BTreeMap<String, u64>,
    /// Acknowledged since the snapshot file was written, per path
    /// (`None`: deleted): merged into it at the next compaction.
    since: BTreeMap<String, Option<Meta>>,
    /// Every path's acknowledged state, from [`Ledger::open`] until
    /// [`Ledger::take_files`].
    files: Option<Files>,
    journal: File,
    journal_len: u64,
    snapshot_len: u64,
    /// Paths in the snapshot file.
    snapshot_files: u64,
    /// The journal's length when a compaction last failed, until one works.
    compact_failed_at: Option<u64>,
}

/// Journals smaller than this are never compacted…
const MIN_COMPACT: u64 = 1 << 20;
/// …nor is a snapshot for fewer changes since than this.
const MIN_SINCE: u64 = 1 << 14;

impl Ledger {
    fn snapshot_path(dir: &Path) -> PathBuf {
        dir.join("acked.snapshot")
    }

    fn journal_path(dir: &Path) -> PathBuf {
        dir.join("acked.journal")
    }

    /// Load the snapshot and replay the journal, dropping a torn tail.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let (snapshot, snapshot_len) =
            snapshot::read(&Self::snapshot_path(dir))?.unwrap_or_default();
        let snapshot_files = snapshot.files.len() as u64;
        // Records written after the snapshot all number above it: a bundle
        // is numbered before it is recorded as shipping, and acknowledged
        // after that.
        let folded = snapshot.acked_seq;
        let mut replay = Replay {
            snapshot,
            since: BTreeMap::new(),
        };
        let journal_path = Self::journal_path(dir);
        let good_len = match File::open(&journal_path) {
            Ok(f) => durable::read_journal(BufReader::with_capacity(1 << 20, f), |r: Record| {
                if r.seq() > folded {
                    replay.apply(&r);
                }
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let journal = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&journal_path)?;
        let on_disk = journal.metadata()?.len();
        if good_len < on_disk {
            tracing::warn!(
                journal = %journal_path.display(),
                dropped_bytes = on_disk - good_len,
                "dropping a torn tail from the journal (crash during a write)"
            );
        }
        // Cut the torn tail so new records follow the last good one.
        journal.set_len(good_len)?;
        journal.sync_all()?;
        let Replay { snapshot, since } = replay;
        let mut ledger = Self {
            dir: dir.to_owned(),
            acked_seq: snapshot.acked_seq,
            in_doubt: snapshot.in_doubt,
            since,
            files: Some(snapshot.files),
            journal,
            journal_len: good_len,
            snapshot_len,
            snapshot_files,
            compact_failed_at: None,
        };
        use std::io::Seek;
        ledger.journal.seek(io::SeekFrom::End(0))?;
        Ok(ledger)
    }

    /// Every path's acknowledged state, as loaded: handed over once, to
    /// the one user that keeps it (the sender); the ledger keeps only what
    /// changes from then on. Empty if taken before.
    pub fn take_files(&mut self) -> Files {
        self.files.take().unwrap_or_default()
    }

    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// Paths a receiver may hold in a state the acknowledged state does
    /// not say: a bundle carrying them may have been applied without its
    /// acknowledgement being recorded.
    pub fn in_doubt(&self) -> impl Iterator<Item = &str> {
        self.in_doubt.keys().map(String::as_str)
    }

    /// Durably record an acknowledged bundle. Blocking (fsync).
    pub fn record(&mut self, r: AckRecord) -> io::Result<()> {
        self.append(Record::Acked(r))
    }

    /// Durably record that bundle `seq`, carrying `paths`, may reach a
    /// receiver from now on; call it before the bundle can be sent.
    /// Blocking (fsync).
    pub fn shipping(&mut self, seq: u64, paths: Vec<String>) -> io::Result<()> {
        self.append(Record::Shipping(ShippingRecord { seq, paths }))
    }

    /// Write `r` durably, then compact if it is time. A compaction that
    /// fails (a full disk) is no failure of the record, which is on disk:
    /// it is warned about and tried again once the journal has grown by
    /// [`MIN_COMPACT`] more.
    fn append(&mut self, r: Record) -> io::Result<()> {
        let line = encode_record(&r);
        // The record must survive a crash before we rely on it.
        let written = self
            .journal
            .write_all(&line)
            .and_then(|()| self.journal.sync_data());
        if let Err(e) = written {
            // A full disk may have taken part of the line: cut it off, or
            // the next record would follow it and be lost with it at load.
            use std::io::Seek;
            let _ = self.journal.set_len(self.journal_len);
            let _ = self.journal.seek(io::SeekFrom::Start(self.journal_len));
            return Err(e);
        }
        self.journal_len += line.len() as u64;
        self.apply(&r);
        if self.compaction_due()
            && let Err(e) = self.compact()
        {
            tracing::warn!(
                error = %e,
                journal_bytes = self.journal_len,
                "could not compact the acknowledged state into its snapshot: the journal grows until a later try works"
            );
            self.compact_failed_at = Some(self.journal_len);
        }
        Ok(())
    }

    /// Whether the journal or what changed since the snapshot has grown
    /// enough to fold into a new snapshot, and not just after a failed try.
    fn compaction_due(&self) -> bool {
        let since_max = MIN_SINCE.max(self.snapshot_files / 4);
        let grown = self.journal_len > MIN_COMPACT.max(self.snapshot_len)
            || self.since.len() as u64 > since_max;
        let retry = self
            .compact_failed_at
            .is_none_or(|at| self.journal_len >= at + MIN_COMPACT);
        grown && retry
    }

    /// Fold a record just written into what is held.
    fn apply(&mut self, r: &Record) {
        fold_doubt(&mut self.acked_seq, &mut self.in_doubt, r);
        if let Record::Acked(a) = r {
            for (path, meta) in &a.changes {
                let meta = meta.as_ref().map(Meta::from);
                if let Some(files) = &mut self.files {
                    files.set(path, meta);
                }
                self.since.insert(path.clone(), meta);
            }
        }
    }

    /// Merge what was acknowledged since into a new snapshot, then start an
    /// empty journal. A crash in between leaves records the snapshot
    /// already holds; they are skipped by sequence on load.
    pub fn compact(&mut self) -> io::Result<()> {
        let began = std::time::Instant::now();
        let path = Self::snapshot_path(&self.dir);
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let written =
            snapshot::rewrite(&path, self.acked_seq, &self.since, &self.in_doubt).map_err(named)?;
        tracing::info!(
            files = written.files,
            bytes = written.bytes,
            changed = self.since.len(),
            ms = began.elapsed().as_millis() as u64,
            "acknowledged state compacted into its snapshot"
        );
        self.snapshot_len = written.bytes;
        self.snapshot_files = written.files;
        self.compact_failed_at = None;
        self.since.clear();
        self.journal.set_len(0)?;
        use std::io::Seek;
        self.journal.seek(io::SeekFrom::Start(0))?;
        self.journal.sync_all()?;
        self.journal_len = 0;
        Ok(())
    }

    /// Every path's acknowledged state, as [`FileMeta`]s: a copy, read
    /// again from the snapshot, with what was acknowledged since.
    #[cfg(test)]
    pub fn files(&self) -> BTreeMap<String, FileMeta> {
        let (mut snapshot, _) = snapshot::read(&Self::snapshot_path(&self.dir))
            .expect("snapshot readable")
            .unwrap_or_default();
        for (path, meta) in &self.since {
            snapshot.files.set(path, *meta);
        }
        snapshot
            .files
            .iter()
            .map(|(p, m)| (p.clone(), FileMeta::from(*m)))
            .collect()
    }
}

/// The snapshot as loaded, with the journal's records folded in as they
/// are read, and what they changed.
struct Replay {
    snapshot: Snapshot,
    since: BTreeMap<String, Option<Meta>>,
}

impl Replay {
    fn apply(&mut self, r: &Record) {
        self.snapshot.apply(r);
        if let Record::Acked(a) = r {
            for (path, meta) in &a.changes {
                self.since
                    .insert(path.clone(), meta.as_ref().map(Meta::from));
            }
        }
    }
}

pub fn encode_record(r: &Record) -> Vec<u8> {
    durable::journal_line(r)
}

/// Decode journal bytes: the records up to the first torn or corrupt line,
/// and how many bytes they span.
pub fn decode_journal(bytes: &[u8]) -> (Vec<Record>, usize) {
    durable::journal_lines(bytes)
}

#[cfg(test)]
mod tests;
