//! Opening a session with one receiver: resolve its name (off the runtime),
//! TCP, TLS with the pinned receiver (plaintext only to loopback), `Hello`,
//! and its `Welcome`, every step bounded by [`CONNECT_TIMEOUT`]; or, for
//! `shipper verify`, the same connection opened with `Inquire` instead. What the
//! Welcome means for the receiver is decided by the caller.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::warn;

use crate::bundle::manifest::next_seq;
use crate::proto::connection::{Stream, set_liveness};
use crate::proto::frame::{Accepts, PROTOCOL_VERSION, Rolled};
use crate::proto::{Connection, Frame};
use crate::sender::link_rate::Delivered;

/// How long a TCP connect, a TLS handshake and the answer to `Hello` may
/// each take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection the receiver welcomed, with what its `Welcome` said.
pub(super) struct Session {
    pub(super) conn: Connection<Stream>,
    pub(super) welcome: Welcome,
    /// What the receiver's TCP acknowledged, where the kernel tells.
    pub(super) delivered: Option<Delivered>,
}

/// What a receiver's `Welcome` said.
#[derive(Debug, Clone, Copy)]
pub(super) struct Welcome {
    /// The last sequence from this sender it applied; it has a successor.
    pub(super) last_applied: u64,
    /// Its state's instance: a new one means it was rebuilt.
    pub(super) instance: [u8; 16],
    /// The limits it accepts bundles within.
    pub(super) accepts: Accepts,
    /// Root was rolled back to one of this sender's sequences: its
    /// bundles are held, or it is to compare its source with root.
    pub(super) rolled_back: Option<Rolled>,
    /// The base begun for it is not there as it was uploaded (a bucket
    /// emptied or altered while away); never so for a receiver.
    pub(super) base_lost: bool,
}

/// Resolve "host:port" to addresses (blocking DNS: call off the runtime).
fn resolve(value: &str) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    Ok(value.to_socket_addrs()?.collect())
}

/// Connect to `receiver` as sender `id` and wait for its `Welcome`. Each
/// address is tried in turn until one answers TCP; what happens on that one
/// decides. The connection writes at most `max_rate` bytes per second, with
/// a bucket of its own. The error names the address or says what failed.
pub(super) async fn connect(
    receiver: &str,
    id: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer_timeout: Duration,
    max_rate: Option<u64>,
) -> Result<Session, String> {
    let (mut conn, addr, delivered) = reach(receiver, tls, peer_timeout).await?;
    if let Some(rate) = max_rate {
        conn = conn.with_max_rate(rate);
    }
    let session = hello(conn, id, addr, tls.is_some()).await?;
    Ok(Session {
        delivered,
        ..session
    })
}

/// Connect to `receiver` as sender `id` and ask for its root's listing
/// (`Inquire`): a connection of its own, so the session carrying bundles
/// is not replaced. The caller reads the listing.
pub(in crate::sender) async fn inquire(
    receiver: &str,
    id: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer_timeout: Duration,
) -> Result<Connection<Stream>, String> {
    let inquire = Frame::Inquire {
        version: PROTOCOL_VERSION,
        sender: id.to_owned(),
    };
    opened_with(receiver, tls, peer_timeout, &inquire).await
}

/// Tell `receiver` that this sender compared its source with root after
/// the receiver's rollback and shipped the difference: it forgets the
/// rollback, answering `Ack` of the sequence it was rolled back to.
pub(in crate::sender) async fn tell_compared(
    receiver: &str,
    id: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer_timeout: Duration,
) -> Result<u64, String> {
    let compared = Frame::Compared {
        version: PROTOCOL_VERSION,
        sender: id.to_owned(),
    };
    let mut conn = opened_with(receiver, tls, peer_timeout, &compared).await?;
    match conn.expect_frame_within(peer_timeout).await {
        Ok(Frame::Ack { seq, .. }) => Ok(seq),
        Ok(Frame::Refuse { reason, .. }) => Err(reason),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// A connection to `receiver` of its own (no session), opened by `first`.
async fn opened_with(
    receiver: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer_timeout: Duration,
    first: &Frame,
) -> Result<Connection<Stream>, String> {
    let (mut conn, _, _) = reach(receiver, tls, peer_timeout).await?;
    conn.write_frame(first).await.map_err(|e| e.to_string())?;
    Ok(conn)
}

/// TCP and TLS to `receiver`: each address in turn until one answers TCP.
async fn reach(
    receiver: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer_timeout: Duration,
) -> Result<(Connection<Stream>, SocketAddr, Option<Delivered>), String> {
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
                let delivered = Delivered::of(stream.as_fd());
                let stream = secure(stream, addr, tls).await?;
                let conn = Connection::new(stream).with_peer_timeout(peer_timeout);
                return Ok((conn, addr, delivered));
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no connection within {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(last)
}

/// TLS over `stream` with the pinned receiver; without keys, the stream as
/// it is, and only to loopback.
async fn secure(
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Stream, String> {
    match tls {
        Some(cfg) => {
            let connector = tokio_rustls::TlsConnector::from(cfg.clone());
            let tls = tokio::time::timeout(
                CONNECT_TIMEOUT,
                connector.connect(crate::tls::server_name(), stream),
            )
            .await
            .map_err(|_| format!("TLS handshake with {addr} timed out"))?
            .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
            Ok(Box::new(tls))
        }
        // Plaintext only ever goes to loopback, whatever a name resolves to.
        None if !addr.ip().is_loopback() => Err(format!(
            "{addr} is not a loopback address: refusing to send without TLS keys"
        )),
        None => Ok(Box::new(stream)),
    }
}

/// Say `Hello` as sender `id` and wait for the receiver at `addr` to say
/// `Welcome`.
async fn hello(
    mut conn: Connection<Stream>,
    id: &str,
    addr: SocketAddr,
    with_tls: bool,
) -> Result<Session, String> {
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        sender: id.to_owned(),
    };
    conn.write_frame(&hello).await.map_err(|e| e.to_string())?;
    match conn.expect_frame_within(CONNECT_TIMEOUT).await {
        Ok(Frame::Welcome {
            last_applied,
            instance,
            accepts,
            rolled_back,
        }) => match next_seq(last_applied) {
            Ok(_) => Ok(Session {
                delivered: None,
                conn,
                welcome: Welcome {
                    last_applied,
                    instance,
                    accepts,
                    rolled_back,
                    base_lost: false,
                },
            }),
            Err(e) => Err(format!(
                "receiver {addr} says it applied sequence {last_applied} from this sender: {e}"
            )),
        },
        Ok(Frame::Refuse { reason, .. }) => Err(format!("refused: {reason}")),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        // With TLS 1.3 a refused client certificate shows as an
        // alert on the first read: say what it most likely means.
        Err(e) if with_tls && e.to_string().contains("alert") => Err(format!(
            "TLS handshake with {addr} refused by the receiver ({e}): is this sender's fingerprint in receiver.allowed_senders?"
        )),
        Err(e) => Err(e.to_string()),
    }
}
