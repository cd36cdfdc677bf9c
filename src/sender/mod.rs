//! The sender: watcher -> change set -> packer -> outbox -> transports.
//!
//! [`run`] owns the change set and what was shipped, and decides when to
//! cut; packing runs on a blocking thread and hands finished bundles to the
//! outbox, which holds back the packer while the most advanced connected
//! receiver has a couple waiting. Its rooms:
//! - `mod.rs` (here): wiring, the select loop, the change set's side
//!   (catch-up walks, per-file failures, the mass-deletion guard, flushes,
//!   whole trees for receivers that need one).
//! - [`state`]: the sender's id and next sequence, kept across restarts.
//! - [`outbox`]: bundles not yet acknowledged by every receiver, and its
//!   budget.
//! - [`transport`]: one receiver's connection, Welcome, sending, release
//!   into the ledger; every wait on the peer bounded (see
//!   [`crate::proto`]'s liveness rules).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bundle::Summary;
use crate::bundle::manifest::{FileMeta, next_seq};
use crate::bundle::pack::{Limits, PackItem, Packed, Packer, Report};
use crate::changes::{ChangeSet, Op};
use crate::config::SenderConfig;
use crate::control::{self, Call, Request, Response};
use crate::durable;
use crate::ledger::Ledger;
use crate::paths::is_within;
use crate::peers::Peers;
use crate::proto::frame::{Accepts, Refusal};
use crate::status::{FailingPath, LinkStatus, SourceMissing, StatusReport, unix_now};
use crate::watch::{self as watcher, WatchMsg};

mod outbox;
mod state;
mod transport;

use outbox::{Outbox, outbox_budget};
use state::SenderState;
use transport::{Backoff, Link, TransportEvent, release_now, transport, update_peer};

/// A first ship at least this large gets a progress bar on a terminal.
const FIRST_SHIP_BAR_BYTES: u64 = 64 << 20;

/// Marks a paused sender, so a pause outlives a restart.
const PAUSED_FILE: &str = "paused";

/// Why a badly named file is not shipped.
const BAD_NAME: &str = "name is not valid UTF-8, so it cannot travel in a bundle (zip names are UTF-8): rename it to ship it";

/// How many failing paths `status` lists by name.
const STATUS_FAILING_MAX: usize = 100;
/// Retries of an unreadable file back off up to this.
const RETRY_MAX: Duration = Duration::from_secs(60);

struct FlushWait {
    /// Answer once this sequence is acknowledged; `None` until its pack ran.
    target: Option<u64>,
    /// First sequence cut for this flush.
    first: u64,
    allow_mass_delete: bool,
    deadline: Instant,
    reply: oneshot::Sender<Response>,
}

/// Run the sender until `shutdown`.
pub async fn run(cfg: SenderConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::places::check(&cfg.dirs())?;
    durable::private_dir(&cfg.state_dir, "sender.state_dir").map_err(anyhow::Error::msg)?;
    let state_dir = std::fs::canonicalize(&cfg.state_dir)
        .with_context(|| format!("sender.state_dir {}", cfg.state_dir.display()))?;
    let outbox = state_dir.join("outbox");
    std::fs::create_dir_all(&outbox).with_context(|| format!("creating {}", outbox.display()))?;
    // Bundles not acknowledged before a restart are dropped: the catch-up
    // below finds their changes again by comparing with the ledger.
    crate::places::remove_own(&outbox, crate::bundle::pack::is_outbox_name)?;
    let (state, fresh) = SenderState::load_or_create(&state_dir, cfg.id.as_deref())?;
    let ledger = Ledger::open(&state_dir)
        .with_context(|| format!("reading acknowledged state in {}", state_dir.display()))?;
    let shipped = ledger.files().clone();
    let in_doubt: std::collections::BTreeSet<String> =
        ledger.in_doubt().map(str::to_owned).collect();
    debug!(files = shipped.len(), "ledger loaded");
    if !in_doubt.is_empty() {
        info!(
            paths = in_doubt.len(),
            "bundles went out unacknowledged before the last stop: their paths are shipped again"
        );
    }
    // Created for a first start; once something was shipped, a missing
    // source is held below, never replaced by an empty one.
    if shipped.is_empty() {
        std::fs::create_dir_all(&cfg.source)
            .with_context(|| format!("creating {}", cfg.source.display()))?;
    }
    let ledger = Arc::new(std::sync::Mutex::new(ledger));
    let peers = Peers::load(&state_dir).with_context(|| {
        format!(
            "reading what is known of the receivers in {}",
            state_dir.display()
        )
    })?;
    let peers = Arc::new(std::sync::Mutex::new(peers));
    let accepts = Arc::new(std::sync::Mutex::new(vec![None; cfg.receivers.len()]));
    info!(id = %state.id, source = %cfg.source.display(), receivers = %cfg.receivers.join(", "), "sender starting");
    // Never ship our own state if it lives inside the source tree.
    let ignore = vec![state_dir.clone()];

    // The source is followed by its path: the sentinel reports another
    // directory there (already watched) or none.
    let (source_tx, mut source_rx) = mpsc::unbounded_channel();
    let (sentinel, first_look) = watcher::Sentinel::start(
        cfg.source.clone(),
        cfg.exclude.clone(),
        ignore.clone(),
        source_tx,
    )
    .with_context(|| format!("watching {}", cfg.source.display()))?;

    let (control_tx, mut control_rx) = mpsc::channel::<Call>(16);
    let control_task = tokio::spawn(control::serve(
        control::socket_path(&state_dir),
        control_tx,
        shutdown.clone(),
    ));

    let outbox_max = outbox_budget(&cfg, &state_dir)?;
    let outbox_queue = Arc::new(Outbox::new(cfg.receivers.len(), outbox_max));
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let seq_floor = Arc::new(AtomicU64::new(0));
    let identity = match &cfg.tls {
        Some(t) => Some(crate::tls::load_identity(&t.key_dir).context("sender.key_dir")?),
        None => {
            warn!("no keys configured: sending in plaintext, allowed on loopback only");
            None
        }
    };
    // One transport per receiver, each with its own position, backoff and
    // status: a slow or dead receiver holds back no other.
    let mut statuses = Vec::new();
    let mut transport_tasks = Vec::new();
    for (i, receiver) in cfg.receivers.iter().enumerate() {
        let tls = match (&identity, &cfg.tls) {
            (Some(me), Some(t)) => {
                info!(me = %me.fingerprint, receiver = %receiver, pinned = %t.receivers[i], "TLS: receiver pinned by fingerprint");
                Some(crate::tls::client_config(me, t.receivers[i])?)
            }
            _ => None,
        };
        let (status_tx, status_rx) = tokio::sync::watch::channel(LinkStatus {
            receiver: receiver.clone(),
            ..LinkStatus::default()
        });
        statuses.push(status_rx);
        let link = Link {
            index: i,
            tls,
            receiver: receiver.clone(),
            id: state.id.clone(),
            ledger: ledger.clone(),
            outbox: outbox_queue.clone(),
            events: event_tx.clone(),
            status: status_tx,
            seq_floor: seq_floor.clone(),
            peers: peers.clone(),
            state_dir: state_dir.clone(),
            accepts: accepts.clone(),
            peer_timeout: cfg.peer_timeout,
        };
        transport_tasks.push(tokio::spawn(transport(link, shutdown.clone())));
    }
    let events = event_tx;

    let (scan_tx, mut scan_rx) = mpsc::unbounded_channel();
    let mut s = Sender {
        scan_tx,
        watch_guard: None,
        sentinel,
        source_missing: None,
        changes: ChangeSet::new(cfg.settle, cfg.max_delay),
        shipped,
        in_doubt,
        ledger: ledger.clone(),
        source: cfg.source.clone(),
        outbox,
        state_dir: state_dir.clone(),
        state: Arc::new(std::sync::Mutex::new(state)),
        seq_floor,
        cfg: cfg.clone(),
        ignore,
        outbox_queue: outbox_queue.clone(),
        packing: None,
        held: Default::default(),
        first_ship: None,
        caught_up_once: false,
        paused: state_dir.join(PAUSED_FILE).exists(),
        touched: Default::default(),
        touched_active: false,
        held_reported: 0,
        taken: Vec::new(),
        private: None,
        whole_tree_queue: Default::default(),
        whole_tree_last: BTreeMap::new(),
        peers,
        accepts: accepts.clone(),
        events,
        pending_bytes: Default::default(),
        pending_bytes_job: None,
        failing: BTreeMap::new(),
        bad_names: Default::default(),
        unsettled: Default::default(),
        pack_error: None,
        pack_retry_at: None,
        pack_backoff: Backoff::default(),
        flush_queued: Vec::new(),
        flush_packing: Vec::new(),
        flush_waiting: Vec::new(),
        acked: 0,
        packed: 0,
        summaries: BTreeMap::new(),
        statuses,
        needs_welcome: fresh,
    };
    // Catch-up: compare the tree with what the receiver acknowledged; with
    // empty state everything is new, so the first bundles bring an empty
    // receiver up to date. The watch is already running, so nothing written
    // during the walk is missed. A missing source is held instead.
    let mut watch_rx = s.on_source(first_look);

    // The metrics endpoint reads the report the housekeeping tick refreshes.
    let (report_tx, report_rx) = tokio::sync::watch::channel(None);
    let metrics_task = match cfg.metrics {
        Some(addr) => {
            let listener = crate::metrics::bind(addr).await?;
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                report_rx,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let mut next_tick = s.next_tick();
    let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(msg) = next_watch_msg(&mut watch_rx) => s.on_watch(msg),
            // Replacing the receiver drops what the old watch still held:
            // it happened in a directory that is no longer the source.
            Some(ev) = source_rx.recv() => watch_rx = s.on_source(ev),
            Some(walk) = scan_rx.recv() => {
                let whole_tree = walk.dir.is_none();
                s.on_walk(walk);
                // After a catch-up, ship what is already settled without
                // waiting for the next tick.
                if whole_tree {
                    s.maybe_pack(false, next_tick);
                }
            }
            _ = tokio::time::sleep_until(next_tick.into()) => {
                next_tick = s.next_tick();
                s.maybe_pack(false, next_tick);
            }
            (report, result) = wait_packing(&mut s.packing) => {
                s.packing = None;
                s.on_packed(report, result, next_tick);
            }
            Some((req, reply)) = control_rx.recv() => match req {
                Request::Status => {
                    let _ = reply.send(Response::Status(s.status_report()));
                }
                Request::Pause | Request::Resume => {
                    let pause = matches!(req, Request::Pause);
                    let _ = reply.send(match s.set_paused(pause).await {
                        Ok(()) => Response::Paused { paused: pause },
                        Err(e) => Response::Error { message: format!("{e:#}") },
                    });
                    if !pause {
                        s.maybe_pack(false, next_tick);
                    }
                }
                Request::Flush { .. } if s.paused => {
                    let _ = reply.send(Response::Error {
                        message: "the sender is paused: nothing is cut until `shipper resume`".into(),
                    });
                }
                Request::Flush { .. } if s.source_missing.is_some() => {
                    let _ = reply.send(Response::Error { message: s.holding_message() });
                }
                Request::Flush { timeout_ms, allow_mass_delete } => {
                    s.flush_queued.push(FlushWait {
                        target: None,
                        first: 0,
                        allow_mass_delete,
                        deadline: Instant::now() + Duration::from_millis(timeout_ms),
                        reply,
                    });
                    s.maybe_pack(true, next_tick);
                }
            },
            Some(ev) = event_rx.recv() => match ev {
                TransportEvent::Acked { seq } => s.on_acked(seq),
                TransportEvent::Refused { index, refusal, changes } => {
                    s.on_refused(index, refusal, changes);
                    s.maybe_pack(false, next_tick);
                }
                TransportEvent::WholeTree { index, reason } => {
                    if s.whole_tree_queue.insert(index) {
                        s.whole_tree_last.remove(&index);
                        warn!(peer = %cfg.receivers[index], %reason, "this receiver needs the whole tree: shipping it every file");
                    }
                    s.maybe_pack(false, next_tick);
                }
                TransportEvent::Connected => {
                    if s.needs_welcome {
                        // Sequences can be numbered now: ship what waited.
                        s.needs_welcome = false;
                        let force = !s.flush_queued.is_empty();
                        s.maybe_pack(force, next_tick);
                    }
                }
            },
            _ = housekeeping.tick() => {
                s.expire_flushes();
                s.count_pending_bytes();
                if metrics_task.is_some() {
                    report_tx.send_replace(Some(s.status_report()));
                }
                if s.needs_welcome && s.seq_floor.load(Ordering::SeqCst) > 0 {
                    s.needs_welcome = false;
                    if !s.flush_queued.is_empty() {
                        s.maybe_pack(true, next_tick);
                    }
                }
            }
        }
    }
    info!("sender stopping");
    outbox_queue.close();
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

/// The next event of the source's watch; none while the source is missing.
async fn next_watch_msg(rx: &mut Option<mpsc::UnboundedReceiver<WatchMsg>>) -> Option<WatchMsg> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A packing run's report, and how it ended.
type PackDone = (Report, std::io::Result<()>);

async fn wait_packing(p: &mut Option<JoinHandle<PackDone>>) -> PackDone {
    match p {
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

struct Sender {
    /// The watch on the source directory; `None` while it is missing or
    /// its replacement is not watched yet.
    watch_guard: Option<Arc<watcher::WatchGuard>>,
    /// Follows the configured source path.
    sentinel: watcher::Sentinel,
    /// Set while no directory is at the source path: nothing is cut.
    source_missing: Option<SourceMissing>,
    /// Finished directory walks: the files found.
    scan_tx: mpsc::UnboundedSender<watcher::Walk>,
    changes: ChangeSet,
    /// What the receiver has (or will have once the queue drains), per path.
    shipped: BTreeMap<String, FileMeta>,
    /// Paths a receiver may hold in a state `shipped` does not say (a
    /// bundle carrying them went out before a crash, unacknowledged, or a
    /// receiver refused it for good): they ship again as they are now,
    /// deletions included, whatever `shipped` says.
    in_doubt: std::collections::BTreeSet<String>,
    /// Where the packer notes each bundle before it can go out.
    ledger: Arc<std::sync::Mutex<Ledger>>,
    /// The source directory watched (the configured path resolved).
    source: PathBuf,
    outbox: PathBuf,
    state_dir: PathBuf,
    state: Arc<std::sync::Mutex<SenderState>>,
    seq_floor: Arc<AtomicU64>,
    cfg: SenderConfig,
    ignore: Vec<PathBuf>,
    /// Packed bundles on their way to the receivers.
    outbox_queue: Arc<Outbox>,
    packing: Option<JoinHandle<PackDone>>,
    /// What the running pack took from the change set.
    taken: Vec<(String, Op)>,
    /// The running pack is a whole tree for this receiver only.
    private: Option<usize>,
    /// Receivers whose whole tree waits to be packed (which receivers need
    /// one at all is `peers`' `whole_tree` mark)…
    whole_tree_queue: std::collections::BTreeSet<usize>,
    /// …and the last sequence of one, once packed.
    whole_tree_last: BTreeMap<usize, u64>,
    peers: Arc<std::sync::Mutex<Peers>>,
    /// What each receiver said it accepts, once it said so.
    accepts: Arc<std::sync::Mutex<Vec<Option<Accepts>>>>,
    /// Bytes of the pending files, as last counted off the runtime.
    pending_bytes: Arc<AtomicU64>,
    pending_bytes_job: Option<JoinHandle<()>>,
    /// The transports' channel, for the packer to release bundles whose
    /// only holder's backlog it dropped.
    events: mpsc::UnboundedSender<TransportEvent>,
    /// Paths that could not be packed, retried with backoff.
    failing: BTreeMap<String, FailingPath>,
    /// Paths whose names are not UTF-8: they cannot travel.
    bad_names: std::collections::BTreeSet<String>,
    /// Paths shipped as a snapshot while still being written.
    unsettled: std::collections::BTreeSet<String>,
    /// The last packing run failed as a whole: why, and when to try again.
    pack_error: Option<String>,
    pack_retry_at: Option<Instant>,
    pack_backoff: Backoff,
    /// Progress of the first ship after start, on a terminal.
    first_ship: Option<indicatif::ProgressBar>,
    caught_up_once: bool,
    /// No bundles are cut while paused (kept in `state_dir/paused`).
    paused: bool,
    /// Paths an event touched while a pack runs; the packer leaves them pending.
    touched: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    touched_active: bool,
    /// Deletions held back by the mass-deletion guard.
    held: std::collections::BTreeSet<String>,
    /// How many held deletions were last reported, so the log says it once.
    held_reported: usize,
    flush_queued: Vec<FlushWait>,
    flush_packing: Vec<FlushWait>,
    flush_waiting: Vec<FlushWait>,
    acked: u64,
    packed: u64,
    summaries: BTreeMap<u64, Summary>,
    /// Each receiver's link, in the order of `cfg.receivers`.
    statuses: Vec<tokio::sync::watch::Receiver<LinkStatus>>,
    /// A sender with new state learns the receiver's last sequence before
    /// numbering its first bundle.
    needs_welcome: bool,
}

impl Sender {
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

    /// Walk `dir` off the runtime; the files found arrive on `scan_tx`.
    fn scan(&self, dir: PathBuf) {
        let (base, ex, ignore) = (
            self.source.clone(),
            self.cfg.exclude.clone(),
            self.ignore.clone(),
        );
        let tx = self.scan_tx.clone();
        let guard = self.watch_guard.clone();
        tokio::task::spawn_blocking(move || {
            if dir != base
                && let Some(guard) = guard
                && let Err(e) = guard.watch_dir(&dir)
            {
                // Gone again already, or out of watches: the walk still runs.
                debug!(dir = %dir.display(), error = %e, "could not watch new directory");
            }
            let _ = tx.send(watcher::walk(&base, &dir, &ex, &ignore));
        });
    }

    fn on_watch(&mut self, msg: WatchMsg) {
        let now = Instant::now();
        if self.touched_active
            && let WatchMsg::Changed { path, .. } | WatchMsg::Closed(path) | WatchMsg::Removed(path) =
                &msg
        {
            self.touched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path.clone());
        }
        match msg {
            WatchMsg::Changed { path, writing } => self.changes.changed(&path, writing, now),
            WatchMsg::Closed(path) => self.changes.closed(&path, now),
            WatchMsg::Removed(path) => {
                self.failing.retain(|p, _| !is_within(p, &path));
                // A removed directory takes every shipped or pending path below it.
                let mut affected: Vec<String> = self
                    .shipped
                    .range(path.clone()..)
                    .take_while(|(p, _)| p.starts_with(&path))
                    .filter(|(p, _)| is_within(p, &path))
                    .map(|(p, _)| p.clone())
                    .collect();
                affected.extend(self.changes.pending_within(&path));
                affected.push(path);
                for p in affected {
                    self.changes.removed(&p, now);
                }
            }
            WatchMsg::Scan(dir) => self.scan(dir),
            WatchMsg::BadName { path, gone } => {
                if gone {
                    self.bad_names.remove(&path);
                } else if self.bad_names.insert(path.clone()) {
                    warn!(path = %path, "{BAD_NAME}");
                }
            }
            WatchMsg::Rescan(why) => {
                warn!(reason = %why, "events may have been lost; rescanning the source tree");
                // A lost close would otherwise hold its path until max_delay.
                self.changes.writers_unknown();
                self.scan(self.source.clone());
            }
        }
    }

    /// The sentinel found another directory at the source path, or none.
    /// Returns the events of the new watch (`None` until there is one).
    /// What is pending was seen in the directory that went, so it is
    /// dropped: the comparison of the new tree with what the receivers have
    /// finds again whatever differs, as at start.
    fn on_source(&mut self, ev: watcher::SourceEvent) -> Option<mpsc::UnboundedReceiver<WatchMsg>> {
        self.changes = ChangeSet::new(self.cfg.settle, self.cfg.max_delay);
        self.watch_guard = None;
        match ev {
            // A look at what replaced it follows; until then nothing is
            // pending and nothing is watched.
            watcher::SourceEvent::Left => {
                info!(source = %self.cfg.source.display(), old = %self.source.display(), "source replaced: watching the new directory, then comparing it with what the receivers have");
                None
            }
            watcher::SourceEvent::Missing(reason) => {
                warn!(
                    source = %self.cfg.source.display(),
                    reason = %reason,
                    "source missing: holding; nothing is shipped or deleted until a directory is back at the source path"
                );
                let since = self
                    .source_missing
                    .as_ref()
                    .map_or_else(unix_now, |m| m.since);
                self.source_missing = Some(SourceMissing { reason, since });
                let message = self.holding_message();
                for f in std::mem::take(&mut self.flush_queued) {
                    let _ = f.reply.send(Response::Error {
                        message: message.clone(),
                    });
                }
                None
            }
            watcher::SourceEvent::Watched(w) => {
                if self.source_missing.take().is_some() {
                    info!(source = %self.cfg.source.display(), dir = %w.dir.display(), "source back: comparing it with what the receivers have");
                }
                self.source = w.dir;
                self.watch_guard = Some(Arc::new(w.guard));
                self.scan(self.source.clone());
                Some(w.events)
            }
        }
    }

    /// What a flush answers while the source is missing.
    fn holding_message(&self) -> String {
        let (reason, since) = self
            .source_missing
            .as_ref()
            .map(|m| (m.reason.as_str(), m.since))
            .unwrap_or_default();
        format!(
            "the source is missing ({reason}) for {}: holding, nothing is shipped or deleted until it is back",
            humantime::format_duration(Duration::from_secs((unix_now() - since).max(0) as u64))
        )
    }

    /// Compare what a walk found with what the receiver has: queue what
    /// differs, and the shipped paths below the walked directory that are
    /// gone. This is the catch-up at start and the repair after lost events.
    /// A walk that ends while no directory is watched at the source path
    /// (missing, or its replacement not watched yet) queues nothing: the
    /// source vanishing is not its files being deleted, and the comparison
    /// once one is watched again covers the tree.
    fn on_walk(&mut self, walk: watcher::Walk) {
        if self.watch_guard.is_none() {
            return;
        }
        let now = Instant::now();
        let mut queued = 0u64;
        let mut found = std::collections::HashSet::with_capacity(walk.files.len());
        // A file last modified longer than `settle` ago has been quiet that
        // long already: it counts as settled at once.
        let quiet_since = now.checked_sub(self.cfg.settle).unwrap_or(now);
        for (path, stat) in &walk.files {
            // Removed since the walk passed it: the pending deletion is newer
            // than what the walk saw, and must not become an upsert again.
            if walk
                .began
                .is_some_and(|t| self.changes.removed_since(path, t))
            {
                found.insert(path.as_str());
                continue;
            }
            // A racy entry's stat proves nothing: let the packer compare
            // content. One in doubt is shipped whatever it matches.
            if self.in_doubt.contains(path)
                || !self
                    .shipped
                    .get(path)
                    .is_some_and(|m| stat.matches(m) && !m.racy)
            {
                // Still open for writing: hold it until its close event,
                // unless that close was already seen after the report.
                let closed_since = walk
                    .writers_at
                    .is_some_and(|t| self.changes.closed_since(path, t));
                if walk.writers.contains(path) && !closed_since {
                    self.changes.changed(path, true, now);
                    queued += 1;
                    found.insert(path.as_str());
                    continue;
                }
                // The same test the packer applies (a future mtime proves nothing).
                let quiet = !stat.modified_within(self.cfg.settle);
                self.changes
                    .changed(path, false, if quiet { quiet_since } else { now });
                queued += 1;
            }
            found.insert(path.as_str());
        }
        let scope = walk.dir.clone().unwrap_or_default();
        // The walk knows every badly named path in its scope.
        self.bad_names
            .retain(|p| !(scope.is_empty() || is_within(p, &scope)));
        for p in &walk.bad_names {
            if self.bad_names.insert(p.clone()) {
                warn!(path = %p, "{BAD_NAME}");
            }
        }
        let gone: Vec<String> = self
            .shipped
            .keys()
            .chain(
                self.in_doubt
                    .iter()
                    .filter(|p| !self.shipped.contains_key(*p)),
            )
            .filter(|p| scope.is_empty() || is_within(p, &scope))
            .filter(|p| !found.contains(p.as_str()))
            // Re-created since the walk passed it: its event has it.
            .filter(|p| std::fs::symlink_metadata(self.source.join(p)).is_err())
            .cloned()
            .collect();
        // Checked after the paths: if the source was there then, they are
        // really gone. If not, the sentinel is about to report it missing.
        if !gone.is_empty() && !self.source.is_dir() {
            warn!(source = %self.source.display(), "the source vanished during a comparison: its files are not taken as deleted");
            self.sentinel.check_now();
            return;
        }
        for p in &gone {
            // Gone before the walk reached it: nothing left to settle.
            self.changes.removed(p, quiet_since);
        }
        if walk.dir.is_none() && !self.caught_up_once {
            self.caught_up_once = true;
            let bytes: u64 = walk
                .files
                .iter()
                .filter(|(p, stat)| !self.shipped.get(p).is_some_and(|m| stat.matches(m)))
                .map(|(_, stat)| stat.size)
                .sum();
            // Long first ships show progress on a terminal; logs stay plain.
            if bytes >= FIRST_SHIP_BAR_BYTES && std::io::IsTerminal::is_terminal(&std::io::stderr())
            {
                let bar = indicatif::ProgressBar::new(bytes);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "first ship {bar:40} {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
                ) {
                    bar.set_style(style);
                }
                bar.tick();
                self.first_ship = Some(bar);
            }
        }
        if walk.dir.is_none() {
            info!(
                files = walk.files.len(),
                dirs = walk.dirs,
                changed = queued,
                deleted = gone.len(),
                walk_ms = walk.took.as_millis() as u64,
                "source tree compared with what the receiver has"
            );
            if let Some(limit) = watcher::inotify_watch_limit()
                && walk.dirs * 10 > limit * 9
            {
                warn!(
                    dirs = walk.dirs,
                    limit,
                    "the source has nearly as many directories as fs.inotify.max_user_watches allows: raise it, e.g. sysctl fs.inotify.max_user_watches={}",
                    (walk.dirs * 4).max(524_288)
                );
            }
        }
    }

    async fn set_paused(&mut self, pause: bool) -> anyhow::Result<()> {
        let (marker, dir) = (self.state_dir.join(PAUSED_FILE), self.state_dir.clone());
        // The marker is written durably, off the runtime (fsync).
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            if pause {
                durable::write_atomic(&marker, b"paused by `shipper pause`\n")
                    .with_context(|| format!("writing {}", marker.display()))?;
            } else {
                match std::fs::remove_file(&marker) {
                    Ok(()) => durable::sync_dir(&dir)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", marker.display()));
                    }
                }
            }
            Ok(())
        })
        .await??;
        if pause != self.paused {
            info!(
                paused = pause,
                pending = self.changes.len(),
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

    /// Refresh the pending bytes off the runtime, at most one count at a
    /// time: status reads the last count, so it never stats files itself.
    fn count_pending_bytes(&mut self) {
        if self.changes.is_empty() {
            return; // status says 0 without a count
        }
        if self
            .pending_bytes_job
            .as_ref()
            .is_some_and(|j| !j.is_finished())
        {
            return;
        }
        let paths: Vec<PathBuf> = self
            .changes
            .pending_upserts()
            .map(|p| self.source.join(p))
            .collect();
        let total = self.pending_bytes.clone();
        self.pending_bytes_job = Some(tokio::task::spawn_blocking(move || {
            let bytes = paths
                .iter()
                .filter_map(|p| std::fs::symlink_metadata(p).ok())
                .map(|m| m.len())
                .sum();
            total.store(bytes, Ordering::Relaxed);
        }));
    }

    fn status_report(&self) -> StatusReport {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let pending_bytes = if self.changes.is_empty() {
            0
        } else {
            self.pending_bytes.load(Ordering::Relaxed)
        };
        StatusReport {
            sender_id: self.state.lock().map(|s| s.id.clone()).unwrap_or_default(),
            paused: self.paused,
            pending_paths: self.changes.len() as u64,
            pending_bytes,
            oldest_pending_secs: self.changes.oldest().map(|t| t.elapsed().as_secs_f64()),
            window_secs: self.cfg.max_delay.as_secs(),
            held_deletions: self.held.len() as u64,
            source_missing: self.source_missing.clone(),
            failing_paths: (self.failing.len() + self.bad_names.len()) as u64,
            failing: self
                .bad_names
                .iter()
                .map(|p| FailingPath {
                    path: p.clone(),
                    error: BAD_NAME.into(),
                    since: 0,
                    attempts: 0,
                })
                .chain(self.failing.values().cloned())
                .take(STATUS_FAILING_MAX)
                .collect(),
            unsettled: self.unsettled.iter().cloned().collect(),
            pack_error: self.pack_error.clone(),
            outbox_bytes: self.outbox_queue.bytes(),
            outbox_max: self.outbox_queue.max_bytes,
            receivers: self
                .statuses
                .iter()
                .enumerate()
                .map(|(i, s)| LinkStatus {
                    whole_tree_pending: peers
                        .receivers
                        .get(&self.cfg.receivers[i])
                        .is_some_and(|p| p.whole_tree),
                    ..s.borrow().clone()
                })
                .collect(),
        }
    }

    /// The mass-deletion guard: hold `deletions` (with those already held)
    /// when, counting deletions still settling, they would remove too large
    /// a share of what was shipped, unless a flush allowed it. Released
    /// deletions are re-checked against the disk.
    fn guard_deletions(&mut self, deletions: &mut Vec<String>, allow: bool) {
        let settling = self
            .changes
            .pending_deletes()
            .filter(|p| self.shipped.contains_key(*p))
            .count();
        let total = deletions.len() + self.held.len() + settling;
        let g = &self.cfg.mass_delete;
        if !allow && mass_deletion(total, self.shipped.len(), g.share, g.min) {
            self.held.extend(deletions.drain(..));
            if self.held.len() != self.held_reported {
                self.held_reported = self.held.len();
                warn!(
                    held = self.held.len(),
                    shipped = self.shipped.len(),
                    "mass deletion held back: it would remove over {:.0}% of the shipped files; run `shipper flush --allow-mass-delete` if it is intended",
                    g.share * 100.0
                );
            }
            return;
        }
        if !self.held.is_empty() {
            let source = self.source.clone();
            let released = std::mem::take(&mut self.held)
                .into_iter()
                .filter(|p| std::fs::symlink_metadata(source.join(p)).is_err());
            deletions.extend(released);
            info!(
                deletions = deletions.len(),
                allowed = allow,
                "held deletions released"
            );
            self.held_reported = 0;
        }
    }

    /// Start packing if anything is due and no pack is running.
    fn maybe_pack(&mut self, force: bool, next_tick: Instant) {
        if self.packing.is_some()
            || self.needs_welcome
            || self.paused
            || self.source_missing.is_some()
        {
            return;
        }
        let now = Instant::now();
        // After a failed run (a full disk), wait out the backoff.
        if !force && self.pack_retry_at.is_some_and(|t| now < t) {
            return;
        }
        if let Some(index) = self.whole_tree_queue.pop_first() {
            // Everything the receivers have (or will once the outbox
            // drains), for this one only; changes still pending reach
            // every receiver in the usual bundles.
            let items = self.shipped.keys().map(PackItem::upsert).collect();
            self.start_pack(items, Some(index));
            return;
        }
        let due = self.changes.take_due(now, next_tick, force);
        let flushes = std::mem::take(&mut self.flush_queued);
        let allow_mass_delete = flushes.iter().any(|f| f.allow_mass_delete);
        let mut items = Vec::with_capacity(due.len());
        let mut deletions = Vec::new();
        for c in due {
            match c.op {
                Op::Upsert => {
                    self.held.remove(&c.path);
                    let reship = self.in_doubt.contains(&c.path);
                    items.push(PackItem {
                        previous: self.shipped.get(&c.path).filter(|_| !reship).cloned(),
                        path: c.path,
                        op: Op::Upsert,
                        quiet_for: c.settled.then_some(self.cfg.settle),
                        overdue: c.overdue,
                    })
                }
                // Deleting what the receiver never got is nothing to ship.
                Op::Delete
                    if self.shipped.contains_key(&c.path) || self.in_doubt.contains(&c.path) =>
                {
                    deletions.push(c.path)
                }
                Op::Delete => {}
            }
        }
        self.guard_deletions(&mut deletions, allow_mass_delete);
        items.extend(deletions.into_iter().map(PackItem::delete));
        if items.is_empty() {
            for f in flushes {
                self.flush_waiting.push(f);
            }
            // Nothing new: the flush waits for what is already in flight.
            self.settle_flushes_after_pack(self.packed + 1);
            return;
        }
        self.flush_packing = flushes;
        self.taken = items.iter().map(|i| (i.path.clone(), i.op)).collect();
        self.start_pack(items, None);
    }

    /// Pack `items` on a blocking thread; `only`: for that receiver alone.
    fn start_pack(&mut self, items: Vec<PackItem>, only: Option<usize>) {
        self.private = only;
        let packer_state = self.state.clone();
        let (source, outbox, state_dir) = (
            self.source.clone(),
            self.outbox.clone(),
            self.state_dir.clone(),
        );
        // Within what every receiver said it accepts.
        let limits = self
            .accepts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .fold(
                Limits::new(
                    self.cfg.chunk_size,
                    self.cfg.max_bundle_size,
                    self.cfg.max_files_per_bundle,
                ),
                |l, a| l.within(a),
            );
        let queue = self.outbox_queue.clone();
        let floor = self.seq_floor.clone();
        let (names, peers, events, ledger) = (
            self.cfg.receivers.clone(),
            self.peers.clone(),
            self.events.clone(),
            self.ledger.clone(),
        );
        let outbox_max = self.outbox_queue.max_bytes;
        let touched = self.touched.clone();
        touched.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.touched_active = true;
        self.packing = Some(tokio::task::spawn_blocking(move || {
            let sender_id = packer_state.lock().expect("state lock").id.clone();
            let mut alloc = || -> std::io::Result<u64> {
                let mut st = packer_state.lock().expect("state lock");
                let seq = st.next_seq.max(floor.load(Ordering::SeqCst));
                st.next_seq = next_seq(seq).map_err(std::io::Error::other)?;
                // Persist before the number is used, so a restart never reuses it.
                st.save(&state_dir).map_err(std::io::Error::other)?;
                Ok(seq)
            };
            let mut emit = |mut p: Packed| -> std::io::Result<()> {
                p.only = only;
                // Before any receiver can apply it: a crash between its
                // apply and the record of its acknowledgement leaves its
                // paths in doubt, not taken for what the ledger says.
                // (A whole tree for one receiver changes nothing every
                // receiver has: it is not recorded.)
                if only.is_none() {
                    let paths = p.changes.iter().map(|(path, _)| path.clone()).collect();
                    ledger
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
                queue.push(p)?;
                // A receiver that is away must not fill the sender's disk.
                while let Some(j) = queue.over_budget() {
                    warn!(peer = %names[j], outbox_bytes = queue.bytes(), outbox_max, "the outbox is over sender.outbox_max while this receiver is away: its backlog is dropped, and it gets the whole tree when it returns");
                    update_peer(&peers, &state_dir, &names[j], None, Some(true))?;
                    release_now(queue.drop_backlog(j), &events, &ledger);
                }
                Ok(())
            };
            let mut packer = Packer {
                source: &source,
                outbox: &outbox,
                sender: &sender_id,
                limits,
                alloc_seq: &mut alloc,
                emit: &mut emit,
                touched: &|p: &str| {
                    touched
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(p)
                },
            };
            let mut report = Report::default();
            let result = packer.pack_into(items, &mut report);
            (report, result)
        }));
    }

    fn on_packed(&mut self, report: Report, result: std::io::Result<()>, next_tick: Instant) {
        self.touched_active = false;
        if let Some(index) = self.private.take() {
            self.on_whole_tree_packed(index, report, result);
            self.maybe_pack(!self.flush_queued.is_empty(), next_tick);
            return;
        }
        let first = self.packed + 1;
        let now = Instant::now();
        let taken = std::mem::take(&mut self.taken);
        let mut accounted: std::collections::HashSet<String> = Default::default();
        let snapshots: std::collections::HashSet<&str> =
            report.unsettled.iter().map(String::as_str).collect();
        for (path, meta) in &report.shipped {
            accounted.insert(path.clone());
            self.failing.remove(path);
            // Its bundle says what the receivers will have.
            self.in_doubt.remove(path);
            match meta {
                Some(m) => {
                    self.shipped.insert(path.clone(), m.clone());
                }
                None => {
                    self.shipped.remove(path);
                }
            }
            if snapshots.contains(path.as_str()) {
                if self.unsettled.insert(path.clone()) {
                    warn!(path = %path, max_delay = %crate::config::fmt_dur(self.cfg.max_delay), "shipped unsettled: still being written at max_delay, so a snapshot of it went; it ships again once it settles");
                }
            } else if self.unsettled.remove(path) {
                info!(path = %path, "shipped settled after an unsettled snapshot");
            }
        }
        for p in &report.requeue {
            debug!(path = %p, "changed while packing; stays pending");
            accounted.insert(p.clone());
            self.changes.requeue(p, now);
        }
        for (p, error) in &report.failed {
            accounted.insert(p.clone());
            self.path_failed(p, error, now);
        }
        for (seq, summary) in &report.bundles {
            self.packed = self.packed.max(*seq);
            self.summaries.insert(*seq, *summary);
        }
        if result.is_ok() {
            // Taken and not failing again: packed, unchanged or gone.
            let failed: std::collections::HashSet<&str> =
                report.failed.iter().map(|(p, _)| p.as_str()).collect();
            for (path, _) in &taken {
                if !failed.contains(path.as_str()) {
                    self.failing.remove(path);
                }
            }
        }
        match result {
            Ok(()) => {
                self.pack_backoff.reset();
                self.pack_retry_at = None;
                if self.pack_error.take().is_some() {
                    info!("packing works again");
                }
            }
            Err(e) => {
                // What was taken and not shipped goes back: nothing is lost
                // because a bundle could not be written.
                for (path, op) in taken {
                    if accounted.contains(&path) || self.changes.contains(&path) {
                        continue; // shipped, handled, or superseded by a newer event
                    }
                    match op {
                        Op::Upsert => self.changes.requeue(&path, now),
                        Op::Delete => self.changes.removed(&path, now),
                    }
                }
                let delay = self.pack_backoff.next_delay();
                self.pack_retry_at = Some(now + delay);
                let msg = e.to_string();
                if self.pack_error.as_deref() != Some(msg.as_str()) {
                    warn!(
                        error = %msg,
                        pending = self.changes.len(),
                        retry_in = %crate::config::fmt_dur(delay),
                        "packing failed; changes stay pending and packing is retried with backoff"
                    );
                }
                self.pack_error = Some(msg.clone());
                let msg = format!("packing failed: {msg}");
                for f in std::mem::take(&mut self.flush_packing) {
                    let _ = f.reply.send(Response::Error {
                        message: msg.clone(),
                    });
                }
            }
        }
        let flushes = std::mem::take(&mut self.flush_packing);
        self.flush_waiting.extend(flushes);
        self.settle_flushes_after_pack(first);
        if !self.flush_queued.is_empty() {
            self.maybe_pack(true, next_tick);
        }
    }

    /// Receiver `index` refused, for good, a bundle carrying `changes`. The
    /// path at fault waits as failing; the rest is packed again in full so
    /// that receiver gets it too.
    fn on_refused(
        &mut self,
        index: usize,
        refusal: Refusal,
        changes: Vec<(String, Option<FileMeta>)>,
    ) {
        let now = Instant::now();
        let peer = self.cfg.receivers[index].clone();
        for (path, meta) in changes {
            if refusal.path.as_deref().is_some_and(|f| is_within(&path, f)) {
                let error = format!("receiver {peer} refused it: {}", refusal.reason);
                self.path_failed(&path, &error, now);
                continue;
            }
            // What that receiver has of it is unknown now: it ships as it
            // is, deletions included, like a path in doubt after a crash.
            self.in_doubt.insert(path.clone());
            if self.changes.contains(&path) {
                continue; // a newer change is pending anyway
            }
            match meta {
                Some(_) => self.changes.requeue(&path, now),
                None => self.changes.removed(&path, now),
            }
        }
    }

    /// A whole tree for receiver `index` was packed (or failed to be).
    fn on_whole_tree_packed(&mut self, index: usize, report: Report, result: std::io::Result<()>) {
        let now = Instant::now();
        for (p, error) in &report.failed {
            self.path_failed(p, error, now);
        }
        for (seq, summary) in &report.bundles {
            self.packed = self.packed.max(*seq);
            self.summaries.insert(*seq, *summary);
        }
        let name = &self.cfg.receivers[index];
        match result {
            Err(e) => {
                warn!(peer = %name, error = %e, "packing the whole tree for this receiver failed; trying again");
                self.whole_tree_queue.insert(index);
                self.pack_retry_at = Some(now + self.pack_backoff.next_delay());
            }
            Ok(()) => match report.bundles.iter().map(|(s, _)| *s).max() {
                Some(last) => {
                    info!(peer = %name, bundles = report.bundles.len(), last_seq = last, "whole tree packed for this receiver");
                    self.whole_tree_last.insert(index, last);
                    if self.acked >= last {
                        self.whole_tree_done(index);
                    }
                }
                None => self.whole_tree_done(index),
            },
        }
    }

    /// Receiver `index` acknowledged its whole tree: forget that it needs one.
    fn whole_tree_done(&mut self, index: usize) {
        self.whole_tree_last.remove(&index);
        let name = self.cfg.receivers[index].clone();
        info!(peer = %name, "this receiver has the whole tree");
        let (peers, dir) = (self.peers.clone(), self.state_dir.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = update_peer(&peers, &dir, &name, None, Some(false)) {
                warn!(error = %e, "could not record that a receiver has the whole tree");
            }
        });
    }

    /// `path` could not be packed: keep it pending, retry with backoff, and
    /// say so once per distinct error.
    fn path_failed(&mut self, path: &str, error: &str, now: Instant) {
        let entry = self
            .failing
            .entry(path.to_owned())
            .or_insert_with(|| FailingPath {
                path: path.to_owned(),
                error: String::new(),
                since: unix_now(),
                attempts: 0,
            });
        entry.attempts += 1;
        let delay = retry_delay(entry.attempts);
        if entry.error != error {
            warn!(path = %path, error = %error, retry_in = %crate::config::fmt_dur(delay), "cannot ship this file; it stays pending and is retried, the rest ships");
            entry.error = error.to_owned();
        }
        self.changes.failed(path, now, now + delay);
    }

    /// Give flushes that just had their pack a target, and answer those
    /// already satisfied.
    fn settle_flushes_after_pack(&mut self, first: u64) {
        for f in &mut self.flush_waiting {
            if f.target.is_none() {
                f.target = Some(self.packed);
                // Nothing cut since `first`: report nothing shipped, but
                // still wait for what is in flight.
                f.first = first;
            }
        }
        self.answer_flushes();
    }

    fn on_acked(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
        let finished: Vec<usize> = self
            .whole_tree_last
            .iter()
            .filter(|(_, last)| seq >= **last)
            .map(|(i, _)| *i)
            .collect();
        for index in finished {
            self.whole_tree_done(index);
        }
        if let Some(bar) = &self.first_ship {
            if let Some(s) = self.summaries.get(&seq) {
                bar.inc(s.bytes);
            }
            if bar.position() >= bar.length().unwrap_or(0) {
                bar.finish_and_clear();
                self.first_ship = None;
            }
        }
        self.answer_flushes();
        // Keep summaries only for what a waiting flush may still report.
        let keep_from = self
            .flush_waiting
            .iter()
            .map(|f| f.first)
            .min()
            .unwrap_or(self.acked + 1)
            .min(self.acked + 1);
        self.summaries = self.summaries.split_off(&keep_from);
    }

    fn answer_flushes(&mut self) {
        let acked = self.acked;
        for f in std::mem::take(&mut self.flush_waiting) {
            match f.target {
                Some(target) if acked >= target => {
                    let held_deletions = self.held.len() as u64;
                    let response = if f.first > target {
                        Response::NothingToShip { held_deletions }
                    } else {
                        let mut summary = Summary::default();
                        let mut bundles = 0;
                        for (_, s) in self.summaries.range(f.first..=target) {
                            summary.add(s);
                            bundles += 1;
                        }
                        Response::Flushed {
                            first_seq: f.first,
                            last_seq: target,
                            bundles,
                            summary,
                            held_deletions,
                        }
                    };
                    let _ = f.reply.send(response);
                }
                _ => self.flush_waiting.push(f),
            }
        }
    }

    /// Answer flushes whose time ran out with what stands in the way.
    fn expire_flushes(&mut self) {
        let now = Instant::now();
        let behind = |target: Option<u64>| -> String {
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
        };
        let expire = |list: Vec<FlushWait>| -> Vec<FlushWait> {
            let mut keep = Vec::new();
            for f in list {
                if now < f.deadline {
                    keep.push(f);
                    continue;
                }
                let what = match f.target {
                    Some(t) => format!("sequence {t} was not acknowledged in time"),
                    None => "the receivers were not reached in time".to_owned(),
                };
                let _ = f.reply.send(Response::Error {
                    message: format!("{what}: {}", behind(f.target)),
                });
            }
            keep
        };
        self.flush_waiting = expire(std::mem::take(&mut self.flush_waiting));
        self.flush_queued = expire(std::mem::take(&mut self.flush_queued));
    }
}

/// How long a path waits after its `attempts`-th failed packing: 1 s,
/// doubling, at most [`RETRY_MAX`].
pub fn retry_delay(attempts: u32) -> Duration {
    let secs = 1u64 << attempts.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(RETRY_MAX)
}

/// True when deleting `deletions` of `shipped` files is a mass deletion:
/// at least `min` files and over `share` of them.
pub fn mass_deletion(deletions: usize, shipped: usize, share: f64, min: usize) -> bool {
    deletions >= min && deletions as f64 > share * shipped as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mass_deletion_needs_both_the_count_and_the_share() {
        assert!(mass_deletion(100, 150, 0.5, 100));
        assert!(!mass_deletion(99, 100, 0.5, 100), "under the minimum count");
        assert!(
            !mass_deletion(500, 1000, 0.5, 100),
            "exactly half is not over half"
        );
        assert!(mass_deletion(501, 1000, 0.5, 100));
        assert!(!mass_deletion(0, 0, 0.5, 0));
    }
}
