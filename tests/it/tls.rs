//! Only the right peer gets in: mutual TLS with pinned fingerprints.

use std::os::unix::fs::PermissionsExt;

use crate::util::*;

fn receiver_keys(dir: &str, allowed: &str) -> String {
    format!("key_dir = \"{dir}\"\nallowed_senders = [\"{allowed}\"]\n")
}

fn sender_keys(dir: &str, pin: &str) -> String {
    format!("key_dir = \"{dir}\"\nreceiver_fingerprint = \"{pin}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paired_keys_ship_over_mutual_tls() {
    let env = Env::new();
    let (s_fp, r_fp) = (keygen(&env, "keys-s"), keygen(&env, "keys-r"));
    let mode = std::fs::metadata(env.path().join("keys-s/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    env.write("index.html", "over TLS");
    let r = env.start_receiver(&receiver_keys("keys-r", &s_fp)).await;
    let s = env.start_sender(r.addr, &sender_keys("keys-s", &r_fp));
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_sender_is_turned_away() {
    let env = Env::new();
    let (_s_fp, r_fp, other) = (
        keygen(&env, "keys-s"),
        keygen(&env, "keys-r"),
        keygen(&env, "keys-x"),
    );
    env.write("index.html", "x");
    let r = env.start_receiver(&receiver_keys("keys-r", &other)).await;
    let extra = format!("interval = \"5m\"\n{}", sender_keys("keys-s", &r_fp));
    let s = env.start_sender(r.addr, &extra);
    flush_fails(&env, r.addr, &extra, "TLS handshake").await;
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_the_wrong_key_is_not_trusted() {
    let env = Env::new();
    let (s_fp, _r_fp, other) = (
        keygen(&env, "keys-s"),
        keygen(&env, "keys-r"),
        keygen(&env, "keys-x"),
    );
    env.write("index.html", "x");
    let r = env.start_receiver(&receiver_keys("keys-r", &s_fp)).await;
    // The sender pinned another receiver's fingerprint.
    let extra = format!("interval = \"5m\"\n{}", sender_keys("keys-s", &other));
    let s = env.start_sender(r.addr, &extra);
    flush_fails(&env, r.addr, &extra, "not the pinned").await;
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_keys_are_configured_there_is_no_plaintext() {
    let env = Env::new();
    let (s_fp, _r_fp) = (keygen(&env, "keys-s"), keygen(&env, "keys-r"));
    env.write("index.html", "x");
    let r = env.start_receiver(&receiver_keys("keys-r", &s_fp)).await;
    // A sender without keys (allowed on loopback) cannot talk to a receiver with keys.
    let extra = "interval = \"5m\"\n";
    let s = env.start_sender(r.addr, extra);
    flush_fails(&env, r.addr, extra, "receiver").await;
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_with_keys_will_not_fall_back_to_a_plaintext_receiver() {
    let env = Env::new();
    let (_s_fp, r_fp) = (keygen(&env, "keys-s"), keygen(&env, "keys-r"));
    env.write("index.html", "x");
    let r = env.start_receiver("").await;
    let extra = format!("interval = \"5m\"\n{}", sender_keys("keys-s", &r_fp));
    let s = env.start_sender(r.addr, &extra);
    flush_fails(&env, r.addr, &extra, "TLS handshake").await;
    s.stop().await;
    r.stop().await;
}

#[test]
fn keygen_will_not_replace_a_key_pair() {
    let env = Env::new();
    let fp = keygen(&env, "keys");
    let out = shipper(&["keygen", "--out", env.path().join("keys").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains(&fp), "{}", text(&out));
}

#[test]
fn start_refuses_remote_addresses_without_keys_and_shared_state_dirs() {
    let env = Env::new();
    let file = env.config_file("remote.toml", &env.receiver_toml("0.0.0.0:7700", ""));
    let out = shipper(&["run", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("receiver.key_dir") && text(&out).contains("remote.toml"),
        "{}",
        text(&out)
    );

    std::fs::set_permissions(
        env.path().join("state-r"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let file = env.config_file("local.toml", &env.receiver_toml("127.0.0.1:0", ""));
    let out = shipper(&["run", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("receiver.state_dir") && text(&out).contains("writable"),
        "{}",
        text(&out)
    );
}

/// Two senders allowed by one receiver, both with `id = "cms"`: once B had
/// shipped more bundles than A, the receiver took A's next sequences for
/// ones it had already applied and acknowledged them unapplied, so A's
/// later files never arrived (and A recorded them as acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_with_one_id_do_not_swallow_each_others_bundles() {
    let env = Env::new();
    let (a_fp, b_fp, r_fp) = (
        keygen(&env, "keys-a"),
        keygen(&env, "keys-b"),
        keygen(&env, "keys-r"),
    );
    let r = env
        .start_receiver(&format!(
            "key_dir = \"keys-r\"\nallowed_senders = [\"{a_fp}\", \"{b_fp}\"]\n"
        ))
        .await;
    // Both publish into one root: A's files live under a/, B's under b/.
    let sender = |name: &str, extra: &str| {
        std::fs::create_dir_all(env.path().join(format!("src-{name}"))).unwrap();
        format!(
            "[sender]\nsource = \"src-{name}\"\nreceiver = \"{}\"\nstate_dir = \"state-{name}\"\nid = \"cms\"\ninterval = \"1s\"\nsettle = \"250ms\"\n{}{extra}",
            r.addr,
            sender_keys(&format!("keys-{name}"), &r_fp)
        )
    };
    let arrived =
        |rel: &str, data: &[u8]| std::fs::read(env.root().join(rel)).is_ok_and(|d| d == data);
    let write = |rel: &str, data: &[u8]| {
        let p = env.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };

    let a = env.start_sender_from(r.addr, &sender("a", ""));
    for i in 1..=2 {
        let data = format!("A's file {i}");
        write(&format!("src-a/a/{i}.html"), data.as_bytes());
        wait_until(&format!("A's file {i}"), || {
            arrived(&format!("a/{i}.html"), data.as_bytes())
        })
        .await;
    }

    // B ships one 1 MiB file in 64 KiB parts, one part per bundle.
    let b = env.start_sender_from(
        r.addr,
        &sender(
            "b",
            "chunk_size = \"64KiB\"\nmax_bundle_size = \"128KiB\"\n",
        ),
    );
    let big = noise(1 << 20, 3);
    write("src-b/b/big.bin", &big);
    wait_until("B's file", || arrived("b/big.bin", &big)).await;
    let b_state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path().join("state-b/sender.json")).unwrap())
            .unwrap();
    assert!(
        b_state["next_seq"].as_u64().unwrap() > 10,
        "B shipped fewer than 10 bundles: {b_state}"
    );

    // A, connected all along, ships three more files.
    for i in 3..=5 {
        write(
            &format!("src-a/a/{i}.html"),
            format!("A's file {i}").as_bytes(),
        );
    }
    wait_until("all of A's files", || {
        (1..=5).all(|i| arrived(&format!("a/{i}.html"), format!("A's file {i}").as_bytes()))
    })
    .await;

    // The archive tells the two apart too: replaying it rebuilds root.
    wait_until("last bundle archived", || {
        std::fs::read_dir(env.path().join("state-r/publishing"))
            .is_ok_and(|mut d| d.next().is_none())
    })
    .await;
    let restored = env.path().join("restored");
    let mut args = owned(&["replay", "--root", restored.to_str().unwrap()]);
    args.extend(
        env.archived()
            .iter()
            .map(|b| b.to_string_lossy().into_owned()),
    );
    let out = shipper_async(args).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&restored), tree(&env.root()));
    a.stop().await;
    b.stop().await;
    r.stop().await;
}
