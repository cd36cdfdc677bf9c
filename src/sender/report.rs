//! What the sender tells of itself besides its log: each receiver's link
//! (for `shipper status` and for flushes that time out), the bytes pending
//! (counted off the runtime, so `status` never stats files; estimated from
//! a sample when many paths are pending), and the first ship's progress
//! bar on a terminal.

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

    /// Every link, with whether its receiver still waits for a whole tree,
    /// and the deletions it missed that the tree will carry.
    pub(super) fn report(&self) -> Vec<LinkStatus> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        self.statuses
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let rec = peers.receivers.get(&self.names[i]);
                LinkStatus {
                    whole_tree_pending: rec.is_some_and(|p| p.whole_tree),
                    missed_deletions: rec.map_or(0, |p| p.missed_deletions.len() as u64),
                    ..s.borrow().clone()
                }
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

/// At most this many pending files are stat'ed per count; beyond it the
/// count is estimated from an even sample of them. A first ship of a
/// million files would otherwise copy and stat every path twice a second.
const COUNT_MAX: usize = 10_000;

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
        let (paths, scale) = sample(changes.pending_upserts(), changes.len(), COUNT_MAX);
        let paths: Vec<PathBuf> = paths.into_iter().map(|p| source.join(p)).collect();
        let total = self.total.clone();
        self.job = Some(tokio::task::spawn_blocking(move || {
            let bytes: u64 = paths
                .iter()
                .filter_map(|p| std::fs::symlink_metadata(p).ok())
                .map(|m| m.len())
                .sum();
            total.store((bytes as f64 * scale) as u64, Ordering::Relaxed);
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

/// At most `max` of `paths` (of about `len`), evenly spread, and what
/// their sum is to be multiplied by to estimate the sum of all. Pure.
fn sample<'a>(paths: impl Iterator<Item = &'a str>, len: usize, max: usize) -> (Vec<&'a str>, f64) {
    let step = len.div_ceil(max.max(1)).max(1);
    let (mut taken, mut seen) = (Vec::new(), 0usize);
    for (i, p) in paths.enumerate() {
        seen += 1;
        if i % step == 0 {
            taken.push(p);
        }
    }
    let scale = if taken.is_empty() {
        1.0
    } else {
        seen as f64 / taken.len() as f64
    };
    (taken, scale)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_backlog_is_counted_from_an_even_sample_scaled_up() {
        let names: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
        let (few, scale) = sample(names.iter().map(String::as_str), 25, 100);
        assert_eq!((few.len(), scale), (25, 1.0), "all of a small backlog");
        let (some, scale) = sample(names.iter().map(String::as_str), 25, 10);
        assert_eq!(
            some,
            [
                "p00", "p03", "p06", "p09", "p12", "p15", "p18", "p21", "p24"
            ]
        );
        assert_eq!(scale, 25.0 / 9.0);
        let (none, scale) = sample(std::iter::empty(), 0, 10);
        assert!(none.is_empty() && scale == 1.0);
    }
}
