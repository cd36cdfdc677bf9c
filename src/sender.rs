//! The sender: watcher -> change set -> packer -> transport.
//!
//! [`run`] owns the change set and what was shipped, and decides when to cut.
//! Packing runs on a blocking thread and hands finished bundles to the
//! transport task through a channel of one slot, so the outbox never holds
//! more than a couple of bundles however far the receiver lags. The
//! transport keeps one connection, re-sends what was not acknowledged and
//! reconnects forever with capped exponential backoff. It never waits on
//! the receiver without a bound: a connection that goes silent for
//! `peer_timeout` is dropped and replaced (see [`crate::proto`]'s liveness
//! rules).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bundle::manifest::FileMeta;
use crate::bundle::pack::{Limits, PackItem, Packed, Packer, Report, Summary};
use crate::changes::{ChangeSet, Op};
use crate::config::SenderConfig;
use crate::control::{self, Call, Request, Response};
use crate::durable;
use crate::ledger::{AckRecord, Ledger};
use crate::paths::is_within;
use crate::proto::connection::ConnError;
use crate::proto::connection::{Stream, set_liveness};
use crate::proto::frame::PROTOCOL_VERSION;
use crate::proto::{Connection, Frame};
use crate::watch::{self as watcher, WatchMsg};

/// The least time a receiver that keeps pinging gets to acknowledge any
/// bundle once it is sent (waiting for another sender's bundle to apply,
/// fsyncs on a busy disk).
const ACK_BASE: Duration = Duration::from_secs(120);
/// Bytes per second a receiver is assumed to verify and apply at least:
/// far below any disk, so only a receiver that is stuck, not slow, hits
/// the limit.
const APPLY_FLOOR_RATE: u64 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the sender keeps across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SenderState {
    id: String,
    next_seq: u64,
}

impl SenderState {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("sender.json")
    }

    /// Load, or create with a fresh id. Returns whether it was created.
    fn load_or_create(state_dir: &Path, id: Option<&str>) -> anyhow::Result<(Self, bool)> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut s: SenderState = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: corrupt sender state", path.display()))?;
                if let Some(id) = id {
                    s.id = id.to_owned();
                }
                Ok((s, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = id.map(str::to_owned).unwrap_or_else(generated_id);
                let s = SenderState { id, next_seq: 1 };
                s.save(state_dir)?;
                Ok((s, true))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(state_dir);
        durable::write_atomic(&path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn generated_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let mut h = blake3::Hasher::new();
    h.update(format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes());
    let tag = &h.finalize().to_hex()[..8];
    if host.is_empty() {
        format!("sender-{tag}")
    } else {
        format!("{host}-{tag}")
    }
}

/// A first ship at least this large gets a progress bar on a terminal.
const FIRST_SHIP_BAR_BYTES: u64 = 64 << 20;

/// Marks a paused sender, so a pause outlives a restart.
const PAUSED_FILE: &str = "paused";

/// What `shipper status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub sender_id: String,
    pub paused: bool,
    pub pending_paths: u64,
    pub pending_bytes: u64,
    /// Age of the oldest pending change, against `window_secs`.
    pub oldest_pending_secs: Option<f64>,
    pub window_secs: u64,
    pub held_deletions: u64,
    pub receivers: Vec<LinkStatus>,
}

/// The link to the receiver as the transport last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub receiver: String,
    pub connected: bool,
    /// Unix seconds since when it has been connected (or not).
    pub since: Option<i64>,
    pub last_ack_seq: Option<u64>,
    pub last_ack_at: Option<i64>,
    pub bundles_shipped: u64,
    pub bytes_shipped: u64,
    /// The latest failure, naming the peer or sequence it concerns.
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

enum TransportEvent {
    /// A session with the receiver began; its last applied sequence is known.
    Connected,
    Acked {
        seq: u64,
    },
}

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
    std::fs::create_dir_all(&cfg.source)
        .with_context(|| format!("creating {}", cfg.source.display()))?;
    durable::private_dir(&cfg.state_dir, "sender.state_dir").map_err(anyhow::Error::msg)?;
    let source = std::fs::canonicalize(&cfg.source)
        .with_context(|| format!("sender.source {}", cfg.source.display()))?;
    let state_dir = std::fs::canonicalize(&cfg.state_dir)
        .with_context(|| format!("sender.state_dir {}", cfg.state_dir.display()))?;
    let outbox = state_dir.join("outbox");
    // Bundles not acknowledged before a restart are dropped: the catch-up
    // below finds their changes again by comparing with the ledger.
    let _ = std::fs::remove_dir_all(&outbox);
    std::fs::create_dir_all(&outbox).with_context(|| format!("creating {}", outbox.display()))?;
    let (state, fresh) = SenderState::load_or_create(&state_dir, cfg.id.as_deref())?;
    let ledger = Ledger::open(&state_dir)
        .with_context(|| format!("reading acknowledged state in {}", state_dir.display()))?;
    let shipped = ledger.files().clone();
    debug!(files = shipped.len(), "ledger loaded");
    let ledger = Arc::new(std::sync::Mutex::new(ledger));
    info!(id = %state.id, source = %source.display(), receivers = %cfg.receivers.join(", "), "sender starting");
    // Never ship our own state if it lives inside the source tree.
    let ignore = vec![state_dir.clone()];

    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel();
    let guard = watcher::start(
        &source,
        cfg.exclude.clone(),
        ignore.clone(),
        watch_tx.clone(),
    )
    .with_context(|| format!("watching {}", source.display()))?;

    let (control_tx, mut control_rx) = mpsc::channel::<Call>(16);
    let control_task = tokio::spawn(control::serve(
        control::socket_path(&state_dir),
        control_tx,
        shutdown.clone(),
    ));

    let outbox_queue = Arc::new(Outbox::new(cfg.receivers.len()));
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
            peer_timeout: cfg.peer_timeout,
        };
        transport_tasks.push(tokio::spawn(transport(link, shutdown.clone())));
    }
    drop(event_tx);

    let (scan_tx, mut scan_rx) = mpsc::unbounded_channel();
    let mut s = Sender {
        scan_tx,
        watch_guard: Arc::new(guard),
        changes: ChangeSet::new(cfg.settle, cfg.max_delay),
        shipped,
        source: source.clone(),
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
    // during the walk is missed.
    s.scan(source.clone());

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
            Some(msg) = watch_rx.recv() => s.on_watch(msg),
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
            done = wait_packing(&mut s.packing) => {
                s.packing = None;
                s.on_packed(done, next_tick);
            }
            Some((req, reply)) = control_rx.recv() => match req {
                Request::Status => {
                    let _ = reply.send(Response::Status(s.status_report()));
                }
                Request::Pause | Request::Resume => {
                    let pause = matches!(req, Request::Pause);
                    let _ = reply.send(match s.set_paused(pause) {
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

async fn wait_packing(
    p: &mut Option<JoinHandle<anyhow::Result<Report>>>,
) -> anyhow::Result<Report> {
    match p {
        Some(h) => match h.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("packing task failed: {e}")),
        },
        None => std::future::pending().await,
    }
}

struct Sender {
    watch_guard: Arc<watcher::WatchGuard>,
    /// Finished directory walks: the files found.
    scan_tx: mpsc::UnboundedSender<watcher::Walk>,
    changes: ChangeSet,
    /// What the receiver has (or will have once the queue drains), per path.
    shipped: BTreeMap<String, FileMeta>,
    source: PathBuf,
    outbox: PathBuf,
    state_dir: PathBuf,
    state: Arc<std::sync::Mutex<SenderState>>,
    seq_floor: Arc<AtomicU64>,
    cfg: SenderConfig,
    ignore: Vec<PathBuf>,
    /// Packed bundles on their way to the receivers.
    outbox_queue: Arc<Outbox>,
    packing: Option<JoinHandle<anyhow::Result<Report>>>,
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
            WatchMsg::Rescan(why) => {
                warn!(reason = %why, "events may have been lost; rescanning the source tree");
                // A lost close would otherwise hold its path until max_delay.
                self.changes.writers_unknown();
                self.scan(self.source.clone());
            }
        }
    }

    /// Compare what a walk found with what the receiver has: queue what
    /// differs, and the shipped paths below the walked directory that are
    /// gone. This is the catch-up at start and the repair after lost events.
    fn on_walk(&mut self, walk: watcher::Walk) {
        let now = Instant::now();
        let mut queued = 0u64;
        let mut found = std::collections::HashSet::with_capacity(walk.files.len());
        // A file last modified longer than `settle` ago has been quiet that
        // long already: it counts as settled at once.
        let quiet_since = now.checked_sub(self.cfg.settle).unwrap_or(now);
        for (path, stat) in &walk.files {
            // A racy entry's stat proves nothing: let the packer compare content.
            if !self
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
                let quiet = !crate::bundle::pack::modified_within(
                    stat.mtime,
                    stat.mtime_nsec,
                    self.cfg.settle,
                );
                self.changes
                    .changed(path, false, if quiet { quiet_since } else { now });
                queued += 1;
            }
            found.insert(path.as_str());
        }
        let scope = walk.dir.clone().unwrap_or_default();
        let gone: Vec<String> = self
            .shipped
            .keys()
            .filter(|p| scope.is_empty() || is_within(p, &scope))
            .filter(|p| !found.contains(p.as_str()))
            // Re-created since the walk passed it: its event has it.
            .filter(|p| std::fs::symlink_metadata(self.source.join(p)).is_err())
            .cloned()
            .collect();
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

    fn set_paused(&mut self, pause: bool) -> anyhow::Result<()> {
        let marker = self.state_dir.join(PAUSED_FILE);
        if pause {
            durable::write_atomic(&marker, b"paused by `shipper pause`\n")
                .with_context(|| format!("writing {}", marker.display()))?;
        } else {
            match std::fs::remove_file(&marker) {
                Ok(()) => durable::sync_dir(&self.state_dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", marker.display())),
            }
        }
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

    fn status_report(&self) -> StatusReport {
        let mut pending_bytes = 0u64;
        for p in self.changes.pending_upserts() {
            if let Ok(md) = std::fs::symlink_metadata(self.source.join(p)) {
                pending_bytes += md.len();
            }
        }
        StatusReport {
            sender_id: self.state.lock().map(|s| s.id.clone()).unwrap_or_default(),
            paused: self.paused,
            pending_paths: self.changes.len() as u64,
            pending_bytes,
            oldest_pending_secs: self.changes.oldest().map(|t| t.elapsed().as_secs_f64()),
            window_secs: self.cfg.max_delay.as_secs(),
            held_deletions: self.held.len() as u64,
            receivers: self.statuses.iter().map(|s| s.borrow().clone()).collect(),
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
        if self.packing.is_some() || self.needs_welcome || self.paused {
            return;
        }
        let now = Instant::now();
        let due = self.changes.take_due(now, next_tick, force);
        let flushes = std::mem::take(&mut self.flush_queued);
        let allow_mass_delete = flushes.iter().any(|f| f.allow_mass_delete);
        let mut items = Vec::with_capacity(due.len());
        let mut deletions = Vec::new();
        for c in due {
            match c.op {
                Op::Upsert => {
                    self.held.remove(&c.path);
                    items.push(PackItem {
                        previous: self.shipped.get(&c.path).cloned(),
                        path: c.path,
                        op: Op::Upsert,
                        quiet_for: c.settled.then_some(self.cfg.settle),
                    })
                }
                // Deleting what the receiver never got is nothing to ship.
                Op::Delete if self.shipped.contains_key(&c.path) => deletions.push(c.path),
                Op::Delete => {}
            }
        }
        self.guard_deletions(&mut deletions, allow_mass_delete);
        items.extend(deletions.into_iter().map(|path| PackItem {
            path,
            op: Op::Delete,
            previous: None,
            quiet_for: None,
        }));
        if items.is_empty() {
            for f in flushes {
                self.flush_waiting.push(f);
            }
            // Nothing new: the flush waits for what is already in flight.
            self.settle_flushes_after_pack(self.packed + 1);
            return;
        }
        self.flush_packing = flushes;
        let packer_state = self.state.clone();
        let (source, outbox, state_dir) = (
            self.source.clone(),
            self.outbox.clone(),
            self.state_dir.clone(),
        );
        let limits = Limits {
            chunk_size: self.cfg.chunk_size,
            max_bundle_size: self.cfg.max_bundle_size,
        };
        let queue = self.outbox_queue.clone();
        let floor = self.seq_floor.clone();
        let touched = self.touched.clone();
        touched.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.touched_active = true;
        self.packing = Some(tokio::task::spawn_blocking(move || {
            let sender_id = packer_state.lock().expect("state lock").id.clone();
            let mut alloc = || -> std::io::Result<u64> {
                let mut st = packer_state.lock().expect("state lock");
                let seq = st.next_seq.max(floor.load(Ordering::SeqCst));
                st.next_seq = seq + 1;
                // Persist before the number is used, so a restart never reuses it.
                st.save(&state_dir).map_err(std::io::Error::other)?;
                Ok(seq)
            };
            let mut emit = |p: Packed| -> std::io::Result<()> {
                info!(
                    seq = p.seq,
                    files = p.summary.files,
                    parts = p.summary.parts,
                    deletions = p.summary.deletions,
                    bytes = p.summary.bytes,
                    size = p.size,
                    "bundle packed"
                );
                queue.push(p)
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
            Ok(packer.pack(items)?)
        }));
    }

    fn on_packed(&mut self, done: anyhow::Result<Report>, next_tick: Instant) {
        self.touched_active = false;
        let first = self.packed + 1;
        match done {
            Ok(report) => {
                for (path, meta) in report.shipped {
                    match meta {
                        Some(m) => {
                            self.shipped.insert(path, m);
                        }
                        None => {
                            self.shipped.remove(&path);
                        }
                    }
                }
                let now = Instant::now();
                for p in &report.requeue {
                    debug!(path = %p, "changed while packing; stays pending");
                    self.changes.requeue(p, now);
                }
                for (seq, summary) in report.bundles {
                    self.packed = self.packed.max(seq);
                    self.summaries.insert(seq, summary);
                }
            }
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "packing failed; changes stay pending"
                );
                let msg = format!("packing failed: {e:#}");
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

/// How long a receiver that keeps pinging may take to acknowledge a bundle
/// of `size` bytes once it is sent. A bound proportional to the size never
/// cuts off a big bundle that is merely slow to apply (cutting it would
/// re-send it forever), yet a receiver that pings and never answers is
/// still dropped and shows in status.
pub fn ack_limit(size: u64) -> Duration {
    ACK_BASE.saturating_add(Duration::from_secs(size / APPLY_FLOOR_RATE))
}

/// Capped exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

async fn connect(
    receiver: &str,
    id: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer_timeout: Duration,
) -> Result<(Connection<Stream>, u64), String> {
    let target = receiver.to_owned();
    let addrs = tokio::task::spawn_blocking(move || crate::config::resolve(&target))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot resolve: {e}"))?;
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                if let Err(e) = set_liveness(&stream, peer_timeout) {
                    warn!(%addr, error = %e, "cannot set TCP keepalive; relying on pings alone");
                }
                let stream: Stream = match tls {
                    Some(cfg) => {
                        let connector = tokio_rustls::TlsConnector::from(cfg.clone());
                        let tls = tokio::time::timeout(
                            CONNECT_TIMEOUT,
                            connector.connect(crate::tls::server_name(), stream),
                        )
                        .await
                        .map_err(|_| format!("TLS handshake with {addr} timed out"))?
                        .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
                        Box::new(tls)
                    }
                    // Plaintext only ever goes to loopback, whatever a name resolves to.
                    None if !addr.ip().is_loopback() => {
                        return Err(format!(
                            "{addr} is not a loopback address: refusing to send without TLS keys"
                        ));
                    }
                    None => Box::new(stream),
                };
                let mut conn = Connection::new(stream).with_peer_timeout(peer_timeout);
                let hello = Frame::Hello {
                    version: PROTOCOL_VERSION,
                    sender: id.to_owned(),
                };
                conn.write_frame(&hello).await.map_err(|e| e.to_string())?;
                return match conn.expect_frame_within(CONNECT_TIMEOUT).await {
                    Ok(Frame::Welcome { last_applied }) => Ok((conn, last_applied)),
                    Ok(Frame::Refuse { reason, .. }) => Err(format!("refused: {reason}")),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    // With TLS 1.3 a refused client certificate shows as an
                    // alert on the first read: say what it most likely means.
                    Err(e) if tls.is_some() && e.to_string().contains("alert") => Err(format!(
                        "TLS handshake with {addr} refused by the receiver ({e}): is this sender's fingerprint in receiver.allowed_senders?"
                    )),
                    Err(e) => Err(e.to_string()),
                };
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no connection within {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(last)
}

/// Send one bundle and wait for its answer.
async fn send_bundle(conn: &mut Connection<Stream>, b: &Packed) -> Result<(), ConnError> {
    conn.write_frame(&Frame::Bundle {
        seq: b.seq,
        size: b.size,
    })
    .await?;
    conn.send_body(&b.path, b.size).await?;
    conn.write_frame(&Frame::Trailer {
        size: b.size,
        hash: b.hash,
    })
    .await?;
    match conn.expect_reply_within(ack_limit(b.size)).await? {
        Frame::Ack { seq } if seq == b.seq => Ok(()),
        Frame::Refuse { reason, .. } => Err(ConnError::Unexpected(format!("refusal: {reason}"))),
        other => Err(ConnError::Unexpected(format!("answer {other:?}"))),
    }
}

/// Bundles packed and not yet acknowledged by every receiver, shared by the
/// packer (which adds) and the transports (which send from their own
/// positions). A bundle leaves once all receivers acknowledged it.
pub struct Outbox {
    state: std::sync::Mutex<OutboxState>,
    /// Wakes the packer waiting for room.
    room: std::sync::Condvar,
    /// Wakes transports waiting for a bundle.
    arrived: tokio::sync::Notify,
}

struct OutboxState {
    bundles: BTreeMap<u64, Packed>,
    /// Per receiver: the highest sequence it acknowledged (or had applied).
    acked: Vec<u64>,
    connected: Vec<bool>,
    closed: bool,
}

/// Bundles a connected receiver may have waiting before the packer pauses.
const WINDOW: usize = 2;

impl Outbox {
    pub fn new(receivers: usize) -> Self {
        Self {
            state: std::sync::Mutex::new(OutboxState {
                bundles: BTreeMap::new(),
                acked: vec![0; receivers],
                connected: vec![false; receivers],
                closed: false,
            }),
            room: std::sync::Condvar::new(),
            arrived: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a bundle; blocks while the most advanced connected receiver (or,
    /// with none connected, the outbox itself) already has `WINDOW` waiting.
    /// A receiver that is down holds back nobody; its bundles wait here.
    pub fn push(&self, p: Packed) -> std::io::Result<()> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return Err(std::io::Error::other("sender stopping"));
            }
            let front = st
                .acked
                .iter()
                .zip(&st.connected)
                .filter(|(_, c)| **c)
                .map(|(a, _)| *a)
                .max();
            let waiting = match front {
                Some(a) => st.bundles.range(a + 1..).count(),
                None => st.bundles.len(),
            };
            if waiting < WINDOW {
                break;
            }
            st = self
                .room
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.bundles.insert(p.seq, p);
        drop(st);
        self.arrived.notify_waiters();
        Ok(())
    }

    /// The first bundle receiver `i` has not acknowledged.
    fn next_for(&self, i: usize) -> Option<Packed> {
        let st = self.lock();
        st.bundles
            .range(st.acked[i] + 1..)
            .next()
            .map(|(_, p)| p.clone())
    }

    fn set_connected(&self, i: usize, up: bool) {
        self.lock().connected[i] = up;
        self.room.notify_all();
    }

    /// Receiver `i` has everything up to `seq`. Returns the bundles every
    /// receiver now has, which leave the outbox.
    fn ack(&self, i: usize, seq: u64) -> Vec<Packed> {
        let mut st = self.lock();
        st.acked[i] = st.acked[i].max(seq);
        let all = st.acked.iter().copied().min().unwrap_or(0);
        let rest = st.bundles.split_off(&(all + 1));
        let done = std::mem::replace(&mut st.bundles, rest);
        drop(st);
        self.room.notify_all();
        done.into_values().collect()
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
        self.arrived.notify_waiters();
    }
}

/// What one receiver's transport task talks to besides the socket.
struct Link {
    index: usize,
    receiver: String,
    id: String,
    /// Bundles every receiver acknowledged are recorded here before they are let go.
    ledger: Arc<std::sync::Mutex<Ledger>>,
    outbox: Arc<Outbox>,
    events: mpsc::UnboundedSender<TransportEvent>,
    status: tokio::sync::watch::Sender<LinkStatus>,
    /// The receiver's last applied sequence + 1, learnt at each handshake.
    seq_floor: Arc<AtomicU64>,
    /// TLS with the pinned receiver; `None` for plaintext on loopback.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// A connection silent this long is dropped.
    peer_timeout: Duration,
}

async fn transport(link: Link, shutdown: CancellationToken) {
    let Link {
        index,
        receiver,
        id,
        ledger,
        outbox,
        events,
        status,
        seq_floor,
        tls,
        peer_timeout,
    } = link;
    let mut backoff = Backoff::default();
    let mut down_reported: Option<String> = None;
    loop {
        let (mut conn, last_applied) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connect(&receiver, &id, tls.as_ref(), peer_timeout) => match r {
                Ok(c) => c,
                Err(e) => {
                    if down_reported.is_none() {
                        warn!(peer = %receiver, error = %e, "receiver unreachable; retrying with backoff until it answers");
                    }
                    down_reported = Some(e.clone());
                    status.send_modify(|s| {
                        if s.connected || s.since.is_none() {
                            s.since = Some(unix_now());
                        }
                        s.connected = false;
                        s.last_error = Some(e);
                        s.last_error_at = Some(unix_now());
                    });
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            },
        };
        if down_reported.take().is_some() {
            info!(peer = %receiver, "receiver reachable again");
        } else {
            debug!(peer = %receiver, last_applied, "connected");
        }
        seq_floor.fetch_max(last_applied + 1, Ordering::SeqCst);
        // What it applied before a lost acknowledgement counts as acknowledged.
        release(outbox.ack(index, last_applied), &events, &ledger).await;
        outbox.set_connected(index, true);
        let _ = events.send(TransportEvent::Connected);
        status.send_modify(|s| {
            s.connected = true;
            s.since = Some(unix_now());
        });
        backoff.reset();
        // Serve bundles until the connection fails; then say why once,
        // wait out the backoff and reconnect (the outbox still holds what
        // was not acknowledged, so it is re-sent).
        let (error, in_flight) = loop {
            let b = match next_bundle(&outbox, index, &mut conn, peer_timeout, &shutdown).await {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(e) => break (format!("idle connection: {}", describe(e)), false),
            };
            let started = Instant::now();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = send_bundle(&mut conn, &b) => r,
            };
            match result {
                Ok(()) => {
                    info!(
                        peer = %receiver,
                        seq = b.seq,
                        files = b.summary.files,
                        deletions = b.summary.deletions,
                        bytes = b.summary.bytes,
                        ms = started.elapsed().as_millis() as u64,
                        "bundle shipped"
                    );
                    status.send_modify(|s| {
                        s.last_ack_seq = Some(b.seq);
                        s.last_ack_at = Some(unix_now());
                        s.bundles_shipped += 1;
                        s.bytes_shipped += b.size;
                    });
                    release(outbox.ack(index, b.seq), &events, &ledger).await;
                }
                Err(e) => break (format!("sequence {}: {}", b.seq, describe(e)), true),
            }
        };
        drop(conn);
        outbox.set_connected(index, false);
        if down_reported.as_deref() != Some(&error) {
            if in_flight {
                warn!(peer = %receiver, %error, "bundle not acknowledged; will reconnect and re-send");
            } else {
                warn!(peer = %receiver, %error, "connection lost; reconnecting");
            }
        }
        down_reported = Some(error.clone());
        status.send_modify(|s| {
            s.connected = false;
            s.since = Some(unix_now());
            s.last_error = Some(error);
            s.last_error_at = Some(unix_now());
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// A transport failure as status and logs show it.
fn describe(e: ConnError) -> String {
    match e {
        ConnError::Silent(_) => format!("receiver {e}; connection dropped"),
        e => e.to_string(),
    }
}

/// Wait for the next bundle receiver `index` has not acknowledged, keeping
/// the idle connection checked: a `Ping` every third of `peer_timeout`,
/// which the receiver answers, and [`ConnError::Silent`] once nothing came
/// for `peer_timeout`. `Ok(None)` on shutdown.
async fn next_bundle(
    outbox: &Outbox,
    index: usize,
    conn: &mut Connection<Stream>,
    peer_timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<Packed>, ConnError> {
    let every = peer_timeout / 3;
    let mut heard = Instant::now();
    let mut next_ping = heard + every;
    loop {
        let arrived = outbox.arrived.notified();
        if let Some(b) = outbox.next_for(index) {
            return Ok(Some(b));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = arrived => {}
            // Belt and braces against a missed wake-up.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(next_ping.into()) => {
                conn.write_frame(&Frame::Ping).await?;
                next_ping = Instant::now() + every;
            }
            // `readable` consumes nothing, so losing this race loses no byte.
            r = conn.readable() => {
                r?;
                match conn.expect_frame().await? {
                    Frame::Ping => heard = Instant::now(),
                    other => {
                        return Err(ConnError::Unexpected(format!("{other:?} between bundles")));
                    }
                }
            }
            _ = tokio::time::sleep_until((heard + peer_timeout).into()) => {
                return Err(ConnError::Silent(peer_timeout));
            }
        }
    }
}

/// Bundles every receiver acknowledged: record each durably in the ledger,
/// then let it go.
async fn release(
    done: Vec<Packed>,
    events: &mpsc::UnboundedSender<TransportEvent>,
    ledger: &Arc<std::sync::Mutex<Ledger>>,
) {
    for b in done {
        let record = AckRecord {
            seq: b.seq,
            changes: b.changes,
        };
        let ledger = ledger.clone();
        let written = tokio::task::spawn_blocking(move || {
            ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(record)
        })
        .await;
        if let Err(e) = written.map_err(std::io::Error::other).and_then(|r| r) {
            // The receivers have it; only a restart would re-ship it needlessly.
            warn!(seq = b.seq, error = %e, "could not record an acknowledged bundle in the ledger");
        }
        let _ = std::fs::remove_file(&b.path);
        let _ = events.send(TransportEvent::Acked { seq: b.seq });
    }
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

    #[test]
    fn the_ack_limit_grows_with_the_bundle_and_never_falls_below_the_base() {
        assert_eq!(ack_limit(0), ACK_BASE);
        assert_eq!(ack_limit(1000), ACK_BASE);
        // A default-sized bundle gets its base plus 256 s.
        assert_eq!(ack_limit(256 << 20), ACK_BASE + Duration::from_secs(256));
        assert!(ack_limit(4 << 30) > Duration::from_secs(3600));
        assert!(ack_limit(u64::MAX) > ack_limit(4 << 30));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let ds: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        assert_eq!(ds[0], BACKOFF_MIN);
        assert_eq!(ds[1], BACKOFF_MIN * 2);
        assert_eq!(*ds.last().unwrap(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
