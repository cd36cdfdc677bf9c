//! What a transport hands to the rest of the sender: [`TransportEvent`]s
//! for the sender's loop; bundles every receiver acknowledged, recorded in
//! the ledger before they are let go; and what it learnt of its receiver,
//! recorded in `receivers.json` before anything relies on it. The durable
//! writes block: the async forms run them off the runtime.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use crate::bundle::manifest::FileMeta;
use crate::bundle::pack::Packed;
use crate::ledger::{AckRecord, Ledger};
use crate::peers::{PeerRecord, Peers, TreeNeed};
use crate::proto::refusal::Refusal;

/// What a transport tells the sender's loop.
pub(in crate::sender) enum TransportEvent {
    /// A session with the receiver began; its last applied sequence is known.
    Connected,
    /// Bundle `seq` left the outbox: every receiver is done with it.
    Acked { seq: u64 },
    /// Receiver `index` acknowledged bundle `seq` (it left the outbox, or
    /// waits there for another receiver).
    AckedBy { index: usize, seq: u64 },
    /// A receiver's root was rolled back (recorded in `receivers.json`):
    /// the source is to be compared with the roots and repaired.
    Compare,
    /// Receiver `index` needs the whole tree, for this reason (already
    /// recorded in `receivers.json`).
    WholeTree { index: usize, need: TreeNeed },
    /// Receiver `index`, away, had its backlog dropped (the outbox over
    /// `sender.outbox_max`): a whole tree under way for it no longer
    /// counts, and is begun again when it returns (see
    /// `Outbox::take_dropped`).
    BacklogDropped { index: usize },
    /// Receiver `index` refused a bundle for good; `changes` were in it,
    /// and its copies were made from `sources`.
    Refused {
        index: usize,
        refusal: Refusal,
        changes: Vec<(String, Option<FileMeta>)>,
        sources: Vec<String>,
    },
}

/// Bundles every receiver acknowledged: record each durably in the ledger,
/// then let it go.
pub(super) async fn release(
    done: Vec<Packed>,
    events: &mpsc::UnboundedSender<TransportEvent>,
    ledger: &Arc<std::sync::Mutex<Ledger>>,
) {
    if done.is_empty() {
        return;
    }
    let (events, ledger) = (events.clone(), ledger.clone());
    let _ = tokio::task::spawn_blocking(move || release_now(done, &events, &ledger)).await;
}

/// [`release`], on the calling thread (blocking: fsync).
pub(in crate::sender) fn release_now(
    done: Vec<Packed>,
    events: &mpsc::UnboundedSender<TransportEvent>,
    ledger: &Arc<std::sync::Mutex<Ledger>>,
) {
    for b in done {
        let record = AckRecord {
            seq: b.seq,
            changes: b.changes,
        };
        let written = ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(record);
        if let Err(e) = written {
            // The receivers have it; only a restart would re-ship it needlessly.
            warn!(seq = b.seq, error = %e, "could not record an acknowledged bundle in the ledger");
        }
        let _ = std::fs::remove_file(&b.path);
        let _ = events.send(TransportEvent::Acked { seq: b.seq });
    }
}

/// Record receiver `name`'s instance, and whether it needs the whole tree
/// or its root compared, durably, before anything relies on it. Blocking work off the runtime.
pub(super) async fn record_peer(
    link_peers: &Arc<std::sync::Mutex<Peers>>,
    state_dir: &Path,
    name: &str,
    instance: [u8; 16],
    (whole_tree, compare): (Option<bool>, Option<u64>),
) {
    let (peers, dir, peer) = (link_peers.clone(), state_dir.to_owned(), name.to_owned());
    let saved = tokio::task::spawn_blocking(move || {
        update_peer(&peers, &dir, &peer, |rec| {
            rec.instance = data_encoding::HEXLOWER.encode(&instance);
            if let Some(base) = whole_tree {
                // A base only while every need of it was one: a repair
                // asked for meanwhile must reach every receiver.
                rec.base = base && (rec.base || !rec.whole_tree);
                rec.whole_tree = true;
            }
            rec.compare = compare.or(rec.compare);
        })
    })
    .await;
    if let Err(e) = saved.map_err(std::io::Error::other).and_then(|r| r) {
        warn!(peer = %name, error = %e, "could not record what is known of the receivers");
    }
}

/// Record durably what `change` makes of what is known of receiver
/// `name`. Written only when something changed; kept in memory only once
/// written. Blocking.
pub(in crate::sender) fn update_peer(
    peers: &Arc<std::sync::Mutex<Peers>>,
    state_dir: &Path,
    name: &str,
    change: impl FnOnce(&mut PeerRecord),
) -> std::io::Result<()> {
    let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
    let rec = p.receivers.entry(name.to_owned()).or_default();
    let mut wanted = rec.clone();
    change(&mut wanted);
    if *rec == wanted {
        return Ok(());
    }
    let was = std::mem::replace(rec, wanted);
    let saved = p.save(state_dir);
    if saved.is_err() {
        // Not recorded: nothing may act on it (a drop counted that never
        // happened would keep a whole tree from ever settling).
        p.receivers.insert(name.to_owned(), was);
    }
    saved
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record that could not be written is not kept in memory either:
    /// a drop counted there but never made durable would keep a whole
    /// tree from ever settling.
    #[test]
    fn what_could_not_be_recorded_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let peers = Arc::new(std::sync::Mutex::new(Peers::default()));
        update_peer(&peers, dir.path(), "web1", |r| r.whole_tree = true).unwrap();
        // A state_dir that is a file: receivers.json cannot be written.
        let not_a_dir = dir.path().join("receivers.json");
        let failed = update_peer(&peers, &not_a_dir, "web1", |r| {
            r.backlog_dropped(["gone.html".to_owned()].into());
        });
        assert!(failed.is_err());
        let p = peers.lock().unwrap();
        let r = &p.receivers["web1"];
        assert!(r.whole_tree && r.backlogs_dropped == 0 && r.missed_deletions.is_empty());
    }
}
