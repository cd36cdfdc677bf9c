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

    let out = rollback(&rfile, &["--to", &seq1.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = format!("rolled back sender test from sequence {seq3} to {seq1}");
    assert!(text(&out).contains(&said), "{}", text(&out));
    assert_eq!(
        tree(&env.root()),
        first,
        "root is as right after bundle {seq1}"
    );
    assert_eq!(applied(&env), seq1);

    // Held: the next bundle is refused, and the sender's status says why.
    env.write("f.html", "new while held");
    wait_status(&sfile, "the hold in the sender's status", |v| {
        v["receivers"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("held: root was rolled back to sequence {seq1}")))
    })
    .await;
    assert_eq!(tree(&env.root()), first, "nothing applied while held");

    let out = rollback(&rfile, &["--release"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("released sender test (held at sequence {seq1})")),
        "{}",
        text(&out)
    );
    // In step again: the sender compared its source with root and shipped
    // the difference, the files the rollback brought back deleted again.
    wait_in_sync(&env).await;
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
