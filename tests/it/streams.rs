//! Bundles sent as streams of chunks (protocol 8), by a sender written
//! here byte by byte: chunks cut anyhow with pings between them, streams
//! abandoned, sealed wrong, or longer than the receiver takes.

use std::time::Duration;

use shipper::proto::Frame;
use shipper::proto::refusal::RefusalKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::bundles::pack;
use crate::util::*;

/// A session of sender "test" speaking `version`, on a bare socket: what
/// is written is exactly the bytes given. The receiver's `Welcome` (or
/// refusal) is the first frame [`Replies`] reads.
async fn bare_session(addr: std::net::SocketAddr, version: u16) -> (Replies, OwnedWriteHalf) {
    let (rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
    let hello = Frame::Hello {
        version,
        sender: "test".into(),
    };
    wr.write_all(&hello.to_bytes()).await.unwrap();
    let mut replies = Replies {
        rd,
        buf: Vec::new(),
    };
    let welcome = replies.next().await;
    assert!(
        matches!(welcome, Some(Frame::Welcome { .. })),
        "{welcome:?}"
    );
    (replies, wr)
}

/// Frames from the receiver, read from the bare socket.
struct Replies {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
}

impl Replies {
    /// The next frame; `None` once the receiver closed the connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, used)) = Frame::parse(&self.buf).unwrap() {
                self.buf.drain(..used);
                return Some(f);
            }
            let mut more = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(120), self.rd.read(&mut more))
                .await
                .expect("the receiver said nothing for 2 minutes")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&more[..n]);
        }
    }

    /// The next frame other than a `Ping` or a `Received`.
    async fn answer(&mut self) -> Option<Frame> {
        loop {
            match self.next().await? {
                Frame::Ping | Frame::Received { .. } => {}
                f => return Some(f),
            }
        }
    }
}

/// `body` as a stream's frames: `Begin`, chunks of the lengths `cuts`
/// gives in turn (the last one repeated), a `Ping` after every chunk, and
/// `end`.
fn streamed(body: &[u8], cuts: &[usize], end: Frame) -> Vec<u8> {
    let mut out = Frame::Begin.to_bytes();
    let mut rest = body;
    let mut cuts = cuts
        .iter()
        .copied()
        .chain(std::iter::repeat(*cuts.last().unwrap()));
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(cuts.next().unwrap().min(rest.len()));
        let paced = chunk.len() % 2 == 0;
        Frame::Chunk {
            len: chunk.len() as u32,
            paced,
        }
        .encode(&mut out);
        out.extend_from_slice(chunk);
        Frame::Ping.encode(&mut out);
        rest = after;
    }
    end.encode(&mut out);
    out
}

/// Wait until the receiver's `incoming` holds nothing: every bundle
/// taken in was applied, refused or dropped, files and all.
async fn incoming_emptied(env: &Env) {
    let incoming = env.path().join("state-r/incoming");
    wait_until("incoming is emptied", || {
        std::fs::read_dir(&incoming).unwrap().next().is_none()
    })
    .await;
}

fn sealed(seq: u64, body: &[u8]) -> Frame {
    Frame::Sealed {
        seq,
        size: body.len() as u64,
        hash: *blake3::hash(body).as_bytes(),
    }
}

/// A stream given up, then the bundle cut into chunks of odd sizes with
/// pings between them: the first leaves nothing behind, the second is
/// applied and acknowledged, and `incoming` is left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_streamed_in_odd_chunks_after_an_abandoned_one_is_applied() {
    let env = Env::new();
    env.write("a.html", "A");
    env.write("img/b.bin", noise(300_000, 5));
    let b = pack(&env.src(), &env.path().join("out"), 1, &[]);
    let body = std::fs::read(&b.path).unwrap();
    let r = env.start_receiver("").await;
    let (mut replies, mut wr) = bare_session(r.addr, 8).await;
    let abandoned = streamed(&noise(10_000, 6), &[4096], Frame::Abandon);
    wr.write_all(&abandoned).await.unwrap();
    wr.write_all(&streamed(&body, &[1, 1000, 65_537, 7], sealed(1, &body)))
        .await
        .unwrap();
    assert_eq!(
        replies.answer().await,
        Some(Frame::Ack {
            seq: 1,
            hook: Default::default()
        })
    );
    assert_eq!(tree(&env.root()), tree(&env.src()));
    incoming_emptied(&env).await;
    r.stop().await;
}

/// A stream whose `Sealed` frame gives another hash or size than what
/// came is refused for now, root untouched; sent whole, it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sealed_wrong_is_refused_for_now_and_root_untouched() {
    let env = Env::new();
    env.write("a.html", "A");
    let b = pack(&env.src(), &env.path().join("out"), 1, &[]);
    let body = std::fs::read(&b.path).unwrap();
    let r = env.start_receiver("").await;
    let Frame::Sealed { seq, size, hash } = sealed(1, &body) else {
        unreachable!()
    };
    let mut wrong_hash = hash;
    wrong_hash[31] ^= 1;
    let wrongs = [
        Frame::Sealed {
            seq,
            size,
            hash: wrong_hash,
        },
        Frame::Sealed {
            seq,
            size: size + 1,
            hash,
        },
    ];
    for wrong in wrongs {
        let (mut replies, mut wr) = bare_session(r.addr, 8).await;
        wr.write_all(&streamed(&body, &[333], wrong.clone()))
            .await
            .unwrap();
        match replies.answer().await {
            Some(Frame::Refuse {
                seq: 1,
                kind,
                reason,
                ..
            }) => {
                assert_eq!(kind, RefusalKind::Retry, "{wrong:?}");
                assert!(reason.contains("failed its trailer check"), "{reason}");
            }
            f => panic!("{wrong:?}: expected a refusal, got {f:?}"),
        }
        assert!(tree(&env.root()).is_empty(), "root touched by {wrong:?}");
    }
    let (mut replies, mut wr) = bare_session(r.addr, 8).await;
    wr.write_all(&streamed(&body, &[333], sealed(1, &body)))
        .await
        .unwrap();
    assert!(matches!(
        replies.answer().await,
        Some(Frame::Ack { seq: 1, .. })
    ));
    assert_eq!(tree(&env.root()), tree(&env.src()));
    r.stop().await;
}

/// A stream that runs past `receiver.max_bundle_size` ends its session
/// at the chunk that passes it, before that chunk is read: nothing is
/// applied and nothing stays in `incoming`. A sender of protocol 7, which
/// has no streams, may not begin one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_the_receivers_limit_or_from_an_older_sender_ends_the_session() {
    let env = Env::new();
    env.write("a.html", "A");
    let b = pack(&env.src(), &env.path().join("out"), 1, &[]);
    let r = env.start_receiver("max_bundle_size = \"1MiB\"\n").await;
    let (mut replies, mut wr) = bare_session(r.addr, 8).await;
    let mut long = streamed(&noise(1 << 20, 7), &[1 << 19], Frame::Abandon);
    long.truncate(long.len() - Frame::Abandon.to_bytes().len());
    long.extend(streamed(&[1], &[1], sealed(1, &[1]))[Frame::Begin.to_bytes().len()..].iter());
    // The receiver may close before all of it is written.
    let _ = wr.write_all(&long).await;
    assert_eq!(replies.answer().await, None, "the session went on");
    assert!(tree(&env.root()).is_empty());
    incoming_emptied(&env).await;

    let (mut replies, mut wr) = bare_session(r.addr, 7).await;
    let body = std::fs::read(&b.path).unwrap();
    let _ = wr
        .write_all(&streamed(&body, &[1000], sealed(1, &body)))
        .await;
    assert_eq!(replies.answer().await, None, "a sender of 7 streamed");
    assert!(tree(&env.root()).is_empty());
    r.stop().await;
}

/// Files enough to keep the packer busy a while: 24 MiB of noise in
/// 1 MiB files and 400 pages.
fn write_a_tree(env: &Env, under: &str) {
    for i in 0..24 {
        env.write(&format!("{under}/img/{i}.bin"), noise(1 << 20, 100 + i));
    }
    for i in 0..400 {
        env.write(
            &format!("{under}/p{i}.html"),
            format!("<p>page {i}</p>").repeat(200),
        );
    }
}

/// A sender whose link was measured fast (here, remembered from before)
/// sends its bundles while it packs them, once nothing else waits for the
/// receiver: the tree arrives whole, and status says how many went so.
/// Under `compress = "auto"`, without a measure, or measured slow enough
/// to deflate for, bundles go sealed (sending them measures the link
/// again): the first one and the first of the tree. (Loopback then
/// measures fast, so a bundle still being packed after that may go as it
/// grows: how many do is the machine's timing, not something to assert.)
/// Under `"never"` no measure decides what is packed: they go as they
/// are packed from the first, measured or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_measured_fast_gets_bundles_while_they_are_packed_others_sealed() {
    let cases = [
        ("auto", Some(1e9), true),
        ("auto", Some(50e6), false),
        ("auto", None, false),
        ("never", None, true),
    ];
    for (compress, rate, streams) in cases {
        let env = Env::new();
        let r = env.start_receiver("").await;
        if let Some(rate) = rate {
            remember_link(&env, r.addr, rate);
        }
        let extra = format!("compress = \"{compress}\"\n");
        let config = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), &extra));
        env.write("first.html", "connected");
        let s = env.start_sender(r.addr, &extra);
        wait_in_sync(&env).await;
        // Connected and idle: what comes now is packed while it waits.
        write_a_tree(&env, "bulk");
        wait_in_sync(&env).await;
        let v = wait_status(&config, "every bundle acknowledged", |v| {
            v["outbox_bytes"].as_u64() == Some(0)
        })
        .await;
        let link = &v["receivers"][0];
        assert_eq!(link["last_error"], serde_json::Value::Null, "{v}");
        let streamed = link["bundles_streamed"].as_u64().unwrap();
        let shipped = link["bundles_shipped"].as_u64().unwrap();
        assert!(shipped >= 2, "{v}");
        let case = format!("compress {compress}, remembered {rate:?}");
        if streams {
            assert!(streamed >= 1, "{case}: none sent while packed: {v}");
        } else {
            assert!(streamed + 2 <= shipped, "{case}: {v}");
        }
        s.stop().await;
        r.stop().await;
    }
}

/// A bundle packed while its receiver was away, larger than that receiver
/// takes once back, goes to it sealed, with its size up front: refused
/// for good, unread, and named in status, rather than cut off mid-stream
/// and sent again for ever. Its changes then ship within the limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_packed_while_the_receiver_was_away_and_over_its_limit_is_refused_not_resent() {
    let env = Env::new();
    let addr = free_addr();
    remember_link(&env, addr, 1e9);
    let config = env.config_file("sender.toml", &env.sender_toml(&addr.to_string(), ""));
    let r = env
        .start_receiver_from(&env.receiver_toml(&addr.to_string(), ""))
        .await;
    env.write("first.html", "connected");
    let s = env.start_sender(addr, "");
    wait_in_sync(&env).await;
    r.stop().await;
    env.write("big.bin", noise(3 << 20, 11));
    wait_status(&config, "the bundle packed for the receiver away", |v| {
        v["outbox_bytes"].as_u64().is_some_and(|b| b > 2 << 20)
    })
    .await;
    let toml = env.receiver_toml(&addr.to_string(), "max_bundle_size = \"2MiB\"\n");
    let r = env.start_receiver_from(&toml).await;
    wait_status(&config, "the refusal for good", |v| {
        v["receivers"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("exceeds receiver.max_bundle_size (2097152 bytes)"))
    })
    .await;
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}
