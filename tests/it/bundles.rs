//! Bundles on the wire and on disk: trailer checks, duplicates, standard
//! zip tools, replay.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shipper::bundle::pack::{Limits, PackItem, Packed};
use shipper::proto::{Connection, Frame};
use tokio::net::TcpStream;

use crate::util::*;
use shipper::proto::frame::Rolled;

/// Pack the files of `src` into one bundle numbered `seq` in `outbox`.
pub fn pack(src: &Path, outbox: &Path, seq: u64, deletions: &[&str]) -> Packed {
    let mut items = upserts(src);
    items.extend(deletions.iter().map(|d| PackItem::delete(*d)));
    let limits = Limits::new(1 << 20, 8 << 20, 100_000);
    let mut out = pack_items(src, outbox, "test", seq, limits, items);
    assert_eq!(out.len(), 1);
    out.pop().unwrap()
}

/// A session as sender "test": the connection and the receiver's last
/// applied sequence.
pub async fn session(addr: std::net::SocketAddr) -> (Connection<TcpStream>, u64) {
    session_as(addr, "test").await
}

/// Hello as `sender`, then the receiver's Welcome.
pub async fn session_as(addr: std::net::SocketAddr, sender: &str) -> (Connection<TcpStream>, u64) {
    let mut c = Connection::new(TcpStream::connect(addr).await.unwrap());
    c.write_frame(&Frame::Hello {
        version: shipper::proto::frame::PROTOCOL_VERSION,
        sender: sender.into(),
    })
    .await
    .unwrap();
    match c.expect_frame().await.unwrap() {
        Frame::Welcome { last_applied, .. } => (c, last_applied),
        f => panic!("expected welcome, got {f:?}"),
    }
}

/// Send the packed bundle `b` with its true trailer; the receiver's answer.
pub async fn send(c: &mut Connection<TcpStream>, b: &Packed) -> Frame {
    let hash = shipper::hash::hash_file(&b.path).unwrap();
    send_file(c, b.seq, &b.path, b.size, *hash.as_bytes()).await
}

/// Send the bundle file at `path` as sequence `seq` with trailer `hash`;
/// the receiver's answer.
pub async fn send_file(
    c: &mut Connection<TcpStream>,
    seq: u64,
    path: &Path,
    size: u64,
    hash: [u8; 32],
) -> Frame {
    send_frames(c, seq, path, size, hash).await;
    // The receiver pings while it verifies and applies (a busy machine
    // makes that long enough for one); the answer is the next other frame.
    c.expect_reply_within(Duration::from_secs(120))
        .await
        .unwrap()
}

/// Send the bundle file at `path` as sequence `seq` with trailer `hash`,
/// without waiting for an answer (a pipelining sender).
pub async fn send_frames(
    c: &mut Connection<TcpStream>,
    seq: u64,
    path: &Path,
    size: u64,
    hash: [u8; 32],
) {
    c.write_frame(&Frame::Bundle { seq, size }).await.unwrap();
    c.send_body(path, size).await.unwrap();
    c.write_frame(&Frame::Trailer { size, hash }).await.unwrap();
}

/// `b` as [`send_frames`] takes it, with its true trailer.
async fn send_packed_frames(c: &mut Connection<TcpStream>, b: &Packed) {
    let hash = *shipper::hash::hash_file(&b.path).unwrap().as_bytes();
    send_frames(c, b.seq, &b.path, b.size, hash).await;
}

/// Bundles are pipelined: while the receiver is still busy with bundle 1
/// (its `on_apply` hook held), all of bundle 2 crosses the wire: 48 MiB,
/// more than loopback's socket buffers hold, so a receiver that read only
/// between answers would stall its sender here. Answers come in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_bundle_crosses_the_wire_while_the_receiver_applies_one() {
    let env = Env::new();
    let (held, gate) = holding_hook(env.path());
    let (b1, b2) = small_then_large(&env);
    assert!(b2.size > 48 << 20);
    let r = env.start_receiver(&held).await;
    let (mut c, _) = session(r.addr).await;
    send_packed_frames(&mut c, &b1).await;
    // Well within the hook's 60 s: a receiver that stalls reads nothing
    // until the hook is killed.
    tokio::time::timeout(Duration::from_secs(30), send_packed_frames(&mut c, &b2))
        .await
        .expect("bundle 2 stalled while bundle 1 was being applied");
    assert!(!gate.exists());
    std::fs::write(&gate, "").unwrap();
    for seq in [1, 2] {
        assert_eq!(
            c.expect_reply_within(Duration::from_secs(120))
                .await
                .unwrap(),
            Frame::Ack {
                seq,
                hook: shipper::proto::hook_outcome::HookOutcome::Ran
            }
        );
    }
    assert_eq!(tree(&env.root()), tree(&env.src()));
    r.stop().await;
}

/// Bundle 1 of one small page, then bundle 2 of the page and 48 MiB of
/// noise: more than loopback's socket buffers hold.
fn small_then_large(env: &Env) -> (Packed, Packed) {
    env.write("a.html", "A");
    let b1 = pack(&env.src(), &env.path().join("out1"), 1, &[]);
    env.write("big.bin", noise(48 << 20, 3));
    let limits = Limits::new(64 << 20, 128 << 20, 1000);
    let mut b2 = pack_items(
        &env.src(),
        &env.path().join("out2"),
        "test",
        2,
        limits,
        upserts(&env.src()),
    );
    (b1, b2.remove(0))
}

/// A receiver config whose `on_apply` hook (`dir/hold.sh`, 60 s at most)
/// holds each bundle unanswered until `dir/gate` exists, with that gate.
fn holding_hook(dir: &Path) -> (String, PathBuf) {
    let gate = dir.join("gate");
    let hook = dir.join("hold.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do sleep 0.05; done\n",
            gate.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "on_apply = [\"{}\"]\non_apply_timeout = \"60s\"\n",
        hook.display()
    );
    (config, gate)
}

/// The sender does not wait for an answer to send the next bundle: while
/// the receiver's hook holds bundle 1 unanswered, bundle 2 is already in
/// the receiver's `incoming`. Then everything arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_sends_the_next_bundle_before_the_first_is_answered() {
    let env = Env::new();
    let (held, gate) = holding_hook(env.path());
    for i in 0..6 {
        env.write(&format!("img/{i}.bin"), noise(700 << 10, i));
    }
    let r = env.start_receiver(&held).await;
    let s = env.start_sender(
        r.addr,
        "max_bundle_size = \"2MiB\"\nchunk_size = \"1MiB\"\n",
    );
    let incoming = env.path().join("state-r/incoming");
    wait_until(
        "bundle 2 in the receiver's incoming while 1 is unanswered",
        || {
            std::fs::read_dir(&incoming).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("-2-"))
            })
        },
    )
    .await;
    assert!(
        tree(&env.root()).len() < 6,
        "all applied before the gate opened"
    );
    std::fs::write(&gate, "").unwrap();
    wait_until("the tree at the receiver", || {
        tree(&env.root()) == tree(&env.src())
    })
    .await;
    s.stop().await;
    r.stop().await;
}

/// The names in the receiver's `incoming`.
fn incoming(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.path().join("state-r/incoming"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Found in review: with bundle 1 held by its hook, bundle 2 (damaged on
/// the way, so refused for now) queued behind it and bundle 3 received
/// whole behind that, the refusal ended the answering half while the
/// reading half waited for good to hand on bundle 3: the session never
/// ended and bundle 3's file stayed. Now the session ends and nothing is
/// left in `incoming`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_to_retry_ends_the_session_with_bundles_queued_behind_it() {
    let env = Env::new();
    let (held, gate) = holding_hook(env.path());
    env.write("a.html", "A");
    let b1 = pack(&env.src(), &env.path().join("out1"), 1, &[]);
    env.write("b.html", "B");
    let b2 = pack(&env.src(), &env.path().join("out2"), 2, &[]);
    env.write("c.html", "C");
    let b3 = pack(&env.src(), &env.path().join("out3"), 3, &[]);
    let r = env.start_receiver(&held).await;
    let (mut c, _) = session(r.addr).await;
    send_packed_frames(&mut c, &b1).await;
    send_frames(&mut c, b2.seq, &b2.path, b2.size, [0u8; 32]).await;
    send_packed_frames(&mut c, &b3).await;
    c.write_frame(&Frame::Ping).await.unwrap();
    wait_until("bundle 3 taken in behind bundle 2", || {
        incoming(&env).iter().any(|n| n.contains("-3-"))
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    let f = c
        .expect_reply_within(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(f, Frame::Ack { seq: 1, .. }), "{f:?}");
    let f = c
        .expect_reply_within(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(f, Frame::Refuse { seq: 2, .. }), "{f:?}");
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(Frame::Ping)) = c.read_frame().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the session went on after a refusal to retry"
    );
    wait_until("nothing left in incoming", || incoming(&env).is_empty()).await;
    assert!(
        !env.root().join("c.html").exists(),
        "bundle 3 applied before 2"
    );
    r.stop().await;
}

/// Found in review: the sender's pings, queued behind the bundle being
/// applied, filled the hand-over between the session's halves, and the
/// next bundle stopped crossing the wire while the hook ran. Pings are no
/// longer queued behind bundles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_pings_do_not_hold_up_the_next_bundle_during_a_long_apply() {
    let env = Env::new();
    let (held, gate) = holding_hook(env.path());
    let (b1, b2) = small_then_large(&env);
    let r = env.start_receiver(&held).await;
    let (mut c, _) = session(r.addr).await;
    send_packed_frames(&mut c, &b1).await;
    for _ in 0..3 {
        c.write_frame(&Frame::Ping).await.unwrap();
    }
    // Well within the hook's 60 s.
    let sent = tokio::time::timeout(Duration::from_secs(30), send_packed_frames(&mut c, &b2)).await;
    std::fs::write(&gate, "").unwrap();
    assert!(
        sent.is_ok(),
        "bundle 2 stalled behind pings while bundle 1's hook ran"
    );
    for seq in [1, 2] {
        let f = c
            .expect_reply_within(Duration::from_secs(120))
            .await
            .unwrap();
        assert!(matches!(f, Frame::Ack { seq: s, .. } if s == seq), "{f:?}");
    }
    r.stop().await;
}

/// Found in review: a newer session from the same sender replaced one that
/// held a bundle taken in but not applied, and its file stayed in
/// `incoming` until the receiver restarted (a flaky network could fill the
/// disk so). Now every bundle file a session took in goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_session_leaves_nothing_in_incoming() {
    let env = Env::new();
    let (held, gate) = holding_hook(env.path());
    env.write("a.html", "A");
    let b1 = pack(&env.src(), &env.path().join("out1"), 1, &[]);
    env.write("b.html", "B");
    let b2 = pack(&env.src(), &env.path().join("out2"), 2, &[]);
    let r = env.start_receiver(&held).await;
    let (mut c, _) = session(r.addr).await;
    send_packed_frames(&mut c, &b1).await;
    send_packed_frames(&mut c, &b2).await;
    wait_until("bundle 2 taken in", || {
        incoming(&env).iter().any(|n| n.contains("-2-"))
    })
    .await;
    let (_newer, _) = session(r.addr).await;
    std::fs::write(&gate, "").unwrap();
    wait_until("nothing left in incoming", || incoming(&env).is_empty()).await;
    r.stop().await;
}

/// A bundle refused for now ends the session, so a bundle pipelined behind
/// it is never applied before it: here bundle 2 came whole right behind a
/// bundle 1 damaged on the way, and is not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_behind_one_refused_for_now_is_not_applied_before_it() {
    let env = Env::new();
    env.write("a.html", "A");
    let b1 = pack(&env.src(), &env.path().join("out1"), 1, &[]);
    env.write("b.html", "B");
    let b2 = pack(&env.src(), &env.path().join("out2"), 2, &[]);
    let r = env.start_receiver("").await;
    let (mut c, _) = session(r.addr).await;
    send_frames(&mut c, b1.seq, &b1.path, b1.size, [0u8; 32]).await;
    send_packed_frames(&mut c, &b2).await;
    match c
        .expect_reply_within(Duration::from_secs(120))
        .await
        .unwrap()
    {
        Frame::Refuse { seq: 1, kind, .. } => {
            assert_eq!(kind, shipper::proto::refusal::RefusalKind::Retry)
        }
        f => panic!("expected bundle 1 refused, got {f:?}"),
    }
    assert!(
        c.expect_reply_within(Duration::from_secs(120))
            .await
            .is_err(),
        "the session went on past a refusal to retry"
    );
    assert!(tree(&env.root()).is_empty(), "bundle 2 applied before 1");
    let (_c, last_applied) = session(r.addr).await;
    assert_eq!(last_applied, 0);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_failing_its_trailer_is_refused_and_root_untouched() {
    let env = Env::new();
    env.write("a.html", "A");
    let b = pack(&env.src(), &env.path().join("out"), 1, &[]);
    let r = env.start_receiver("").await;
    let (mut c, _) = session(r.addr).await;
    let mut wrong = *shipper::hash::hash_file(&b.path).unwrap().as_bytes();
    wrong[0] ^= 1;
    match send_file(&mut c, b.seq, &b.path, b.size, wrong).await {
        Frame::Refuse {
            seq: 1,
            kind,
            reason,
            ..
        } => {
            assert!(reason.contains("trailer"), "{reason}");
            // Damaged in transit: the next copy may arrive whole.
            assert_eq!(kind, shipper::proto::refusal::RefusalKind::Retry);
        }
        f => panic!("expected refusal, got {f:?}"),
    }
    assert!(
        tree(&env.root()).is_empty(),
        "root touched by a refused bundle"
    );
    // A refusal to retry ends the session (a pipelined bundle behind it
    // must not be applied first); on the next one the right bundle applies.
    assert!(
        !matches!(c.read_frame().await, Ok(Some(_))),
        "the session went on after a refusal to retry"
    );
    let (mut c, _) = session(r.addr).await;
    assert_eq!(
        send(&mut c, &b).await,
        Frame::Ack {
            seq: 1,
            hook: Default::default()
        }
    );
    assert_eq!(std::fs::read(env.root().join("a.html")).unwrap(), b"A");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_sequence_is_acknowledged_without_being_applied_twice() {
    let env = Env::new();
    env.write("a.html", "one");
    let b1 = pack(&env.src(), &env.path().join("out1"), 1, &[]);
    let r = env.start_receiver("").await;
    let (mut c, last) = session(r.addr).await;
    assert_eq!(last, 0);
    assert_eq!(
        send(&mut c, &b1).await,
        Frame::Ack {
            seq: 1,
            hook: Default::default()
        }
    );
    // Root changes locally; a re-send of 1 must not overwrite it again.
    std::fs::write(env.root().join("a.html"), "local").unwrap();
    assert_eq!(
        send(&mut c, &b1).await,
        Frame::Ack {
            seq: 1,
            hook: Default::default()
        }
    );
    assert_eq!(std::fs::read(env.root().join("a.html")).unwrap(), b"local");
    assert_eq!(env.archived().len(), 1);
    // A new session learns where the receiver stands.
    drop(c);
    let (_, last) = session(r.addr).await;
    assert_eq!(last, 1);
    r.stop().await;
}

/// A bundle numbered u64::MAX was applied and recorded, leaving its
/// sender no sequence to follow it. Now it is refused, root untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_numbered_u64_max_is_refused() {
    let env = Env::new();
    env.write("a.html", "A");
    let b = pack(&env.src(), &env.path().join("out"), u64::MAX, &[]);
    let r = env.start_receiver("").await;
    let (mut c, _) = session(r.addr).await;
    match send(&mut c, &b).await {
        Frame::Refuse { seq, reason, .. } => {
            assert_eq!(seq, u64::MAX);
            assert!(reason.contains(&u64::MAX.to_string()), "{reason}");
        }
        f => panic!("expected refusal, got {f:?}"),
    }
    assert!(tree(&env.root()).is_empty(), "root touched");
    drop(c);
    let (_, last) = session(r.addr).await;
    assert_eq!(last, 0);
    r.stop().await;
}

/// A receiver whose state said it had applied sequence u64::MAX overflowed
/// the sender's `last_applied + 1`, killing its transport without a word.
/// Now the sender refuses that receiver and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_claiming_sequence_u64_max_is_refused_by_the_sender() {
    let env = Env::new();
    std::fs::write(
        env.path().join("state-r/receiver.json"),
        format!("{{\"applied\": {{\"test\": {}}}}}", u64::MAX),
    )
    .unwrap();
    env.write("a.html", "A");
    let r = env.start_receiver("").await;
    let extra = "interval = \"5m\"\n";
    let s = env.start_sender(r.addr, extra);
    flush_fails(&env, r.addr, extra, &u64::MAX.to_string()).await;
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_naming_the_wrong_sender_is_refused() {
    let env = Env::new();
    env.write("a.html", "A");
    let b = pack(&env.src(), &env.path().join("out"), 1, &[]);
    let r = env.start_receiver("").await;
    let (mut c, _) = session_as(r.addr, "other").await;
    match send(&mut c, &b).await {
        Frame::Refuse { reason, .. } => assert!(reason.contains("sender"), "{reason}"),
        f => panic!("expected refusal, got {f:?}"),
    }
    assert!(tree(&env.root()).is_empty());
    r.stop().await;
}

fn sample_bundles(env: &Env) -> Vec<PathBuf> {
    env.write("index.html", "<p>".repeat(1000));
    env.write("img/photo.jpg", noise(50_000, 3));
    env.write("dir with space/ünï.txt", "x");
    env.write("empty", "");
    let first = pack(&env.src(), &env.path().join("out"), 1, &[]);
    std::fs::remove_file(env.src().join("empty")).unwrap();
    env.write("index.html", "v2");
    let second = pack(&env.src(), &env.path().join("out"), 2, &["empty"]);
    vec![first.path, second.path]
}

#[test]
fn bundles_are_standard_zips_for_unzip_and_python() {
    let env = Env::new();
    for b in sample_bundles(&env) {
        let out = Command::new("unzip")
            .arg("-t")
            .arg(&b)
            .output()
            .expect("unzip installed (see .ci/run)");
        assert!(
            out.status.success(),
            "unzip -t {}: {}",
            b.display(),
            text_of(&out)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("No errors detected"));
        let py = "import sys, zipfile, json\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nm = json.loads(z.read('.shipper/manifest.json'))\nprint(m['seq'], len(m['files']))";
        let out = Command::new("python3")
            .arg("-c")
            .arg(py)
            .arg(&b)
            .output()
            .expect("python3 installed");
        assert!(
            out.status.success(),
            "python zipfile {}: {}",
            b.display(),
            text_of(&out)
        );
    }
}

fn text_of(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn replay_applies_in_sequence_order_whatever_the_order_given() {
    let env = Env::new();
    let mut bundles = sample_bundles(&env);
    bundles.reverse();
    let restored = env.path().join("restored");
    let args: Vec<String> = ["replay", "--root", restored.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .chain(bundles.iter().map(|b| b.to_string_lossy().into_owned()))
        .collect();
    let out = shipper(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&restored), tree(&env.src()));
    let names: Vec<_> = std::fs::read_dir(&restored)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "replay left something of its own in root: {names:?}"
    );
}

#[test]
fn replay_takes_bundles_named_from_the_directory_they_are_in() {
    // `cd archive && shipper replay --root R *.zip`, with a bundle of more
    // files than are synced one by one: nothing is looked for above a
    // bare name.
    let env = Env::new();
    for i in 0..40 {
        env.write(&format!("pages/p{i}.html"), format!("<p>{i}</p>"));
    }
    let bundle = pack(&env.src(), &env.path().join("out"), 1, &[]).path;
    let restored = env.path().join("restored");
    let out = Command::new(env!("CARGO_BIN_EXE_shipper"))
        .args(["replay", "--root", restored.to_str().unwrap()])
        .arg(bundle.file_name().unwrap())
        .current_dir(bundle.parent().unwrap())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&restored), tree(&env.src()));
}

#[test]
fn replay_of_one_archived_bundle_onto_a_restored_root_works() {
    let env = Env::new();
    let bundles = sample_bundles(&env);
    let restored = env.path().join("restored");
    let out = shipper(&[
        "replay",
        "--root",
        restored.to_str().unwrap(),
        bundles[0].to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(restored.join("img/photo.jpg")).unwrap(),
        noise(50_000, 3)
    );
}

#[test]
fn replay_refuses_a_corrupt_bundle_and_applies_nothing() {
    let env = Env::new();
    let bundles = sample_bundles(&env);
    // Flip a byte inside the stored (uncompressed) photo data.
    let mut bytes = std::fs::read(&bundles[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    let corrupt = env.path().join("corrupt.zip");
    std::fs::write(&corrupt, bytes).unwrap();
    let restored = env.path().join("restored");
    let out = shipper(&[
        "replay",
        "--root",
        restored.to_str().unwrap(),
        corrupt.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "corrupt bundle accepted");
    assert!(text(&out).contains("corrupt.zip"), "{}", text(&out));
    assert!(
        tree(&restored).is_empty(),
        "part of a corrupt bundle was applied"
    );
    // A file that is not a zip at all names itself too.
    let junk = env.path().join("junk.zip");
    std::fs::write(&junk, "not a zip").unwrap();
    let out = shipper(&[
        "replay",
        "--root",
        restored.to_str().unwrap(),
        junk.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("junk.zip"), "{}", text(&out));
}

#[test]
fn inspect_prints_the_manifest() {
    let env = Env::new();
    let bundles = sample_bundles(&env);
    let out = shipper(&["inspect", bundles[1].to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    for want in [
        "sequence:  2",
        "sender:    test",
        "index.html",
        "deletions: 1",
        "  empty",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
}

/// `shipper replay --config` applied bundles and rewrote receiver.json
/// while the receiver using that state_dir went on applying its own: the
/// two raced over root and the recorded sequences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_into_the_state_dir_of_a_running_receiver_is_refused() {
    let env = Env::new();
    let bundles = sample_bundles(&env);
    let toml = env.receiver_toml("127.0.0.1:0", "");
    let cfg = env.config_file("receiver.toml", &toml);
    let r = env.start_receiver_from(&toml).await;
    let replay = || {
        shipper_async(owned(&[
            "replay",
            "--config",
            cfg.to_str().unwrap(),
            bundles[0].to_str().unwrap(),
        ]))
    };
    let out = replay().await;
    assert!(!out.status.success(), "replayed beside a running receiver");
    let said = text(&out);
    assert!(
        said.contains("a receiver is running with this state_dir")
            && said.contains(&format!("pid {}", std::process::id())),
        "{said}"
    );
    assert!(tree(&env.root()).is_empty(), "replay changed root");
    // A second receiver on the same state_dir is refused the same way.
    let second = env.config(&toml).receiver.unwrap();
    match shipper::receiver::Receiver::bind(second).await {
        Ok(_) => panic!("two receivers share a state_dir"),
        Err(e) => assert!(
            format!("{e:#}").contains("a receiver is running with this state_dir"),
            "{e:#}"
        ),
    }
    r.stop().await;
    let out = replay().await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(env.root().join("img/photo.jpg")).unwrap(),
        noise(50_000, 3)
    );
}

/// `--root` and `--config` could not be given together, so a replay into
/// another directory always took the default limits, never the receiver's.
#[test]
fn replay_with_root_takes_limits_from_the_config_given() {
    let env = Env::new();
    for i in 0..3 {
        env.write(&format!("f{i}.html"), "x");
    }
    let b = pack(&env.src(), &env.path().join("out"), 1, &[]);
    let cfg = env.config_file(
        "limits.toml",
        &env.receiver_toml("127.0.0.1:0", "max_files_per_bundle = 2\n"),
    );
    let restored = env.path().join("restored");
    let args = |bundle: &Path| {
        shipper(&[
            "replay",
            "--root",
            restored.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            bundle.to_str().unwrap(),
        ])
    };
    let out = args(&b.path);
    assert!(!out.status.success(), "accepted: {}", text(&out));
    assert!(text(&out).contains("over the limit of 2"), "{}", text(&out));
    assert!(tree(&restored).is_empty(), "restored root changed");
    // Within the limits it is applied into --root, the receiver's own
    // root and state untouched.
    std::fs::remove_file(env.src().join("f2.html")).unwrap();
    let b = pack(&env.src(), &env.path().join("out2"), 1, &[]);
    let out = args(&b.path);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&restored), tree(&env.src()));
    assert!(tree(&env.root()).is_empty());
    assert!(!env.path().join("state-r/receiver.json").exists());
}

/// A receiver takes senders of protocols 4 to 7 as well as 8 (so
/// receivers can be upgraded first), and refuses older ones naming both
/// versions; only a sender of 7 or later is told in `Welcome` that root was rolled
/// back (an older one could not read that `Welcome`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_takes_senders_two_versions_behind_and_refuses_older() {
    let env = Env::new();
    std::fs::write(
        env.path().join("state-r/receiver.json"),
        r#"{"applied": {"test": 3}, "rolled_back": {"test": 2}}"#,
    )
    .unwrap();
    let r = env.start_receiver("").await;
    for (version, welcomed) in [
        (8, true),
        (7, true),
        (6, true),
        (5, true),
        (4, true),
        (3, false),
    ] {
        let mut c = Connection::new(TcpStream::connect(r.addr).await.unwrap());
        c.write_frame(&Frame::Hello {
            version,
            sender: "test".into(),
        })
        .await
        .unwrap();
        match c.expect_frame().await.unwrap() {
            Frame::Welcome { rolled_back, .. } => {
                assert!(welcomed, "version {version} welcomed");
                let told = (version >= 7).then_some(Rolled { to: 2, held: false });
                assert_eq!(rolled_back, told, "version {version}");
            }
            Frame::Refuse { reason, .. } => {
                assert!(!welcomed, "version {version} refused: {reason}");
                let want = "protocol version 3 not supported (this receiver speaks 4 to 8)";
                assert!(reason.contains(want), "{reason}");
            }
            f => panic!("version {version}: {f:?}"),
        }
    }
    r.stop().await;
}
