//! The ledger: what the receiver has acknowledged, per path, kept durably in
//! the sender's state_dir so a restart ships only what changed meanwhile.
//!
//! On disk: `acked.snapshot` (written whole: temp, fsync, rename, fsync dir)
//! and `acked.journal`, one line per acknowledged bundle, each line
//! `<16 hex of BLAKE3(json)> <json>\n` ([`durable::journal_line`]). A
//! crash can leave a torn last line;
//! [`decode_journal`] drops it and anything after it. The journal is folded
//! into a new snapshot once it outgrows it. Parsing is pure; only
//! [`Ledger::open`], [`Ledger::record`] and compaction touch files.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::manifest::FileMeta;
use crate::durable;

/// One acknowledged bundle: each path now has `Some(meta)` or was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    pub seq: u64,
    pub changes: Vec<(String, Option<FileMeta>)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    /// Every record up to this sequence is folded in.
    acked_seq: u64,
    files: BTreeMap<String, FileMeta>,
}

pub struct Ledger {
    dir: PathBuf,
    files: BTreeMap<String, FileMeta>,
    acked_seq: u64,
    journal: File,
    journal_len: u64,
    snapshot_len: u64,
}

/// Journals smaller than this are never compacted.
const MIN_COMPACT: u64 = 1 << 20;

impl Ledger {
    fn snapshot_path(dir: &Path) -> PathBuf {
        dir.join("acked.snapshot")
    }

    fn journal_path(dir: &Path) -> PathBuf {
        dir.join("acked.journal")
    }

    /// Load the snapshot and replay the journal, dropping a torn tail.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let snap_path = Self::snapshot_path(dir);
        let (snapshot, snapshot_len) = match std::fs::read(&snap_path) {
            Ok(bytes) => {
                let s: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: corrupt snapshot: {e}", snap_path.display()),
                    )
                })?;
                (s, bytes.len() as u64)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Snapshot::default(), 0),
            Err(e) => return Err(e),
        };
        let journal_path = Self::journal_path(dir);
        let bytes = match std::fs::read(&journal_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (records, good_len) = decode_journal(&bytes);
        if good_len < bytes.len() {
            tracing::warn!(
                journal = %journal_path.display(),
                dropped_bytes = bytes.len() - good_len,
                "dropping a torn tail from the journal (crash during a write)"
            );
        }
        let mut files = snapshot.files;
        let mut acked_seq = snapshot.acked_seq;
        for r in records {
            if r.seq <= acked_seq {
                continue; // already folded into the snapshot
            }
            apply(&mut files, &r);
            acked_seq = r.seq;
        }
        let journal = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&journal_path)?;
        // Cut the torn tail so new records follow the last good one.
        journal.set_len(good_len as u64)?;
        journal.sync_all()?;
        let mut ledger = Self {
            dir: dir.to_owned(),
            files,
            acked_seq,
            journal,
            journal_len: good_len as u64,
            snapshot_len,
        };
        use std::io::Seek;
        ledger.journal.seek(io::SeekFrom::End(0))?;
        Ok(ledger)
    }

    pub fn files(&self) -> &BTreeMap<String, FileMeta> {
        &self.files
    }

    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// Durably record an acknowledged bundle. Blocking (fsync).
    pub fn record(&mut self, r: AckRecord) -> io::Result<()> {
        let line = encode_record(&r);
        self.journal.write_all(&line)?;
        // The record must survive a crash before we rely on it.
        self.journal.sync_data()?;
        self.journal_len += line.len() as u64;
        apply(&mut self.files, &r);
        self.acked_seq = self.acked_seq.max(r.seq);
        if self.journal_len > MIN_COMPACT.max(self.snapshot_len) {
            self.compact()?;
        }
        Ok(())
    }

    /// Fold the journal into a new snapshot, then start an empty journal.
    /// A crash in between leaves records the snapshot already holds; they
    /// are skipped by sequence on load.
    pub fn compact(&mut self) -> io::Result<()> {
        let snap = Snapshot {
            acked_seq: self.acked_seq,
            files: std::mem::take(&mut self.files),
        };
        let bytes = serde_json::to_vec(&snap).map_err(io::Error::other)?;
        let result = durable::write_atomic(&Self::snapshot_path(&self.dir), &bytes);
        self.files = snap.files;
        result?;
        self.snapshot_len = bytes.len() as u64;
        self.journal.set_len(0)?;
        use std::io::Seek;
        self.journal.seek(io::SeekFrom::Start(0))?;
        self.journal.sync_all()?;
        self.journal_len = 0;
        Ok(())
    }
}

fn apply(files: &mut BTreeMap<String, FileMeta>, r: &AckRecord) {
    for (path, meta) in &r.changes {
        match meta {
            Some(m) => {
                files.insert(path.clone(), m.clone());
            }
            None => {
                files.remove(path);
            }
        }
    }
}

pub fn encode_record(r: &AckRecord) -> Vec<u8> {
    durable::journal_line(r)
}

/// Decode journal bytes: the records up to the first torn or corrupt line,
/// and how many bytes they span.
pub fn decode_journal(bytes: &[u8]) -> (Vec<AckRecord>, usize) {
    durable::journal_lines(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> FileMeta {
        FileMeta {
            size,
            mtime: 1,
            mtime_nsec: 2,
            mode: 0o644,
            hash: "00".repeat(32),
            racy: false,
        }
    }

    fn rec(seq: u64, path: &str, m: Option<u64>) -> AckRecord {
        AckRecord {
            seq,
            changes: vec![(path.into(), m.map(meta))],
        }
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_dropped_at_every_cut() {
        let mut bytes = encode_record(&rec(1, "a", Some(1)));
        let first = bytes.len();
        bytes.extend(encode_record(&rec(2, "b", Some(2))));
        for cut in first..bytes.len() {
            let (r, good) = decode_journal(&bytes[..cut]);
            assert_eq!(r.len(), 1, "cut at {cut}");
            assert_eq!(good, first);
        }
        let mut flipped = bytes.clone();
        flipped[first + 20] ^= 1;
        assert_eq!(decode_journal(&flipped).0.len(), 1);
        assert_eq!(decode_journal(&bytes).0.len(), 2);
    }

    #[test]
    fn records_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut l = Ledger::open(dir.path()).unwrap();
            l.record(rec(1, "a", Some(1))).unwrap();
            l.record(rec(2, "b", Some(2))).unwrap();
            l.record(rec(3, "a", None)).unwrap();
        }
        let mut l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.files().keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(l.acked_seq(), 3);
        l.compact().unwrap();
        l.record(rec(4, "c", Some(4))).unwrap();
        drop(l);
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.files().keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(l.acked_seq(), 4);
    }

    #[test]
    fn reopening_after_a_torn_write_appends_after_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut l = Ledger::open(dir.path()).unwrap();
            l.record(rec(1, "a", Some(1))).unwrap();
        }
        let jp = dir.path().join("acked.journal");
        let mut f = OpenOptions::new().append(true).open(&jp).unwrap();
        f.write_all(b"0123456789abcdef {\"seq\":2,\"chan").unwrap();
        drop(f);
        {
            let mut l = Ledger::open(dir.path()).unwrap();
            l.record(rec(3, "c", Some(3))).unwrap();
        }
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.files().keys().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn records_already_in_the_snapshot_are_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        l.record(rec(1, "a", None)).unwrap();
        drop(l);
        // A crash after the snapshot (which re-added "a" at seq 2) was
        // written but before the journal was emptied.
        let snap = Snapshot {
            acked_seq: 2,
            files: [("a".to_string(), meta(5))].into_iter().collect(),
        };
        let bytes = serde_json::to_vec(&snap).unwrap();
        durable::write_atomic(&dir.path().join("acked.snapshot"), &bytes).unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.files().get("a"), Some(&meta(5)), "stale record replayed");
        assert_eq!(l.acked_seq(), 2);
    }
}
