//! The records rollback undoes: each bundle a receiver applies keeps what
//! it replaced and deleted, with the record of its changes (see
//! [`crate::beneath::undo_kept`]), as a directory on root's filesystem:
//! `STAGING/.shipper-rollback/from-KEY/SEQ/`, beside `bundle.json` naming
//! the sequence applied before it (`prev`, so the chain survives the gaps
//! a sender's numbering has) and, under `publish = "tree"`, the snapshot it
//! was made in. The newest `rollback_keep` of each sender are kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::bundle::apply::KeepAs;

/// The directory of records in staging.
const RECORDS_DIR: &str = ".shipper-rollback";
/// Each record's own file: its sequence and the one before it.
const RECORD_FILE: &str = "bundle.json";

/// What `bundle.json` says of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RecordHead {
    seq: u64,
    /// The sender's sequence root was at before this bundle (0: none).
    prev: u64,
    /// Under `publish = "tree"`: the snapshot the bundle was applied in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<u64>,
}

/// The records of every sender, in staging.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
    keep: usize,
    /// Under `publish = "tree"`: records are made in snapshots, and only
    /// those count (a record made in a plain root undoes in place).
    tree: bool,
}

impl Records {
    pub fn new(staging: &Path, keep: usize, tree: bool) -> Self {
        Self {
            dir: staging.join(RECORDS_DIR),
            keep,
            tree,
        }
    }

    fn sender_dir(&self, key: &str) -> PathBuf {
        self.dir.join(format!("from-{key}"))
    }

    pub(super) fn record(&self, key: &str, seq: u64) -> PathBuf {
        self.sender_dir(key).join(seq.to_string())
    }

    /// Where bundle `seq` of `key`, applied over `prev` (into snapshot
    /// `snapshot` under `publish = "tree"`), keeps what it replaces (`None`
    /// when none are kept). A record left at that name by an apply that
    /// did not finish is removed first.
    pub fn keep_as(
        &self,
        key: &str,
        (seq, prev): (u64, u64),
        snapshot: Option<u64>,
    ) -> std::io::Result<Option<KeepAs>> {
        if self.keep == 0 {
            return Ok(None);
        }
        std::fs::create_dir_all(self.sender_dir(key))?;
        let record = self.record(key, seq);
        remove_record(&record)?;
        let head = serde_json::to_vec(&RecordHead {
            seq,
            prev,
            snapshot,
        })?;
        Ok(Some(KeepAs {
            record,
            with: vec![(RECORD_FILE.to_owned(), head)],
        }))
    }

    /// Whether bundle `seq` of `key` was published whole: its record is
    /// made last, after every change is durable, and under `publish =
    /// "tree"` root points at the snapshot it was made in (`current`) or a
    /// later one.
    pub fn published(&self, key: &str, seq: u64, current: Option<u64>) -> bool {
        match (self.head(key, seq), current) {
            (Some(h), None) => h.snapshot.is_none(),
            (Some(h), Some(c)) => h.snapshot.is_some_and(|s| s <= c),
            (None, _) => false,
        }
    }

    fn head(&self, key: &str, seq: u64) -> Option<RecordHead> {
        let bytes = std::fs::read(self.record(key, seq).join(RECORD_FILE)).ok()?;
        serde_json::from_slice::<RecordHead>(&bytes)
            .ok()
            .filter(|h| h.seq == seq)
    }

    /// The sequence of each record of `key`, oldest first, by name alone.
    /// Records above `last` (left by an apply that never finished) are
    /// removed.
    fn seqs(&self, key: &str, last: u64) -> std::io::Result<Vec<u64>> {
        let entries = match std::fs::read_dir(self.sender_dir(key)) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut seqs = Vec::new();
        for e in entries {
            let e = e?;
            // A name that is no number is not a record this receiver writes.
            match e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                Some(seq) if seq > last => remove_record(&e.path())?,
                Some(seq) => seqs.push(seq),
                None => {}
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Each record of `key` that can undo here: its sequence and the one
    /// before it. Records above `last` are removed.
    pub(super) fn chain(&self, key: &str, last: u64) -> std::io::Result<BTreeMap<u64, u64>> {
        let mut chain = BTreeMap::new();
        for seq in self.seqs(key, last)? {
            match self.head(key, seq) {
                // Made under the other publish mode: it cannot undo here.
                Some(h) if h.snapshot.is_some() != self.tree => {}
                Some(h) => {
                    chain.insert(seq, h.prev);
                }
                None => {
                    let record = self.record(key, seq);
                    warn!(record = %record.display(), "a rollback record without a readable bundle.json: not used")
                }
            }
        }
        Ok(chain)
    }

    /// Keep the newest `rollback_keep` records of `key` (newer than `last`
    /// none); remove the rest. By name alone: nothing is read on this path,
    /// taken after every bundle, and a record that cannot undo here is
    /// pruned like the others.
    pub fn prune(&self, key: &str, last: u64) {
        let seqs = match self.seqs(key, last) {
            Ok(s) => s,
            Err(e) => {
                warn!(dir = %self.sender_dir(key).display(), error = %e, "could not list rollback records");
                return;
            }
        };
        let excess = seqs.len().saturating_sub(self.keep);
        for seq in &seqs[..excess] {
            if let Err(e) = remove_record(&self.record(key, *seq)) {
                warn!(record = %self.record(key, *seq).display(), error = %e, "could not remove a rollback record");
            }
        }
    }
}

/// Remove a record (what its bundle replaced goes with it); missing is fine.
pub(super) fn remove_record(record: &Path) -> std::io::Result<()> {
    crate::places::remove_tree(record)
}
