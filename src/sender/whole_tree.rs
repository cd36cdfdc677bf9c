//! Whole trees for receivers that need one (new, rebuilt or restored, or
//! whose backlog the outbox dropped): which wait to be packed, and the last
//! sequence of each one packed, until that receiver acknowledges it. Which
//! receivers need one at all is their `whole_tree` mark in
//! `receivers.json` ([`Peers`]); this follows the work and clears the mark
//! (off the runtime: it is written durably).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::bundle::Summary;
use crate::peers::Peers;

use super::transport::update_peer;

pub(super) struct WholeTrees {
    /// Receivers whose whole tree waits to be packed…
    queue: BTreeSet<usize>,
    /// …and the last sequence of one, once packed.
    last: BTreeMap<usize, u64>,
    /// Each receiver's name, in the order of `sender.receivers`.
    names: Vec<String>,
    peers: Arc<Mutex<Peers>>,
    state_dir: PathBuf,
}

impl WholeTrees {
    pub(super) fn new(names: Vec<String>, peers: Arc<Mutex<Peers>>, state_dir: PathBuf) -> Self {
        Self {
            queue: BTreeSet::new(),
            last: BTreeMap::new(),
            names,
            peers,
            state_dir,
        }
    }

    /// Receiver `index` needs the whole tree, for `reason` (already
    /// recorded). One packed for it before no longer counts.
    pub(super) fn need(&mut self, index: usize, reason: &str) {
        if self.queue.insert(index) {
            self.last.remove(&index);
            warn!(peer = %self.names[index], %reason, "this receiver needs the whole tree: shipping it every file");
        }
    }

    /// The next receiver whose whole tree is to be packed.
    pub(super) fn next(&mut self) -> Option<usize> {
        self.queue.pop_first()
    }

    /// Packing the whole tree for receiver `index` failed: it waits again.
    pub(super) fn failed(&mut self, index: usize, error: &std::io::Error) {
        warn!(peer = %self.names[index], error = %error, "packing the whole tree for this receiver failed; trying again");
        self.queue.insert(index);
    }

    /// The whole tree for receiver `index` was packed into `bundles`; every
    /// receiver acknowledged up to `acked` so far.
    pub(super) fn packed(&mut self, index: usize, bundles: &[(u64, Summary)], acked: u64) {
        match bundles.iter().map(|(s, _)| *s).max() {
            Some(last) => {
                info!(peer = %self.names[index], bundles = bundles.len(), last_seq = last, "whole tree packed for this receiver");
                self.last.insert(index, last);
                if acked >= last {
                    self.done(index);
                }
            }
            None => self.done(index),
        }
    }

    /// Bundles up to `seq` were acknowledged: whole trees they end are done.
    pub(super) fn acked(&mut self, seq: u64) {
        let finished: Vec<usize> = self
            .last
            .iter()
            .filter(|(_, last)| seq >= **last)
            .map(|(i, _)| *i)
            .collect();
        for index in finished {
            self.done(index);
        }
    }

    /// Receiver `index` acknowledged its whole tree: forget that it needs one.
    fn done(&mut self, index: usize) {
        self.last.remove(&index);
        let name = self.names[index].clone();
        info!(peer = %name, "this receiver has the whole tree");
        let (peers, dir) = (self.peers.clone(), self.state_dir.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = update_peer(&peers, &dir, &name, None, Some(false)) {
                warn!(error = %e, "could not record that a receiver has the whole tree");
            }
        });
    }
}
