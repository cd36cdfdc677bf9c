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

/// A whole tree being packed, in runs one after the other (a run takes at
/// most a few bundles' worth of paths: see `cut.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InTree {
    /// For this receiver…
    pub(super) index: usize,
    /// …the runs so far took the paths up to this one…
    pub(super) after: Option<String>,
    /// …and packed up to this sequence; the run packing now left paths
    /// to the next.
    last_seq: Option<u64>,
    more: bool,
}

pub(super) struct WholeTrees {
    /// Receivers whose whole tree waits to be packed…
    queue: BTreeSet<usize>,
    /// …the one being packed, between its runs…
    current: Option<InTree>,
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
            current: None,
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

    /// The whole tree to pack a run of next: the one under way, or the next
    /// receiver's from its start.
    pub(super) fn next(&mut self) -> Option<InTree> {
        if self.current.is_none() {
            let index = self.queue.pop_first()?;
            self.current = Some(InTree {
                index,
                after: None,
                last_seq: None,
                more: false,
            });
        }
        self.current.clone()
    }

    /// A run of the whole tree under way takes the paths up to `path`;
    /// `more`: paths are left for the next run.
    pub(super) fn taken(&mut self, path: Option<String>, more: bool) {
        if let Some(t) = &mut self.current {
            t.after = path.or(t.after.take());
            t.more = more;
        }
    }

    /// Packing the whole tree for receiver `index` failed: it waits again,
    /// to be packed from its start.
    pub(super) fn failed(&mut self, index: usize, error: &std::io::Error) {
        warn!(peer = %self.names[index], error = %error, "packing the whole tree for this receiver failed; trying again");
        self.current = None;
        self.queue.insert(index);
    }

    /// A run of the whole tree under way packed `bundles`; every receiver
    /// acknowledged up to `acked` so far. After its last run, the tree is
    /// done once its last bundle is acknowledged.
    pub(super) fn packed(&mut self, bundles: &[(u64, Summary)], acked: u64) {
        let Some(t) = &mut self.current else { return };
        let run_last = bundles.iter().map(|(s, _)| *s).max();
        t.last_seq = t.last_seq.max(run_last);
        if t.more {
            return;
        }
        let InTree {
            index, last_seq, ..
        } = self.current.take().expect("a whole tree under way");
        match last_seq {
            Some(last) => {
                info!(peer = %self.names[index], last_seq = last, "whole tree packed for this receiver");
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
            if let Err(e) = update_peer(&peers, &dir, &name, |r| r.whole_tree = false) {
                warn!(error = %e, "could not record that a receiver has the whole tree");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary::default()
    }

    #[tokio::test]
    async fn a_whole_tree_packed_in_runs_is_done_once_its_last_runs_last_bundle_is_acked() {
        let dir = tempfile::tempdir().unwrap();
        let peers = Arc::new(Mutex::new(Peers::default()));
        let mut w = WholeTrees::new(vec!["r0".into()], peers, dir.path().to_owned());
        w.need(0, "new");
        let first = w.next().unwrap();
        assert_eq!((first.index, first.after), (0, None));
        w.taken(Some("m".into()), true);
        w.packed(&[(5, summary())], 0);
        let second = w.next().expect("the same tree goes on");
        assert_eq!((second.index, second.after.as_deref()), (0, Some("m")));
        w.taken(None, false); // the last run found nothing more to pack
        w.packed(&[], 0);
        assert!(w.next().is_none());
        assert_eq!(w.last.get(&0), Some(&5), "the first run's bundle ends it");
        w.acked(5);
        assert!(w.last.is_empty());
    }
}
