//! The cut: when to pack and what (a whole tree for one receiver that
//! needs one, else what the [`Book`] says is due), packing on a blocking
//! thread into the outbox, and taking in how it went. A run that fails as
//! a whole (a full disk) puts back what it took and is retried with
//! backoff; paths an event touches while a pack runs stay pending.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::bundle::manifest::next_seq;
use crate::bundle::pack::{HeldContent, Limits, PackItem, Packed, Packer, Report, Signatures};
use crate::changes::{Op, Portion};
use crate::config::Compress;
use crate::ledger::Ledger;
use crate::peers::{MAX_MISSED_DELETIONS, Peers, TreeNeed};
use crate::proto::frame::Accepts;
use crate::watch::WatchMsg;

use super::book::Book;
use super::flush::Flushes;
use super::held::Lookup;
use super::link_rate::LinkRates;
use super::outbox::Outbox;
use super::signatures::{SignatureStore, Signer};
use super::source::Source;
use super::state::SenderState;
use super::transport::{Backoff, TransportEvent, release_now, update_peer};
use super::whole_tree::{BaseTrees, WholeTrees};

/// A packing run's report, and how it ended.
pub(super) type PackDone = (Report, std::io::Result<()>);

/// One packing run takes at most this many bundles' worth of upserts
/// (`max_files_per_bundle` each, 10,000 by default: 40,000 paths a run).
/// What a run takes,
/// packs and reports is held until it ends, some 500 bytes per path: a cut
/// of a million new files (a first ship) would hold half a gigabyte at
/// once. A larger cut is packed in runs one after the other, its flushes
/// answered after the last. (Deletions are all taken at once: the
/// mass-deletion guard judges them together; so are those a receiver
/// missed, in the first run of its whole tree.)
const BUNDLES_PER_RUN: usize = 4;

/// What the packer shares with the transports: the outbox, the ledger,
/// what is known of the receivers, and the numbering of bundles.
#[derive(Clone)]
pub(super) struct Handles {
    pub(super) state: Arc<Mutex<SenderState>>,
    pub(super) state_dir: PathBuf,
    pub(super) outbox_dir: PathBuf,
    /// Packed bundles on their way to the receivers.
    pub(super) outbox: Arc<Outbox>,
    /// Where the packer notes each bundle before it can go out.
    pub(super) ledger: Arc<Mutex<Ledger>>,
    pub(super) peers: Arc<Mutex<Peers>>,
    /// What each receiver said it accepts, once it said so.
    pub(super) accepts: Arc<Mutex<Vec<Option<Accepts>>>>,
    /// No bundle is numbered below this (learnt at Welcome).
    pub(super) seq_floor: Arc<AtomicU64>,
    /// The transports' channel, for the packer to release bundles whose
    /// only holder's backlog it dropped.
    pub(super) events: mpsc::UnboundedSender<TransportEvent>,
    /// Each receiver's name, in the order of `sender.receivers`.
    pub(super) receivers: Vec<String>,
    /// How fast each receiver's link was measured, and `sender.compress`:
    /// together, whether a packing run deflates.
    pub(super) link_rates: Arc<LinkRates>,
    pub(super) compress: Compress,
    /// The large files' signatures, for deltas, and what signs those the
    /// packer packed unsigned.
    pub(super) signatures: Arc<SignatureStore>,
    pub(super) signer: Arc<Signer>,
    /// The bucket's bases, as its packing and uploads both see them.
    pub(super) bases: Arc<Mutex<BaseTrees>>,
}

impl Handles {
    /// A packing run's limits: `own` narrowed to what every receiver said
    /// it accepts, its first bundle held small while a link is to be
    /// measured (and stored, 8 MiB per process in all:
    /// [`super::link_rate::LinkRates::first_bundle`]).
    /// Called once per packing run.
    fn limits(&self, own: Limits) -> Limits {
        let narrowed = self
            .accepts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .fold(own, |l, a| l.within(a));
        Limits {
            first_bundle: self.link_rates.first_bundle(self.compress),
            ..narrowed
        }
    }

    /// The next sequence number, persisted before it is used so a restart
    /// never reuses it. Blocking.
    fn alloc_seq(&self) -> std::io::Result<u64> {
        let mut st = self.state.lock().expect("state lock");
        let seq = st.next_seq.max(self.seq_floor.load(Ordering::SeqCst));
        st.next_seq = next_seq(seq).map_err(std::io::Error::other)?;
        st.save(&self.state_dir).map_err(std::io::Error::other)?;
        Ok(seq)
    }

    /// Note a packed bundle and hand it to the outbox (`only`: for that
    /// receiver alone). Blocking: waits for room.
    fn emit(&self, mut p: Packed, only: Option<usize>) -> std::io::Result<()> {
        p.only = only;
        // Before any receiver can apply it: a crash between its apply and
        // the record of its acknowledgement leaves its paths in doubt, not
        // taken for what the ledger says. (A whole tree for one receiver
        // changes nothing every receiver has: it is not recorded.)
        if only.is_none() {
            let paths = p.changes.iter().map(|(path, _)| path.clone()).collect();
            self.ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .shipping(p.seq, paths)?;
        }
        info!(
            seq = p.seq,
            files = p.summary.files,
            parts = p.summary.parts,
            deletions = p.summary.deletions,
            bytes = p.summary.bytes,
            size = p.size,
            "bundle packed"
        );
        let queue = &self.outbox;
        queue.push(p)?;
        // A receiver that is away must not fill the sender's disk.
        while let Some(j) = queue.over_budget() {
            let peer = &self.receivers[j];
            // Its whole tree adds and updates: what was deleted meanwhile
            // is recorded, to be deleted there by that tree's first run.
            let missed = queue.deletions_for(j);
            let deletions = missed.len();
            let mut unrecorded = 0;
            update_peer(&self.peers, &self.state_dir, peer, |r| {
                unrecorded = r.backlog_dropped(missed);
            })?;
            // Told before anything its return sets off: a whole tree under
            // way for it stops, and is begun again when it returns.
            let tell = || {
                let _ = self
                    .events
                    .send(TransportEvent::BacklogDropped { index: j });
            };
            let outbox_bytes = queue.bytes();
            let Some(done) = queue.drop_backlog(j, tell) else {
                // Back before its backlog went, it keeps it, and the mark
                // and the drop's count stand: a tree under way for it would
                // never settle them, so one is begun afresh. At worst a
                // whole tree it did not need.
                let reason = "it returned as its backlog was being dropped".to_owned();
                let need = TreeNeed::new(reason, false);
                let _ = self
                    .events
                    .send(TransportEvent::WholeTree { index: j, need });
                continue;
            };
            warn!(peer = %peer, outbox_bytes, outbox_max = queue.max_bytes, deletions, "the outbox is over sender.outbox_max while this receiver is away: its backlog is dropped, and it gets the whole tree when it returns, with the deletions the backlog held");
            if unrecorded > 0 {
                warn!(peer = %peer, unrecorded, limit = MAX_MISSED_DELETIONS, "too many deletions missed by this receiver to record: those past the limit stay there until `shipper verify --delete-extra`");
            }
            release_now(done, &self.events, &self.ledger);
        }
        Ok(())
    }

    /// Pack `items` from `source` within `limits`, leaving pending what was
    /// `touched` meanwhile; `only`: for that receiver alone (`base`: as
    /// the bucket's base of that number). Blocking.
    fn pack(
        &self,
        items: Vec<PackItem>,
        (only, base): (Option<usize>, Option<u64>),
        source: &Path,
        limits: Limits,
        (touched, held): (&Mutex<HashSet<String>>, Option<Lookup>),
    ) -> PackDone {
        let sender_id = self.state.lock().expect("state lock").id.clone();
        let mut emit = |mut p: Packed| {
            p.base = base;
            self.emit(p, only)
        };
        let mut packer = Packer {
            source,
            outbox: &self.outbox_dir,
            sender: &sender_id,
            limits,
            alloc_seq: &mut || self.alloc_seq(),
            emit: &mut emit,
            opened: &|g| self.outbox.opened(g, only),
            touched: &|p: &str| {
                touched
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(p)
            },
            deflate: &|| self.link_rates.deflate(self.compress),
            await_measure: &|| {
                let since = Instant::now();
                let wait = super::link_rate::FIRST_MEASURE_WAIT;
                if let Some(measured) = self.link_rates.await_measures(self.compress, wait) {
                    debug!(
                        measured,
                        waited_ms = since.elapsed().as_millis() as u64,
                        "the run's first bundle, stored, is out: waited for the links' measure of it before reading on (measured false: not within the wait, and a link not measured counts as slow; a process waits once)"
                    );
                }
            },
            held: held.as_ref().map(|l| l as &dyn HeldContent),
            // A whole tree for one receiver sends no deltas; the content
            // it packs was signed when it first shipped.
            signatures: only
                .is_none()
                .then_some(&*self.signatures as &dyn Signatures),
        };
        let mut report = Report::default();
        let result = packer.pack_into(items, &mut report);
        self.link_rates.spend_stored(report.held_stored);
        (report, result)
    }
}

/// Paths an event touched while a pack runs; the packer leaves them pending.
#[derive(Default)]
struct Touched {
    paths: Arc<Mutex<HashSet<String>>>,
    /// A pack runs: events are noted.
    active: bool,
}

impl Touched {
    /// A pack begins: note events from now on. Returns the set it reads.
    fn start(&mut self) -> Arc<Mutex<HashSet<String>>> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.active = true;
        self.paths.clone()
    }

    fn stop(&mut self) {
        self.active = false;
    }

    fn note(&self, path: &str) {
        if self.active {
            self.paths
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path.to_owned());
        }
    }
}

/// A cut being packed, in one run or more.
struct InCut {
    force: bool,
    /// Its flushes allow a mass deletion.
    allow: bool,
    /// The first sequence it packed into, once a run ended.
    first: Option<u64>,
    /// The last path a run took: the next run takes the paths after it…
    after: Option<String>,
    /// …if the one packing now left any due.
    more: bool,
}

/// The packing step: at most one run at a time.
pub(super) struct Cut {
    handles: Handles,
    /// The sender's own bundle limits, before any receiver's narrower ones.
    limits: Limits,
    running: Option<JoinHandle<PackDone>>,
    /// What the running pack took from the change set.
    taken: Vec<(String, Op)>,
    /// The running pack is a whole tree for this receiver only.
    only: Option<usize>,
    /// The cut being packed, until its last run ends.
    cut: Option<InCut>,
    touched: Touched,
    /// The last packing run failed as a whole: why, and when to try again.
    error: Option<String>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    pub(super) whole_trees: WholeTrees,
    /// The last run packed a whole tree: the next turn is the usual cut's,
    /// if anything is due, so a new receiver's whole tree does not hold
    /// back every receiver's changes (and flushes) for all its runs.
    tree_ran_last: bool,
}

impl Cut {
    pub(super) fn new(handles: Handles, limits: Limits, whole_trees: WholeTrees) -> Self {
        Self {
            handles,
            limits,
            running: None,
            taken: Vec::new(),
            only: None,
            cut: None,
            touched: Touched::default(),
            error: None,
            retry_at: None,
            backoff: Backoff::default(),
            whole_trees,
            tree_ran_last: false,
        }
    }

    /// Why the last packing run failed as a whole, until one works.
    pub(super) fn error(&self) -> Option<&String> {
        self.error.as_ref()
    }

    /// Whether a cut larger than one run has more to pack, or a whole
    /// tree waits for a receiver there: the next run is to start at once.
    pub(super) fn continues(&self) -> bool {
        let outbox = &self.handles.outbox;
        self.running.is_none()
            && (self.cut.is_some() || self.whole_trees.ready(|i| outbox.takes_bundles(i)))
    }

    /// A watch event: if a pack runs, the path it touched stays pending.
    pub(super) fn note_event(&self, msg: &WatchMsg) {
        if let WatchMsg::Changed { path, .. } | WatchMsg::Closed(path) | WatchMsg::Removed(path) =
            msg
        {
            self.touched.note(path);
        }
    }

    /// The end of the running pack; never, while none runs.
    pub(super) async fn wait(&mut self) -> PackDone {
        match &mut self.running {
            Some(h) => match h.await {
                Ok(done) => done,
                Err(e) => (
                    Report::default(),
                    Err(std::io::Error::other(format!("packing task failed: {e}"))),
                ),
            },
            None => std::future::pending().await,
        }
    }

    /// Start packing if anything is due and no pack is running; `force`
    /// (a flush): everything pending, backoff or not. The next cut is at
    /// `next_tick`. A cut larger than one run goes on as it began.
    pub(super) fn maybe_pack(
        &mut self,
        book: &mut Book,
        flushes: &mut Flushes,
        source: &Source,
        force: bool,
        next_tick: Instant,
    ) {
        if self.running.is_some() {
            return;
        }
        let now = Instant::now();
        // After a failed run (a full disk), wait out the backoff.
        if !force && self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        // Whole trees and the usual cuts take turns.
        if !self.tree_ran_last && self.start_tree_run(book, source) {
            return;
        }
        if self.start_cut(book, flushes, source, (force, next_tick, now)) {
            self.tree_ran_last = false;
            return;
        }
        self.start_tree_run(book, source);
    }

    /// Start the next run of a whole tree for a receiver that needs one,
    /// if one waits. Returns whether a run started.
    fn start_tree_run(&mut self, book: &Book, source: &Source) -> bool {
        let outbox = &self.handles.outbox;
        let Some(tree) = self.whole_trees.next(|i| outbox.takes_bundles(i)) else {
            return false;
        };
        // Everything the receivers have (or will once the outbox drains),
        // for this one only, a run's worth at a time; changes still
        // pending reach every receiver in the usual bundles.
        let most = self.limits.max_entries.saturating_mul(BUNDLES_PER_RUN);
        // Its first run deletes first what the receiver missed when its
        // backlog was dropped.
        let first = tree.drops_seen.is_none();
        let missed = first.then(|| self.missed_deletions(tree.index));
        let run = tree.run(&book.shipped, missed.as_ref().map(|(paths, _)| paths), most);
        if run.items.iter().any(|i| i.op == Op::Delete) {
            let deletions = run.items.len();
            info!(peer = %self.handles.receivers[tree.index], deletions, "deleting there what it missed while its backlog was dropped");
        }
        let drops_seen = missed.map(|(_, drops)| drops);
        self.whole_trees.taken(run.last, run.more, drops_seen);
        // A receiver getting the whole tree may hold nothing: no reuse.
        self.start(run.items, (Some(tree.index), tree.base, None), source.dir());
        self.tree_ran_last = true;
        true
    }

    /// The deletions receiver `index` missed when its backlog was dropped
    /// (`PeerRecord::missed_deletions`), and how many drops it has seen.
    fn missed_deletions(&self, index: usize) -> (BTreeSet<String>, u64) {
        let peers = self.handles.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.receivers.get(&self.handles.receivers[index]) {
            Some(r) => (r.missed_deletions.clone(), r.backlogs_dropped),
            None => Default::default(),
        }
    }

    /// Start a run of the usual cut (or the next run of one under way) if
    /// anything is due; with nothing new, its flushes wait for what is in
    /// flight. Returns whether a run started.
    fn start_cut(
        &mut self,
        book: &mut Book,
        flushes: &mut Flushes,
        source: &Source,
        (force, next_tick, now): (bool, Instant, Instant),
    ) -> bool {
        let cut = self.cut.take().unwrap_or_else(|| InCut {
            force,
            allow: flushes.start_cut(),
            first: None,
            after: None,
            more: false,
        });
        let portion = Portion {
            max_upserts: self.limits.max_entries.saturating_mul(BUNDLES_PER_RUN),
            after: cut.after.as_deref(),
        };
        let (items, more) = super::source::blocking(|| {
            let how = (cut.force, cut.allow);
            book.take_due(now, next_tick, how, portion, |p| source.on_disk(p))
        });
        if items.is_empty() {
            // Nothing new: the flushes wait for what is already in flight.
            let first = cut.first.unwrap_or_else(|| flushes.cut_starts());
            flushes.cut_done(first, book.held());
            return false;
        }
        let after = items.iter().rev().find(|i| i.op == Op::Upsert);
        let after = after.map(|i| i.path.clone()).or(cut.after);
        self.cut = Some(InCut { after, more, ..cut });
        self.taken = items.iter().map(|i| (i.path.clone(), i.op)).collect();
        let held = Some(Lookup(book.shipped.held()));
        self.start(items, (None, None, held), source.dir());
        true
    }

    /// Pack `items` on a blocking thread; `only`: for that receiver alone
    /// (`base`: as the bucket's base of that number); `held`: where the
    /// receivers hold content that may be reused.
    fn start(
        &mut self,
        items: Vec<PackItem>,
        (only, base, held): (Option<usize>, Option<u64>, Option<Lookup>),
        source: &Path,
    ) {
        self.only = only;
        let limits = self.handles.limits(self.limits);
        let handles = self.handles.clone();
        let source = source.to_owned();
        let touched = self.touched.start();
        self.running = Some(tokio::task::spawn_blocking(move || {
            handles.pack(items, (only, base), &source, limits, (&touched, held))
        }));
    }

    /// The running pack ended with `report` and `result`: take it into the
    /// book and the flushes. Returns whether it was a whole tree for one
    /// receiver.
    pub(super) fn finished(
        &mut self,
        mut report: Report,
        result: std::io::Result<()>,
        book: &mut Book,
        flushes: &mut Flushes,
    ) -> bool {
        self.running = None;
        self.touched.stop();
        if let Some(index) = self.only.take() {
            self.whole_tree_packed(index, report, result, book, flushes);
            return true;
        }
        let cut = self.cut.take();
        let first = cut
            .as_ref()
            .and_then(|c| c.first)
            .unwrap_or_else(|| flushes.cut_starts());
        let now = Instant::now();
        let taken = std::mem::take(&mut self.taken);
        let accounted = book.record(&report, now);
        flushes.bundles_packed(&report.bundles);
        self.handles
            .signer
            .sign(std::mem::take(&mut report.unsigned));
        match result {
            Ok(()) => {
                book.clear_failing(&taken, &report.failed);
                self.backoff.reset();
                self.retry_at = None;
                if self.error.take().is_some() {
                    info!("packing works again");
                }
                if let Some(cut) = cut.filter(|c| c.more) {
                    // Its flushes wait for the run taking the rest.
                    let first = Some(first);
                    self.cut = Some(InCut { first, ..cut });
                    return false;
                }
            }
            Err(e) => {
                book.put_back(taken, &accounted, now);
                let error = self.failed_run(&e, book.changes.len(), now);
                flushes.pack_failed(&error);
            }
        }
        flushes.cut_done(first, book.held());
        false
    }

    /// A packing run failed as a whole: retry with backoff, and say so
    /// once per distinct error. Returns the error.
    fn failed_run(&mut self, error: &std::io::Error, pending: usize, now: Instant) -> String {
        let delay = self.backoff.next_delay();
        self.retry_at = Some(now + delay);
        let msg = error.to_string();
        if self.error.as_deref() != Some(msg.as_str()) {
            warn!(
                error = %msg,
                pending,
                retry_in = %crate::config::fmt_dur(delay),
                "packing failed; changes stay pending and packing is retried with backoff"
            );
        }
        self.error = Some(msg.clone());
        msg
    }

    /// A whole tree for receiver `index` was packed (or failed to be).
    fn whole_tree_packed(
        &mut self,
        index: usize,
        report: Report,
        result: std::io::Result<()>,
        book: &mut Book,
        flushes: &mut Flushes,
    ) {
        let now = Instant::now();
        book.failed(&report.failed, now);
        flushes.bundles_packed(&report.bundles);
        match result {
            Err(e) => {
                self.whole_trees.failed(index, &e);
                self.retry_at = Some(now + self.backoff.next_delay());
            }
            Ok(()) => self
                .whole_trees
                .packed(&report.bundles, flushes.acked_seq()),
        }
    }
}
