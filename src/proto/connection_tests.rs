//! Liveness timing on an in-memory stream with tokio's paused clock:
//! time advances only when every task waits, so these are exact.
use super::*;
use tokio::io::DuplexStream;
use tokio::time::Instant;

const PEER_TIMEOUT: Duration = Duration::from_secs(2);

fn pair() -> (Connection<DuplexStream>, Connection<DuplexStream>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        Connection::new(a).with_peer_timeout(PEER_TIMEOUT),
        Connection::new(b),
    )
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_fails_a_read_after_the_peer_timeout() {
    let (mut me, _silent) = pair();
    let start = Instant::now();
    assert!(matches!(
        me.expect_frame().await,
        Err(ConnError::Silent(PEER_TIMEOUT))
    ));
    assert_eq!(start.elapsed(), PEER_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn pings_keep_a_reply_slower_than_the_peer_timeout_waited_for() {
    let (mut me, mut peer) = pair();
    let slow = async move {
        let (_, alive) = peer
            .ping_while(
                Duration::from_millis(500),
                tokio::time::sleep(PEER_TIMEOUT * 10),
            )
            .await;
        alive.unwrap();
        peer.write_frame(&Frame::Ack {
            seq: 9,
            hook: Default::default(),
        })
        .await
        .unwrap();
        peer
    };
    let (reply, _peer) = tokio::join!(me.expect_reply_within(Duration::from_secs(60)), slow);
    assert_eq!(
        reply.unwrap(),
        Frame::Ack {
            seq: 9,
            hook: Default::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_only_pings_is_cut_at_the_overall_limit() {
    let (mut me, mut peer) = pair();
    let limit = Duration::from_secs(30);
    let start = Instant::now();
    let forever = peer.ping_while(Duration::from_millis(500), std::future::pending::<()>());
    tokio::select! {
        reply = me.expect_reply_within(limit) => {
            assert!(matches!(reply, Err(ConnError::Timeout(l)) if l == limit), "{reply:?}");
        }
        _ = forever => unreachable!("pending work never ends"),
    }
    assert_eq!(start.elapsed(), limit);
}

#[tokio::test(start_paused = true)]
async fn work_under_pings_finishes_even_when_the_peer_is_gone() {
    let (mut me, peer) = pair();
    drop(peer);
    let (out, alive) = me
        .ping_while(Duration::from_millis(500), async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            42
        })
        .await;
    assert_eq!(out, 42);
    assert!(alive.is_err());
}

/// On the real clock: the file is read by a blocking thread, and
/// tokio's paused clock does not move while one runs. So only a lower
/// bound is asserted.
#[tokio::test]
async fn a_body_at_a_rate_takes_at_least_its_size_over_the_rate_less_one_burst() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("body"), dir.path().join("got"));
    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&from, &body).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let mut me = Connection::new(a).with_max_rate(1 << 20);
    let mut peer = Connection::new(b);
    let start = Instant::now();
    let send = async {
        assert_eq!(
            me.send_body(&from, body.len() as u64).await.unwrap(),
            blake3::hash(&body)
        );
        me.write_frame(&Frame::Ping).await.unwrap();
    };
    let recv = async {
        let got = peer.recv_body(body.len() as u64, (&to, ())).await.unwrap();
        (got, peer.expect_frame().await.unwrap())
    };
    let ((), (got, ping)) = tokio::join!(send, recv);
    let (hash, error) = (got.hash, got.write_error);
    let took = start.elapsed();
    // 1 MiB at 1 MiB/s: 1 s less the quarter second that goes at once.
    assert!(took >= Duration::from_millis(750), "took {took:?}");
    assert!(error.is_none());
    assert_eq!(hash, blake3::hash(&body));
    assert_eq!(ping, Frame::Ping);
    // The receiver times what came at the link's pace: about 1 MiB/s
    // (the first quarter second's burst may be in it).
    let (bytes, t) = got.timed.expect("a paced body is timed");
    let rate = bytes as f64 / t.as_secs_f64();
    assert!(bytes >= 512 << 10, "{bytes} bytes timed");
    assert!(rate < 2.0 * f64::from(1 << 20), "{rate} bytes/s");
}

/// A regression: paced slices sat in the 256 KiB write buffer, so a
/// slow link saw nothing, then a burst, and a receiver at a low rate
/// heard nothing for minutes.
#[tokio::test]
async fn a_paced_body_reaches_the_peer_as_it_goes_not_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("body");
    // 128 KiB at 32 KiB/s: about 3.75 s to send.
    std::fs::write(&from, vec![7u8; 128 << 10]).unwrap();
    let (a, b) = tokio::io::duplex(256 * 1024);
    let mut me = Connection::new(a).with_max_rate(32 << 10);
    let mut peer = Connection::new(b);
    let sent = std::sync::atomic::AtomicBool::new(false);
    let send = async {
        me.send_body(&from, 128 << 10).await.unwrap();
        sent.store(true, std::sync::atomic::Ordering::SeqCst);
        me.write_frame(&Frame::Ping).await.unwrap();
    };
    let first_byte = async {
        peer.readable().await.unwrap();
        sent.load(std::sync::atomic::Ordering::SeqCst)
    };
    let ((), sent_before_first_byte) = tokio::join!(send, first_byte);
    assert!(
        !sent_before_first_byte,
        "the body arrived only once all of it was sent"
    );
}

#[tokio::test(start_paused = true)]
async fn readable_consumes_nothing() {
    let (mut me, mut peer) = pair();
    peer.write_frame(&Frame::Ping).await.unwrap();
    me.readable().await.unwrap();
    me.readable().await.unwrap();
    assert_eq!(me.expect_frame().await.unwrap(), Frame::Ping);
    drop(peer);
    assert!(matches!(me.readable().await, Err(ConnError::Closed)));
}

/// A body bigger than one chunk, sent as a stream: the receiver takes
/// every chunk (and a ping after them), counts the bytes itself, and hands
/// back the `Sealed` frame's fields to check them by.
#[tokio::test]
async fn a_streamed_body_arrives_whole_with_its_sealed_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("body"), dir.path().join("got"));
    let body: Vec<u8> = (0..(CHUNK as u32 * 2 + 777))
        .map(|i| (i % 253) as u8)
        .collect();
    std::fs::write(&from, &body).unwrap();
    let (mut me, mut peer) = pair();
    let send = async {
        me.write_frame(&Frame::Begin).await.unwrap();
        for (i, chunk) in body.chunks(CHUNK).enumerate() {
            me.send_chunk(chunk, i % 2 == 0).await.unwrap();
        }
        me.write_frame(&Frame::Ping).await.unwrap();
        let hash = blake3::hash(&body);
        me.write_frame(&Frame::Sealed {
            seq: 4,
            size: body.len() as u64,
            hash: *hash.as_bytes(),
        })
        .await
        .unwrap();
    };
    let recv = async {
        assert_eq!(peer.expect_frame().await.unwrap(), Frame::Begin);
        peer.recv_chunked(1 << 30, (&to, ())).await.unwrap()
    };
    let ((), got) = tokio::join!(send, recv);
    let Streamed::Sealed {
        body: b,
        size,
        sealed,
    } = got
    else {
        panic!("abandoned")
    };
    assert_eq!(size, body.len() as u64);
    assert_eq!(sealed, (4, size, *blake3::hash(&body).as_bytes()));
    assert_eq!(b.hash, blake3::hash(&body));
    assert!(b.write_error.is_none());
    assert_eq!(std::fs::read(&to).unwrap(), body);
}

/// Chunks as a peer may cut them (any size up to the limit), one of
/// them not paced, then `Abandon`: the receiver reads to the end of the
/// stream, says it was abandoned, and the connection stays in step.
#[tokio::test]
async fn an_abandoned_stream_is_read_to_its_end_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("got");
    let (mut me, mut peer) = pair();
    let mut raw = Vec::new();
    for (len, paced) in [(1u32, false), (70_000, true), (3, false)] {
        Frame::Chunk { len, paced }.encode(&mut raw);
        raw.extend(std::iter::repeat_n(9u8, len as usize));
    }
    Frame::Abandon.encode(&mut raw);
    Frame::Ping.encode(&mut raw);
    let send = async {
        me.writer.writer.write_all(&raw).await.unwrap();
        me.writer.writer.flush().await.unwrap();
    };
    let recv = async {
        let got = peer.recv_chunked(1 << 20, (&to, ())).await.unwrap();
        (got, peer.expect_frame().await.unwrap())
    };
    let ((), (got, next)) = tokio::join!(send, recv);
    assert!(matches!(got, Streamed::Abandoned), "{got:?}");
    assert_eq!(next, Frame::Ping);
}

/// A chunk that would take the body past the limit fails the receive
/// before any of its bytes is read, naming the limit; a frame that has no
/// place inside a body fails it too.
#[tokio::test]
async fn a_stream_past_its_limit_or_out_of_step_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("got");
    let (mut me, mut peer) = pair();
    let mut raw = Vec::new();
    Frame::Chunk {
        len: 600,
        paced: true,
    }
    .encode(&mut raw);
    raw.extend([1u8; 600]);
    Frame::Chunk {
        len: 500,
        paced: true,
    }
    .encode(&mut raw);
    me.writer.writer.write_all(&raw).await.unwrap();
    me.writer.writer.flush().await.unwrap();
    let e = peer.recv_chunked(1000, (&to, ())).await.unwrap_err();
    assert!(
        matches!(
            e,
            ConnError::OverLimit(OverLimit {
                limit: 1000,
                at: 1100
            })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("passed 1000 bytes"), "{e}");

    let (mut me, mut peer) = pair();
    me.write_frame(&Frame::Begin).await.unwrap();
    let e = peer.recv_chunked(1000, (&to, ())).await.unwrap_err();
    assert!(e.to_string().contains("inside a streamed bundle"), "{e}");
}
