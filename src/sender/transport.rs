//! One receiver's transport: connect (TCP, TLS, Hello/Welcome), decide what
//! the receiver needs from its Welcome, send bundles and wait for their
//! answers with every wait on the peer bounded, release what every receiver
//! acknowledged into the ledger, reconnect with capped backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::outbox::Outbox;
use crate::bundle::manifest::FileMeta;
use crate::bundle::manifest::next_seq;
use crate::bundle::pack::Packed;
use crate::ledger::{AckRecord, Ledger};
use crate::peers::{Known, PeerRecord, Peers, must_skip, plan_welcome};
use crate::proto::connection::ConnError;
use crate::proto::connection::{Stream, set_liveness};
use crate::proto::frame::{Accepts, PROTOCOL_VERSION, Refusal, RefusalKind};
use crate::proto::{Connection, Frame};
use crate::status::{LinkStatus, unix_now};

/// What a transport tells the sender's loop.
pub(super) enum TransportEvent {
    /// A session with the receiver began; its last applied sequence is known.
    Connected,
    Acked {
        seq: u64,
    },
    /// Receiver `index` needs the whole tree, for this reason (already
    /// recorded in `receivers.json`).
    WholeTree {
        index: usize,
        reason: String,
    },
    /// Receiver `index` refused a bundle for good; `changes` were in it.
    Refused {
        index: usize,
        refusal: Refusal,
        changes: Vec<(String, Option<FileMeta>)>,
    },
}

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

/// Resolve "host:port" to addresses (blocking DNS: call off the runtime).
fn resolve(value: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    Ok(value.to_socket_addrs()?.collect())
}

async fn connect(
    receiver: &str,
    id: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer_timeout: Duration,
) -> Result<(Connection<Stream>, u64, [u8; 16], Accepts), String> {
    let target = receiver.to_owned();
    let addrs = tokio::task::spawn_blocking(move || resolve(&target))
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
                    Ok(Frame::Welcome {
                        last_applied,
                        instance,
                        accepts,
                    }) => match next_seq(last_applied) {
                        Ok(_) => Ok((conn, last_applied, instance, accepts)),
                        Err(e) => Err(format!(
                            "receiver {addr} says it applied sequence {last_applied} from this sender: {e}"
                        )),
                    },
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

/// Send one bundle and wait for its answer: `Ok(None)` acknowledged,
/// `Ok(Some(refusal))` refused.
async fn send_bundle(
    conn: &mut Connection<Stream>,
    b: &Packed,
) -> Result<Option<Refusal>, ConnError> {
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
        Frame::Ack { seq } if seq == b.seq => Ok(None),
        Frame::Refuse {
            kind, path, reason, ..
        } => Ok(Some(Refusal { kind, path, reason })),
        other => Err(ConnError::Unexpected(format!("answer {other:?}"))),
    }
}

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
    /// What is known of every receiver across restarts.
    pub(super) peers: Arc<std::sync::Mutex<Peers>>,
    pub(super) state_dir: PathBuf,
    /// Where this receiver's `Welcome` limits go, for the packer.
    pub(super) accepts: Arc<std::sync::Mutex<Vec<Option<Accepts>>>>,
}

/// Record receiver `name`'s instance and whether it needs the whole tree,
/// durably, before anything relies on it. Blocking work off the runtime.
async fn record_peer(
    link_peers: &Arc<std::sync::Mutex<Peers>>,
    state_dir: &Path,
    name: &str,
    instance: [u8; 16],
    whole_tree: bool,
) {
    let (peers, dir, name) = (link_peers.clone(), state_dir.to_owned(), name.to_owned());
    let mark = whole_tree.then_some(true);
    let saved =
        tokio::task::spawn_blocking(move || update_peer(&peers, &dir, &name, Some(instance), mark))
            .await;
    if let Err(e) = saved.map_err(std::io::Error::other).and_then(|r| r) {
        warn!(error = %e, "could not record what is known of the receivers");
    }
}

pub(super) async fn transport(link: Link, shutdown: CancellationToken) {
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
        peers,
        state_dir,
        accepts,
        peer_timeout,
    } = link;
    let mut backoff = Backoff::default();
    let mut down_reported: Option<String> = None;
    loop {
        let (mut conn, last_applied, instance, limits) = tokio::select! {
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
        accepts.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(limits);
        // connect() turned away a last_applied with no successor.
        seq_floor.fetch_max(last_applied.saturating_add(1), Ordering::SeqCst);
        let (sent, acked) = outbox.position(index);
        let known = {
            let p = peers.lock().unwrap_or_else(|e| e.into_inner());
            let rec = p.receivers.get(&receiver);
            Known {
                sent,
                acked,
                everyone: ledger.lock().unwrap_or_else(|e| e.into_inner()).acked_seq(),
                instance: rec.and_then(|r| {
                    data_encoding::HEXLOWER
                        .decode(r.instance.as_bytes())
                        .ok()
                        .and_then(|b| b.try_into().ok())
                }),
                whole_tree_pending: rec.is_some_and(|r| r.whole_tree),
            }
        };
        let plan = plan_welcome(last_applied, instance, known);
        // Any bundle it has numbers for but was never sent is covered by
        // the whole tree, recorded before those bundles can be let go.
        let reused = outbox.take_stale(index)
            || outbox
                .next_for(index)
                .is_some_and(|b| must_skip(b.seq, plan.skip_upto) && b.seq > plan.release_upto);
        let whole_tree = plan.whole_tree.clone().or_else(|| {
            reused.then(|| format!("it has applied up to sequence {last_applied}, numbers this sender used again (its state restored from an older copy?)"))
        });
        record_peer(
            &peers,
            &state_dir,
            &receiver,
            instance,
            whole_tree.is_some(),
        )
        .await;
        if let Some(reason) = whole_tree {
            let _ = events.send(TransportEvent::WholeTree { index, reason });
        }
        // What it applied before a lost acknowledgement counts as
        // acknowledged, and what it has numbers for is never sent to it:
        // both are done with up to what it applied (skip_upto covers
        // release_upto; bundles in between are covered by the whole tree
        // recorded above).
        release(outbox.ack(index, plan.skip_upto), &events, &ledger).await;
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
            if outbox.take_stale(index) {
                // Numbered at or below what it applied: it would be
                // acknowledged unapplied. The whole tree covers it.
                let reason = format!(
                    "bundle {} was numbered at or below what it already applied (sender state restored from an older copy?)",
                    b.seq
                );
                record_peer(&peers, &state_dir, &receiver, instance, true).await;
                let _ = events.send(TransportEvent::WholeTree { index, reason });
            }
            let started = Instant::now();
            outbox.mark_sent(index, b.seq);
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = send_bundle(&mut conn, &b) => r,
            };
            let failure = match result {
                Ok(None) => {
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
                    None
                }
                Ok(Some(refusal)) if refusal.kind == RefusalKind::Permanent => {
                    // Sending it again cannot help: its files are packed
                    // again, without the one at fault, instead.
                    tracing::error!(
                        peer = %receiver,
                        seq = b.seq,
                        path = refusal.path.as_deref().unwrap_or(""),
                        reason = %refusal.reason,
                        "the receiver refused this bundle for good; its files are packed again without the path at fault"
                    );
                    status.send_modify(|s| {
                        s.last_error =
                            Some(format!("sequence {} refused: {}", b.seq, refusal.reason));
                        s.last_error_at = Some(unix_now());
                    });
                    let _ = events.send(TransportEvent::Refused {
                        index,
                        refusal,
                        changes: b.changes.clone(),
                    });
                    release(outbox.refuse(index, b.seq), &events, &ledger).await;
                    None
                }
                Ok(Some(refusal)) => Some(format!("refused for now: {}", refusal.reason)),
                Err(e) => Some(describe(e)),
            };
            if let Some(e) = failure {
                break (format!("sequence {}: {e}", b.seq), true);
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
pub(super) async fn release(
    done: Vec<Packed>,
    events: &mpsc::UnboundedSender<TransportEvent>,
    ledger: &Arc<std::sync::Mutex<Ledger>>,
) {
    if done.is_empty() {
        return;
    }
    let (events, ledger) = (events.clone(), ledger.clone());
    let _ = tokio::task::spawn_blocking(move || release_now(done, &events, &ledger)).await;
}

/// [`release`], on the calling thread (blocking: fsync).
pub(super) fn release_now(
    done: Vec<Packed>,
    events: &mpsc::UnboundedSender<TransportEvent>,
    ledger: &Arc<std::sync::Mutex<Ledger>>,
) {
    for b in done {
        let record = AckRecord {
            seq: b.seq,
            changes: b.changes,
        };
        let written = ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(record);
        if let Err(e) = written {
            // The receivers have it; only a restart would re-ship it needlessly.
            warn!(seq = b.seq, error = %e, "could not record an acknowledged bundle in the ledger");
        }
        let _ = std::fs::remove_file(&b.path);
        let _ = events.send(TransportEvent::Acked { seq: b.seq });
    }
}

/// Record durably what is known of receiver `name`: its state's
/// `instance` and whether it needs the whole tree (`None`: unchanged).
/// Written only when something changed. Blocking.
pub(super) fn update_peer(
    peers: &Arc<std::sync::Mutex<Peers>>,
    state_dir: &Path,
    name: &str,
    instance: Option<[u8; 16]>,
    whole_tree: Option<bool>,
) -> std::io::Result<()> {
    let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
    let rec = p.receivers.entry(name.to_owned()).or_default();
    let wanted = PeerRecord {
        instance: instance
            .map(|i| data_encoding::HEXLOWER.encode(&i))
            .unwrap_or_else(|| rec.instance.clone()),
        whole_tree: whole_tree.unwrap_or(rec.whole_tree),
    };
    if *rec == wanted {
        return Ok(());
    }
    *rec = wanted;
    p.save(state_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

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
