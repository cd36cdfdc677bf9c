//! Nothing lost across restarts: the sender's acknowledged state, catch-up,
//! and the receiver's recovery.

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sender_ships_only_what_changed_while_it_was_down() {
    let env = Env::new();
    for i in 0..50 {
        env.write(&format!("pages/p{i}.html"), format!("page {i}"));
    }
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    // Let the last acknowledgement reach the ledger before stopping.
    wait_until("all bundles acknowledged", || {
        std::fs::read_dir(env.path().join("state-s/outbox"))
            .map(|d| d.count() == 0)
            .unwrap_or(false)
    })
    .await;
    // Acknowledged means archived too: the receiver archives before it acks.
    let acked = env.archived().len();
    s.stop().await;

    // While the sender is down: one modified, one deleted, one new.
    env.write("pages/p3.html", "page 3, edited while down");
    std::fs::remove_file(env.src().join("pages/p4.html")).unwrap();
    env.write("new/while-down.html", "new");

    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    // Whatever bundles the catch-up took, together they carry exactly the
    // changes made while the sender was down.
    let catch_up = |env: &Env| {
        let (mut files, mut deletions) = (Vec::new(), Vec::new());
        for b in &env.archived()[acked..] {
            let m = shipper::bundle::apply::open(b, &Default::default())
                .unwrap()
                .manifest;
            files.extend(m.files.into_iter().map(|f| f.path));
            deletions.extend(m.deletions);
        }
        (files, deletions)
    };
    wait_until("catch-up bundles archived", || {
        let (f, d) = catch_up(&env);
        f.len() + d.len() >= 3
    })
    .await;
    let (mut files, deletions) = catch_up(&env);
    files.sort();
    assert_eq!(
        files,
        ["new/while-down.html", "pages/p3.html"],
        "re-shipped unchanged files"
    );
    assert_eq!(deletions, ["pages/p4.html"]);
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_deletion_is_held_until_flush_allows_it() {
    let env = Env::new();
    for i in 0..200 {
        env.write(&format!("site/p{i}.html"), format!("page {i}"));
    }
    let r = env.start_receiver("").await;
    let extra = "interval = \"1s\"\nsettle = \"100ms\"\n";
    let s = env.start_sender(r.addr, extra);
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), extra));
    wait_in_sync(&env).await;

    // An accident: 150 of 200 pages vanish from the source.
    for i in 0..150 {
        std::fs::remove_file(env.src().join(format!("site/p{i}.html"))).unwrap();
    }
    let flush = |args: &'static [&'static str]| {
        let f = file.clone();
        async move {
            let mut all = vec!["flush", "--config", f.to_str().unwrap()];
            all.extend_from_slice(args);
            let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
            shipper_async(all).await
        }
    };
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let out = flush(&[]).await;
        assert!(out.status.success(), "{}", text(&out));
        if text(&out).contains("150 deletions held by the mass-deletion guard") {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "guard never reported: {}",
            text(&out)
        );
    }
    assert_eq!(
        tree(&env.root()).len(),
        200,
        "held deletions reached the receiver"
    );

    let out = flush(&["--allow-mass-delete"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("150 deletions"), "{}", text(&out));
    assert_eq!(tree(&env.root()), tree(&env.src()));
    assert_eq!(tree(&env.root()).len(), 50);
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_interrupted_by_a_crash_is_finished_at_start() {
    let env = Env::new();
    env.write("a.html", "one");
    env.write("sub/b.html", "two");
    let b = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
    // What a receiver killed mid-publish leaves: the bundle in publishing/,
    // one of its files already in root, sequence not yet recorded.
    let publishing = env.path().join("state-r/publishing");
    std::fs::create_dir_all(&publishing).unwrap();
    std::fs::copy(&b.path, publishing.join("test-00000000000000000001.zip")).unwrap();
    std::fs::write(env.root().join("a.html"), "one").unwrap();
    let r = env.start_receiver("").await;
    assert_eq!(
        tree(&env.root()),
        tree(&env.src()),
        "not finished before accepting senders"
    );
    let state = std::fs::read_to_string(env.path().join("state-r/receiver.json")).unwrap();
    assert!(state.contains("\"test\": 1"), "{state}");
    assert_eq!(std::fs::read_dir(&publishing).unwrap().count(), 0);
    assert_eq!(env.archived().len(), 1);
    r.stop().await;
}

/// A crash after a bundle's sequence was recorded but before it was
/// archived left it in publishing/; at the next start it was applied again
/// over the newer bundles recorded after it, rolling root back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_bundle_already_recorded_is_archived_not_applied_again() {
    let env = Env::new();
    env.write("a.html", "one");
    let b = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
    let publishing = env.path().join("state-r/publishing");
    std::fs::create_dir_all(&publishing).unwrap();
    std::fs::copy(&b.path, publishing.join("test-00000000000000000001.zip")).unwrap();
    // Bundle 2 came after it: recorded, and its version of a.html in root.
    std::fs::write(
        env.path().join("state-r/receiver.json"),
        r#"{"applied": {"test": 2}}"#,
    )
    .unwrap();
    std::fs::write(env.root().join("a.html"), "two").unwrap();
    let r = env.start_receiver("").await;
    assert_eq!(
        std::fs::read(env.root().join("a.html")).unwrap(),
        b"two",
        "an older bundle rolled root back"
    );
    let state = std::fs::read_to_string(env.path().join("state-r/receiver.json")).unwrap();
    assert!(state.contains("\"test\": 2"), "{state}");
    assert_eq!(std::fs::read_dir(&publishing).unwrap().count(), 0);
    assert_eq!(
        env.archived().len(),
        1,
        "the recorded bundle was not archived"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_staging_and_half_received_bundles_are_cleaned_at_start() {
    let env = Env::new();
    let staging = env.path().join("state-r/staging/.shipper-stage-test-7");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("f0"), "half").unwrap();
    let incoming = env.path().join("state-r/incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::write(incoming.join("test-8-0.zip.part"), "half").unwrap();
    std::fs::write(
        incoming.join("test-9.zip.part"),
        "half, as earlier versions named it",
    )
    .unwrap();
    let r = env.start_receiver("").await;
    assert!(!staging.exists());
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0);
    assert!(tree(&env.root()).is_empty());
    r.stop().await;
}

/// A TCP proxy to `upstream` that passes the greeting both ways and then
/// only what the sender sends: the receiver applies every bundle, and its
/// acknowledgements are lost on the way back.
async fn ack_losing_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                // Bytes the sender sent: past its hello, a bundle is on its way.
                let up = Arc::new(AtomicU64::new(0));
                let counted = up.clone();
                let upstream = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(k) = cr.read(&mut buf).await {
                        if k == 0 || sw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                        counted.fetch_add(k as u64, Ordering::SeqCst);
                    }
                };
                let downstream = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(k) = sr.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        if up.load(Ordering::SeqCst) < 200 && cw.write_all(&buf[..k]).await.is_err()
                        {
                            break;
                        }
                    }
                };
                tokio::select! { _ = upstream => {}, _ = downstream => {} }
            });
        }
    });
    addr
}

/// How it broke (kill suite): a receiver applied a bundle that created a
/// file, the sender died before the acknowledgement reached its ledger, and
/// the file was deleted meanwhile. The restarted sender took the receiver
/// to lack the file, so its deletion was never shipped and the receiver
/// kept it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_applied_without_a_recorded_acknowledgement_is_deleted_after_a_restart() {
    let env = Env::new();
    env.write("kept.html", "kept");
    env.write("applied.html", "applied, its acknowledgement lost");
    let r = env.start_receiver("").await;
    let proxy = ack_losing_proxy(r.addr).await;
    let s = env.start_sender(proxy, "");
    wait_in_sync(&env).await;
    // Stopped like a crash: nothing acknowledged reached the ledger.
    s.stop().await;
    std::fs::remove_file(env.src().join("applied.html")).unwrap();

    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}
