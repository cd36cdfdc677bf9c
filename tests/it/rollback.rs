//! `shipper rollback`: root put back to right after an earlier bundle of a
//! sender, the sender held (and told why) until `--release`, then brought
//! in step with the source again; refused beyond what is kept; done by the
//! command itself when no receiver runs.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::*;

/// `shipper rollback --config FILE EXTRA...`, off the runtime.
async fn rollback(file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = owned(&["rollback", "--config", file.to_str().unwrap()]);
    args.extend(owned(extra));
    shipper_async(args).await
}

/// Take the file put in root by hand out of `t`; whether it was there.
fn by_hand(t: &mut BTreeMap<String, Vec<u8>>) -> bool {
    t.remove("uploads/user.jpg").is_some()
}

/// The last sequence the receiver applied from the test sender.
fn applied(env: &Env) -> u64 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path().join("state-r/receiver.json")).unwrap())
            .unwrap();
    state["applied"]["test"].as_u64().unwrap_or(0)
}

/// Change the source with `change`, wait until root has it and the
/// receiver recorded a bundle after `prev`, and return root's tree and
/// that bundle's sequence.
async fn step(env: &Env, prev: u64, change: impl FnOnce(&Env)) -> (BTreeMap<String, Vec<u8>>, u64) {
    change(env);
    wait_in_sync(env).await;
    wait_until("the bundle recorded", || applied(env) > prev).await;
    (tree(&env.root()), applied(env))
}

/// Three bundles, each replacing, deleting and adding files; a rollback to
/// the first puts root back exactly as it was after it, the sender's next
/// bundle is refused with the reason in its status, and after `--release`
/// root is the source again: what the rollback brought back that the
/// source deleted is deleted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_puts_root_back_holds_the_sender_and_release_brings_it_in_step() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    let _s = env.start_sender(r.addr, "");
    let rfile = env.config_file("receiver.toml", &env.receiver_toml("127.0.0.1:0", ""));
    let sfile = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let (first, seq1) = step(&env, 0, |e| {
        e.write("a.html", "a1");
        e.write("b.html", "b1");
        e.write("dir/c.html", "c1");
    })
    .await;
    let (_, seq2) = step(&env, seq1, |e| {
        e.write("a.html", "a2");
        std::fs::remove_file(e.src().join("b.html")).unwrap();
        e.write("d/e.html", "e2");
    })
    .await;
    let (_, seq3) = step(&env, seq2, |e| {
        e.write("a.html", "a3");
        std::fs::remove_dir_all(e.src().join("dir")).unwrap();
    })
    .await;
    assert!(seq1 < seq2 && seq2 < seq3, "{seq1} {seq2} {seq3}");

    // Put in root by hand, never shipped: no rollback or compare is its.
    std::fs::create_dir_all(env.root().join("uploads")).unwrap();
    std::fs::write(env.root().join("uploads/user.jpg"), "by hand").unwrap();
    let out = rollback(&rfile, &["--to", &seq1.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = format!("rolled back sender test from sequence {seq3} to {seq1}");
    assert!(text(&out).contains(&said), "{}", text(&out));
    let mut now = tree(&env.root());
    assert!(by_hand(&mut now));
    assert_eq!(now, first, "root is as right after bundle {seq1}");
    assert_eq!(applied(&env), seq1);

    // Held: the sender sends nothing, and its status says why.
    env.write("f.html", "new while held");
    wait_status(&sfile, "the hold in the sender's status", |v| {
        v["receivers"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("held: root was rolled back to sequence {seq1}")))
    })
    .await;
    let mut now = tree(&env.root());
    by_hand(&mut now);
    assert_eq!(now, first, "nothing applied while held");

    let out = rollback(&rfile, &["--release"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("released sender test (held at sequence {seq1})")),
        "{}",
        text(&out)
    );
    // In step again: the sender compared its source with root and shipped
    // the difference, the files the rollback brought back deleted again,
    // and the file put there by hand still there.
    wait_until("root in step with the source", || {
        let mut now = tree(&env.root());
        by_hand(&mut now) && now == tree(&env.src())
    })
    .await;
    assert!(!env.root().join("b.html").exists());
    wait_until("the compare recorded as done", || {
        let peers = std::fs::read_to_string(env.path().join("state-s/receivers.json")).unwrap();
        !peers.contains("\"compare\"")
    })
    .await;
    let state = std::fs::read_to_string(env.path().join("state-r/receiver.json")).unwrap();
    assert!(!state.contains("rolled_back"), "{state}");
}

/// A rollback further back than `rollback_keep` bundles is refused naming
/// the oldest sequence it can reach, and changes nothing; with no receiver
/// running, the command does it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_beyond_what_is_kept_is_refused_naming_the_oldest_reachable() {
    let env = Env::new();
    let r = env.start_receiver("rollback_keep = 1").await;
    let s = env.start_sender(r.addr, "");
    let rfile = env.config_file(
        "receiver.toml",
        &env.receiver_toml("127.0.0.1:0", "rollback_keep = 1"),
    );
    let (_, seq1) = step(&env, 0, |e| e.write("a.html", "a1")).await;
    let (second, seq2) = step(&env, seq1, |e| e.write("a.html", "a2")).await;
    let (_, seq3) = step(&env, seq2, |e| e.write("a.html", "a3")).await;
    s.stop().await;
    r.stop().await;

    let out = rollback(&rfile, &["--to", &seq1.to_string()]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let said = format!(
        "sequence {seq1} is beyond what is kept (receiver.rollback_keep): the oldest sequence root can be rolled back to is {seq2}"
    );
    assert!(text(&out).contains(&said), "{}", text(&out));
    assert_eq!(applied(&env), seq3);

    let out = rollback(&rfile, &["--to", &seq2.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&env.root()), second);
    let state = std::fs::read_to_string(env.path().join("state-r/receiver.json")).unwrap();
    assert!(state.contains("\"held\""), "{state}");
}

/// Under `publish = "tree"`, a rollback is a new snapshot root points at
/// in one rename: the snapshot it was in stays as it was, and after
/// `--release` root is the source again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_publish_tree_a_rollback_is_a_new_snapshot_root_points_at() {
    let env = Env::new();
    std::fs::remove_dir(env.root()).unwrap();
    let tree_mode = "publish = \"tree\"\n";
    let r = env.start_receiver(tree_mode).await;
    let _s = env.start_sender(r.addr, "");
    let rfile = env.config_file(
        "receiver.toml",
        &env.receiver_toml("127.0.0.1:0", tree_mode),
    );
    let (first, seq1) = step(&env, 0, |e| e.write("a.html", "a1")).await;
    let (second, seq2) = step(&env, seq1, |e| {
        e.write("a.html", "a2");
        e.write("c.html", "c2");
    })
    .await;
    let before = std::fs::read_link(env.root()).unwrap();
    let out = rollback(&rfile, &["--to", &seq1.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&env.root()), first);
    assert_ne!(
        std::fs::read_link(env.root()).unwrap(),
        before,
        "a new snapshot"
    );
    assert_eq!(
        tree(&env.path().join(&before)),
        second,
        "the snapshot before is unchanged"
    );
    assert_eq!(applied(&env), seq1);
    let out = rollback(&rfile, &["--release"]).await;
    assert!(out.status.success(), "{}", text(&out));
    // In step again: the source compared with the root rolled back.
    step(&env, seq2, |e| e.write("d.html", "d")).await;
}

/// The rollback is forgotten only when its sender says it compared: a
/// listing (a plain `shipper verify`) leaves it, and names what the
/// rollback brought back; `Compared` clears both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_senders_compared_makes_the_receiver_forget_the_rollback() {
    use shipper::proto::{Connection, Frame};
    let env = Env::new();
    let state = env.path().join("state-r/receiver.json");
    std::fs::write(
        &state,
        r#"{"applied": {"test": 2}, "rolled_back": {"test": 2}}"#,
    )
    .unwrap();
    let restored = env.path().join("state-r/restored-test.json");
    std::fs::write(&restored, r#"["b.html", "dir"]"#).unwrap();
    let r = env.start_receiver("").await;
    let hello = |first: Frame| async move {
        let mut c = Connection::new(tokio::net::TcpStream::connect(r.addr).await.unwrap());
        c.write_frame(&first).await.unwrap();
        c
    };
    let mut c = hello(Frame::Inquire {
        version: 7,
        sender: "test".into(),
    })
    .await;
    let mut said = Vec::new();
    loop {
        match c.expect_frame().await.unwrap() {
            Frame::Restored { paths } => said.extend(paths),
            Frame::Listed { .. } => break,
            _ => {}
        }
    }
    assert_eq!(said, ["b.html", "dir"]);
    assert!(
        std::fs::read_to_string(&state)
            .unwrap()
            .contains("rolled_back")
    );
    let mut c = hello(Frame::Compared {
        version: 7,
        sender: "test".into(),
    })
    .await;
    assert!(matches!(
        c.expect_frame().await.unwrap(),
        Frame::Ack { seq: 2, .. }
    ));
    assert!(
        !std::fs::read_to_string(&state)
            .unwrap()
            .contains("rolled_back")
    );
    assert!(!restored.exists());
    r.stop().await;
}
