//! The outbox: bundles packed and not yet acknowledged by every receiver
//! (and the last that left it), what each receiver has been sent,
//! acknowledged, skipped or refused, and what it said it applied (apart:
//! a receiver restored from a backup says less, and is sent again what is
//! still here); and the budget that keeps a receiver that is away from
//! filling the disk, with the deletions a drop would keep from it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, MutexGuard, Weak};
use std::time::Duration;

use anyhow::Context;

use crate::bundle::growing::{Growing, Progress};
use crate::bundle::pack::Packed;
use crate::config::SenderConfig;

/// Bundles packed and not yet acknowledged by every receiver, shared by the
/// packer (which adds) and the transports (which send from their own
/// positions). A bundle leaves once all receivers acknowledged it.
pub struct Outbox {
    pub(super) max_bytes: u64,
    state: std::sync::Mutex<OutboxState>,
    /// Wakes the packer waiting for room.
    room: std::sync::Condvar,
    /// Wakes transports waiting for a bundle.
    pub(super) arrived: tokio::sync::Notify,
    /// The bundle being packed, and for whom (`None`: every receiver): a
    /// transport with nothing else to send may send it as it grows. Not
    /// held here: once packed and sent, its file (open in it) is let go.
    growing: std::sync::Mutex<Option<(Weak<Growing>, Option<usize>)>>,
}

/// Where a receiver's session stands, as the outbox counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    /// No session: its bundles wait here, within the budget.
    Away,
    /// In session, taking bundles.
    Taking,
    /// In session but held by a rollback: it takes no bundle until
    /// released, and its backlog is kept: it is connected, and takes it
    /// once released.
    Held,
}

struct OutboxState {
    /// Shared with the transports sending them: a bundle's list of
    /// changes (10,000 paths) is not copied per send.
    bundles: BTreeMap<u64, Arc<Packed>>,
    /// Per receiver: the outbox is done with it up to here: acknowledged
    /// or applied, refused for good, or dropped; lowered only by
    /// [`Outbox::rewind`].
    acked: Vec<u64>,
    /// Per receiver: the highest sequence written to it.
    sent: Vec<u64>,
    /// Per receiver: the highest sequence it acknowledged, or what its
    /// last `Welcome` said it applied (never moved by a refusal or a
    /// drop, unlike `acked`).
    applied: Vec<u64>,
    /// Per receiver: a bundle arrived numbered at or below what it already
    /// applied (numbering went back), so it can never be sent there.
    stale: Vec<bool>,
    /// Per receiver: its backlog was dropped ([`Outbox::drop_backlog`]),
    /// so what a whole tree under way sent it no longer covers what it
    /// missed.
    dropped: Vec<bool>,
    /// Bundles some receiver refused for good.
    refused: BTreeSet<u64>,
    /// The highest sequence that left (every receiver done with it), in
    /// this process: bundles leave in order, so every one after it is
    /// still here.
    left: u64,
    /// Per receiver: whether its session is under way, and takes bundles.
    presence: Vec<Presence>,
    closed: bool,
}

impl OutboxState {
    /// Whether receiver `r` is done with `b`: acknowledged, or not its bundle.
    fn done(&self, r: usize, b: &Packed) -> bool {
        self.acked[r] >= b.seq || b.only.is_some_and(|o| o != r)
    }

    /// Receiver `i` is done with bundles up to `seq`; returns those that
    /// leave (see [`Outbox::ack`]).
    fn ack(&mut self, i: usize, seq: u64) -> Vec<Packed> {
        self.acked[i] = self.acked[i].max(seq);
        // Bundles leave in order, once every receiver is done with them.
        let mut done = Vec::new();
        loop {
            let ready = self
                .bundles
                .values()
                .next()
                .is_some_and(|b| (0..self.acked.len()).all(|r| self.done(r, b)));
            match self.bundles.pop_first() {
                Some((seq, b)) if ready => {
                    self.left = self.left.max(seq);
                    // A transport may still hold it for a moment.
                    let mut b = Arc::try_unwrap(b).unwrap_or_else(|b| (*b).clone());
                    if self.refused.remove(&seq) || b.only.is_some() {
                        // Not every receiver has it: nothing to record.
                        b.changes.clear();
                    }
                    done.push(b)
                }
                Some((seq, b)) => {
                    self.bundles.insert(seq, b);
                    break;
                }
                None => break,
            }
        }
        done
    }

    /// The bundles a new one for `only` (every receiver: `None`) would
    /// wait behind: the fewest any receiver it is for that takes bundles
    /// (connected, not held by a rollback) has yet to acknowledge. Bundles
    /// for another receiver alone never count: a whole tree for one that
    /// went away would hold back the rest for good. With none of those
    /// taking bundles, one for a single receiver waits behind none while
    /// another does (the run packing it must not hold back those; its
    /// bundles wait here within the budget, [`Outbox::over_budget`]);
    /// otherwise, with no one to send to, it waits behind every bundle
    /// held.
    fn waiting_before(&self, only: Option<usize>) -> usize {
        let taking = |r: usize| self.presence[r] == Presence::Taking;
        let them = (0..self.acked.len()).filter(|&r| taking(r) && only.is_none_or(|o| o == r));
        let each = them.map(|r| self.bundles.values().filter(|b| !self.done(r, b)).count());
        match (each.min(), only) {
            (Some(n), _) => n,
            (None, Some(_)) if (0..self.acked.len()).any(taking) => 0,
            (None, _) => self.bundles.len(),
        }
    }
}

/// Bundles a connected receiver may have waiting before the packer pauses.
const MAX_WAITING: usize = 2;

impl Outbox {
    /// An outbox for `receivers`, holding at most about `max_bytes` of
    /// bundles for receivers that are away (see [`Outbox::over_budget`]).
    pub fn new(receivers: usize, max_bytes: u64) -> Self {
        Self {
            max_bytes,
            state: std::sync::Mutex::new(OutboxState {
                bundles: BTreeMap::new(),
                acked: vec![0; receivers],
                sent: vec![0; receivers],
                applied: vec![0; receivers],
                stale: vec![false; receivers],
                dropped: vec![false; receivers],
                refused: Default::default(),
                left: 0,
                presence: vec![Presence::Away; receivers],
                closed: false,
            }),
            room: std::sync::Condvar::new(),
            arrived: tokio::sync::Notify::new(),
            growing: std::sync::Mutex::new(None),
        }
    }

    /// A bundle for `only` (every receiver: `None`) is being packed into
    /// `g`: it may be sent as it grows.
    pub(super) fn opened(&self, g: &Arc<Growing>, only: Option<usize>) {
        *self.growing.lock().unwrap_or_else(|e| e.into_inner()) = Some((Arc::downgrade(g), only));
        self.arrived.notify_waiters();
    }

    /// The bundle being packed, if it is for receiver `i` and packed
    /// within `max_size` bytes (what `i` takes): sent as it grows by a
    /// transport that has sent `i` all the outbox holds for it.
    pub(super) fn growing_for(&self, i: usize, max_size: u64) -> Option<Arc<Growing>> {
        let slot = self.growing.lock().unwrap_or_else(|e| e.into_inner());
        let (g, only) = slot.as_ref()?;
        let g = g.upgrade()?;
        let packing = matches!(g.progress(), Progress::Packing { .. });
        let fits = g.max_size() <= max_size;
        (packing && fits && only.is_none_or(|o| o == i)).then_some(g)
    }

    /// Bundle `seq`, if it is here.
    pub(super) fn get(&self, seq: u64) -> Option<Arc<Packed>> {
        self.lock().bundles.get(&seq).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a bundle; blocks while it would wait behind `MAX_WAITING` others
    /// ([`OutboxState::waiting_before`]).
    pub fn push(&self, p: Packed) -> std::io::Result<()> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return Err(std::io::Error::other("sender stopping"));
            }
            if st.waiting_before(p.only) < MAX_WAITING {
                break;
            }
            st = self
                .room
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        for r in 0..st.acked.len() {
            if p.seq <= st.acked[r] && p.only.is_none_or(|o| o == r) {
                st.stale[r] = true;
            }
        }
        st.bundles.insert(p.seq, Arc::new(p));
        drop(st);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// Bytes of the bundles held.
    pub fn bytes(&self) -> u64 {
        self.lock().bundles.values().map(|b| b.size).sum()
    }

    /// Over its budget, the receiver that is away and furthest behind, of
    /// those holding bundles back: its backlog is the one to drop.
    pub fn over_budget(&self) -> Option<usize> {
        let st = self.lock();
        let bytes: u64 = st.bundles.values().map(|b| b.size).sum();
        if bytes <= self.max_bytes {
            return None;
        }
        (0..st.acked.len())
            .filter(|&r| st.presence[r] == Presence::Away)
            .filter(|&r| st.bundles.values().any(|b| !st.done(r, b)))
            .min_by_key(|&r| st.acked[r])
    }

    /// The paths deleted in the bundles receiver `i` has yet to
    /// acknowledge: what dropping its backlog would keep from it.
    pub fn deletions_for(&self, i: usize) -> BTreeSet<String> {
        let st = self.lock();
        let waiting = st.bundles.values().filter(|b| !st.done(i, b));
        let changes = waiting.flat_map(|b| &b.changes);
        changes
            .filter(|(_, meta)| meta.is_none())
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// Give up what receiver `i` has waiting, if it is still away (it gets
    /// the whole tree when it returns: record that first, and the
    /// deletions it misses, [`Outbox::deletions_for`]). `first` runs
    /// before, with the receiver held away: whatever follows from its
    /// return comes after it. Returns the bundles that leave; `None` when
    /// it came back meanwhile and nothing was dropped.
    pub fn drop_backlog(&self, i: usize, first: impl FnOnce()) -> Option<Vec<Packed>> {
        let mut st = self.lock();
        if st.presence[i] != Presence::Away {
            return None;
        }
        first();
        st.dropped[i] = true;
        let last = st.bundles.keys().next_back().copied();
        Some(self.done_with(st, i, last.unwrap_or(0)))
    }

    /// The first bundle for receiver `i` it has not acknowledged.
    pub(super) fn next_for(&self, i: usize) -> Option<Arc<Packed>> {
        self.next_after(i, 0)
    }

    /// The first bundle for receiver `i` numbered after `seq` that it has
    /// not acknowledged: the next to send behind those still unanswered.
    pub(super) fn next_after(&self, i: usize, seq: u64) -> Option<Arc<Packed>> {
        let st = self.lock();
        st.bundles
            .range(st.acked[i].max(seq).saturating_add(1)..)
            .map(|(_, p)| p)
            .find(|p| p.only.is_none_or(|o| o == i))
            .cloned()
    }

    /// Receiver `i`'s highest sequence written to it, done with (see
    /// [`Outbox::ack`], [`Outbox::refuse`]) and said to be applied.
    pub(super) fn position(&self, i: usize) -> (u64, u64, u64) {
        let st = self.lock();
        (st.sent[i], st.acked[i], st.applied[i])
    }

    /// The highest sequence that left the outbox in this process (0:
    /// none): every bundle numbered after it is still here. Known the
    /// moment it leaves, before the ledger records it.
    pub(super) fn left(&self) -> u64 {
        self.lock().left
    }

    /// Whether bundle `seq` is here.
    pub(super) fn holds(&self, seq: u64) -> bool {
        self.lock().bundles.contains_key(&seq)
    }

    /// Receiver `i` said at `Welcome` it applied up to `seq`: that is
    /// what it has applied now, whatever it acknowledged before (its root
    /// rolled back, or its state new), though the outbox stays done with
    /// what came after.
    pub(super) fn said_applied(&self, i: usize, seq: u64) {
        self.lock().applied[i] = seq;
    }

    /// Receiver `i` has applied only up to `seq`, less than it said before
    /// (its state restored from a backup of itself): what it acknowledged
    /// after that is sent to it again, as far as the outbox still holds it.
    pub(super) fn rewind(&self, i: usize, seq: u64) {
        let mut st = self.lock();
        st.acked[i] = st.acked[i].min(seq);
        st.sent[i] = st.sent[i].min(seq);
        st.applied[i] = st.applied[i].min(seq);
    }

    pub(super) fn mark_sent(&self, i: usize, seq: u64) {
        let mut st = self.lock();
        st.sent[i] = st.sent[i].max(seq);
    }

    /// Receiver `i` refused bundle `seq` for good: it is done there, and
    /// when it leaves, it records nothing as acknowledged (its files are
    /// packed again). Returns the bundles that leave, as [`Outbox::ack`].
    pub(super) fn refuse(&self, i: usize, seq: u64) -> Vec<Packed> {
        let mut st = self.lock();
        st.refused.insert(seq);
        self.done_with(st, i, seq)
    }

    /// Whether a bundle numbered below receiver `i`'s position arrived
    /// since the last call (it can never go there).
    pub(super) fn take_stale(&self, i: usize) -> bool {
        std::mem::take(&mut self.lock().stale[i])
    }

    /// Whether receiver `i`'s backlog was dropped since the last call.
    pub(super) fn take_dropped(&self, i: usize) -> bool {
        std::mem::take(&mut self.lock().dropped[i])
    }

    /// Whether receiver `i` takes bundles now: in session, not held.
    pub(super) fn takes_bundles(&self, i: usize) -> bool {
        self.lock().presence[i] == Presence::Taking
    }

    /// Receiver `i`'s session began, was held or released, or ended.
    pub(super) fn set_presence(&self, i: usize, presence: Presence) {
        self.lock().presence[i] = presence;
        self.room.notify_all();
    }

    /// Receiver `i` has applied everything up to `seq` (it acknowledged
    /// it, or said so at `Welcome`). Returns the bundles every receiver
    /// now has, which leave the outbox.
    pub(super) fn ack(&self, i: usize, seq: u64) -> Vec<Packed> {
        let mut st = self.lock();
        st.applied[i] = st.applied[i].max(seq);
        self.done_with(st, i, seq)
    }

    /// Receiver `i` is done with bundles up to `seq` (the state `st`
    /// held): the packer waiting for room is woken. Returns the bundles
    /// that leave.
    fn done_with(&self, mut st: MutexGuard<'_, OutboxState>, i: usize, seq: u64) -> Vec<Packed> {
        let done = st.ack(i, seq);
        drop(st);
        self.room.notify_all();
        done
    }

    /// The paths of the bundles some receiver has not acknowledged: on
    /// their way, so a root that lacks their change is not drifting.
    pub(super) fn in_flight(&self) -> Vec<String> {
        let state = self.lock();
        let mut paths = Vec::new();
        for b in state.bundles.values() {
            if (0..state.acked.len()).any(|r| !state.done(r, b)) {
                paths.extend(b.changes.iter().map(|(p, _)| p.clone()));
            }
        }
        paths
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
        self.arrived.notify_waiters();
    }
}

/// The outbox's budget: as configured, which must fit in the free space of
/// `state_dir`'s filesystem, or the default fitted to it.
pub(super) fn outbox_budget(cfg: &SenderConfig, state_dir: &Path) -> anyhow::Result<u64> {
    let st = rustix::fs::statvfs(state_dir)
        .with_context(|| format!("sender.state_dir {}: free space", state_dir.display()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    match cfg.outbox_max {
        Some(max) if max > free => anyhow::bail!(
            "sender.outbox_max = {max} bytes is more than the {free} bytes free on the filesystem of sender.state_dir {}: the sender's disk could fill while a receiver is away",
            state_dir.display()
        ),
        Some(max) => Ok(max),
        None => Ok(crate::config::DEFAULT_OUTBOX_MAX
            .min(free / 2)
            .max(cfg.max_bundle_size)),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sender::shipped::tests::meta;

    /// The bundle being packed goes to a receiver as it grows only if it
    /// is for that receiver, still packed, packed within what the receiver
    /// takes, and still held by its writer or a follower (the outbox holds
    /// none of it).
    #[test]
    fn the_bundle_being_packed_is_offered_only_where_it_fits_while_it_is_packed() {
        use crate::bundle::growing::Publisher;
        let o = Outbox::new(2, 1 << 30);
        let file = tempfile::tempfile().unwrap();
        let g = Growing::new(file, 1000);
        let p = Publisher::new(g.clone());
        o.opened(&g, Some(1));
        assert!(o.growing_for(0, u64::MAX).is_none(), "for receiver 1 alone");
        assert!(o.growing_for(1, 999).is_none(), "packed for larger bundles");
        assert!(o.growing_for(1, 1000).is_some());
        o.opened(&g, None);
        assert!(o.growing_for(0, 1000).is_some());
        p.seal(3, 900);
        assert!(o.growing_for(0, 1000).is_none(), "sealed: it goes whole");
        let h = Growing::new(tempfile::tempfile().unwrap(), 1000);
        o.opened(&h, None);
        drop(h);
        assert!(o.growing_for(0, 1000).is_none(), "let go by all");
    }

    /// A bundle of 1000 bytes numbered `seq`, for `only` that receiver.
    pub(in crate::sender) fn bundle(seq: u64, only: Option<usize>) -> Packed {
        Packed {
            seq,
            path: format!("{seq}.zip").into(),
            size: 1000,
            summary: Default::default(),
            changes: Vec::new(),
            only,
            base: None,
            sources: Vec::new(),
        }
    }

    /// Receiver 0 connected and in step, receiver 1 away, with bundles of
    /// its whole tree held for it.
    fn one_away() -> Outbox {
        let o = Outbox::new(2, 1 << 30);
        o.set_presence(0, Presence::Taking);
        for seq in 1..=3 {
            o.push(bundle(seq, Some(1))).unwrap();
        }
        o
    }

    #[test]
    fn a_whole_tree_for_a_receiver_away_never_holds_back_the_others() {
        let o = one_away();
        let st = o.lock();
        assert_eq!(st.waiting_before(None), 0, "receiver 0 has nothing waiting");
        assert_eq!(
            st.waiting_before(Some(1)),
            0,
            "receiver 1 holds back nobody"
        );
        drop(st);
        // So a bundle for both is added at once; it waits for receiver 0.
        o.push(bundle(4, None)).unwrap();
        assert_eq!(o.lock().waiting_before(None), 1);
    }

    #[test]
    fn a_connected_receiver_paces_what_is_packed_for_it() {
        let o = one_away();
        o.set_presence(1, Presence::Taking);
        let st = o.lock();
        // Its whole tree waits for it to catch up…
        assert_eq!(st.waiting_before(Some(1)), 3);
        // …but a bundle for both goes to receiver 0, in step, at once.
        assert_eq!(st.waiting_before(None), 0);
        drop(st);
        o.set_presence(0, Presence::Away);
        o.set_presence(1, Presence::Away);
        // No one connected: nothing more is packed ahead, for all or one.
        assert_eq!(o.lock().waiting_before(None), 3);
        assert_eq!(o.lock().waiting_before(Some(1)), 3);
    }

    #[test]
    fn a_held_receiver_paces_nothing_and_keeps_its_backlog() {
        let o = one_away();
        o.set_presence(1, Presence::Held);
        let st = o.lock();
        // The rest of its whole tree's run is not held back by it…
        assert_eq!(st.waiting_before(Some(1)), 0);
        drop(st);
        assert!(!o.takes_bundles(1) && o.takes_bundles(0));
        // …and, connected, its backlog is never the one dropped.
        let o = Outbox::new(2, 0);
        o.set_presence(1, Presence::Held);
        o.push(bundle(1, None)).unwrap();
        assert_eq!(
            o.over_budget(),
            Some(0),
            "the receiver away, not the held one"
        );
        // Its hold ends with its session: the next one takes bundles.
        o.set_presence(1, Presence::Away);
        o.set_presence(1, Presence::Taking);
        assert!(o.takes_bundles(1));
    }

    /// What dropping a backlog keeps from its receiver: the deletions in
    /// the bundles it has not acknowledged, its own whole tree's included,
    /// and nothing of what it has or of another receiver's whole tree.
    #[test]
    fn the_deletions_a_receiver_misses_are_those_of_its_unacknowledged_bundles() {
        let o = Outbox::new(2, 1 << 30);
        o.set_presence(0, Presence::Taking);
        let with = |seq, only, changes: &[(&str, bool)]| Packed {
            changes: changes
                .iter()
                .map(|&(p, kept)| (p.to_owned(), kept.then(|| meta(1))))
                .collect(),
            ..bundle(seq, only)
        };
        let bundles = [
            with(1, None, &[("acked.html", false)]),
            with(2, None, &[("gone.html", false), ("new.html", true)]),
            with(3, Some(0), &[("theirs.html", false)]),
            with(4, Some(1), &[("own.html", false)]),
        ];
        for b in bundles {
            let seq = b.seq;
            o.push(b).unwrap();
            // Receiver 0 takes each at once.
            o.ack(0, seq);
        }
        o.ack(1, 1);
        let missed: Vec<String> = o.deletions_for(1).into_iter().collect();
        assert_eq!(missed, ["gone.html", "own.html"]);
        assert!(o.deletions_for(0).is_empty(), "it took everything");
    }

    /// What left is known the moment it leaves (before the ledger records
    /// it), and a receiver rewound holds what it lost here from then on.
    #[test]
    fn what_left_the_outbox_is_known_the_moment_it_leaves() {
        let o = Outbox::new(2, 1 << 30);
        for seq in 1..=2 {
            o.push(bundle(seq, None)).unwrap();
        }
        o.ack(0, 2);
        assert_eq!(o.left(), 0, "receiver 1 holds both");
        assert_eq!(o.ack(1, 1).len(), 1);
        assert_eq!(o.left(), 1);
        o.rewind(0, 1);
        assert!(o.ack(1, 2).is_empty(), "receiver 0 lost it: it stays");
        assert_eq!(o.left(), 1);
        assert_eq!(o.next_for(0).map(|b| b.seq), Some(2));
    }

    /// Rewound, a receiver is sent again what it acknowledged after what
    /// it applied, as far as the outbox holds it; a refusal never counts
    /// as applied.
    #[test]
    fn a_rewound_receiver_is_sent_again_what_the_outbox_holds() {
        // Receiver 0, away, holds every bundle here.
        let o = Outbox::new(2, 1 << 30);
        o.set_presence(1, Presence::Taking);
        o.push(bundle(1, None)).unwrap();
        o.refuse(1, 1);
        assert_eq!(o.position(1), (0, 1, 0), "refused: done, not applied");
        for seq in 2..=4 {
            o.push(bundle(seq, None)).unwrap();
            o.mark_sent(1, seq);
            o.ack(1, seq);
        }
        assert!(o.next_for(1).is_none());
        o.rewind(1, 2);
        assert_eq!(o.position(1), (2, 2, 2));
        let again = o.next_for(1).map(|b| b.seq);
        assert_eq!(again, Some(3), "bundle 3 is still held for receiver 0");
        // Rolled back or new instead, it stays done with what came after.
        o.ack(1, 4);
        o.said_applied(1, 2);
        assert_eq!(o.position(1), (2, 4, 2));
    }
}
