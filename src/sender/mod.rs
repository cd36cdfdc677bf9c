//! The sender: watcher -> change set -> packer -> outbox -> transports.
//!
//! [`run`] wires the parts and runs the select loop; each step of the path
//! has its own room:
//! - `mod.rs` (here): the wiring, the select loop, and `Sender`, which
//!   hands each event to the room it concerns.
//! - `start.rs`: start-up: the state directory opened, the handles the
//!   packer and the transports share, the transports and metrics spawned.
//! - `source.rs`: the source directory's watch, the sentinel following its
//!   path, walks off the runtime.
//! - `catchup.rs`: the pure diff of a walk against what the receivers have.
//! - `shipped.rs`: what the receivers have per path, and the paths in doubt.
//! - `held.rs`: where the receivers hold each content (size and hash ->
//!   path), so a renamed or copied file is rebuilt from their own copy.
//! - `signatures.rs`: the large files' signatures, so a changed one sends
//!   only its changed chunks.
//! - `book.rs`: every path tracked: pending changes, shipped, failing,
//!   badly named, unsettled; what a cut takes (tested in `book_tests.rs`).
//! - `guard.rs`: the mass-deletion guard.
//! - `skipped.rs`: symlinks not shipped (pointing outside the tree).
//! - `cut.rs`: when to pack and what, packing on a blocking thread, retries
//!   of a failed run.
//! - `whole_tree.rs`: whole trees for receivers that need one.
//! - `flush.rs`: the flush tracker: flushes waiting for a cut and its
//!   acknowledgement, and their deadlines.
//! - `report.rs`: the links for status, pending bytes, the first ship's
//!   progress bar.
//! - `state.rs`: the sender's id and next sequence (`sender.json`), and the
//!   pause marker, kept across restarts.
//! - `outbox.rs`: bundles not yet acknowledged by every receiver, and its
//!   budget.
//! - `link_rate.rs`: how fast each receiver's link carries bundles, and
//!   whether deflate pays on it; `link_memory.rs`: those rates remembered
//!   across restarts (`link-rates.json`).
//! - `verify.rs`: `shipper verify`: the source against each receiver's
//!   root, and the repair; `compare.rs`: the same by itself for a root
//!   rolled back and released, deleting only what the rollback brought
//!   back.
//! - `transport.rs`: one receiver's connection, Welcome, sending, release
//!   into the ledger; every wait on the peer bounded (see
//!   [`crate::proto`]'s liveness rules).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bundle::pack::{Limits, Report};
use crate::config::SenderConfig;
use crate::control::{self, Call, Request, Response};
use crate::status::StatusReport;
use crate::watch::{SourceEvent, Walk, WatchMsg};

mod book;
mod catchup;
mod compare;
mod cut;
mod flush;
mod guard;
mod held;
mod link_memory;
mod link_rate;
mod outbox;
mod report;
mod shipped;
mod signatures;
mod skipped;
mod source;
mod start;
mod state;
mod transport;
mod verify;
mod whole_tree;

use book::Book;
use cut::Cut;
use flush::Flushes;
use outbox::Outbox;
use report::{FirstShip, Links, PendingBytes};
use source::{Source, next_watch_msg};
use transport::TransportEvent;
use whole_tree::WholeTrees;

/// How often flushes expire, pending bytes are counted and metrics refreshed.
const HOUSEKEEPING: Duration = Duration::from_millis(500);

/// Run the sender until `shutdown`.
pub async fn run(cfg: SenderConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _lock = start::lock_state_dir(&cfg)?;
    let state_dir = start::canonical_state_dir(&cfg)?;
    // Never ship our own state if it lives inside the source tree.
    let ignore = vec![state_dir.clone()];
    // The source is followed by its path: the sentinel reports another
    // directory there (already watched) or none. One already there is
    // watched, and its catch-up walk started, while the state loads: at a
    // million files the walk and the load of the acknowledged state each
    // take seconds, on a core each; the walk's result waits in its channel
    // until the loop below compares it. A missing source (or one gone
    // again before its first look) is looked at once the state says
    // whether to create it (a first start) or to hold.
    let mut early = None;
    if cfg.source.is_dir() {
        let (mut source, first_look, feeds) =
            Source::start(&cfg.source, &cfg.exclude, ignore.clone())?;
        if matches!(first_look, SourceEvent::Watched(_)) {
            let watch_rx = source.follow(first_look);
            early = Some((source, FirstLook::Followed(watch_rx), feeds));
        }
    }
    let stores = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || start::open_stores(&cfg, state_dir))
            .await
            .context("loading the sender's state")??
    };
    info!(id = %stores.state.id, source = %cfg.source.display(), receivers = %cfg.destinations().join(", "), "sender starting");
    let (source, first_look, mut feeds) = match early {
        Some(early) => early,
        None => {
            let (source, first_look, feeds) = Source::start(&cfg.source, &cfg.exclude, ignore)?;
            (source, FirstLook::Pending(first_look), feeds)
        }
    };
    let (control_tx, mut control_rx) = mpsc::channel::<Call>(16);
    let control_task = tokio::spawn(control::serve(
        (control::socket_path(&stores.state_dir), "sender"),
        control_tx,
        shutdown.clone(),
    ));
    let (repair_tx, mut repair_rx) = mpsc::channel(4);
    let (mut s, mut transport_rx, transport_tasks) =
        Sender::start(cfg, stores, source, &shutdown, repair_tx)?;
    // Closed however this ends, even if this future is dropped unfinished
    // (its runtime shut down): a packing thread waiting for room would
    // otherwise wait for good, and hold up that shutdown.
    let _closes = CloseOnDrop(s.outbox.clone());
    // Catch-up: compare the tree with what the receiver acknowledged; with
    // empty state everything is new, so the first bundles bring an empty
    // receiver up to date. The watch is already running, so nothing written
    // during the walk is missed. A missing source is held instead.
    let mut watch_rx = match first_look {
        FirstLook::Pending(ev) => s.on_source(ev),
        FirstLook::Followed(watch_rx) => watch_rx,
    };
    let (report_tx, metrics_task) = start::serve_metrics(&s.cfg, &shutdown).await?;
    let metrics = metrics_task.is_some().then_some(&report_tx);
    let mut next_tick = s.next_tick();
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(msg) = next_watch_msg(&mut watch_rx) => s.on_watch(msg),
            // Replacing the receiver drops what the old watch still held:
            // it happened in a directory that is no longer the source.
            Some(ev) = feeds.events.recv() => watch_rx = s.on_source(ev),
            Some(walk) = feeds.walks.recv() => s.on_walk(walk, next_tick),
            _ = tokio::time::sleep_until(next_tick.into()) => {
                next_tick = s.next_tick();
                s.maybe_pack(false, next_tick);
            }
            (report, result) = s.cut.wait() => s.on_packed(report, result, next_tick),
            Some((req, reply)) = control_rx.recv() => s.on_control(req, reply, next_tick).await,
            Some(ev) = transport_rx.recv() => s.on_transport(ev, next_tick),
            Some(r) = repair_rx.recv() => s.on_repair(r, next_tick),
            _ = housekeeping.tick() => s.on_housekeeping(metrics, next_tick),
        }
    }
    info!("sender stopping");
    s.outbox.close();
    drop(s);
    for t in transport_tasks {
        let _ = t.await;
    }
    let _ = control_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    Ok(())
}

/// Closes the outbox when dropped.
struct CloseOnDrop(Arc<Outbox>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The sentinel's first look at the source path at start.
enum FirstLook {
    /// Followed before the state loaded (the source was there): the watch's
    /// events. Nothing was pending or queued yet for `on_source` to drop or
    /// refuse.
    Followed(Option<mpsc::UnboundedReceiver<WatchMsg>>),
    /// To follow once the sender runs.
    Pending(SourceEvent),
}

/// The select loop's state: each part in its room.
struct Sender {
    cfg: SenderConfig,
    /// The sender's id, as in `sender.json`.
    id: String,
    state_dir: PathBuf,
    source: Source,
    book: Book,
    cut: Cut,
    flushes: Flushes,
    links: Links,
    /// Packed bundles on their way to the receivers.
    outbox: Arc<Outbox>,
    /// The receivers' last applied sequence, once a Welcome told it.
    seq_floor: Arc<AtomicU64>,
    pending_bytes: PendingBytes,
    first_ship: FirstShip,
    /// No bundles are cut while paused (kept in `state_dir/paused`).
    paused: bool,
    /// A sender with new state learns the receiver's last sequence before
    /// numbering its first bundle.
    needs_welcome: bool,
    verifier: Arc<verify::Verifier>,
}

impl Sender {
    /// Wire the parts over `stores` and `source`, and start one transport
    /// per receiver. Returns the sender, the channel its transports report
    /// on, and their tasks.
    fn start(
        cfg: SenderConfig,
        stores: start::Stores,
        source: Source,
        shutdown: &CancellationToken,
        repairs: mpsc::Sender<verify::RepairRequest>,
    ) -> anyhow::Result<(
        Self,
        mpsc::UnboundedReceiver<TransportEvent>,
        Vec<JoinHandle<()>>,
    )> {
        let (id, fresh) = (stores.state.id.clone(), stores.fresh);
        let (h, shipped, events_rx) = start::share(&cfg, stores)?;
        let (links, tasks, tls) = start::spawn_transports(&cfg, &h, &id, shutdown)?;
        let verifier = Arc::new(verify::Verifier {
            id: id.clone(),
            receivers: cfg.receivers.clone(),
            tls,
            peer_timeout: cfg.peer_timeout,
            exclude: cfg.exclude.clone(),
            repairs,
            peers: h.peers.clone(),
            state_dir: h.state_dir.clone(),
            comparing: Default::default(),
        });
        let whole_trees = WholeTrees::new(
            cfg.destinations(),
            (h.peers.clone(), h.state_dir.clone()),
            h.bases.clone(),
        );
        let limits = Limits::new(
            cfg.chunk_size,
            cfg.max_bundle_size,
            cfg.max_files_per_bundle,
        );
        let s = Sender {
            id,
            paused: state::is_paused(&h.state_dir),
            state_dir: h.state_dir.clone(),
            source,
            book: Book::new(cfg.settle, cfg.max_delay, cfg.mass_delete, shipped),
            links,
            outbox: h.outbox.clone(),
            seq_floor: h.seq_floor.clone(),
            cut: Cut::new(h, limits, whole_trees),
            flushes: Flushes::default(),
            pending_bytes: PendingBytes::default(),
            first_ship: FirstShip::default(),
            needs_welcome: fresh,
            verifier,
            cfg,
        };
        Ok((s, events_rx, tasks))
    }

    fn next_tick(&self) -> Instant {
        let now = chrono::Utc::now();
        let wait = self
            .cfg
            .schedule
            .next_after(now)
            .and_then(|t| (t - now).to_std().ok())
            .unwrap_or(crate::config::WINDOW);
        Instant::now() + wait
    }

    fn on_watch(&mut self, msg: WatchMsg) {
        let now = Instant::now();
        self.cut.note_event(&msg);
        match msg {
            WatchMsg::Changed { path, writing } => self.book.changes.changed(&path, writing, now),
            WatchMsg::Closed(path) => self.book.changes.closed(&path, now),
            WatchMsg::Removed(path) => self.book.removed(path, now),
            WatchMsg::Scan(dir) => self.source.scan(dir),
            WatchMsg::BadName { path, gone } => self.book.bad_name(path, gone, now),
            WatchMsg::Rescan(why) => {
                warn!(reason = %why, "events may have been lost; rescanning the source tree");
                // A lost close would otherwise hold its path until max_delay.
                self.book.changes.writers_unknown();
                self.source.scan_all();
            }
        }
    }

    /// The sentinel found another directory at the source path, or none.
    /// Returns the events of the new watch (`None` until there is one).
    /// What is pending was seen in the directory that went, so it is
    /// dropped: the comparison of the new tree with what the receivers have
    /// finds again whatever differs, as at start.
    fn on_source(&mut self, ev: SourceEvent) -> Option<mpsc::UnboundedReceiver<WatchMsg>> {
        self.book.forget_pending();
        let lost = matches!(ev, SourceEvent::Missing(_));
        let events = self.source.follow(ev);
        if lost {
            self.flushes.refuse_queued(&self.source.holding_message());
        }
        events
    }

    /// A walk finished: compare it, and after a catch-up (a walk of the
    /// whole tree) ship what is already settled without waiting for the
    /// next tick.
    fn on_walk(&mut self, walk: Walk, next_tick: Instant) {
        let whole_tree = walk.dir.is_none();
        self.compare(walk);
        if whole_tree {
            self.maybe_pack(false, next_tick);
        }
    }

    /// Compare what a walk found with what the receivers have: queue what
    /// differs, and the shipped paths below the walked directory that are
    /// gone. A walk that ends while no directory is watched at the source
    /// path (missing, or its replacement not watched yet) queues nothing:
    /// the source vanishing is not its files being deleted, and the
    /// comparison once one is watched again covers the tree.
    fn compare(&mut self, mut walk: Walk) {
        if !self.source.watched() {
            return;
        }
        let now = Instant::now();
        let whole_tree = walk.dir.is_none();
        source::warn_unseen(&walk);
        let diff = catchup::diff(&walk, &self.book.shipped, &self.book.changes);
        if whole_tree {
            let shipped = &self.book.shipped;
            self.first_ship
                .compared(|| catchup::unshipped_bytes(&walk, shipped));
        }
        let catchup::Diff { changed, missing } = diff;
        let found: Vec<(usize, bool)> = changed.iter().map(|d| (d.index, d.open)).collect();
        drop(changed);
        // The paths move from the walk into the change set: at a first
        // ship of a million files, a copy of each would be 50 MB more.
        self.book.queue_found(&mut walk.files, &found, now);
        // The walk knows every badly named path in its scope.
        let scope = walk.dir.as_deref().unwrap_or_default();
        let began = walk.began.unwrap_or(now);
        self.book.bad_names_walked(scope, &walk.bad_names, began);
        // Re-created since the walk passed it: its event has it.
        let source = &self.source;
        let gone: Vec<String> =
            source::blocking(|| missing.into_iter().filter(|p| source.absent(p)).collect());
        // Checked after the paths: if the source was there then, they are
        // really gone. If not, the sentinel is about to report it missing.
        if !gone.is_empty() && self.source.vanished() {
            return;
        }
        self.book.queue_gone(&gone, now);
        if whole_tree {
            info!(
                files = walk.files.len(),
                dirs = walk.dirs,
                changed = found.len(),
                deleted = gone.len(),
                walk_ms = walk.took.as_millis() as u64,
                "source tree compared with what the receiver has"
            );
            source::warn_near_watch_limit(walk.dirs);
        }
    }

    /// Start packing if anything is due, unless nothing may be cut now.
    fn maybe_pack(&mut self, force: bool, next_tick: Instant) {
        if self.needs_welcome || self.paused || self.source.missing().is_some() {
            return;
        }
        let (book, flushes) = (&mut self.book, &mut self.flushes);
        self.cut
            .maybe_pack(book, flushes, &self.source, force, next_tick);
    }

    fn on_packed(&mut self, report: Report, result: std::io::Result<()>, next_tick: Instant) {
        let whole_tree = self
            .cut
            .finished(report, result, &mut self.book, &mut self.flushes);
        if whole_tree || self.cut.continues() {
            self.maybe_pack(self.flushes.any_queued(), next_tick);
        } else if self.flushes.any_queued() {
            self.maybe_pack(true, next_tick);
        }
    }

    async fn on_control(
        &mut self,
        req: Request,
        reply: oneshot::Sender<Response>,
        next_tick: Instant,
    ) {
        match req {
            Request::Status => {
                let _ = reply.send(Response::Status(Box::new(self.status_report())));
            }
            Request::Rollback { .. } | Request::Release { .. } => {
                let _ = reply.send(Response::Error {
                    message:
                        "rollback is done on a receiver: `shipper rollback --config RECEIVER.toml`"
                            .into(),
                });
            }
            Request::Pause | Request::Resume => {
                let pause = matches!(req, Request::Pause);
                let _ = reply.send(match self.set_paused(pause).await {
                    Ok(()) => Response::Paused { paused: pause },
                    Err(e) => Response::Error {
                        message: format!("{e:#}"),
                    },
                });
                if !pause {
                    self.maybe_pack(false, next_tick);
                }
            }
            Request::Flush { .. } if self.paused => {
                let _ = reply.send(Response::Error {
                    message: "the sender is paused: nothing is cut until `shipper resume`".into(),
                });
            }
            Request::Flush { .. } if self.source.missing().is_some() => {
                let message = self.source.holding_message();
                let _ = reply.send(Response::Error { message });
            }
            Request::Flush {
                timeout_ms,
                allow_mass_delete,
            } => {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                self.flushes.request(allow_mass_delete, deadline, reply);
                self.maybe_pack(true, next_tick);
            }
            Request::Verify {
                repair,
                delete_extra,
            } => self.start_verify(repair, delete_extra, reply),
        }
    }

    fn on_transport(&mut self, ev: TransportEvent, next_tick: Instant) {
        match ev {
            TransportEvent::Acked { seq } => self.on_acked(seq),
            TransportEvent::AckedBy { index, seq } => {
                self.cut.whole_trees.acknowledged_by(index, seq);
            }
            TransportEvent::Refused {
                index,
                refusal,
                changes,
                sources,
            } => {
                let peer = &self.cfg.destinations()[index].clone();
                let now = Instant::now();
                self.book.refused(peer, &refusal, changes, now);
                if refusal.kind == crate::proto::refusal::RefusalKind::NeedsContent {
                    self.book.sources_not_held(&sources, now);
                }
                self.maybe_pack(false, next_tick);
            }
            TransportEvent::WholeTree { index, need } => {
                self.cut.whole_trees.need(index, &need);
                self.maybe_pack(false, next_tick);
            }
            TransportEvent::BacklogDropped { index } => self.cut.whole_trees.dropped(index),
            TransportEvent::Compare => self.maybe_compare(),
            TransportEvent::Connected => {
                // A compare that failed (a root could not be listed) is
                // tried again as receivers come back.
                self.maybe_compare();
                // Sequences can be numbered now, and a whole tree put
                // aside while its receiver was away goes on: ship what
                // waited.
                self.needs_welcome = false;
                self.maybe_pack(self.flushes.any_queued(), next_tick);
            }
        }
    }

    fn on_acked(&mut self, seq: u64) {
        // Read before the flushes drop what no waiting flush reports.
        let bytes = self.flushes.summary(seq).map(|s| s.bytes);
        self.cut.whole_trees.left_outbox(seq);
        self.first_ship.acked(bytes);
        self.flushes.acked(seq, self.book.held());
    }

    fn on_housekeeping(
        &mut self,
        metrics: Option<&watch::Sender<Option<StatusReport>>>,
        next_tick: Instant,
    ) {
        let links = &self.links;
        self.flushes
            .expire(Instant::now(), |target| links.behind(target));
        self.pending_bytes
            .count(&self.book.changes, self.source.dir());
        if let Some(tx) = metrics {
            tx.send_replace(Some(self.status_report()));
        }
        if self.needs_welcome && self.seq_floor.load(Ordering::SeqCst) > 0 {
            self.needs_welcome = false;
            if self.flushes.any_queued() {
                self.maybe_pack(true, next_tick);
            }
        }
    }

    async fn set_paused(&mut self, pause: bool) -> anyhow::Result<()> {
        let dir = self.state_dir.clone();
        // The marker is written durably, off the runtime (fsync).
        tokio::task::spawn_blocking(move || state::mark_paused(&dir, pause)).await??;
        if pause != self.paused {
            info!(
                paused = pause,
                pending = self.book.changes.len(),
                "{}",
                if pause {
                    "paused: changes are kept, no bundles are cut"
                } else {
                    "resumed"
                }
            );
        }
        self.paused = pause;
        Ok(())
    }

    fn status_report(&self) -> StatusReport {
        StatusReport {
            sender_id: self.id.clone(),
            paused: self.paused,
            pending_bytes: self.pending_bytes.get(&self.book.changes),
            window_secs: self.cfg.max_delay.as_secs(),
            source_missing: self.source.missing().cloned(),
            pack_error: self.cut.error().cloned(),
            outbox_bytes: self.outbox.bytes(),
            outbox_max: self.outbox.max_bytes,
            max_rate: self.cfg.max_rate,
            receivers: self.links.report(),
            ..self.book.status()
        }
    }
}
