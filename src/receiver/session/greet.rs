//! The start of a connection: the TLS handshake, the first frame (who
//! the sender is, which protocol it speaks, what the connection is for),
//! and the `Welcome` that tells a sender where it stands: the last
//! sequence applied from it, this receiver's instance and limits, and, to a
//! sender that can hear it, a rollback that holds it or that it is to
//! compare after.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tracing::warn;

use super::Sessions;
use crate::bundle::manifest::valid_sender_id;
use crate::proto::connection::{Stream, set_liveness};
use crate::proto::frame::{
    Accepts, PROTOCOL_VERSION, Rolled, SENDERS_SPOKEN, TOLD_ROLLED_BACK_FROM,
};
use crate::proto::refusal::Refusal;
use crate::proto::{Connection, Frame, SESSION_IDLE};
use crate::receiver::identity::Sender;
use crate::tls::Fingerprint;

/// What a connection is for, as its first frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// `Hello`: a session carrying bundles.
    Bundles,
    /// `Inquire`: root's listing (`shipper verify`, or a compare after a
    /// rollback).
    Listing,
    /// `Compared`: the sender compared its source with root after a
    /// rollback.
    Compared,
}

impl Sessions {
    /// Learn who is at the other end by `deadline`: the certificate it
    /// presents (with keys), the id and protocol version of its `Hello`,
    /// and what the connection is for (a `Hello`, an `Inquire`, a
    /// `Compared`). A version or id this receiver cannot take is refused in
    /// a frame.
    pub(super) async fn identify(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<(Connection<Stream>, Sender, (u16, Purpose))> {
        let _ = stream.set_nodelay(true);
        if let Err(e) = set_liveness(&stream, SESSION_IDLE) {
            warn!(%peer, error = %e, "cannot set TCP keepalive; relying on the idle limit alone");
        }
        let (stream, fingerprint) = self.handshake(stream, peer, deadline).await?;
        let mut conn = Connection::new(stream).with_peer_timeout(SESSION_IDLE);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let first = conn.expect_frame_within(left).await?;
        let purpose = match first {
            Frame::Inquire { .. } => Purpose::Listing,
            Frame::Compared { .. } => Purpose::Compared,
            _ => Purpose::Bundles,
        };
        let (sender, version) = match first {
            Frame::Hello { version, sender }
            | Frame::Inquire { version, sender }
            | Frame::Compared { version, sender }
                if SENDERS_SPOKEN.contains(&version) && valid_sender_id(&sender) =>
            {
                (Sender::new(sender, fingerprint), version)
            }
            Frame::Hello { version, sender }
            | Frame::Inquire { version, sender }
            | Frame::Compared { version, sender } => {
                let reason = if !SENDERS_SPOKEN.contains(&version) {
                    format!(
                        "protocol version {version} not supported (this receiver speaks {} to {PROTOCOL_VERSION})",
                        SENDERS_SPOKEN.start()
                    )
                } else {
                    format!("sender id {sender:?} is not valid")
                };
                conn.write_frame(&Frame::refuse(0, Refusal::permanent(None, reason.clone())))
                    .await?;
                anyhow::bail!("refused {peer}: {reason}");
            }
            other => anyhow::bail!("{peer} did not start with hello: {other:?}"),
        };
        Ok((conn, sender, (version, purpose)))
    }

    /// The TLS handshake, with keys; the fingerprint of the allowed
    /// certificate the peer presented is who it is. An unknown or wrong
    /// peer is turned away here, before any frame.
    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<(Stream, Option<Fingerprint>)> {
        let Some(acceptor) = &self.tls else {
            return Ok((Box::new(stream), None));
        };
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
                    anyhow::bail!("{peer} presented no certificate");
                };
                let fp = Fingerprint::of(cert);
                Ok((Box::new(tls), Some(fp)))
            }
            Ok(Err(e)) => anyhow::bail!("TLS handshake refused: {e}"),
            Err(_) => anyhow::bail!("TLS handshake timed out"),
        }
    }

    /// Tell `sender` the last sequence applied from it, this receiver's
    /// instance and what it accepts, and, if it speaks a protocol that
    /// can hear it, that root was rolled back; returns that last sequence.
    pub(super) async fn welcome(
        &self,
        conn: &mut Connection<Stream>,
        sender: &Sender,
        speaks: u16,
    ) -> anyhow::Result<u64> {
        let (last, instance, rolled_back) = {
            let state = self.state.lock().await;
            let last = state.applied.get(&sender.key).copied().unwrap_or(0);
            let held = state.held.get(&sender.key).map(|h| Rolled {
                to: h.to,
                held: true,
            });
            let released = state
                .rolled_back
                .get(&sender.key)
                .map(|&to| Rolled { to, held: false });
            (last, state.instance(), held.or(released))
        };
        let told = speaks >= TOLD_ROLLED_BACK_FROM;
        if let Some(r) = rolled_back.filter(|r| !told && !r.held) {
            warn!(%sender, speaks, to = r.to, "root was rolled back, and this sender's protocol cannot be told: run `shipper verify --repair` on it once it is upgraded");
        }
        conn.write_frame(&Frame::Welcome {
            last_applied: last,
            instance,
            accepts: Accepts {
                max_entries: self.cfg.limits.max_entries as u64,
                max_bundle_size: self.cfg.max_bundle_size,
                max_file_size: self.cfg.limits.max_file_size,
                max_unpacked: self.cfg.limits.max_unpacked,
            },
            rolled_back: rolled_back.filter(|_| told),
        })
        .await?;
        Ok(last)
    }
}
