//! What passes over an open session: bundles (up to [`PIPELINE`] of them
//! unanswered) and their answers, each within a limit that grows with the
//! bundle's size, and `Ping`s both ways while the connection is idle or
//! waits for answers, so a receiver that stops answering is noticed within
//! `peer_timeout` (see [`crate::proto`]'s liveness rules).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::follow::{Piece, follow};
use crate::bundle::growing::Growing;
use crate::bundle::pack::Packed;
use crate::proto::connection::{ConnError, Stream};
use crate::proto::hook_outcome::HookOutcome;
use crate::proto::refusal::Refusal;
use crate::proto::{Connection, Frame};
use crate::sender::outbox::Outbox;

/// The least time a receiver that keeps pinging gets to acknowledge any
/// bundle once it is sent (waiting for another sender's bundle to apply,
/// fsyncs on a busy disk).
const ACK_BASE: Duration = Duration::from_secs(120);
/// Bytes per second a receiver is assumed to verify and apply at least:
/// far below any disk, so only a receiver that is stuck, not slow, hits
/// the limit.
const APPLY_FLOOR_RATE: u64 = 1 << 20;
/// How many `Ping`s an idle connection gets per `peer_timeout`: more than
/// one, so a single late ping does not let the receiver's limit run out.
const PINGS_PER_TIMEOUT: u32 = 3;
/// How often an idle transport looks at the outbox even without a wake-up
/// (belt and braces against a missed one).
pub(super) const OUTBOX_RECHECK: Duration = Duration::from_secs(1);

/// How long a receiver that keeps pinging may take to acknowledge a bundle
/// of `size` bytes once it is sent. A bound proportional to the size never
/// cuts off a big bundle that is merely slow to apply (cutting it would
/// re-send it forever), yet a receiver that pings and never answers is
/// still dropped and shows in status.
fn ack_limit(size: u64) -> Duration {
    ACK_BASE.saturating_add(Duration::from_secs(size / APPLY_FLOOR_RATE))
}

/// Bundles sent to a receiver before the oldest of them is answered: the
/// next one crosses the wire while the receiver applies the one before.
pub(super) const PIPELINE: usize = 2;

/// A receiver's answer to a bundle: `Ok(hook)` acknowledged, with what
/// became of its hook; `Err(refusal)` refused.
pub(super) type Answer = Result<HookOutcome, Refusal>;

/// Send bundle `b`: its header, its body and its trailer, whose hash is of
/// the bytes that went out. Its answer comes later ([`await_answer`]). A
/// sealed bundle goes with its size up front, so a receiver whose limit it
/// passes refuses it for good unread (a stream could only be cut off).
pub(super) async fn send_bundle(
    conn: &mut Connection<Stream>,
    b: &Packed,
) -> Result<(), ConnError> {
    conn.write_frame(&Frame::Bundle {
        seq: b.seq,
        size: b.size,
    })
    .await?;
    let hash = conn.send_body(&b.path, b.size).await?;
    conn.write_frame(&Frame::Trailer {
        size: b.size,
        hash: *hash.as_bytes(),
    })
    .await
}

/// What came of sending a bundle as it was packed.
pub(super) enum Grown {
    /// Sealed as `seq`, and sent whole.
    Sent { seq: u64 },
    /// Given up by the packer, or sealed behind a bundle this receiver was
    /// not sent yet (which must be applied first): `Abandon` went in its
    /// place, and a sealed one goes out as the others do.
    Abandoned,
}

/// Send the bundle `g` is packing as it grows (protocol
/// [`STREAMED_FROM`](crate::proto::frame::STREAMED_FROM)): `Begin`, its
/// final bytes in chunks as a follower thread reads them ([`follow`]),
/// `Ping`s while the packer is slow to give more, and `Sealed` once it is
/// sealed as a sequence `next_is` says comes next for this receiver (else
/// `Abandon`). Its answer comes later ([`await_answer`]).
pub(super) async fn send_growing(
    conn: &mut Connection<Stream>,
    g: Arc<Growing>,
    next_is: impl Fn(u64) -> bool,
    peer_timeout: Duration,
) -> Result<Grown, ConnError> {
    let (spent_tx, spent) = std::sync::mpsc::channel();
    let mut pieces = follow(g, spent);
    conn.write_frame(&Frame::Begin).await?;
    let every = peer_timeout / PINGS_PER_TIMEOUT;
    loop {
        let piece = tokio::select! {
            p = pieces.recv() => p,
            _ = tokio::time::sleep(every) => {
                conn.write_frame(&Frame::Ping).await?;
                continue;
            }
        };
        match piece {
            Some(Piece::Chunk(buf, paced)) => {
                conn.send_chunk(&buf, paced).await?;
                // Caught up with the packer: what is buffered goes now.
                if pieces.is_empty() {
                    conn.flush().await?;
                }
                let _ = spent_tx.send(buf);
            }
            Some(Piece::End { seq, size, hash }) if next_is(seq) => {
                conn.write_frame(&Frame::Sealed { seq, size, hash }).await?;
                return Ok(Grown::Sent { seq });
            }
            Some(Piece::End { .. } | Piece::Abandoned) => {
                conn.write_frame(&Frame::Abandon).await?;
                return Ok(Grown::Abandoned);
            }
            Some(Piece::Failed(e)) => return Err(e.into()),
            None => {
                return Err(
                    std::io::Error::other("following the bundle being packed failed").into(),
                );
            }
        }
    }
}

/// What came while bundles were unanswered.
pub(super) enum Awaited {
    /// The answer to the oldest of them.
    Answer(Answer),
    /// Another bundle is ready and the pipeline has room for it.
    Room,
}

/// What the receiver says of the link, while its answers are waited for.
pub(super) trait Told {
    /// It took the last `bytes` of bundle `seq`'s body in `took` (0 bytes:
    /// no read waited, so it came faster than it could be timed).
    fn received(&mut self, seq: u64, bytes: u64, took: Duration);

    /// Whether bundles may go to this receiver as they grow (packed within
    /// what size), as the link is known now: a measure told while the wait
    /// goes on may turn it on.
    fn streams(&self) -> Option<u64>;
}

/// Wait for the answer to `oldest`, the first of the unanswered bundles
/// (waited for since `since`), skipping the receiver's pings and pinging it
/// in turn, and passing on to `told` how fast it says bundles came; when
/// `room_after` names the outbox, this receiver and the last bundle sent,
/// the pipeline has room and a bundle after it ([`Next::after`], asking
/// `told` each time whether bundles may go as they grow: a measure told
/// meanwhile may turn that on) ends the wait too. A receiver that goes
/// silent for `peer_timeout`, or that pings but does not answer within a
/// limit that grows with the bundle's size, fails the wait.
pub(super) async fn await_answer(
    (conn, told): (&mut Connection<Stream>, &mut (dyn Told + Send)),
    oldest: &Packed,
    since: Instant,
    room_after: Option<(&Outbox, usize, u64)>,
    peer_timeout: Duration,
) -> Result<Awaited, ConnError> {
    let limit = ack_limit(oldest.size);
    let deadline = since + limit;
    let mut heard = Instant::now();
    // The receiver reads the connection while it applies (the next bundle
    // may come): pinged, it knows this end is alive however long that takes.
    let every = peer_timeout / PINGS_PER_TIMEOUT;
    let mut next_ping = heard + every;
    loop {
        let arrived = room_after.map(|(outbox, ..)| outbox.arrived.notified());
        if let Some((outbox, index, last)) = room_after
            && Next::after((outbox, index), last, told.streams()).is_some()
        {
            return Ok(Awaited::Room);
        }
        tokio::select! {
            // An answer already there wins over a limit that ran out.
            biased;
            // `readable` consumes nothing, so losing this race loses no byte.
            r = conn.readable() => {
                r?;
                match conn.expect_frame().await? {
                    Frame::Ping => heard = Instant::now(),
                    Frame::Ack { seq, hook } if seq == oldest.seq => return Ok(Awaited::Answer(Ok(hook))),
                    Frame::Received { seq, bytes, micros } => {
                        heard = Instant::now();
                        told.received(seq, bytes, Duration::from_micros(micros));
                    }
                    Frame::Refuse { kind, path, reason, .. } => {
                        return Ok(Awaited::Answer(Err(Refusal { kind, path, reason })));
                    }
                    other => return Err(ConnError::Unexpected(format!("answer {other:?}"))),
                }
            }
            _ = async { arrived.expect("room").await }, if arrived.is_some() => {}
            _ = tokio::time::sleep_until(next_ping.into()) => {
                conn.write_frame(&Frame::Ping).await?;
                next_ping = Instant::now() + every;
            }
            _ = tokio::time::sleep_until(deadline.into()) => return Err(ConnError::Timeout(limit)),
            _ = tokio::time::sleep_until((heard + peer_timeout).into()) => {
                return Err(ConnError::Silent(peer_timeout));
            }
        }
    }
}

/// The next bundle to send: one in the outbox, or the one being packed.
pub(super) enum Next {
    Sealed(Arc<Packed>),
    Growing(Arc<Growing>),
}

impl Next {
    /// The next bundle for receiver `index` numbered after `last` (0:
    /// after what it acknowledged): one sealed in the outbox, or else,
    /// when bundles may go to it as they grow (`streams`: packed within
    /// that size), the one being packed for it.
    pub(super) fn after(
        (outbox, index): (&Outbox, usize),
        last: u64,
        streams: Option<u64>,
    ) -> Option<Next> {
        if let Some(b) = outbox.next_after(index, last) {
            return Some(Next::Sealed(b));
        }
        let growing = streams.and_then(|within| outbox.growing_for(index, within));
        growing.map(Next::Growing)
    }
}

/// Wait for the next bundle receiver `index` has not acknowledged
/// ([`Next::after`]), keeping the idle connection checked: a `Ping` every third of `peer_timeout`, which the
/// receiver answers, and [`ConnError::Silent`] once nothing came for
/// `peer_timeout`. `Ok(None)` on shutdown.
pub(super) async fn next_bundle(
    (outbox, index, streams): (&Outbox, usize, Option<u64>),
    conn: &mut Connection<Stream>,
    peer_timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<Next>, ConnError> {
    let every = peer_timeout / PINGS_PER_TIMEOUT;
    let mut heard = Instant::now();
    let mut next_ping = heard + every;
    loop {
        let arrived = outbox.arrived.notified();
        if let Some(next) = Next::after((outbox, index), 0, streams) {
            return Ok(Some(next));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = arrived => {}
            _ = tokio::time::sleep(OUTBOX_RECHECK) => {}
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

/// A transport failure as status and logs show it.
pub(super) fn describe(e: ConnError) -> String {
    match e {
        ConnError::Silent(_) => format!("receiver {e}; connection dropped"),
        e => e.to_string(),
    }
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

    /// A receiver's ear whose link turns fast enough to stream once it is
    /// told how fast the receiver took a bundle.
    struct Measuring {
        streams: Option<u64>,
    }

    impl Told for Measuring {
        fn received(&mut self, _seq: u64, _bytes: u64, _took: Duration) {
            self.streams = Some(u64::MAX);
        }

        fn streams(&self) -> Option<u64> {
            self.streams
        }
    }

    /// The first bundle measures the link while its answer is awaited; the
    /// bundle packed meanwhile then goes as it grows, not once it is sealed
    /// and the first one answered (row 1 of bench.py waited 0.3-0.4 s so).
    #[tokio::test]
    async fn a_measure_told_while_waiting_lets_the_bundle_being_packed_go_at_once() {
        use crate::bundle::growing::Growing;
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (mut me, mut receiver) = (Connection::new(Box::new(a) as Stream), Connection::new(b));
        let outbox = Outbox::new(1, 1 << 30);
        let packing = Growing::new(tempfile::tempfile().unwrap(), 1 << 20);
        outbox.opened(&packing, None);
        let first = crate::sender::outbox::tests::bundle(1, None);
        let mut told = Measuring { streams: None };
        let waited = await_answer(
            (&mut me, &mut told),
            &first,
            Instant::now(),
            Some((&outbox, 0, 1)),
            Duration::from_secs(30),
        );
        let received = Frame::Received {
            seq: 1,
            bytes: 8 << 20,
            micros: 30_000,
        };
        // Left waiting, it would wait for the answer the receiver never
        // sends here (until its peer timeout): a deadline ends the test.
        let waited = tokio::time::timeout(Duration::from_secs(10), waited);
        let (waited, wrote) = tokio::join!(waited, receiver.write_frame(&received));
        wrote.unwrap();
        let waited = waited.expect("not left waiting for the answer");
        assert!(matches!(waited, Ok(Awaited::Room)));
        assert_eq!(told.streams, Some(u64::MAX));
    }

    #[test]
    fn a_silent_receiver_is_named_and_said_to_be_dropped() {
        assert_eq!(
            describe(ConnError::Silent(Duration::from_secs(30))),
            "receiver silent for 30s; connection dropped"
        );
        assert_eq!(describe(ConnError::Closed), "connection closed by peer");
    }
}
