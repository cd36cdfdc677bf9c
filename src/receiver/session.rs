//! One sender's session: the TLS handshake and `Hello` that say who it is,
//! `Welcome`, then each bundle received into `state_dir/incoming`, checked
//! against its trailer, applied in sequence order, followed by the
//! `on_apply` hook (at most its timeout; its failure is reported in the
//! `Ack`, never refuses) and answered with `Ack` or a refusal; the next
//! bundle is taken in while one is applied (`halves.rs`). There is one
//! session per sender: a newer one replaces an older one, and a rollback or
//! its release ends it, so the sender hears its new `Welcome`. The
//! handshake and `Welcome` are in `greet.rs`. A connection that starts
//! with `Inquire` or `Compared` instead of `Hello` is no session: it is
//! answered (root's listing; forgetting a rollback) and closed
//! (`inquiry.rs`). Bundles taken from a bucket go through the same apply,
//! archive and hook (`bucket.rs`).
//!
//! A session pings its sender while a bundle is applied and answers the
//! sender's pings; one the sender leaves silent for
//! [`crate::proto::SESSION_IDLE`] is ended (see [`crate::proto`]'s
//! liveness rules).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod bucket;
mod greet;
mod halves;
mod inquiry;

pub(super) use bucket::Relay;

use greet::Purpose;

/// A bundle streamed in chunks, taken in whole: sequence `seq` of `size`
/// bytes, whether it passed the check against its `Sealed` frame, and the
/// bytes timed with the time they took (see [`connection::Body`]).
struct Streamed {
    seq: u64,
    size: u64,
    checked: Result<(), Refusal>,
    timed: Option<(u64, Duration)>,
}

use super::commit::{Committer, refusal_for_io};
use super::identity::Sender;
use super::names::{archive_name, incoming_name};
use super::state::ReceiverState;
use crate::bundle::apply;
use crate::bundle::arrival::WriteBackOnceSynced;
use crate::bundle::manifest::next_seq;
use crate::config::ReceiverConfig;
use crate::hook;
use crate::metrics::{ReceiverMetrics, RefusedFor};
use crate::proto::Frame;
use crate::proto::connection::{self, ConnError, FrameReader, Stream};
use crate::proto::hook_outcome::HookOutcome;
use crate::proto::refusal::Refusal;
use crate::state_lock::StateLock;

/// A new connection has this long for its TLS handshake and `Hello`
/// together; a silent one does not hold a slot longer.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Identified sessions at once (there is one per sender identity).
const MAX_SESSIONS: usize = 256;
/// Numbers sessions, so two sessions never share a file name.
static SESSIONS: AtomicU64 = AtomicU64::new(0);

/// What the sessions of one receiver share: its config, TLS acceptor,
/// state and committer, and the live session of each sender.
pub(super) struct Sessions {
    cfg: ReceiverConfig,
    /// Mutual TLS with the allowed senders; `None` for plaintext on loopback.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The blocking half: verify, publish, archive.
    committer: Arc<Committer>,
    /// Where bundles applied and refused are counted.
    metrics: Arc<ReceiverMetrics>,
    incoming: PathBuf,
    /// Whether bundles received into `incoming` are handed to the disk as
    /// they arrive (`bundle::arrival`): where it shares staging's
    /// filesystem, whose sync would write them anyway.
    write_back_arrivals: bool,
    /// Held while a bundle is applied: one at a time, state and root agree.
    state: Arc<Mutex<ReceiverState>>,
    /// The live session of each sender (by key): its id and stop token.
    live: std::sync::Mutex<HashMap<String, (u64, CancellationToken)>>,
    /// No other receiver or replay writes state_dir while a session may.
    _lock: StateLock,
}

/// Removes its session from the table when the session ends (unless a
/// newer one took the place already).
struct SessionGuard {
    sessions: Arc<Sessions>,
    key: String,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut table = self.sessions.live.lock().unwrap_or_else(|e| e.into_inner());
        if table.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            table.remove(&self.key);
        }
    }
}

impl Sessions {
    /// `incoming` holds bundles while they are received; `lock` is held
    /// for as long as any session may write state_dir or root.
    pub(super) fn new(
        cfg: ReceiverConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
        committer: Arc<Committer>,
        metrics: Arc<ReceiverMetrics>,
        incoming: PathBuf,
        state: ReceiverState,
        lock: StateLock,
    ) -> Self {
        Self {
            cfg,
            tls,
            write_back_arrivals: committer.stages_beside(&incoming),
            committer,
            metrics,
            incoming,
            state: Arc::new(Mutex::new(state)),
            live: Default::default(),
            _lock: lock,
        }
    }

    /// What answers `shipper rollback` while this receiver runs: it shares
    /// the state lock with the sessions.
    pub(super) fn operator(self: &Arc<Self>) -> super::operate::Operator {
        let sessions = self.clone();
        super::operate::Operator {
            end_session: Arc::new(move |key: &str| sessions.end_session(key)),
            state: self.state.clone(),
            root: self.cfg.root.clone(),
            state_dir: self.cfg.state_dir.clone(),
            records: self.committer.records.clone(),
            trees: self.committer.trees.clone(),
        }
    }

    /// End the live session of the sender keyed `key`, if there is one:
    /// it connects again and hears what its `Welcome` says now (held, or
    /// released from a rollback).
    pub(super) fn end_session(&self, key: &str) {
        let table = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, stop)) = table.get(key) {
            stop.cancel();
        }
    }

    /// Serve one connection. `slot` is held until the peer has said who it
    /// is; `stop` ends this session (a newer one from the same sender
    /// replaces it).
    pub(super) async fn session(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let identify = tokio::time::Instant::now() + HELLO_TIMEOUT;
        let (mut conn, sender, (speaks, purpose)) = self.identify(stream, peer, identify).await?;
        drop(slot);
        // Neither is registered: the sender's session carrying bundles stays.
        match purpose {
            Purpose::Listing => {
                return self
                    .answer_inquiry(&mut conn, &sender, (peer, speaks))
                    .await;
            }
            Purpose::Compared => return self.compared(&mut conn, &sender).await,
            Purpose::Bundles => {}
        }
        let registered = self.register(&sender, peer, stop)?;
        let last = self.welcome(&mut conn, &sender, speaks).await?;
        info!(%peer, %sender, last_applied = last, "sender connected");
        self.serve_bundles(&mut conn, &sender, peer, (registered.id, speaks))
            .await?;
        info!(%peer, %sender, "sender disconnected");
        Ok(())
    }

    /// Apply the received bundle (see [`Self::apply_received`]) and, if it
    /// was applied now, run the hook on what it changed. The outer error
    /// ends the session; the inner one is a refusal.
    async fn apply_then_hook(
        &self,
        sender: &Sender,
        seq: u64,
        size: u64,
        received: &Path,
        started: Instant,
    ) -> anyhow::Result<Result<HookOutcome, Refusal>> {
        let a = match self.apply_received(sender, seq, received).await? {
            Ok(Some(a)) => a,
            // Applied before: its hook ran then.
            Ok(None) => return Ok(Ok(HookOutcome::NotRun)),
            Err(refusal) => return Ok(Err(refusal)),
        };
        self.metrics
            .applied(&sender.id, size, crate::status::unix_now());
        info!(%sender, seq, files = a.summary.files, deletions = a.summary.deletions, bytes = a.summary.bytes, ms = started.elapsed().as_millis() as u64, "bundle applied");
        Ok(Ok(self.run_hook(sender, &a).await))
    }

    /// Run the `on_apply` hook, if one is configured, on what bundle `a`
    /// changed in root; a bundle that changed nothing there (parts of an
    /// unfinished file) does not run it. A failure is logged and reported,
    /// never refuses: the bundle is applied.
    async fn run_hook(&self, sender: &Sender, a: &apply::Applied) -> HookOutcome {
        let Some(hook) = &self.cfg.on_apply else {
            return HookOutcome::NotRun;
        };
        let changes = hook::changes(&a.written, &a.deleted);
        if changes.is_empty() {
            tracing::debug!(%sender, seq = a.seq, "nothing in root changed; on_apply not run");
            return HookOutcome::NotRun;
        }
        let applied = hook::Applied {
            seq: a.seq,
            sender: sender.id.clone(),
            root: self.cfg.root.clone(),
            changes,
        };
        let started = Instant::now();
        match hook.run(&applied).await {
            Ok(()) => {
                let ms = started.elapsed().as_millis() as u64;
                tracing::debug!(%sender, seq = a.seq, ms, "on_apply hook ran");
                HookOutcome::Ran
            }
            Err(e) => {
                warn!(%sender, seq = a.seq, error = %e, "on_apply hook failed; the bundle stays applied (a sender connected directly hears of it in the acknowledgement)");
                self.metrics.hook_failed(&sender.id);
                HookOutcome::Failed(e.to_string())
            }
        }
    }

    /// Receive one bundle body of `size` bytes and its trailer into
    /// `received` and check them; with how long its bytes took (see
    /// [`connection::Body`]). The outer error ends the session (stream out of step); the
    /// inner one is a refusal.
    async fn receive(
        &self,
        conn: &mut FrameReader<Stream>,
        sender: &Sender,
        seq: u64,
        size: u64,
        received: &Path,
    ) -> anyhow::Result<(Result<(), Refusal>, Option<(u64, Duration)>)> {
        let started = std::time::Instant::now();
        let body = conn.recv_body(size, (received, self.arrival_tap())).await?;
        tracing::debug!(
            seq,
            size,
            ms = started.elapsed().as_millis() as u64,
            "bundle received"
        );
        let Frame::Trailer {
            size: t_size,
            hash: t_hash,
        } = conn.expect_frame().await?
        else {
            anyhow::bail!("expected a trailer after bundle {seq}");
        };
        let timed = body.timed;
        let checked = self.check(
            sender,
            (seq, size),
            body.hash,
            body.write_error,
            (t_size, t_hash),
            received,
        );
        Ok((checked, timed))
    }

    /// What watches a bundle arrive (see [`Sessions::write_back_arrivals`]).
    fn arrival_tap(&self) -> Option<WriteBackOnceSynced> {
        self.write_back_arrivals.then(WriteBackOnceSynced::default)
    }

    /// Receive a bundle streamed in chunks (its `Begin` read) into `file`
    /// and check it against its `Sealed` frame, then name the file for the
    /// sequence that frame gives (see [`incoming_name`]); `None` if the
    /// sender abandoned it. A stream past `receiver.max_bundle_size`, or
    /// any frame but a chunk, a ping or its end, ends the session.
    async fn receive_streamed(
        &self,
        conn: &mut FrameReader<Stream>,
        (sender, session): (&Sender, u64),
        file: &mut halves::Taken,
    ) -> anyhow::Result<Option<Streamed>> {
        let started = std::time::Instant::now();
        let limit = self.cfg.max_bundle_size;
        let (body, size, (seq, t_size, t_hash)) = match conn
            .recv_chunked(limit, (&file.0, self.arrival_tap()))
            .await
        {
            Ok(connection::Streamed::Sealed { body, size, sealed }) => (body, size, sealed),
            Ok(connection::Streamed::Abandoned) => {
                tracing::debug!(%sender, "streamed bundle abandoned by its sender");
                // Gone before the next stream is taken in under its name.
                file.remove_now().await;
                return Ok(None);
            }
            Err(ConnError::OverLimit(e)) => {
                anyhow::bail!("{e}, over receiver.max_bundle_size; its stream is not read further")
            }
            Err(e) => return Err(e.into()),
        };
        tracing::debug!(
            seq,
            size,
            ms = started.elapsed().as_millis() as u64,
            "streamed bundle received"
        );
        // Renamed even when writing it failed, so the name a stream is
        // taken in under is free again for the next one.
        let mut write_error = body.write_error;
        let named = self.incoming.join(incoming_name(&sender.key, seq, session));
        let taken_as = file.0.clone();
        match tokio::fs::rename(&file.0, &named).await {
            Ok(()) => file.0 = named,
            Err(e) => {
                write_error.get_or_insert(e);
                // Refused whatever it held: gone before a stream behind it
                // in this session is taken in under the same name.
                file.remove_now().await;
            }
        }
        let checked = self.check(
            sender,
            (seq, size),
            body.hash,
            write_error,
            (t_size, t_hash),
            &taken_as,
        );
        Ok(Some(Streamed {
            seq,
            size,
            checked,
            timed: body.timed,
        }))
    }

    /// Check a body of `size` bytes received into `received` for bundle
    /// `seq`, hashed to `hash`, against the size and hash its trailer gave;
    /// a write error refuses it first. Refused for now either way: the
    /// next copy may arrive whole, or find room.
    fn check(
        &self,
        sender: &Sender,
        (seq, size): (u64, u64),
        hash: blake3::Hash,
        write_error: Option<std::io::Error>,
        (t_size, t_hash): (u64, [u8; 32]),
        received: &Path,
    ) -> Result<(), Refusal> {
        if let Some(e) = write_error {
            let refusal = Refusal::retry(refusal_for_io(&e, received));
            self.metrics
                .refused(&sender.id, &refusal, RefusedFor::of_io(&e));
            return Err(refusal);
        }
        if t_size != size || t_hash != *hash.as_bytes() {
            // Damaged on the way: the next copy may arrive whole.
            let refusal = Refusal::retry(format!(
                "bundle {seq} failed its trailer check (size {size} vs {t_size}, hash {} vs {})",
                hash.to_hex(),
                blake3::Hash::from_bytes(t_hash).to_hex()
            ));
            self.metrics.refused(&sender.id, &refusal, RefusedFor::Hash);
            return Err(refusal);
        }
        Ok(())
    }

    /// Apply the received bundle at `received`, in sequence order, unless it
    /// already was. The outer error ends the session; the inner one is a
    /// refusal. Runs to its end even if this session is dropped meanwhile
    /// (a newer session from the same sender replaces it): the state lock
    /// is held until the bundle is applied, recorded and archived, so the
    /// newer session's re-send waits for it instead of racing it.
    async fn apply_received(
        &self,
        sender: &Sender,
        seq: u64,
        received: &Path,
    ) -> anyhow::Result<Result<Option<apply::Applied>, Refusal>> {
        let job = ApplyJob {
            state: self.state.clone(),
            committer: self.committer.clone(),
            metrics: self.metrics.clone(),
            state_dir: self.cfg.state_dir.clone(),
            sender: sender.clone(),
            seq,
            received: received.to_path_buf(),
        };
        tokio::spawn(job.run()).await.context("apply task")?
    }

    /// Make this the one session of `sender`, ending an older one (a
    /// sender that reconnected after a connection went silent). Refused
    /// past [`MAX_SESSIONS`]. The session leaves the table when the returned
    /// guard drops.
    fn register(
        self: &Arc<Self>,
        sender: &Sender,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> anyhow::Result<SessionGuard> {
        let mut table = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if !table.contains_key(&sender.key) && table.len() >= MAX_SESSIONS {
            anyhow::bail!("{peer}: {MAX_SESSIONS} sessions already open; refusing {sender}");
        }
        let id = SESSIONS.fetch_add(1, Ordering::Relaxed);
        if let Some((_, old)) = table.insert(sender.key.clone(), (id, stop)) {
            info!(%peer, %sender, "a newer session from this sender replaces the older one");
            old.cancel();
        }
        Ok(SessionGuard {
            sessions: self.clone(),
            key: sender.key.clone(),
            id,
        })
    }
}

/// Applying one bundle, owned so that it runs to its end whatever becomes
/// of the session that asked for it.
struct ApplyJob {
    state: Arc<Mutex<ReceiverState>>,
    committer: Arc<Committer>,
    metrics: Arc<ReceiverMetrics>,
    state_dir: PathBuf,
    sender: Sender,
    seq: u64,
    received: PathBuf,
}

impl ApplyJob {
    async fn run(self) -> anyhow::Result<Result<Option<apply::Applied>, Refusal>> {
        let seq = self.seq;
        let mut state = self.state.lock().await;
        let last = state.applied.get(&self.sender.key).copied().unwrap_or(0);
        if seq <= last {
            info!(sender = %self.sender, seq, "already applied; acknowledging again");
            return Ok(Ok(None));
        }
        if let Some(hold) = state.held.get(&self.sender.key) {
            let refusal = Refusal::retry(super::rollback::held_reason(hold));
            self.metrics
                .refused(&self.sender.id, &refusal, RefusedFor::Held);
            return Ok(Err(refusal));
        }
        if next_seq(last) != Ok(seq) && last > 0 {
            // Normal when a sender ships a whole tree to another receiver.
            tracing::debug!(
                sender = %self.sender,
                seq,
                last,
                "sequence gap: bundles in between were not for this receiver or never arrived"
            );
        }
        let me = self.committer.clone();
        let (sender_owned, received_path) = (self.sender.clone(), self.received.clone());
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            me.commit(&received_path, &sender_owned, (seq, last))
        })
        .await
        .context("apply task")?;
        tracing::debug!(
            seq,
            ms = started.elapsed().as_millis() as u64,
            "bundle verified and applied"
        );
        match result {
            Ok(applied) => {
                state.applied.insert(self.sender.key.clone(), seq);
                // Durable before the acknowledgement; the fsync runs off the
                // runtime, the lock held so states are saved in order.
                let (snapshot, dir) = (state.clone(), self.state_dir.clone());
                let saved = tokio::task::spawn_blocking(move || snapshot.save(&dir))
                    .await
                    .context("state task")?;
                if let Err(e) = saved {
                    let refusal = Refusal::retry(format!("{e:#}"));
                    let why = e
                        .downcast_ref::<std::io::Error>()
                        .map_or(RefusedFor::Io, RefusedFor::of_io);
                    self.metrics.refused(&self.sender.id, &refusal, why);
                    return Ok(Err(refusal));
                }
                // Still under the state lock: publishing/ holds at most the
                // bundle being applied, so a crash never leaves an older
                // bundle there behind a newer one.
                let me = self.committer.clone();
                let name = archive_name(&self.sender.key, seq);
                tokio::task::spawn_blocking(move || me.archive_published(&name))
                    .await
                    .context("archive task")?;
                drop(state);
                Ok(Ok(Some(applied)))
            }
            Err(reason) => Ok(Err(reason)),
        }
    }
}
