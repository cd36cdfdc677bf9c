//! What the sender tells of itself besides its log: each receiver's link
//! (for `shipper status` and for flushes that time out), the bytes pending
//! (counted off the runtime, so `status` never stats files), and the first
//! ship's progress bar on a terminal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::changes::ChangeSet;
use crate::peers::Peers;
use crate::status::LinkStatus;

/// A first ship at least this large gets a progress bar on a terminal.
const FIRST_SHIP_BAR_BYTES: u64 = 64 << 20;

/// Each receiver's link, as its transport last reported it.
pub(super) struct Links {
    /// In the order of `sender.receivers`.
    statuses: Vec<watch::Receiver<LinkStatus>>,
    names: Vec<String>,
    peers: Arc<Mutex<Peers>>,
}

impl Links {
    pub(super) fn new(
        statuses: Vec<watch::Receiver<LinkStatus>>,
        names: Vec<String>,
        peers: Arc<Mutex<Peers>>,
    ) -> Self {
        Self {
            statuses,
            names,
            peers,
        }
    }

    /// Every link, with whether its receiver still waits for a whole tree.
    pub(super) fn report(&self) -> Vec<LinkStatus> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        self.statuses
            .iter()
            .enumerate()
            .map(|(i, s)| LinkStatus {
                whole_tree_pending: peers
                    .receivers
                    .get(&self.names[i])
                    .is_some_and(|p| p.whole_tree),
                ..s.borrow().clone()
            })
            .collect()
    }

    /// The receivers that have not acknowledged `target` (`None`: any
    /// receiver), each with why as far as its link knows.
    pub(super) fn behind(&self, target: Option<u64>) -> String {
        self.statuses
            .iter()
            .map(|s| s.borrow().clone())
            .filter(|l| target.is_none() || l.last_ack_seq.is_none_or(|a| Some(a) < target))
            .map(|l| {
                let why = l
                    .last_error
                    .unwrap_or_else(|| "no acknowledgement yet".into());
                format!("receiver {}: {why}", l.receiver)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Bytes of the pending files, as last counted off the runtime.
#[derive(Default)]
pub(super) struct PendingBytes {
    total: Arc<AtomicU64>,
    job: Option<JoinHandle<()>>,
}

impl PendingBytes {
    /// Count the pending upserts of `changes` below `source` again, off the
    /// runtime, at most one count at a time.
    pub(super) fn count(&mut self, changes: &ChangeSet, source: &Path) {
        if changes.is_empty() {
            return; // status says 0 without a count
        }
        if self.job.as_ref().is_some_and(|j| !j.is_finished()) {
            return;
        }
        let paths: Vec<PathBuf> = changes.pending_upserts().map(|p| source.join(p)).collect();
        let total = self.total.clone();
        self.job = Some(tokio::task::spawn_blocking(move || {
            let bytes = paths
                .iter()
                .filter_map(|p| std::fs::symlink_metadata(p).ok())
                .map(|m| m.len())
                .sum();
            total.store(bytes, Ordering::Relaxed);
        }));
    }

    /// The last count; 0 with nothing pending.
    pub(super) fn get(&self, changes: &ChangeSet) -> u64 {
        if changes.is_empty() {
            0
        } else {
            self.total.load(Ordering::Relaxed)
        }
    }
}

/// Progress of the first ship after start, on a terminal.
#[derive(Default)]
pub(super) struct FirstShip {
    bar: Option<indicatif::ProgressBar>,
    /// The first comparison of the whole tree was made: a bar is shown or
    /// not, once.
    decided: bool,
}

impl FirstShip {
    /// The whole tree was compared with what was shipped: the first time,
    /// a long first ship of `bytes()` shows progress on a terminal (logs
    /// stay plain).
    pub(super) fn compared(&mut self, bytes: impl FnOnce() -> u64) {
        if self.decided {
            return;
        }
        self.decided = true;
        let bytes = bytes();
        if bytes < FIRST_SHIP_BAR_BYTES || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return;
        }
        let bar = indicatif::ProgressBar::new(bytes);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "first ship {bar:40} {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
        ) {
            bar.set_style(style);
        }
        bar.tick();
        self.bar = Some(bar);
    }

    /// A bundle of `bytes` (if still known) was acknowledged.
    pub(super) fn acked(&mut self, bytes: Option<u64>) {
        if let Some(bar) = &self.bar {
            if let Some(bytes) = bytes {
                bar.inc(bytes);
            }
            if bar.position() >= bar.length().unwrap_or(0) {
                bar.finish_and_clear();
                self.bar = None;
            }
        }
    }
}
