//! Only the right peer gets in: mutual TLS with pinned fingerprints.

use std::os::unix::fs::PermissionsExt;

use crate::util::*;

/// Make a key pair with the binary; returns its printed fingerprint.
fn keygen(env: &Env, name: &str) -> String {
    let dir = env.path().join(name);
    let out = shipper(&["keygen", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let fp = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(fp.len(), 63, "{fp}");
    fp
}

fn receiver_keys(dir: &str, allowed: &str) -> String {
    format!("key_dir = \"{dir}\"\nallowed_senders = [\"{allowed}\"]\n")
}

fn sender_keys(dir: &str, pin: &str) -> String {
    format!("key_dir = \"{dir}\"\nreceiver_fingerprint = \"{pin}\"\n")
}

/// Run `shipper flush` against the sender of `extra`; expect it to fail
/// mentioning `why`, with nothing reaching root.
async fn flush_fails(env: &Env, addr: std::net::SocketAddr, extra: &str, why: &str) {
    let file = env.config_file("flush.toml", &env.sender_toml(&addr.to_string(), extra));
    wait_until("control socket", || {
        env.path().join("state-s/control.sock").exists()
    })
    .await;
    let out = shipper_async(owned(&[
        "flush",
        "--config",
        file.to_str().unwrap(),
        "--timeout",
        "3s",
    ]))
    .await;
    assert!(!out.status.success(), "flush succeeded");
    assert!(
        text(&out).contains(why),
        "flush error does not say {why:?}: {}",
        text(&out)
    );
    assert!(tree(&env.root()).is_empty(), "something reached root");
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
