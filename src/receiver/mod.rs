//! The receiver: accept senders, take bundles, verify, apply, archive, ack.
//!
//! A bundle is streamed into `state_dir/incoming` while its BLAKE3 is
//! computed; its size and hash must match the trailer before it is opened.
//! Bundles are applied one at a time, in sequence order per sender; a
//! sequence already applied is acknowledged again without being applied
//! (nor its `on_apply` hook run again).
//! The applied sequence is stored durably before the acknowledgement. One
//! process at a time uses a state_dir ([`StateLock`]).
//!
//! # Layout
//! - this file: prepare the directories, bind, and the accept loop that
//!   gives each connection a session; the metrics endpoint beside it
//!   (bundles applied and refused are counted in a
//!   [`crate::metrics::ReceiverMetrics`] that sessions and the committer share).
//! - `session`: one sender's session: hello, receive, apply, answer.
//! - `identity`: who a sender is, and the key its state is kept under.
//! - `state`: `receiver.json` (applied sequences, instance id) and the
//!   state_dir lock.
//! - `commit`: the blocking half: write-ahead record, apply, archive, and
//!   recovery of what a crash left.
//! - `names`: the file names of bundles in `incoming`, `publishing` and
//!   the archive.
//! - `root_hashes`: root's listing for `shipper verify`, with its hash
//!   cache in state_dir.

mod commit;
mod identity;
mod names;
mod operate;
mod records;
mod rollback;
mod root_hashes;
mod session;
mod state;
mod trees;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bundle::apply::{self, Target};
use crate::config::{PublishMode, ReceiverConfig};
use crate::durable;
use crate::metrics::ReceiverMetrics;
use crate::places;
use commit::Committer;
use session::Sessions;

pub use crate::state_lock::StateLock;
pub use names::{archive_name, parse_archive_name};
pub use operate::operate_offline;
pub use state::ReceiverState;
pub use trees::{Trees, of as trees_of};

/// Connections not yet identified (in their handshake or before `Hello`)
/// at once; past this, new connections are closed as soon as accepted, so
/// idle or slow clients cannot run the receiver out of file descriptors.
const MAX_UNIDENTIFIED: usize = 64;
/// How often, at most, the connections turned away are reported.
const TURNED_AWAY_REPORT: Duration = Duration::from_secs(60);
/// How long to wait after a failed accept (out of descriptors, say)
/// before accepting again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub struct Receiver {
    /// What every session shares, the state_dir lock included.
    sessions: Arc<Sessions>,
    /// The bucket bundles are also taken from, until [`Receiver::serve`]
    /// starts polling it.
    relay: std::sync::Mutex<Option<session::Relay>>,
    /// What bundles applied and refused are counted in.
    metrics: Arc<ReceiverMetrics>,
    /// `receiver.metrics`, bound at start and served by [`Receiver::serve`].
    metrics_listener: std::sync::Mutex<Option<TcpListener>>,
}

/// The target a receiver config describes, directories created. Refused,
/// before anything is created, when two of its directories overlap or its
/// permission policy cannot be applied. Blocking (the group is looked up).
pub fn target_for(cfg: &ReceiverConfig) -> anyhow::Result<Target> {
    let policy = cfg.policy().map_err(anyhow::Error::msg)?;
    places::check(&cfg.dirs(cfg.staging_dir.as_deref()))?;
    durable::private_dir(&cfg.state_dir, "receiver.state_dir").map_err(anyhow::Error::msg)?;
    // Whoever can write the archive chooses what a replay rebuilds root from.
    durable::private_dir(&cfg.archive_dir, "receiver.archive_dir").map_err(anyhow::Error::msg)?;
    match cfg.publish {
        // Root is a symlink to a snapshot, made now if it is not one yet.
        PublishMode::Tree { keep } => {
            let mode = policy.dir_mode(crate::perms::DEFAULT_DIR_MODE);
            Trees::open(&cfg.root, keep, mode).context("receiver.publish = \"tree\"")?;
        }
        PublishMode::File => std::fs::create_dir_all(&cfg.root)
            .with_context(|| format!("creating {}", cfg.root.display()))?,
    }
    let staging = match &cfg.staging_dir {
        Some(s) => s.clone(),
        None => {
            // The default depends on where the created directories landed.
            let s = apply::default_staging(&cfg.root, &cfg.state_dir);
            places::check(&cfg.dirs(Some(&s)))?;
            s
        }
    };
    let target = Target {
        root: cfg.root.clone(),
        staging,
        parts: cfg.state_dir.join("parts"),
        policy,
        keep: None,
        snapshot: false,
    };
    target.prepare().context("preparing receiver directories")?;
    Ok(target)
}

impl Receiver {
    /// Prepare directories and bind the listening socket. The bound address
    /// is written to `state_dir/listen.addr` (useful with port 0).
    pub async fn bind(cfg: ReceiverConfig) -> anyhow::Result<(Arc<Self>, TcpListener)> {
        if let Some(hook) = &cfg.on_apply {
            hook.check_program().map_err(anyhow::Error::msg)?;
        }
        let target = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || target_for(&cfg)).await??
        };
        // Before anything in state_dir or root is cleaned, finished or served.
        let lock = StateLock::acquire(&cfg.state_dir, "receiver")?;
        let incoming = cfg.state_dir.join("incoming");
        std::fs::create_dir_all(&incoming)
            .with_context(|| format!("creating {}", incoming.display()))?;
        // Half-received bundles from an earlier run are useless: the sender re-sends.
        places::remove_own(&incoming, names::is_incoming_name)?;
        let mut state = ReceiverState::load_or_create(&cfg.state_dir)?;
        target.clean_staging().context("cleaning staging")?;
        let publishing = cfg.state_dir.join("publishing");
        std::fs::create_dir_all(&publishing)
            .with_context(|| format!("creating {}", publishing.display()))?;
        let metrics = Arc::new(ReceiverMetrics::new(&cfg.root));
        let committer = Arc::new(Committer::new(&cfg, &target, metrics.clone()));
        committer.recover(&mut state, &cfg.state_dir)?;
        let at = operate::root_at(&cfg.root, committer.trees.as_ref());
        rollback::finish_interrupted(at, &committer.records, &mut state, &cfg.state_dir);
        committer.expire_part_sets();
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("receiver.listen: cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        durable::write_atomic(
            &cfg.state_dir.join("listen.addr"),
            addr.to_string().as_bytes(),
        )
        .context("writing listen.addr")?;
        let metrics_listener = match cfg.metrics {
            Some(at) => Some(crate::metrics::bind("receiver.metrics", at).await?),
            None => None,
        };
        let tls = tls_acceptor(&cfg, addr)?;
        let relay = match cfg.bucket.clone() {
            None => None,
            Some(b) => {
                let poll = cfg.bucket_poll;
                // Reads the credentials file: off the runtime.
                let opened = tokio::task::spawn_blocking(move || {
                    crate::bucket::store::open(&b).map(|opened| session::Relay {
                        opened,
                        cfg: b,
                        poll,
                    })
                });
                Some(opened.await?.context("receiver.bucket")?)
            }
        };
        info!(%addr, root = %cfg.root.display(), "receiver listening");
        let sessions = Sessions::new(cfg, tls, committer, metrics.clone(), incoming, state, lock);
        Ok((
            Arc::new(Self {
                sessions: Arc::new(sessions),
                relay: std::sync::Mutex::new(relay),
                metrics,
                metrics_listener: std::sync::Mutex::new(metrics_listener),
            }),
            listener,
        ))
    }

    /// Accept senders until `shutdown`; returns once every session has
    /// ended, so the receiver (and its [`StateLock`]) is let go with it.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let unidentified = Arc::new(tokio::sync::Semaphore::new(MAX_UNIDENTIFIED));
        let mut turned_away: u64 = 0;
        // When turned-away connections were last reported: the first is at once.
        let mut reported: Option<Instant> = None;
        let tracker = tokio_util::task::TaskTracker::new();
        self.serve_metrics(&tracker, &shutdown);
        self.serve_control(&tracker, &shutdown);
        let relay = self.relay.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(relay) = relay {
            tracker.spawn(
                self.sessions
                    .clone()
                    .poll_bucket(relay, shutdown.child_token()),
            );
        }
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = unidentified.clone().try_acquire_owned() else {
                // Closed at once: its descriptor is freed now, not after a timeout.
                drop(stream);
                turned_away += 1;
                if reported.is_none_or(|r| r.elapsed() > TURNED_AWAY_REPORT) {
                    warn!(%peer, turned_away, limit = MAX_UNIDENTIFIED, "too many connections still in their handshake: closing new ones until some finish or time out");
                    reported = Some(Instant::now());
                }
                continue;
            };
            let sessions = self.sessions.clone();
            let stop = shutdown.child_token();
            tracker.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = sessions.session(stream, peer, slot, stop.clone()) => if let Err(e) = r {
                        warn!(%peer, error = format!("{e:#}"), "session ended");
                    },
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}

impl Receiver {
    /// Answer `shipper rollback` on the control socket in state_dir until
    /// `shutdown`.
    fn serve_control(&self, tracker: &tokio_util::task::TaskTracker, shutdown: &CancellationToken) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let operator = Arc::new(self.sessions.operator());
        let path = crate::control::socket_path(&operator.state_dir);
        tracker.spawn(operator.answer(rx));
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = crate::control::serve((path, "receiver"), tx, shutdown).await {
                warn!(
                    error = format!("{e:#}"),
                    "control socket: `shipper rollback` cannot reach this receiver"
                );
            }
        });
    }

    /// Serve `receiver.metrics`, if configured, on `tracker` until `shutdown`.
    fn serve_metrics(&self, tracker: &tokio_util::task::TaskTracker, shutdown: &CancellationToken) {
        let taken = self
            .metrics_listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(listener) = taken {
            let metrics = self.metrics.clone();
            let scrape: crate::metrics::Scrape = Arc::new(move || metrics.scrape());
            tracker.spawn(crate::metrics::serve(listener, scrape, shutdown.clone()));
        }
    }
}

/// Mutual TLS with the allowed senders when keys are configured; `None`
/// (plaintext, which config allows on loopback only) without.
fn tls_acceptor(
    cfg: &ReceiverConfig,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let Some(t) = &cfg.tls else {
        warn!(%addr, "no keys configured: plaintext, allowed on loopback only");
        return Ok(None);
    };
    let me = crate::tls::load_identity(&t.key_dir).context("receiver.key_dir")?;
    info!(me = %me.fingerprint, allowed = t.allowed.len(), "TLS: only the allowed senders may connect");
    Ok(Some(tokio_rustls::TlsAcceptor::from(
        crate::tls::server_config(&me, t.allowed.clone())?,
    )))
}

/// Run the receiver until `shutdown`.
pub async fn run(cfg: ReceiverConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (r, listener) = Receiver::bind(cfg).await?;
    r.serve(listener, shutdown).await;
    Ok(())
}
