//! Rollback on the receiver: the records of applied bundles, and putting
//! root back to right after an earlier bundle of one sender.
//!
//! Each bundle a receiver applies keeps what it replaced and deleted, with
//! the record of its changes ([`crate::beneath::undo_kept`]), as a
//! directory on root's filesystem: `STAGING/.shipper-rollback/from-KEY/SEQ/`,
//! beside `bundle.json` naming the sequence applied before it (`prev`), so
//! the chain survives the gaps a sender's numbering has. The newest
//! `rollback_keep` of each sender are kept ([`Records`]).
//!
//! [`roll_back`] first records the sender as held in `receiver.json` (its
//! bundles are refused from then on), then undoes its records newest
//! first, recording after each the sequence root is now at. A crash
//! part-way is finished at the next start ([`finish_interrupted`]): the
//! state says where root is, and a record above it is undone again, which
//! changes only what is not undone yet. [`release`] takes the sender's
//! bundles again and marks it to be told, so it compares its source with
//! root and ships the difference. Which records a rollback undoes is pure
//! ([`plan`]). Blocking: run off the async runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::state::{Hold, ReceiverState};
use crate::beneath::{BeneathError, Root, undo_kept};
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
}

/// Why a rollback is refused before anything changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackRefused {
    #[error(
        "root is at sequence {last} of this sender: there is nothing after sequence {to} to roll back"
    )]
    NotBehind { last: u64, to: u64 },
    #[error(
        "sequence {to} is beyond what is kept (receiver.rollback_keep): the oldest sequence root can be rolled back to is {oldest}"
    )]
    BeyondKept { to: u64, oldest: u64 },
    #[error(
        "sequence {to} was not applied here (the bundles applied around it are {below} and {above}): roll back to one of those"
    )]
    NotApplied { to: u64, below: u64, above: u64 },
}

/// Which records to undo, newest first, to take root from right after
/// bundle `last` back to right after bundle `to`, given each record's
/// sequence and the one applied before it.
pub fn plan(chain: &BTreeMap<u64, u64>, last: u64, to: u64) -> Result<Vec<u64>, RollbackRefused> {
    if to >= last {
        return Err(RollbackRefused::NotBehind { last, to });
    }
    let mut undo = Vec::new();
    let mut at = last;
    while at > to {
        let Some(&prev) = chain.get(&at) else {
            return Err(RollbackRefused::BeyondKept { to, oldest: at });
        };
        if prev < to {
            return Err(RollbackRefused::NotApplied {
                to,
                below: prev,
                above: at,
            });
        }
        undo.push(at);
        at = prev;
    }
    Ok(undo)
}

/// The records of every sender, in staging.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
    keep: usize,
}

impl Records {
    pub fn new(staging: &Path, keep: usize) -> Self {
        Self {
            dir: staging.join(RECORDS_DIR),
            keep,
        }
    }

    fn sender_dir(&self, key: &str) -> PathBuf {
        self.dir.join(format!("from-{key}"))
    }

    fn record(&self, key: &str, seq: u64) -> PathBuf {
        self.sender_dir(key).join(seq.to_string())
    }

    /// Where bundle `seq` of `key`, applied over `prev`, keeps what it
    /// replaces (`None` when none are kept). A record left at that name by
    /// an apply that did not finish is removed first.
    pub fn keep_as(&self, key: &str, seq: u64, prev: u64) -> std::io::Result<Option<KeepAs>> {
        if self.keep == 0 {
            return Ok(None);
        }
        std::fs::create_dir_all(self.sender_dir(key))?;
        let record = self.record(key, seq);
        remove_record(&record)?;
        let head = serde_json::to_vec(&RecordHead { seq, prev })?;
        Ok(Some(KeepAs {
            record,
            with: vec![(RECORD_FILE.to_owned(), head)],
        }))
    }

    /// Whether bundle `seq` of `key` was published whole: its record is
    /// made last, after every change is durable.
    pub fn has(&self, key: &str, seq: u64) -> bool {
        self.record(key, seq).join(RECORD_FILE).is_file()
    }

    /// Each record of `key`: its sequence and the one before it. Records
    /// above `last` (left by an apply that never finished) are removed.
    fn chain(&self, key: &str, last: u64) -> std::io::Result<BTreeMap<u64, u64>> {
        let mut chain = BTreeMap::new();
        let entries = match std::fs::read_dir(self.sender_dir(key)) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(chain),
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let Some(seq) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue; // not a record this receiver writes
            };
            if seq > last {
                remove_record(&e.path())?;
                continue;
            }
            let head = std::fs::read(e.path().join(RECORD_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<RecordHead>(&b).ok());
            match head {
                Some(h) if h.seq == seq => {
                    chain.insert(seq, h.prev);
                }
                _ => {
                    warn!(record = %e.path().display(), "a rollback record without a readable bundle.json: not used")
                }
            }
        }
        Ok(chain)
    }

    /// Keep the newest `rollback_keep` records of `key`; remove the rest.
    pub fn prune(&self, key: &str, last: u64) {
        let chain = match self.chain(key, last) {
            Ok(c) => c,
            Err(e) => {
                warn!(dir = %self.sender_dir(key).display(), error = %e, "could not list rollback records");
                return;
            }
        };
        let excess = chain.len().saturating_sub(self.keep);
        for seq in chain.keys().take(excess) {
            if let Err(e) = remove_record(&self.record(key, *seq)) {
                warn!(record = %self.record(key, *seq).display(), error = %e, "could not remove a rollback record");
            }
        }
    }
}

/// Remove a record (what its bundle replaced goes with it); missing is fine.
fn remove_record(record: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What a rollback did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The sequence root was at, and is at now.
    pub from: u64,
    pub to: u64,
    /// Bundles undone.
    pub bundles: u64,
    /// Changes left as they are, each naming its path and why.
    pub left: Vec<String>,
}

/// Why a rollback failed.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Refused(#[from] RollbackRefused),
    #[error("no bundle of sender {0} was applied here")]
    UnknownSender(String),
    #[error("undoing bundle {seq}: {source}")]
    Undo { seq: u64, source: BeneathError },
    #[error("{0:#}")]
    Io(#[from] anyhow::Error),
}

/// Put root back to right after bundle `to` of sender `key`, holding the
/// sender's bundles from the first change on. Run again (or at start)
/// after a crash, it finishes what it began.
pub fn roll_back(
    root: &Path,
    records: &Records,
    state: &mut ReceiverState,
    state_dir: &Path,
    (key, to): (&str, u64),
) -> Result<RolledBack, RollbackError> {
    let Some(&from) = state.applied.get(key) else {
        return Err(RollbackError::UnknownSender(key.to_owned()));
    };
    let chain = records.chain(key, from).map_err(anyhow::Error::from)?;
    let undo = plan(&chain, from, to)?;
    let root_fd =
        Root::open(root).map_err(|e| anyhow::anyhow!("opening root {}: {e}", root.display()))?;
    // Resumed after a stop: the hold keeps when it began.
    let since = match state.held.get(key) {
        Some(h) if h.to == to => h.since,
        _ => crate::status::unix_now().max(0) as u64,
    };
    state.held.insert(key.to_owned(), Hold { to, since });
    state.rolled_back.remove(key);
    state.save(state_dir)?;
    let mut done = RolledBack {
        from,
        to,
        ..RolledBack::default()
    };
    for seq in undo {
        let record = records.record(key, seq);
        let left =
            undo_kept(&root_fd, &record).map_err(|source| RollbackError::Undo { seq, source })?;
        for why in &left {
            warn!(sender = key, seq, "rollback left a change as it is: {why}");
        }
        done.left.extend(left);
        // Root is now as right after the bundle before it: say so first,
        // then let the record go.
        state.applied.insert(key.to_owned(), chain[&seq]);
        state.save(state_dir)?;
        remove_record(&record).map_err(anyhow::Error::from)?;
        done.bundles += 1;
        info!(sender = key, seq, now_at = chain[&seq], "undid a bundle");
    }
    Ok(done)
}

/// Take the bundles of sender `key` again after a rollback, and mark it to
/// be told, so it compares its source with root. Returns the sequence it
/// was held at, or `None` if it was not held.
pub fn release(
    state: &mut ReceiverState,
    state_dir: &Path,
    key: &str,
) -> anyhow::Result<Option<u64>> {
    let Some(hold) = state.held.remove(key) else {
        return Ok(None);
    };
    state.rolled_back.insert(key.to_owned(), hold.to);
    state.save(state_dir)?;
    Ok(Some(hold.to))
}

/// Finish every rollback a crash interrupted: a held sender whose applied
/// sequence is still above the one it is held at.
pub fn finish_interrupted(
    root: &Path,
    records: &Records,
    state: &mut ReceiverState,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let unfinished: Vec<(String, u64)> = state
        .held
        .iter()
        .filter(|(key, h)| state.applied.get(*key).is_some_and(|&last| last > h.to))
        .map(|(key, h)| (key.clone(), h.to))
        .collect();
    for (key, to) in unfinished {
        info!(sender = %key, to, "finishing a rollback a stop interrupted");
        roll_back(root, records, state, state_dir, (&key, to)).map_err(|e| {
            anyhow::anyhow!("finishing the rollback of sender {key} to sequence {to}: {e}")
        })?;
    }
    Ok(())
}

/// The sender `given` names among `keys` (those that applied bundles
/// here, or those held), or the only one there is.
pub fn which_sender<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    given: Option<&str>,
    what: &str,
) -> Result<String, String> {
    let keys: Vec<&str> = keys.into_iter().map(String::as_str).collect();
    match (given, keys.as_slice()) {
        (Some(key), _) if keys.contains(&key) => Ok(key.to_owned()),
        (Some(key), _) => Err(format!(
            "sender {key} is not among the senders {what}: {}",
            keys.join(", ")
        )),
        (None, [one]) => Ok((*one).to_owned()),
        (None, []) => Err(format!("no sender {what}")),
        (None, _) => Err(format!(
            "several senders {what}: name one with --sender ({})",
            keys.join(", ")
        )),
    }
}

#[cfg(test)]
#[path = "rollback_tests.rs"]
mod tests;
