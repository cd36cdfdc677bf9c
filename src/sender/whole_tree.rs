//! Whole trees for receivers that need one (new, rebuilt or restored, or
//! whose backlog the outbox dropped), and the bucket's bases (a whole tree
//! its receivers catching up take, see `transport/bucket_bases.rs`):
//! which wait to be packed, which are under way (taking turns run by run,
//! and waiting while their receiver is away), what each run takes (at the
//! first, the deletions its receiver missed when its backlog was dropped),
//! and the last sequence of each one packed, until that receiver
//! acknowledges it. Which receivers need one at all is their `whole_tree`
//! mark in `receivers.json` ([`Peers`]); this follows the work and clears
//! the mark and those deletions (off the runtime: it is written durably),
//! unless a drop came since the tree read them.
//! What the bucket's uploads must know of its bases is in [`BaseTrees`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::bundle::Summary;
use crate::bundle::pack::PackItem;
use crate::peers::{PeerRecord, Peers, TreeNeed};

use super::shipped::Shipped;
use super::transport::update_peer;

/// A whole tree being packed, in runs one after the other (a run takes at
/// most a few bundles' worth of paths: see `cut.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InTree {
    /// For this receiver…
    pub(super) index: usize,
    /// …the runs so far took the paths up to this one…
    pub(super) after: Option<String>,
    /// …as the base numbered this (a bucket's; `None`: a repair)…
    pub(super) base: Option<u64>,
    /// …and packed up to this sequence; the run packing now left paths
    /// to the next…
    last_seq: Option<u64>,
    more: bool,
    /// How many backlog drops its receiver had seen when its first run
    /// read the deletions it missed (`PeerRecord::backlogs_dropped`);
    /// `None` until then.
    pub(super) drops_seen: Option<u64>,
}

/// What one run of a whole tree packs.
#[derive(Debug)]
pub(super) struct TreeRun {
    pub(super) items: Vec<PackItem>,
    /// The last path it takes to ship (`None`: none).
    pub(super) last: Option<String>,
    /// Paths are left for the next run.
    pub(super) more: bool,
}

impl InTree {
    /// Its next run, from what was shipped: at its first, the deletions
    /// its receiver `missed` that are still owed
    /// ([`Shipped::deletion_owed`]), alone, so that they come before
    /// anything shipped in their place; then up to `most` shipped paths
    /// after the last one taken.
    pub(super) fn run(
        &self,
        shipped: &Shipped,
        missed: Option<&BTreeSet<String>>,
        most: usize,
    ) -> TreeRun {
        let owed = missed.into_iter().flatten();
        let owed = owed.filter(|p| shipped.deletion_owed(p));
        let deletions: Vec<PackItem> = owed.map(PackItem::delete).collect();
        let mut paths = shipped.paths_after(self.after.as_deref());
        if !deletions.is_empty() {
            let more = paths.next().is_some();
            return TreeRun {
                items: deletions,
                last: None,
                more,
            };
        }
        let items: Vec<PackItem> = paths.by_ref().take(most).map(PackItem::upsert).collect();
        TreeRun {
            more: paths.next().is_some(),
            last: items.last().map(|i| i.path.clone()),
            items,
        }
    }
}

/// A whole tree packed, until its receiver acknowledges its last bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PackedTree {
    last_seq: u64,
    /// How many drops its receiver had seen when it read the deletions
    /// it missed: acknowledged, it settles them unless another came since.
    drops_seen: Option<u64>,
}

/// The bucket's bases as its packing and its uploads both see them.
#[derive(Debug, Default)]
pub(in crate::sender) struct BaseTrees {
    /// A base is being packed, from its first run to its last.
    pub(in crate::sender) packing: bool,
    /// Each base packed is numbered; its bundles carry the number
    /// (`Packed::base`), so the uploads tell one base from the next.
    pub(in crate::sender) number: u64,
    /// The newest base packed, by number, and its last bundle: its end is
    /// written once that bundle is uploaded.
    pub(in crate::sender) ends_at: Option<(u64, u64)>,
}

pub(super) struct WholeTrees {
    /// Receivers whose whole tree waits to be packed (as a base: `true`)…
    queue: BTreeMap<usize, bool>,
    /// …the one being packed, between its runs…
    current: Option<InTree>,
    /// …the others under way, between their runs (their receiver away,
    /// or waiting their turn), each gone on with from where it stopped…
    aside: BTreeMap<usize, InTree>,
    /// …and the last sequence of one, once packed.
    last: BTreeMap<usize, PackedTree>,
    /// Per receiver, the highest sequence it acknowledged in this
    /// process: its acknowledgement may come before its tree's last run
    /// is recorded here as packed.
    acked_by: Vec<u64>,
    /// Each receiver's name, in the order of `sender.receivers`.
    names: Vec<String>,
    peers: Arc<Mutex<Peers>>,
    state_dir: PathBuf,
    bases: Arc<Mutex<BaseTrees>>,
}

impl WholeTrees {
    pub(super) fn new(
        names: Vec<String>,
        (peers, state_dir): (Arc<Mutex<Peers>>, PathBuf),
        bases: Arc<Mutex<BaseTrees>>,
    ) -> Self {
        Self {
            queue: BTreeMap::new(),
            current: None,
            aside: BTreeMap::new(),
            last: BTreeMap::new(),
            acked_by: vec![0; names.len()],
            names,
            peers,
            state_dir,
            bases,
        }
    }

    /// Receiver `index` needs the whole tree (recorded already), as a
    /// base (a bucket's) or not. One begun for it in this process goes on
    /// when it is needed only for being begun (a reconnect: what was sent
    /// of it is still in the outbox). Otherwise it is begun again from its
    /// first file: one packed for it before no longer counts (a base's
    /// end is not written), and one being packed (or aside between its
    /// runs) stops at the run under way. A repair asked for while a base
    /// waits makes it one.
    pub(super) fn need(&mut self, index: usize, need: &TreeNeed) {
        let name = self.names[index].clone();
        if need.begun && self.under_way(index) {
            info!(peer = %name, "a whole tree for this receiver is already under way: it goes on");
            return;
        }
        if let Some(waiting) = self.queue.get_mut(&index) {
            *waiting &= need.base;
            return;
        }
        // Its later runs would only add to a tree that no longer counts; a
        // base's members packed so far never get an end.
        self.stop(index);
        self.queue.insert(index, need.base);
        self.forget_packed(index);
        let reason = &need.reason;
        if need.base {
            info!(peer = %name, %reason, "a base for the bucket: packing every file for it");
        } else {
            warn!(peer = %name, %reason, "this receiver needs the whole tree: shipping it every file");
        }
    }

    /// Receiver `index` is away and its backlog was dropped: what was
    /// packed of a whole tree for it is gone, and packing more of it now
    /// would only fill the outbox for nothing. It is begun again when the
    /// receiver returns; one that waits to begin still waits, as a repair
    /// (every receiver behind it needs what was dropped).
    pub(super) fn dropped(&mut self, index: usize) {
        if self.stop(index) {
            info!(peer = %self.names[index], "the whole tree under way for this receiver stops while it is away; it begins again when it returns");
        }
        if let Some(base) = self.queue.get_mut(&index) {
            *base = false;
        }
        self.forget_packed(index);
    }

    /// A whole tree packed for receiver `index` no longer counts: its last
    /// bundle does not end it, nor, for a base packed whole but not
    /// uploaded whole, write its end.
    fn forget_packed(&mut self, index: usize) {
        if let Some(t) = self.last.remove(&index) {
            let mut b = self.bases.lock().unwrap_or_else(|e| e.into_inner());
            if b.ends_at.is_some_and(|(_, end)| end == t.last_seq) {
                b.ends_at = None;
            }
        }
    }

    /// Stop packing the whole tree for receiver `index`, being packed or
    /// aside; returns whether there was one.
    fn stop(&mut self, index: usize) -> bool {
        if self.current.as_ref().is_some_and(|t| t.index == index) {
            self.stop_current();
            return true;
        }
        match self.aside.remove(&index) {
            Some(t) => {
                self.stopped(&t);
                true
            }
            None => false,
        }
    }

    /// Stop packing the whole tree under way, if one is.
    fn stop_current(&mut self) -> Option<InTree> {
        let t = self.current.take()?;
        self.stopped(&t);
        Some(t)
    }

    /// `t` is packed no more: a base stops being packed.
    fn stopped(&self, t: &InTree) {
        if t.base.is_some() {
            self.bases.lock().unwrap_or_else(|e| e.into_inner()).packing = false;
        }
    }

    /// A whole tree for receiver `index` waits to begin, is being packed
    /// (or aside between its runs), or waits for its last bundle to be
    /// acknowledged.
    fn under_way(&self, index: usize) -> bool {
        self.queue.contains_key(&index)
            || self.current.as_ref().is_some_and(|t| t.index == index)
            || self.aside.contains_key(&index)
            || self.last.contains_key(&index)
    }

    /// The whole tree to pack a run of next, among those for a receiver
    /// `takes` says takes bundles now: each tree under way or waiting to
    /// begin has its turn, run by run (the next receiver's after the one
    /// just packed), so none waits out another's whole length. A tree
    /// whose receiver is away waits from where it stopped: packed on, its
    /// bundles would only wait in the outbox, or be dropped from it
    /// (`sender.outbox_max`) and the tree begun again.
    pub(super) fn next(&mut self, takes: impl Fn(usize) -> bool) -> Option<InTree> {
        let just = self.current.take().map(|t| {
            let index = t.index;
            if !takes(index) {
                info!(peer = %self.names[index], "this receiver is away: its whole tree waits for it, from where it stopped");
            }
            self.aside.insert(index, t);
            index
        });
        let from = just.map_or(0, |i| i + 1);
        let mut ready: Vec<usize> = self.wanting().filter(|&i| takes(i)).collect();
        ready.sort_unstable();
        let index = *ready.iter().find(|&&i| i >= from).or(ready.first())?;
        if let Some(t) = self.aside.remove(&index) {
            self.current = Some(t);
            return self.current.clone();
        }
        let base = self.queue.remove(&index).expect("waiting to begin");
        let base = base.then(|| {
            let mut b = self.bases.lock().unwrap_or_else(|e| e.into_inner());
            b.number += 1;
            b.packing = true;
            b.number
        });
        self.current = Some(InTree {
            index,
            after: None,
            base,
            last_seq: None,
            more: false,
            drops_seen: None,
        });
        self.current.clone()
    }

    /// A whole tree waits for its turn, for a receiver `takes` says takes
    /// bundles now.
    pub(super) fn ready(&self, takes: impl Fn(usize) -> bool) -> bool {
        self.wanting().any(takes)
    }

    /// The receivers a whole tree is being packed for, or waits to begin
    /// for.
    fn wanting(&self) -> impl Iterator<Item = usize> + '_ {
        let current = self.current.as_ref().map(|t| t.index);
        self.aside
            .keys()
            .chain(self.queue.keys())
            .copied()
            .chain(current)
    }

    /// A run of the whole tree under way takes the paths up to `path`;
    /// `more`: paths are left for the next run; `drops_seen`: being its
    /// first, it read the deletions its receiver missed, that many drops
    /// in.
    pub(super) fn taken(&mut self, path: Option<String>, more: bool, drops_seen: Option<u64>) {
        if let Some(t) = &mut self.current {
            t.after = path.or(t.after.take());
            t.more = more;
            t.drops_seen = drops_seen.or(t.drops_seen);
        }
    }

    /// Packing the whole tree for receiver `index` failed: it waits again,
    /// to be packed from its start.
    pub(super) fn failed(&mut self, index: usize, error: &std::io::Error) {
        warn!(peer = %self.names[index], error = %error, "packing the whole tree for this receiver failed; trying again");
        let Some(t) = self.stop_current() else {
            // Stopped meanwhile (`need`): already waiting, from its start.
            return;
        };
        let base = t.base.is_some();
        // Packed again from its start: a base under a new number.
        let waiting = self.queue.entry(index).or_insert(base);
        *waiting &= base;
    }

    /// A run of the whole tree under way packed `bundles`; every receiver
    /// acknowledged up to `acked` so far. After its last run, the tree is
    /// done once its receiver acknowledged its last bundle (it may have
    /// already).
    pub(super) fn packed(&mut self, bundles: &[(u64, Summary)], acked: u64) {
        let Some(t) = &mut self.current else { return };
        let run_last = bundles.iter().map(|(s, _)| *s).max();
        t.last_seq = t.last_seq.max(run_last);
        if t.more {
            return;
        }
        let InTree {
            index,
            last_seq,
            base,
            drops_seen,
            ..
        } = self.current.take().expect("a whole tree under way");
        if let Some(number) = base {
            let mut b = self.bases.lock().unwrap_or_else(|e| e.into_inner());
            b.packing = false;
            // A base of nothing (an empty tree) has no end.
            b.ends_at = last_seq.map(|last| (number, last));
        }
        if let Some(last_seq) = last_seq {
            info!(peer = %self.names[index], last_seq, "whole tree packed for this receiver");
        }
        let acked = acked.max(self.acked_by[index]);
        match last_seq {
            Some(last_seq) if acked < last_seq => {
                let t = PackedTree {
                    last_seq,
                    drops_seen,
                };
                self.last.insert(index, t);
            }
            // Acknowledged already, or a tree of nothing.
            _ => self.done(index, drops_seen, last_seq),
        }
    }

    /// Receiver `by` acknowledged bundles up to `seq`: the whole tree it
    /// was sent is done once they reach its last bundle. Its own
    /// acknowledgement is enough: a tree's bundles may wait in the outbox
    /// behind one another receiver, away, has yet to take.
    pub(super) fn acknowledged_by(&mut self, by: usize, seq: u64) {
        self.acked_by[by] = self.acked_by[by].max(seq);
        self.ended(|index| index == by, seq);
    }

    /// Bundles up to `seq` left the outbox (every receiver took them):
    /// every whole tree they reach the end of is done.
    pub(super) fn left_outbox(&mut self, seq: u64) {
        self.ended(|_| true, seq);
    }

    /// The whole trees of the receivers `whose` says whose last bundle is
    /// at most `seq` are done.
    fn ended(&mut self, whose: impl Fn(usize) -> bool, seq: u64) {
        let finished: Vec<usize> = self
            .last
            .iter()
            .filter(|(i, t)| whose(**i) && seq >= t.last_seq)
            .map(|(i, _)| *i)
            .collect();
        for index in finished {
            let t = self.last.remove(&index).expect("found above");
            self.done(index, t.drops_seen, Some(t.last_seq));
        }
    }

    /// Receiver `index` acknowledged its whole tree, ending with
    /// `last_seq`: forget that it needs one, and the deletions it missed,
    /// unless its backlog was dropped since the tree read them
    /// (`drops_seen`): then the tree that follows that drop settles it
    /// all.
    fn done(&mut self, index: usize, drops_seen: Option<u64>, last_seq: Option<u64>) {
        let name = self.names[index].clone();
        let drops = |p: &Peers| p.receivers.get(&name).map_or(0, |r| r.backlogs_dropped);
        let now = drops(&self.peers.lock().unwrap_or_else(|e| e.into_inner()));
        if dropped_since(drops_seen, now) {
            // Dropped since, its receiver back before the drop went (or
            // the drop's record failed): the next tree settles it.
            let reason = "its backlog was dropped since its whole tree began".to_owned();
            self.need(index, &TreeNeed::new(reason, false));
            return;
        }
        let (peers, dir) = (self.peers.clone(), self.state_dir.clone());
        tokio::task::spawn_blocking(move || {
            let mut settled = false;
            let done = |r: &mut PeerRecord| settled = settle(r, drops_seen, last_seq);
            match update_peer(&peers, &dir, &name, done) {
                Ok(()) if settled => info!(peer = %name, "this receiver has the whole tree"),
                // A drop in between: the tree it sets off settles it.
                Ok(()) => {
                    info!(peer = %name, "this receiver's backlog was dropped as its whole tree was acknowledged: it gets another when it returns")
                }
                Err(e) => {
                    warn!(peer = %name, error = %e, "could not record that a receiver has the whole tree")
                }
            }
        });
    }
}

/// Whether a backlog was dropped since a tree's first run saw
/// `drops_seen` drops, there being `drops` now.
fn dropped_since(drops_seen: Option<u64>, drops: u64) -> bool {
    drops_seen.is_some_and(|seen| seen != drops)
}

/// A whole tree ending with `last_seq` is acknowledged whose first run
/// read the deletions receiver `r` missed, `drops_seen` backlog drops in:
/// it needs no whole tree now, and they are owed no more (every path
/// recorded came with a drop, so with none since, the tree read them all);
/// where the tree ended is kept ([`PeerRecord::tree_through`]). With a
/// drop since (returns false), nothing is settled.
fn settle(r: &mut PeerRecord, drops_seen: Option<u64>, last_seq: Option<u64>) -> bool {
    if dropped_since(drops_seen, r.backlogs_dropped) {
        return false;
    }
    r.whole_tree = false;
    r.tree_through = r.tree_through.max(last_seq.unwrap_or(0));
    if drops_seen.is_some() {
        r.missed_deletions.clear();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Op;

    fn summary() -> Summary {
        Summary::default()
    }

    fn owed(paths: &[&str]) -> std::collections::BTreeSet<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    /// Every receiver connected.
    fn all(_: usize) -> bool {
        true
    }

    /// One run of the tree under way: it took the paths up to `took`
    /// (`more`: paths are left) and packed bundle `seq`, if any; nothing
    /// acknowledged yet.
    fn run(w: &mut WholeTrees, took: Option<&str>, more: bool, seq: Option<u64>) {
        w.taken(took.map(Into::into), more, None);
        let bundles: Vec<_> = seq.map(|s| (s, summary())).into_iter().collect();
        w.packed(&bundles, 0);
    }

    fn fresh(reason: &str, base: bool) -> TreeNeed {
        TreeNeed::new(reason.into(), base)
    }

    fn begun(base: bool) -> TreeNeed {
        TreeNeed {
            begun: true,
            ..fresh("begun earlier", base)
        }
    }

    fn trees(names: &[&str]) -> (WholeTrees, Arc<Mutex<BaseTrees>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let peers = Arc::new(Mutex::new(Peers::default()));
        let bases = Arc::new(Mutex::new(BaseTrees::default()));
        let names = names.iter().map(|n| n.to_string()).collect();
        let w = WholeTrees::new(names, (peers, dir.path().to_owned()), bases.clone());
        (w, bases, dir)
    }

    #[tokio::test]
    async fn a_whole_tree_packed_in_runs_is_done_once_its_last_runs_last_bundle_is_acked() {
        let (mut w, _, _dir) = trees(&["r0"]);
        w.need(0, &fresh("new", false));
        let first = w.next(all).unwrap();
        assert_eq!((first.index, first.after), (0, None));
        run(&mut w, Some("m"), true, Some(5));
        let second = w.next(all).expect("the same tree goes on");
        assert_eq!((second.index, second.after.as_deref()), (0, Some("m")));
        run(&mut w, None, false, None); // the last run found nothing more to pack
        assert!(w.next(all).is_none());
        assert_eq!(
            w.last.get(&0).map(|t| t.last_seq),
            Some(5),
            "the first run's bundle ends it"
        );
        w.left_outbox(5);
        assert!(w.last.is_empty());
    }

    /// A tree's bundles wait in the outbox behind one a receiver that is
    /// away has yet to take: they leave only once it returns, but the
    /// tree is done once its own receiver acknowledged them.
    #[tokio::test]
    async fn a_whole_tree_is_done_once_its_own_receiver_acknowledges_it() {
        let (mut w, _, _dir) = trees(&["r0", "r1"]);
        w.need(1, &fresh("restored", false));
        assert_eq!(w.next(all).unwrap().index, 1);
        run(&mut w, None, false, Some(5));
        w.acknowledged_by(0, 5);
        assert!(
            w.last.contains_key(&1),
            "another receiver's ack ends nothing"
        );
        w.acknowledged_by(1, 4);
        assert!(w.last.contains_key(&1), "not up to its last bundle");
        w.acknowledged_by(1, 5);
        assert!(w.last.is_empty());
    }

    /// Its receiver may acknowledge a tree's last bundle before the
    /// tree's last run is recorded as packed: that ends it too.
    #[tokio::test]
    async fn a_tree_acknowledged_before_its_last_run_is_recorded_is_done_with_it() {
        let (mut w, _, _dir) = trees(&["r0", "r1"]);
        w.need(1, &fresh("new", false));
        w.next(all).unwrap();
        w.acknowledged_by(1, 5);
        run(&mut w, None, false, Some(5));
        assert!(w.last.is_empty());
    }

    #[tokio::test]
    async fn a_base_is_numbered_and_ends_with_its_trees_last_bundle_and_a_repair_wins() {
        let (mut w, bases, _dir) = trees(&["r0", "s3://b/p"]);
        w.need(1, &fresh("due", true));
        assert_eq!(w.next(all).unwrap().base, Some(1));
        assert!(bases.lock().unwrap().packing);
        run(&mut w, Some("m"), true, Some(7));
        // The last run packs nothing: the base still ends, with bundle 7.
        run(&mut w, None, false, None);
        let b = bases.lock().unwrap();
        assert!(!b.packing);
        assert_eq!(b.ends_at, Some((1, 7)));
        drop(b);
        // A repair asked for while a base waits makes it a repair.
        w.need(1, &fresh("due", true));
        w.need(1, &fresh("its backlog was dropped", false));
        assert_eq!(w.next(all).unwrap().base, None);
        // A base of nothing has no end.
        bases.lock().unwrap().ends_at = None;
        run(&mut w, None, false, None);
        w.need(1, &fresh("due", true));
        assert_eq!(w.next(all).unwrap().base, Some(2), "numbered anew");
        run(&mut w, None, false, None);
        assert_eq!(bases.lock().unwrap().ends_at, None);
    }

    #[tokio::test]
    async fn a_reconnect_while_a_whole_tree_is_under_way_lets_it_go_on() {
        let (mut w, _, _dir) = trees(&["r0"]);
        // After a restart nothing is under way: it is begun.
        w.need(0, &begun(false));
        w.next(all).unwrap();
        run(&mut w, Some("m"), true, Some(5));
        // The receiver reconnects between runs: the tree goes on from "m".
        w.need(0, &begun(false));
        let t = w.next(all).expect("the same tree goes on");
        assert_eq!(t.after.as_deref(), Some("m"));
        run(&mut w, None, false, Some(9));
        assert!(w.next(all).is_none(), "no second whole tree waits");
        // It reconnects before its last bundle is acknowledged: still none.
        w.need(0, &begun(false));
        assert!(w.next(all).is_none());
        assert_eq!(w.last.get(&0).map(|t| t.last_seq), Some(9));
        w.left_outbox(9);
        assert!(w.last.is_empty());
    }

    #[tokio::test]
    async fn a_whole_tree_needed_afresh_stops_the_one_under_way_and_begins_again() {
        let (mut w, bases, _dir) = trees(&["r0", "s3://b/p"]);
        w.need(1, &fresh("due", true));
        assert_eq!(w.next(all).unwrap().base, Some(1));
        w.taken(Some("m".into()), true, None);
        // The bucket's base was lost while its run was being packed.
        w.need(1, &fresh("not there as uploaded", true));
        assert!(!bases.lock().unwrap().packing, "base 1 is packed no more");
        // That run ends (or fails): it counts for nothing, and base 1 gets
        // no end.
        w.packed(&[(5, summary())], 0);
        w.failed(1, &std::io::Error::other("disk full"));
        assert_eq!(bases.lock().unwrap().ends_at, None);
        let t = w.next(all).expect("begun again");
        assert_eq!((t.index, t.after, t.base), (1, None, Some(2)));
        run(&mut w, None, false, Some(8));
        assert_eq!(bases.lock().unwrap().ends_at, Some((2, 8)));
        // Base 2 lost once packed whole, before its last member went up:
        // it gets no end.
        w.need(1, &fresh("not there as uploaded", true));
        assert_eq!(bases.lock().unwrap().ends_at, None);
        assert_eq!(w.next(all).unwrap().base, Some(3));
        w.taken(None, false, None);
        w.packed(&[], 8);
        // Needed afresh once packed (a rebuilt receiver): its last bundle
        // no longer ends it; the new one does.
        w.need(0, &fresh("new", false));
        w.next(all).unwrap();
        run(&mut w, None, false, Some(10));
        w.need(0, &fresh("its state is new", false));
        w.left_outbox(10);
        let t = w.next(all).expect("begun again");
        assert_eq!((t.index, t.after), (0, None));
        w.taken(None, false, None);
        w.packed(&[(12, summary())], 10);
        assert_eq!(w.last.get(&0).map(|t| t.last_seq), Some(12));
    }

    #[tokio::test]
    async fn a_backlog_dropped_stops_the_whole_tree_under_way_until_it_returns() {
        let (mut w, _, _dir) = trees(&["r0", "r1"]);
        w.need(0, &fresh("new", false));
        w.next(all).unwrap();
        w.taken(Some("m".into()), true, None);
        w.need(1, &fresh("new", false));
        // Receiver 0 goes away and its backlog is dropped mid-run.
        w.dropped(0);
        w.packed(&[(5, summary())], 0);
        let t = w.next(all).expect("receiver 1's waits");
        assert_eq!((t.index, t.after), (1, None), "receiver 0's stopped");
        run(&mut w, None, false, Some(6));
        // Dropped again once packed: its last bundle no longer ends it.
        w.dropped(1);
        assert!(
            !w.last.contains_key(&1),
            "the drop's own release ends nothing"
        );
        w.left_outbox(6);
        assert!(w.next(all).is_none());
        // Back, each gets one from its first file (the welcome's need).
        w.need(0, &TreeNeed::backlog_dropped());
        assert_eq!(w.next(all).map(|t| (t.index, t.after)), Some((0, None)));
    }

    #[tokio::test]
    async fn whole_trees_take_turns_and_wait_aside_while_their_receiver_is_away() {
        let (mut w, bases, _dir) = trees(&["r0", "s3://b/p", "r2"]);
        w.need(1, &fresh("due", true));
        w.next(all).unwrap();
        run(&mut w, Some("m"), true, Some(5));
        w.need(0, &fresh("new", false));
        // The bucket goes away between runs: its base waits, and receiver
        // 0's whole tree begins meanwhile.
        let bucket_there = |i: usize| i != 1;
        let t = w.next(bucket_there).expect("receiver 0's");
        assert_eq!((t.index, t.after), (0, None));
        assert!(bases.lock().unwrap().packing, "the base is still packed");
        run(&mut w, Some("k"), true, Some(6));
        // A reconnect meanwhile leaves the base where it was…
        w.need(1, &begun(true));
        // …and once back, the two take turns, each from where it stopped.
        let t = w.next(all).expect("the base goes on");
        assert_eq!(
            (t.index, t.after.as_deref(), t.base),
            (1, Some("m"), Some(1))
        );
        run(&mut w, Some("z"), true, Some(7));
        let t = w.next(all).expect("receiver 0's goes on");
        assert_eq!((t.index, t.after.as_deref()), (0, Some("k")));
        run(&mut w, None, false, Some(8));
        // One waiting to begin for a receiver that is away does not begin.
        w.need(2, &fresh("new", false));
        let r2_away = |i: usize| i != 2;
        let t = w.next(r2_away).expect("the base goes on");
        assert_eq!((t.index, t.after.as_deref()), (1, Some("z")));
        run(&mut w, Some("zz"), true, None);
        // A tree aside is stopped like one being packed.
        assert!(w.next(|_| false).is_none());
        w.dropped(1);
        assert!(!bases.lock().unwrap().packing);
        assert!(
            w.next(r2_away).is_none(),
            "begun again only when it returns"
        );
        assert_eq!(w.next(all).map(|t| (t.index, t.after)), Some((2, None)));
        // One waiting to begin has its turn beside one under way.
        run(&mut w, Some("a"), true, Some(9));
        w.need(0, &fresh("its state is new", false));
        assert!(w.ready(all));
        assert_eq!(w.next(all).map(|t| (t.index, t.after)), Some((0, None)));
        run(&mut w, Some("b"), true, Some(10));
        let t = w.next(all).expect("receiver 2's goes on");
        assert_eq!((t.index, t.after.as_deref()), (2, Some("a")));
        assert!(!w.ready(|_| false));
    }

    /// The deletions a receiver missed, read at its whole tree's first
    /// run, are owed no more once it acknowledges that tree; the drops
    /// its first run saw stay with it to the end.
    #[tokio::test]
    async fn missed_deletions_read_are_owed_no_more_once_the_tree_is_acknowledged() {
        let (mut w, _, dir) = trees(&["r0"]);
        let peers = w.peers.clone();
        let record = || Peers::load(dir.path()).unwrap().receivers["r0"].clone();
        update_peer(&peers, dir.path(), "r0", |r| {
            r.backlog_dropped(owed(&["a", "b"]));
        })
        .unwrap();
        w.need(0, &fresh("its backlog was dropped", false));
        w.next(all).unwrap();
        w.taken(None, true, Some(1));
        w.packed(&[(5, summary())], 0);
        w.next(all).unwrap();
        // Later runs read nothing again: the first one's count stays.
        run(&mut w, Some("z"), false, Some(6));
        assert_eq!(w.last[&0].drops_seen, Some(1));
        w.left_outbox(6);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while record().whole_tree {
            assert!(std::time::Instant::now() < deadline, "never recorded");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(record().missed_deletions.is_empty());
    }

    /// A drop after a tree read its deletions (between its last bundle's
    /// acknowledgement and that being recorded, or a receiver back just
    /// as its backlog was to go) is never undone: the mark and every
    /// deletion stay, for the tree that follows.
    #[test]
    fn a_tree_begun_before_a_drop_settles_nothing() {
        let mut r = PeerRecord::default();
        r.backlog_dropped(owed(&["c"]));
        r.backlog_dropped(owed(&["d"]));
        let was = r.clone();
        assert!(!settle(&mut r, Some(1), Some(9)));
        assert_eq!(r, was);
        assert!(settle(&mut r, Some(2), Some(9)));
        assert_eq!(r.tree_through, 9);
        assert!(!r.whole_tree && r.missed_deletions.is_empty());
    }

    /// A tree acknowledged after a drop its first run never saw (its
    /// receiver back before the backlog went) is begun again: nothing
    /// else would ever settle the mark.
    #[tokio::test]
    async fn a_tree_acknowledged_after_a_drop_it_never_saw_is_begun_again() {
        let (mut w, _, dir) = trees(&["r0"]);
        let peers = w.peers.clone();
        let dropped = |paths: &[&str]| {
            let paths = owed(paths);
            update_peer(&peers, dir.path(), "r0", |r| {
                r.backlog_dropped(paths);
            })
            .unwrap()
        };
        dropped(&["a"]);
        w.need(0, &fresh("its backlog was dropped", false));
        w.next(all).unwrap();
        w.taken(None, false, Some(1));
        dropped(&["b"]);
        w.packed(&[(5, summary())], 5);
        let t = w.next(all).expect("begun again");
        assert_eq!((t.after, t.drops_seen), (None, None));
        let p = peers.lock().unwrap();
        assert!(p.receivers["r0"].whole_tree);
        assert_eq!(p.receivers["r0"].missed_deletions, owed(&["a", "b"]));
    }

    /// A backlog dropped while a base waits to begin makes it a repair:
    /// the bucket's readers in step pass over a base.
    #[tokio::test]
    async fn a_base_waiting_when_its_backlog_is_dropped_becomes_a_repair() {
        let (mut w, _, _dir) = trees(&["s3://b/p"]);
        w.need(0, &fresh("due", true));
        w.dropped(0);
        assert_eq!(w.next(all).unwrap().base, None);
    }

    /// A whole tree's first run deletes what its receiver missed, alone,
    /// and only what is still owed; its runs then take the files.
    #[test]
    fn a_whole_trees_first_run_deletes_what_its_receiver_missed() {
        let shipped = crate::sender::shipped::tests::shipped(&["a", "b", "back.html", "c"], &[]);
        let tree = InTree {
            index: 0,
            after: None,
            base: None,
            last_seq: None,
            more: false,
            drops_seen: None,
        };
        let missed = owed(&["back.html", "gone.html"]);
        let first = tree.run(&shipped, Some(&missed), 2);
        let ops: Vec<_> = first
            .items
            .iter()
            .map(|i| (i.path.as_str(), i.op))
            .collect();
        assert_eq!(ops, [("gone.html", Op::Delete)]);
        assert_eq!((first.last, first.more), (None, true));
        let next = tree.run(&shipped, None, 2);
        let paths: Vec<_> = next.items.iter().map(|i| (i.path.as_str(), i.op)).collect();
        assert_eq!(paths, [("a", Op::Upsert), ("b", Op::Upsert)]);
        assert_eq!((next.last.as_deref(), next.more), (Some("b"), true));
        // Nothing owed: the first run takes files.
        let first = tree.run(&shipped, Some(&owed(&["back.html"])), 2);
        assert_eq!(first.last.as_deref(), Some("b"));
        // An empty tree with deletions owed: one run, the last.
        let empty = crate::sender::shipped::tests::shipped(&[], &[]);
        let only = tree.run(&empty, Some(&missed), 2);
        assert_eq!((only.items.len(), only.more), (2, false));
    }
}
