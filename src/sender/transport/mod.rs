//! One destination's transport: a task that keeps it served
//! ([`keep_served`]) and, after a failure, says why once, in the log and
//! in the link's status, and opens it again with capped [`backoff`]. A
//! receiver is served by sessions ([`connect`], its `Welcome` decides what
//! it needs, [`exchange`] serves bundles and waits for their answers); the
//! bucket by uploads ([`bucket`]). What every destination acknowledged
//! goes to the ledger and its events to the sender's loop ([`handoff`]).
//! Every wait on the peer is bounded.

mod backoff;
mod bucket;
mod bucket_bases;
mod connect;
mod exchange;
mod follow;
mod handoff;
mod welcome;

pub(super) use backoff::Backoff;
pub(super) use bucket::Bucket;
pub(super) use connect::{inquire, tell_compared};
pub(super) use handoff::{TransportEvent, release_now, update_peer};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bundle::growing::Growing;
use crate::bundle::pack::Packed;
use crate::config::Compress;
use crate::ledger::Ledger;
use crate::peers::{Peers, TreeNeed};
use crate::proto::Connection;
use crate::proto::connection::{ConnError, Stream};
use crate::proto::frame::Accepts;
use crate::proto::hook_outcome::HookOutcome;
use crate::proto::refusal::{Refusal, RefusalKind};
use crate::sender::link_rate::{
    self, DEFLATE_BELOW, Delivered, LinkRates, Measure, Measured, STORE_FROM, Unheard,
};
use crate::sender::outbox::{Outbox, Presence};
use crate::status::{LinkStatus, unix_now};
use connect::connect;
use exchange::{
    Answer, Awaited, Grown, Next, PIPELINE, Told, await_answer, describe, next_bundle, send_bundle,
    send_growing,
};
use handoff::release;

/// What one receiver's transport task talks to besides the socket.
pub(super) struct Link {
    pub(super) index: usize,
    pub(super) receiver: String,
    pub(super) id: String,
    /// Bundles every receiver acknowledged are recorded here before they are let go.
    pub(super) ledger: Arc<std::sync::Mutex<Ledger>>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) events: mpsc::UnboundedSender<TransportEvent>,
    pub(super) status: tokio::sync::watch::Sender<LinkStatus>,
    /// The receiver's last applied sequence + 1, learnt at each handshake.
    pub(super) seq_floor: Arc<AtomicU64>,
    /// TLS with the pinned receiver; `None` for plaintext on loopback.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    /// A connection silent this long is dropped.
    pub(super) peer_timeout: Duration,
    /// Bytes per second each connection to this receiver may carry.
    pub(super) max_rate: Option<u64>,
    /// `sender.compress`: whether streaming waits for the link's measure
    /// ([`Link::streams`]).
    pub(super) compress: Compress,
    /// What is known of every receiver across restarts.
    pub(super) peers: Arc<std::sync::Mutex<Peers>>,
    pub(super) state_dir: PathBuf,
    /// Where this receiver's `Welcome` limits go, for the packer.
    pub(super) accepts: Arc<std::sync::Mutex<Vec<Option<Accepts>>>>,
    /// Where the rate this receiver's link carries bundles at goes, for
    /// the packer's choice to deflate.
    pub(super) link_rates: Arc<LinkRates>,
    /// `Some`: this destination is the bucket, served by uploads.
    pub(super) bucket: Option<Arc<Bucket>>,
}

/// Why a session ended.
struct Lost {
    error: String,
    /// A bundle was sent and not answered.
    in_flight: bool,
}

/// Keep the destination of `link` served until `shutdown`: a receiver
/// by its sessions, the bucket by uploads ([`bucket::Uploads`]).
pub(super) async fn transport(link: Link, shutdown: CancellationToken) {
    match link.bucket.clone() {
        Some(b) => keep_served(&link, &bucket::Uploads(b), &shutdown).await,
        None => keep_served(&link, &Sessions, &shutdown).await,
    }
}

/// How a destination is served: opened (a session connected, a bucket's
/// position read), then served until that fails.
trait Served {
    type Opened;
    /// Open the way to the destination; the error says why not.
    async fn open(&self, link: &Link) -> Result<Self::Opened, String>;
    /// Take in what the destination said and serve it bundles until that
    /// fails (`Some`: why) or until shutdown (`None`); `back`: it was
    /// unreachable until now.
    async fn serve(
        &self,
        link: &Link,
        opened: Self::Opened,
        back: bool,
        shutdown: &CancellationToken,
    ) -> Option<Lost>;
}

/// Keep `link` served `how` until `shutdown`: open, serve until it
/// fails, then wait out the backoff and open again (the outbox still
/// holds what was not acknowledged, so it is sent again).
async fn keep_served(link: &Link, how: &impl Served, shutdown: &CancellationToken) {
    let mut backoff = Backoff::default();
    // The failure last logged: one that goes on is not logged again.
    let mut down_reported: Option<String> = None;
    loop {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = how.open(link) => r,
        };
        match opened {
            Err(e) => link.unreachable(&mut down_reported, e),
            Ok(opened) => {
                let back = down_reported.take().is_some();
                let Some(lost) = how.serve(link, opened, back, shutdown).await else {
                    return;
                };
                backoff.reset();
                link.lost(&mut down_reported, lost);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// A receiver, served by sessions: connect, take in its Welcome, serve
/// bundles (or, while a rollback holds this sender there, idle).
struct Sessions;

impl Served for Sessions {
    type Opened = connect::Session;

    async fn open(&self, link: &Link) -> Result<connect::Session, String> {
        connect(
            &link.receiver,
            &link.id,
            link.tls.as_ref(),
            link.peer_timeout,
            link.max_rate,
        )
        .await
    }

    async fn serve(
        &self,
        link: &Link,
        session: connect::Session,
        back: bool,
        shutdown: &CancellationToken,
    ) -> Option<Lost> {
        if back {
            info!(peer = %link.receiver, "receiver reachable again");
        } else {
            debug!(peer = %link.receiver, last_applied = session.welcome.last_applied, "connected");
        }
        match link.welcome(session.welcome).await {
            // Nothing to send: wait for the receiver to end the session
            // (released), answering its pings.
            Some(_) => link.idle(session.conn, shutdown).await,
            None => {
                let (instance, delivered) = (session.welcome.instance, session.delivered);
                link.serve(session.conn, instance, delivered, shutdown)
                    .await
            }
        }
    }
}

impl Link {
    /// Serve bundles over `conn` until it fails (`Some`: why) or until
    /// shutdown (`None`). Up to [`PIPELINE`] bundles are on their way at
    /// once; their answers come, and are acted on, in order.
    async fn serve(
        &self,
        mut conn: Connection<Stream>,
        instance: [u8; 16],
        delivered: Option<Delivered>,
        shutdown: &CancellationToken,
    ) -> Option<Lost> {
        // Sent and not yet answered, oldest first, each with when it was
        // sent and whether it went while it was packed.
        let mut unanswered: VecDeque<(Arc<Packed>, Instant, bool)> = VecDeque::new();
        // This end's measures of them, until the receiver speaks of each.
        let mut hearing = Hearing {
            link: self,
            unheard: Default::default(),
        };
        // Since when the oldest of them has been waited for.
        let mut since = Instant::now();
        loop {
            let last = unanswered.back().map(|(b, ..)| b.seq);
            let mut room = unanswered.len() < PIPELINE;
            // The next bundle to send: behind those unanswered while the
            // pipeline has room, or, with none unanswered, whatever comes
            // while the connection idles.
            let streams = self.streams();
            let mut next = match last.filter(|_| room) {
                Some(l) => Next::after((&self.outbox, self.index), l, streams),
                None if unanswered.is_empty() => {
                    let idle = next_bundle(
                        (&self.outbox, self.index, streams),
                        &mut conn,
                        self.peer_timeout,
                        shutdown,
                    );
                    match idle.await {
                        Ok(Some(b)) => Some(b),
                        Ok(None) => return None,
                        Err(e) => {
                            let error = format!("idle connection: {}", describe(e));
                            return Some(Lost {
                                error,
                                in_flight: false,
                            });
                        }
                    }
                }
                None => None,
            };
            if let Some(Next::Sealed(b)) = &next
                && let Some(reason) = self.over_limit(b)
            {
                // Refused here, in turn: sent, its body would be cut off
                // by the receiver's refusal, and sent again for ever.
                if unanswered.is_empty() {
                    self.refused_for_good(b, Refusal::permanent(None, reason))
                        .await;
                    continue;
                }
                (next, room) = (None, false);
            }
            let sent = match next {
                Some(Next::Sealed(b)) => {
                    let out = (&mut conn, delivered.as_ref());
                    match self.send(out, instance, &b, shutdown).await? {
                        Err(lost) => return Some(lost),
                        Ok(measured) => hearing.hold(b.seq, measured),
                    }
                    Some(Some((b, false)))
                }
                Some(Next::Growing(g)) => {
                    match self
                        .send_growing(&mut conn, instance, g, last, shutdown)
                        .await?
                    {
                        Err(lost) => return Some(lost),
                        Ok(b) => Some(b.map(|b| (b, true))),
                    }
                }
                None => None,
            };
            if let Some(b) = sent {
                if let Some((b, streamed)) = b {
                    unanswered.push_back((b, Instant::now(), streamed));
                }
                // Nothing was read while it went out (a large bundle on a
                // slow link takes minutes): the oldest's wait starts again.
                since = Instant::now();
                continue;
            }
            let Some((oldest, ..)) = unanswered.front() else {
                continue;
            };
            let room_after = last
                .filter(|_| room)
                .map(|l| (&*self.outbox, self.index, l));
            let awaited = tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = await_answer((&mut conn, &mut hearing), oldest, since, room_after, self.peer_timeout) => r,
            };
            let answer = match awaited {
                Ok(Awaited::Room) => continue,
                Ok(Awaited::Answer(a)) => Ok(a),
                Err(e) => Err(e),
            };
            let (b, started, streamed) = unanswered.pop_front().expect("an oldest bundle");
            since = Instant::now();
            // Answered (acknowledged or refused): a receiver that told
            // nothing of it has spoken now. A connection lost before any
            // answer says nothing, and this end's measure goes with it.
            if answer.is_ok() {
                hearing.heard(b.seq);
            }
            if let Some(e) = self.on_answer((&b, streamed), started, answer).await {
                let error = format!("sequence {}: {e}", b.seq);
                return Some(Lost {
                    error,
                    in_flight: true,
                });
            }
        }
    }

    /// Send bundle `b` (see [`send_bundle`]), and measure the link by it
    /// (counted once the receiver speaks of it: [`Unheard`]). `None` on
    /// shutdown; the inner error when the session cannot go on.
    async fn send(
        &self,
        (conn, delivered): (&mut Connection<Stream>, Option<&Delivered>),
        instance: [u8; 16],
        b: &Packed,
        shutdown: &CancellationToken,
    ) -> Option<Result<SentMeasure, Lost>> {
        self.mark_sent(instance, b.seq).await;
        let started = Instant::now();
        let acked_before = delivered.and_then(Delivered::acked);
        let sent = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = send_bundle(conn, b) => r,
        };
        let measured = |()| {
            let took = started.elapsed();
            match (acked_before, delivered.and_then(Delivered::acked)) {
                (Some(a), Some(z)) => (Measure::Acked, (z - a, took)),
                _ => (Measure::Sent, (b.size, took)),
            }
        };
        Some(sent.map(measured).map_err(|e| Lost {
            error: format!("sequence {}: {}", b.seq, describe(e)),
            in_flight: true,
        }))
    }

    /// Bundle `seq` goes (or went) to this receiver: the outbox notes it,
    /// and a bundle numbered at or below what the receiver applied (which
    /// it would acknowledge unapplied) gets it the whole tree instead.
    async fn mark_sent(&self, instance: [u8; 16], seq: u64) {
        if self.outbox.take_stale(self.index) {
            let reason = format!(
                "bundle {seq} was numbered at or below what it already applied (sender state restored from an older copy?)"
            );
            self.record_needs(instance, Some(TreeNeed::new(reason, false)), None)
                .await;
        }
        self.outbox.mark_sent(self.index, seq);
    }

    /// The `max_bundle_size` this receiver's last `Welcome` gave, once one
    /// came.
    fn accepted_bundle_size(&self) -> Option<u64> {
        let accepts = self.accepts.lock().unwrap_or_else(|e| e.into_inner());
        Some(accepts.get(self.index).copied().flatten()?.max_bundle_size)
    }

    /// Why the receiver will not take bundle `b`, by the limits its
    /// `Welcome` gave (a bundle packed before they were known): the reason
    /// it would give itself.
    fn over_limit(&self, b: &Packed) -> Option<String> {
        let max = self.accepted_bundle_size()?;
        (b.size > max).then(|| {
            format!(
                "bundle of {} bytes exceeds receiver.max_bundle_size ({max} bytes)",
                b.size
            )
        })
    }

    /// Whether bundles go to this receiver as they are packed
    /// ([`link_rate::streams`]: under `compress = "auto"` once its link was
    /// measured, here or remembered, fast enough to store what it sends;
    /// a slow link gains little from it, as the next bundle packs while
    /// the one before crosses anyway), and then packed within what size:
    /// the `max_bundle_size` its `Welcome` gave (one packed for larger
    /// would be cut off by it).
    fn streams(&self) -> Option<u64> {
        let stores = self.link_rates.stores(self.index);
        link_rate::streams(self.compress, stores)
            .then(|| self.accepted_bundle_size().unwrap_or(u64::MAX))
    }

    /// Send the bundle `g` is packing as it grows (see [`send_growing`]),
    /// behind `last`, the newest bundle unanswered (`None`: none is). The
    /// bundle once sealed and sent, or `None` if it goes the usual way;
    /// `None` outside on shutdown; the inner error when the session cannot
    /// go on. The sender measures nothing of such a bundle: its bytes go
    /// as the packer gives them, and neither the time they took nor the
    /// kernel's busy time (tried: 137 MB/s on loopback, which turned
    /// deflate on) is the link's; the receiver's measure, which leaves out
    /// the waits for the packer, stands.
    async fn send_growing(
        &self,
        conn: &mut Connection<Stream>,
        instance: [u8; 16],
        g: Arc<Growing>,
        last: Option<u64>,
        shutdown: &CancellationToken,
    ) -> Option<Result<Option<Arc<Packed>>, Lost>> {
        let (outbox, index) = (&*self.outbox, self.index);
        // Sealed, it must be the next bundle this receiver is to get.
        let next_is = |seq: u64| {
            let next = outbox.next_after(index, last.unwrap_or(0));
            next.is_some_and(|b| b.seq == seq)
        };
        let grown = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = send_growing(conn, g, next_is, self.peer_timeout) => r,
        };
        let lost = |error: String| {
            Some(Err(Lost {
                error,
                in_flight: true,
            }))
        };
        let seq = match grown {
            Ok(Grown::Sent { seq }) => seq,
            Ok(Grown::Abandoned) => return Some(Ok(None)),
            Err(e) => return lost(format!("the bundle being packed: {}", describe(e))),
        };
        let Some(b) = outbox.get(seq) else {
            return lost(format!(
                "sequence {seq}: sent as it was packed, then not in the outbox"
            ));
        };
        self.mark_sent(instance, seq).await;
        Some(Ok(Some(b)))
    }

    /// Fold a measure of this receiver's link into its rate, and say so
    /// when it is news.
    fn measured(&self, how: Measure, (bytes, took): (u64, Duration)) {
        // max_rate holds receivers' connections, not the bucket's uploads.
        let cap = self.max_rate.filter(|_| self.bucket.is_none());
        let measured = self
            .link_rates
            .record(self.index, how, (bytes, took), (unix_now(), cap));
        self.tell_measured(measured);
    }

    /// Log a measure of the link that is news (its first in this process,
    /// or one that turns the choice to deflate around), and remember the
    /// links' rates across restarts when it is to be kept, off the runtime.
    fn tell_measured(&self, measured: Option<Measured>) {
        let Some(m) = measured else { return };
        if m.news {
            info!(
                peer = %self.receiver,
                mb_per_s = (m.rate / 1e6).round(),
                deflate_pays = !m.stores,
                "link measured (mb_per_s: the slower of the sender's and the receiver's measures, each the best of its last 3 within 5 minutes; deflate_pays says this link's: under compress = \"auto\" it stops paying at {} MB/s and pays again below {} MB/s, and every receiver's bundles are deflated while it pays on any link)",
                STORE_FROM / 1e6,
                DEFLATE_BELOW / 1e6
            );
        }
        if m.keep {
            let rates = self.link_rates.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(error) = rates.keep() {
                    warn!(%error, "could not remember the link rates: a restart measures the links anew");
                }
            });
        }
    }

    /// Act on the receiver's answer to bundle `b`, sent at `started`;
    /// `Some(why)` when the session cannot go on (the bundle stays in the
    /// outbox, to be sent again).
    async fn on_answer(
        &self,
        (b, streamed): (&Packed, bool),
        started: Instant,
        answer: Result<Answer, ConnError>,
    ) -> Option<String> {
        match answer {
            Ok(Ok(hook)) => {
                // The hook's outcome first: status never shows the ack
                // without what became of the hook it waited for.
                self.hook_outcome(b.seq, hook);
                self.shipped((b, streamed), started).await;
                None
            }
            Ok(Err(refusal)) if refusal.kind != RefusalKind::Retry => {
                self.refused_for_good(b, refusal).await;
                None
            }
            Ok(Err(refusal)) => Some(format!("refused for now: {}", refusal.reason)),
            Err(e) => Some(describe(e)),
        }
    }

    /// Bundle `b` was acknowledged (`streamed`: sent while it was
    /// packed): log, count, and release it if every receiver has it now.
    async fn shipped(&self, (b, streamed): (&Packed, bool), started: Instant) {
        info!(
            peer = %self.receiver,
            seq = b.seq,
            files = b.summary.files,
            deletions = b.summary.deletions,
            bytes = b.summary.bytes,
            ms = started.elapsed().as_millis() as u64,
            streamed,
            "bundle shipped"
        );
        self.status.send_modify(|s| {
            s.last_ack_seq = Some(b.seq);
            s.last_ack_at = Some(unix_now());
            s.bundles_shipped += 1;
            s.bundles_streamed += u64::from(streamed);
            s.bytes_shipped += b.size;
        });
        self.acknowledged(b.seq, b.seq).await;
    }

    /// The receiver applied this process's bundles up to `applied` (an
    /// acknowledgement, or a `Welcome` confirming one lost), and the
    /// outbox is done with it up to `done`: a whole tree it ends is done
    /// (`AckedBy`), and bundles every receiver is done with leave.
    async fn acknowledged(&self, applied: u64, done: u64) {
        let (index, seq) = (self.index, applied);
        let _ = self.events.send(TransportEvent::AckedBy { index, seq });
        release(
            self.outbox.ack(self.index, done),
            &self.events,
            &self.ledger,
        )
        .await;
    }

    /// What became of the receiver's `on_apply` hook for bundle `seq`: a
    /// failure is logged and shown in status until a later run succeeds.
    /// Shipping goes on either way.
    fn hook_outcome(&self, seq: u64, hook: HookOutcome) {
        match hook {
            HookOutcome::NotRun => {}
            HookOutcome::Ran => self.status.send_modify(|s| {
                s.hook_failure = None;
                s.hook_failure_at = None;
            }),
            HookOutcome::Failed(why) => {
                warn!(peer = %self.receiver, seq, error = %why, "the receiver's on_apply hook failed; the bundle is applied");
                self.status.send_modify(|s| {
                    s.hook_failure = Some(format!("sequence {seq}: {why}"));
                    s.hook_failure_at = Some(unix_now());
                });
            }
        }
    }

    /// Bundle `b` was refused for good. Sending it again cannot help: its
    /// files are packed again, without the one at fault (or, when the
    /// receiver lacks files it kept, with every file's content), instead.
    async fn refused_for_good(&self, b: &Packed, refusal: Refusal) {
        let path = refusal.path.as_deref().unwrap_or("");
        if refusal.kind == RefusalKind::NeedsContent {
            warn!(peer = %self.receiver, seq = b.seq, path, reason = %refusal.reason, "the receiver does not hold files this bundle kept; its files are packed again with their content");
        } else {
            tracing::error!(peer = %self.receiver, seq = b.seq, path, reason = %refusal.reason, "the receiver refused this bundle for good; its files are packed again without the path at fault");
        }
        self.status.send_modify(|s| {
            s.last_error = Some(format!("sequence {} refused: {}", b.seq, refusal.reason));
            s.last_error_at = Some(unix_now());
        });
        let _ = self.events.send(TransportEvent::Refused {
            index: self.index,
            refusal,
            changes: b.changes.clone(),
            sources: b.sources.clone(),
        });
        release(
            self.outbox.refuse(self.index, b.seq),
            &self.events,
            &self.ledger,
        )
        .await;
    }

    /// No session could be opened: logged when it starts failing (not at
    /// every retry), shown in status.
    fn unreachable(&self, down_reported: &mut Option<String>, error: String) {
        if down_reported.is_none() {
            warn!(peer = %self.receiver, error = %error, "receiver unreachable; retrying with backoff until it answers");
        }
        *down_reported = Some(error.clone());
        self.report_down(error);
    }

    /// A session ended: its bundles wait for the next one; each new reason
    /// is logged once, and shown in status.
    fn lost(&self, down_reported: &mut Option<String>, lost: Lost) {
        self.outbox.set_presence(self.index, Presence::Away);
        let error = lost.error;
        if down_reported.as_deref() != Some(&error) {
            if lost.in_flight {
                warn!(peer = %self.receiver, %error, "bundle not acknowledged; will reconnect and re-send");
            } else {
                warn!(peer = %self.receiver, %error, "connection lost; reconnecting");
            }
        }
        *down_reported = Some(error.clone());
        self.report_down(error);
    }

    /// Status: not connected, since now if it was connected until now (or
    /// nothing was known yet), and why.
    fn report_down(&self, error: String) {
        self.status.send_modify(|s| {
            if s.connected || s.since.is_none() {
                s.since = Some(unix_now());
            }
            s.connected = false;
            s.last_error = Some(error);
            s.last_error_at = Some(unix_now());
        });
    }
}

/// A measure this end took of a bundle it sent: how, and the bytes and
/// the time they took.
type SentMeasure = (Measure, (u64, Duration));

/// One session's ear for what the receiver says of the bundles sent: its
/// measures of them, and this end's, held until it speaks of each.
struct Hearing<'a> {
    link: &'a Link,
    unheard: Unheard<SentMeasure>,
}

impl Hearing<'_> {
    fn hold(&mut self, seq: u64, measured: SentMeasure) {
        self.unheard.hold(seq, measured);
    }

    /// The receiver spoke of bundle `seq`: this end's measures of it and
    /// of those before it count now.
    fn heard(&mut self, seq: u64) {
        for (how, measured) in self.unheard.heard(seq) {
            self.link.measured(how, measured);
        }
    }
}

impl Told for Hearing<'_> {
    fn received(&mut self, seq: u64, bytes: u64, took: Duration) {
        // 0 bytes (no read waited: the body came faster than it could be
        // timed) measure nothing; this end's measure then says how fast.
        self.link.measured(Measure::Received, (bytes, took));
        self.heard(seq);
    }

    fn streams(&self) -> Option<u64> {
        self.link.streams()
    }
}
