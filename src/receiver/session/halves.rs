//! The two halves of a session once its sender is known: one reads the
//! next bundle into `incoming` and checks its trailer while the other
//! applies the one before and answers it, strictly in the order they came.
//! A sender's pipelined bundles so overlap on the wire and on disk; after a
//! refusal to retry the session ends, so no bundle behind the refused one
//! is applied before it. Every bundle file taken in is removed once
//! answered, or when the session ends without applying it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Sessions;
use crate::metrics::RefusedFor;
use crate::proto::connection::{FrameReader, FrameWriter, Stream};
use crate::proto::frame::{STREAMED_FROM, TOLD_RECEIVED_FROM};
use crate::proto::refusal::{Refusal, RefusalKind};
use crate::proto::{APPLY_PING, Connection, Frame};
use crate::receiver::identity::Sender;
use crate::receiver::names::incoming_name;

/// What the reading half of a session hands the answering half, in the
/// order it came.
enum Arrival {
    /// The sender pinged between bundles.
    Ping,
    /// A bundle taken in whole.
    Bundle(Received),
    /// Bundle `seq` announced at `size` bytes, over what this receiver
    /// takes: refused unread, and the session ends.
    TooLarge { seq: u64, size: u64 },
}

/// A bundle the reading half took in: `seq` of `size` bytes, received
/// into `file` from `started`, whether it passed its trailer check, and
/// the link's rate to tell the sender, if it asks for it ([`to_tell`]).
struct Received {
    seq: u64,
    size: u64,
    file: Taken,
    checked: Result<(), Refusal>,
    started: Instant,
    told: Option<(u64, Duration)>,
}

/// What a sender that `speaks` a protocol is told of a body `timed` as it
/// came: nothing before [`TOLD_RECEIVED_FROM`]; else the bytes past the
/// first read that waited and the time they took, or 0 bytes when no read
/// waited (the sender counts its own measure of the bundle once this end
/// spoke of it).
fn to_tell(speaks: u16, timed: Option<(u64, Duration)>) -> Option<(u64, Duration)> {
    (speaks >= TOLD_RECEIVED_FROM).then(|| timed.unwrap_or_default())
}

/// A bundle file in `incoming` that this session took in. Removed when
/// dropped, whichever way the session ends (answered, refused, replaced by
/// a newer session, shut down) or a receive fails part-way; once applied,
/// the file was moved on and there is nothing left to remove.
pub(super) struct Taken(pub(super) PathBuf);

impl Taken {
    /// Remove the file now rather than when dropped (a removal left to a
    /// blocking thread could come after a new file took its name).
    pub(super) async fn remove_now(&mut self) {
        let path = std::mem::take(&mut self.0);
        let _ = tokio::fs::remove_file(&path).await;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.0);
        if path.as_os_str().is_empty() {
            return;
        }
        let remove = move || {
            let _ = std::fs::remove_file(&path);
        };
        // Unlinking a large file can take a while: not on a runtime thread.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

impl Sessions {
    /// Take in and answer `sender`'s bundles until it disconnects, in
    /// session number `session`. Two halves run at once: one reads the next
    /// bundle into `incoming` (and checks its trailer) while the other
    /// applies the one before and answers it, so a sender's pipelined
    /// bundles overlap on the wire and on disk. They are applied and
    /// answered strictly in the order they came; after a refusal to retry,
    /// the session ends, so no later bundle is applied before it.
    pub(super) async fn serve_bundles(
        &self,
        conn: &mut Connection<Stream>,
        sender: &Sender,
        peer: SocketAddr,
        (session, speaks): (u64, u16),
    ) -> anyhow::Result<()> {
        let (reader, writer) = conn.halves();
        // One bundle waits while another is applied; a third may arrive.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let ended = CancellationToken::new();
        let read = async {
            let r = self
                .read_arrivals(reader, tx, (sender, peer), (session, speaks), &ended)
                .await;
            // The other half ending first (a refusal, a dead connection)
            // makes whatever the reading half ran into moot.
            if ended.is_cancelled() { Ok(()) } else { r }
        };
        let answer = async {
            let r = self.answer_arrivals(writer, &mut rx, sender, peer).await;
            // A reading half waiting to hand on a bundle gets it back (and
            // drops it, file and all) instead of waiting for good.
            rx.close();
            ended.cancel();
            r
        };
        let (read, answer) = tokio::join!(read, answer);
        // Bundles taken in but never applied are dropped with their files.
        while rx.try_recv().is_ok() {}
        answer.and(read)
    }

    /// The reading half: each frame `sender` sends, a bundle received and
    /// checked against its trailer, handed on in order through `tx` until
    /// the stream ends or `ended` says the answering half stopped. A sender
    /// that `speaks` protocol [`TOLD_RECEIVED_FROM`] or later is told how
    /// fast each bundle came.
    async fn read_arrivals(
        &self,
        reader: &mut FrameReader<Stream>,
        tx: tokio::sync::mpsc::Sender<Arrival>,
        (sender, peer): (&Sender, SocketAddr),
        (session, speaks): (u64, u16),
        ended: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let frame = tokio::select! {
                _ = ended.cancelled() => return Ok(()),
                f = reader.read_frame() => f?,
            };
            let arrival = match frame {
                None => return Ok(()),
                // Never queued behind a bundle: while the answering half is
                // busy it pings the sender anyway, and a reading half held
                // up by pings would stop taking in the next bundle.
                Some(Frame::Ping) => match tx.try_send(Arrival::Ping) {
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                    _ => continue,
                },
                Some(Frame::Bundle { seq, size }) if size > self.cfg.max_bundle_size => {
                    // Its body is not read: the stream is out of step, and
                    // the session ends once this is answered.
                    let _ = tx.send(Arrival::TooLarge { seq, size }).await;
                    return Ok(());
                }
                Some(Frame::Bundle { seq, size }) => {
                    let started = Instant::now();
                    // Named for this session too: a session whose sender
                    // vanished mid-bundle may still hold its file when the
                    // re-send arrives.
                    let file = Taken(self.incoming.join(incoming_name(&sender.key, seq, session)));
                    let (checked, timed) = self.receive(reader, sender, seq, size, &file.0).await?;
                    Arrival::Bundle(Received {
                        seq,
                        size,
                        file,
                        checked,
                        started,
                        told: to_tell(speaks, timed),
                    })
                }
                Some(Frame::Begin) if speaks >= STREAMED_FROM => {
                    let started = Instant::now();
                    // Its sequence comes at its end: taken in under 0,
                    // which no bundle has, and named for it once sealed.
                    let mut file =
                        Taken(self.incoming.join(incoming_name(&sender.key, 0, session)));
                    let streamed = self
                        .receive_streamed(reader, (sender, session), &mut file)
                        .await
                        .with_context(|| format!("{peer}: sender {sender}"))?;
                    // Abandoned: its file goes, and the session goes on.
                    let Some(s) = streamed else { continue };
                    Arrival::Bundle(Received {
                        seq: s.seq,
                        size: s.size,
                        file,
                        checked: s.checked,
                        started,
                        told: to_tell(speaks, s.timed),
                    })
                }
                Some(other) => anyhow::bail!("{peer}: expected a bundle, got {other:?}"),
            };
            if tx.send(arrival).await.is_err() {
                return Ok(());
            }
        }
    }

    /// The answering half: apply each bundle the reading half took in, in
    /// order, and answer it (`Ping`s are answered in turn). Ends the session
    /// after a refusal that asks for the bundle again: the bundles behind it
    /// on the wire must not be applied before it.
    async fn answer_arrivals(
        &self,
        writer: &mut FrameWriter<Stream>,
        arrivals: &mut tokio::sync::mpsc::Receiver<Arrival>,
        sender: &Sender,
        peer: SocketAddr,
    ) -> anyhow::Result<()> {
        while let Some(arrival) = arrivals.recv().await {
            match arrival {
                Arrival::Ping => writer.write_frame(&Frame::Ping).await?,
                Arrival::TooLarge { seq, size } => {
                    let reason = format!(
                        "bundle of {size} bytes exceeds receiver.max_bundle_size ({} bytes)",
                        self.cfg.max_bundle_size
                    );
                    let refusal = Refusal::permanent(None, reason.clone());
                    self.metrics
                        .refused(&sender.id, &refusal, RefusedFor::Limit);
                    writer.write_frame(&Frame::refuse(seq, refusal)).await?;
                    anyhow::bail!("{peer}: {reason}");
                }
                Arrival::Bundle(r) => {
                    if !self.take_bundle(writer, sender, peer, r).await? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply the bundle the reading half took in as `r`, if it passed its
    /// trailer check, run the hook, and answer `Ack` or a refusal, once its
    /// incoming copy is gone (a refused bundle leaves nothing behind when
    /// the sender hears of it). `Ok(false)`: refused for now, so the
    /// session ends. An error ends the session too.
    async fn take_bundle(
        &self,
        writer: &mut FrameWriter<Stream>,
        sender: &Sender,
        peer: SocketAddr,
        r: Received,
    ) -> anyhow::Result<bool> {
        let seq = r.seq;
        if let Some((bytes, took)) = r.told.filter(|_| r.checked.is_ok()) {
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            let told = Frame::Received { seq, bytes, micros };
            writer.write_frame(&told).await?;
        }
        let (answer, alive) = match &r.checked {
            Ok(()) => {
                // Applying and the hook can take long: ping meanwhile, so
                // the sender can tell a busy receiver from a dead connection.
                let apply = self.apply_then_hook(sender, seq, r.size, &r.file.0, r.started);
                writer.ping_while(APPLY_PING, apply).await
            }
            Err(reason) => (Ok(Err(reason.clone())), Ok(())),
        };
        alive?;
        drop(r);
        match answer? {
            Ok(hook) => writer.write_frame(&Frame::Ack { seq, hook }).await?,
            Err(refusal) => {
                // Only a refusal to retry ends the session: the sender
                // packs the others' files again, in later bundles.
                let goes_on = refusal.kind != RefusalKind::Retry;
                let kind = format!("{:?}", refusal.kind);
                warn!(%peer, %sender, seq, reason = %refusal, path = refusal.path.as_deref().unwrap_or(""), kind, "bundle refused");
                writer.write_frame(&Frame::refuse(seq, refusal)).await?;
                return Ok(goes_on);
            }
        }
        Ok(true)
    }
}
