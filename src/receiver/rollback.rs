//! Rollback on the receiver: putting root back to right after an earlier
//! bundle of one sender, from the records its later bundles kept
//! ([`Records`]).
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
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::records::{Records, remove_record};
use super::state::{Hold, ReceiverState};
use super::trees::Trees;
use crate::beneath::{BeneathError, Restore, Root, restores, undo_kept};
use crate::durable;

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

/// Where a rollback puts root back.
#[derive(Debug, Clone, Copy)]
pub enum RootAt<'a> {
    /// In place: each file by one rename.
    Dir(&'a Path),
    /// Under `publish = "tree"`: in the next snapshot, which root then
    /// points at, so readers see the rollback whole at once.
    Trees(&'a Trees),
}

/// Put root back to right after bundle `to` of sender `key`, holding the
/// sender's bundles from the first change on. Run again (or at start)
/// after a crash, it finishes what it began.
pub fn roll_back(
    at: RootAt,
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
    let mut done = RolledBack {
        from,
        to,
        ..RolledBack::default()
    };
    // Stopped after root pointed at the snapshot rolled back: only the
    // bookkeeping is left.
    if let RootAt::Trees(trees) = at {
        let current = trees.current()?.0;
        let hold = state.held.get(key);
        if hold.is_some_and(|h| h.to == to && h.snapshot == Some(current)) {
            done.bundles = undo.len() as u64;
            return finish(records, state, state_dir, (key, to), &undo).map(|()| done);
        }
    }
    // What the undo brings back, for the sender to delete where the source
    // lacks it once released: noted before root changes.
    let mut restored = Vec::new();
    for &seq in &undo {
        let record = records.record(key, seq);
        restored.extend(restores(&record).map_err(|source| RollbackError::Undo { seq, source })?);
    }
    remember_restored(state_dir, key, restored)?;
    // Resumed after a stop: the hold keeps when it began.
    let since = match state.held.get(key) {
        Some(h) if h.to == to => h.since,
        _ => crate::status::unix_now().max(0) as u64,
    };
    let hold = Hold {
        to,
        since,
        snapshot: None,
        rolling: true,
    };
    state.held.insert(key.to_owned(), hold);
    state.rolled_back.remove(key);
    state.save(state_dir)?;
    match at {
        RootAt::Dir(root) => {
            in_place(
                root,
                records,
                state,
                state_dir,
                (key, &chain),
                (&undo, &mut done),
            )?;
            if let Some(h) = state.held.get_mut(key) {
                h.rolling = false;
            }
            state.save(state_dir)?;
        }
        RootAt::Trees(trees) => {
            in_snapshot(trees, records, state, state_dir, key, (&undo, &mut done))?;
            finish(records, state, state_dir, (key, to), &undo)?;
        }
    }
    Ok(done)
}

/// Undo the records `undo` of `key` in root, newest first, recording after
/// each where root is now and then letting the record go.
fn in_place(
    root: &Path,
    records: &Records,
    state: &mut ReceiverState,
    state_dir: &Path,
    (key, chain): (&str, &BTreeMap<u64, u64>),
    (undo, done): (&[u64], &mut RolledBack),
) -> Result<(), RollbackError> {
    let root_fd =
        Root::open(root).map_err(|e| anyhow::anyhow!("opening root {}: {e}", root.display()))?;
    for &seq in undo {
        let record = records.record(key, seq);
        let left = undo_kept(&root_fd, &record, Restore::Move)
            .map_err(|source| RollbackError::Undo { seq, source })?;
        report_left(key, seq, &left);
        done.left.extend(left);
        // Root is now as right after the bundle before it: say so first,
        // then let the record go.
        state.applied.insert(key.to_owned(), chain[&seq]);
        state.save(state_dir)?;
        remove_record(&record).map_err(anyhow::Error::from)?;
        done.bundles += 1;
        info!(sender = key, seq, now_at = chain[&seq], "undid a bundle");
    }
    Ok(())
}

/// Undo the records `undo` of `key` in the next snapshot (linking what
/// they kept, so they stay whole until root points at it) and point root
/// at it. The snapshot is recorded in the hold first, so a stop after root
/// pointed at it is known at the next start.
fn in_snapshot(
    trees: &Trees,
    records: &Records,
    state: &mut ReceiverState,
    state_dir: &Path,
    key: &str,
    (undo, done): (&[u64], &mut RolledBack),
) -> Result<(), RollbackError> {
    let (n, snap) = trees.next()?;
    if let Some(h) = state.held.get_mut(key) {
        h.snapshot = Some(n);
    }
    state.save(state_dir)?;
    let undone = (|| {
        let root_fd = Root::open(&snap)
            .map_err(|e| anyhow::anyhow!("opening the snapshot {}: {e}", snap.display()))?;
        for &seq in undo {
            let left = undo_kept(&root_fd, &records.record(key, seq), Restore::Link)
                .map_err(|source| RollbackError::Undo { seq, source })?;
            report_left(key, seq, &left);
            done.left.extend(left);
            done.bundles += 1;
        }
        trees.publish(&snap).map_err(RollbackError::from)
    })();
    if undone.is_err() {
        trees.discard(&snap);
    }
    undone
}

/// Root is as right after bundle `to` of `key` (under `publish = "tree"`):
/// record it, and let the records undone go.
fn finish(
    records: &Records,
    state: &mut ReceiverState,
    state_dir: &Path,
    (key, to): (&str, u64),
    undo: &[u64],
) -> Result<(), RollbackError> {
    state.applied.insert(key.to_owned(), to);
    if let Some(h) = state.held.get_mut(key) {
        h.snapshot = None;
        h.rolling = false;
    }
    state.save(state_dir)?;
    for &seq in undo {
        remove_record(&records.record(key, seq)).map_err(anyhow::Error::from)?;
    }
    info!(
        sender = key,
        to,
        bundles = undo.len(),
        "root points at the snapshot rolled back"
    );
    Ok(())
}

fn report_left(key: &str, seq: u64, left: &[String]) {
    for why in left {
        warn!(sender = key, seq, "rollback left a change as it is: {why}");
    }
}

/// Where the paths rollbacks brought back for sender `key` are kept until
/// it compared its source with root.
fn restored_file(state_dir: &Path, key: &str) -> std::path::PathBuf {
    state_dir.join(format!("restored-{key}.json"))
}

/// The paths rollbacks brought back for sender `key` (none if it was not
/// rolled back, or compared since).
pub fn restored(state_dir: &Path, key: &str) -> anyhow::Result<Vec<String>> {
    let path = restored_file(state_dir, key);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| anyhow::anyhow!("{}: corrupt: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// Add `paths` to those rollbacks brought back for sender `key`, durably.
fn remember_restored(state_dir: &Path, key: &str, paths: Vec<String>) -> anyhow::Result<()> {
    let mut all: std::collections::BTreeSet<String> =
        restored(state_dir, key)?.into_iter().collect();
    all.extend(paths);
    let path = restored_file(state_dir, key);
    let json = serde_json::to_vec(&all)?;
    durable::write_atomic(&path, &json)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

/// Forget the paths rollbacks brought back for sender `key`.
pub fn forget_restored(state_dir: &Path, key: &str) -> anyhow::Result<()> {
    let path = restored_file(state_dir, key);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow::anyhow!("removing {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
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

/// Finish every rollback a stop interrupted (its hold still says it is
/// running). One that cannot be finished (root changed in a way the undo
/// cannot get past) is logged and left held: the receiver still starts,
/// and `shipper rollback` can be run again or the sender released.
pub fn finish_interrupted(
    at: RootAt,
    records: &Records,
    state: &mut ReceiverState,
    state_dir: &Path,
) {
    let unfinished: Vec<(String, u64)> = state
        .held
        .iter()
        .filter(|(_, h)| h.rolling)
        .map(|(key, h)| (key.clone(), h.to))
        .collect();
    for (key, to) in unfinished {
        info!(sender = %key, to, "finishing a rollback a stop interrupted");
        if let Err(e) = roll_back(at, records, state, state_dir, (&key, to)) {
            warn!(sender = %key, to, error = %e, "could not finish the rollback a stop interrupted; the sender stays held (run `shipper rollback` again, or `--release`)");
        }
    }
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

/// Why a held sender's bundle is refused, for its `status`.
pub fn held_reason(hold: &Hold) -> String {
    format!(
        "held: root was rolled back to sequence {} of this sender (at {}); `shipper rollback --release` on the receiver takes its bundles again",
        hold.to,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(hold.since)
        )
    )
}

#[cfg(test)]
#[path = "rollback_tests.rs"]
mod tests;
