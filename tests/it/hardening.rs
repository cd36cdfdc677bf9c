//! Findings of the code audit: what an attacker or a race could make the
//! sender or receiver do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::*;

/// A directory swapped for a symlink between the walk and the read made the
/// sender read through the link: a file outside `source` (a key, say) could
/// be published into the web root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_symlink_never_ships_what_lies_outside_source() {
    let env = Env::new();
    let outside = env.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("page.html"), "SECRET-KEY-MATERIAL").unwrap();
    env.write("d/page.html", "public page");
    env.write("index.html", "home");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "settle = \"50ms\"\n");
    wait_in_sync(&env).await;

    // Swap src/d for a symlink to the outside and back, again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (src, outside, stop) = (env.src(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            let (d, real) = (src.join("d"), src.join("d.real"));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::fs::rename(&d, &real).unwrap();
                std::os::unix::fs::symlink(&outside, &d).unwrap();
                std::thread::sleep(Duration::from_millis(3));
                std::fs::remove_file(&d).unwrap();
                std::fs::rename(&real, &d).unwrap();
                // Keep the page changing so it is packed again and again.
                if n.is_multiple_of(20) {
                    std::fs::write(d.join("page.html"), format!("public page {n}")).unwrap();
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(8);
    let leaked = |env: &Env| {
        tree(&env.root())
            .values()
            .chain(
                env.archived()
                    .iter()
                    .map(|p| std::fs::read(p).unwrap())
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .any(|c| c.windows(6).any(|w| w == b"SECRET"))
    };
    while Instant::now() < end {
        assert!(
            !leaked(&env),
            "a file from outside source reached the receiver"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    wait_in_sync(&env).await;
    assert!(
        !leaked(&env),
        "a file from outside source reached the receiver"
    );
    s.stop().await;
    r.stop().await;
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Two receivers, the second (`second/www`) at the returned table, and a
/// sender (table also returned) whose outbox holds 2 MiB; `files` shipped
/// to both.
async fn two_receivers_small_outbox(
    env: &Env,
    files: &[&str],
) -> (Role, Role, Role, String, String) {
    for f in files {
        env.write(f, format!("{f} to both"));
    }
    let r1 = env.start_receiver("").await;
    let addr2 = free_addr();
    let second = format!(
        "[receiver]\nlisten = \"{addr2}\"\nroot = \"second/www\"\nstate_dir = \"second/state\"\narchive_dir = \"second/archive\"\n"
    );
    let r2 = env.start_receiver_from(&second).await;
    let extra = "outbox_max = \"2MiB\"\nmax_bundle_size = \"1MiB\"\nchunk_size = \"512KiB\"\n";
    let toml = env.sender_toml_to(&[r1.addr, addr2], extra);
    let s = env.start_sender_from(r1.addr, &toml);
    let root2 = env.path().join("second/www");
    wait_until("both have the files", || tree(&root2) == tree(&env.src())).await;
    (r1, r2, s, second, toml)
}

/// 5.6 MB of new files, each waited for at the first receiver: over the
/// outbox's budget while the second is away. Returns the most the outbox
/// held meanwhile.
async fn overfill_the_outbox(env: &Env) -> u64 {
    let outbox = env.path().join("state-s/outbox");
    let mut peak = 0;
    for i in 0..8 {
        let name = format!("media/{i}.bin");
        env.write(&name, noise(700_000, i));
        let root1 = env.root();
        wait_until("the first receiver has it", || root1.join(&name).exists()).await;
        peak = peak.max(dir_bytes(&outbox));
    }
    peak
}

/// With one of two receivers down, every bundle waited in the outbox for it:
/// the sender's disk filled because a web server was off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_away_never_fills_the_outbox_past_its_budget() {
    let env = Env::new();
    let (r1, r2, s, second, toml) = two_receivers_small_outbox(&env, &["first.html"]).await;
    let file = env.config_file("sender.toml", &toml);
    r2.stop().await;
    let peak = overfill_the_outbox(&env).await;
    // The budget, plus the one bundle being added when it was exceeded.
    assert!(peak <= 3 << 20, "outbox grew to {peak} bytes");
    let v = wait_status(&file, "the away receiver marked for the whole tree", |v| {
        v["receivers"][1]["whole_tree_pending"] == true
    })
    .await;
    assert!(v["outbox_max"].as_u64() == Some(2 << 20), "{v}");

    // It comes back and gets everything.
    let r2 = env.start_receiver_from(&second).await;
    let root2 = env.path().join("second/www");
    wait_until("the second receiver has the whole tree", || {
        tree(&root2) == tree(&env.src())
    })
    .await;
    wait_status(&file, "whole tree acknowledged", |v| {
        v["receivers"][1]["whole_tree_pending"] == false
    })
    .await;
    s.stop().await;
    r1.stop().await;
    r2.stop().await;
}

/// A receiver whose backlog was dropped gets the whole tree on its return,
/// and a whole tree only adds and updates: pages deleted while it was away
/// stayed served there for good. The deletions its backlog held now go
/// with that tree; a file deleted and written again meanwhile is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_deleted_while_a_receivers_backlog_was_dropped_are_deleted_there_too() {
    deleted_while_the_backlog_was_dropped(false).await;
}

/// The same, with the sender restarted before the receiver returns: the
/// deletions were recorded durably, not only in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_missed_in_a_dropped_backlog_survive_a_restart_of_the_sender() {
    deleted_while_the_backlog_was_dropped(true).await;
}

async fn deleted_while_the_backlog_was_dropped(restart: bool) {
    let env = Env::new();
    let files = ["gone.html", "old/page.html", "back.html", "kept.html"];
    let (r1, r2, s, second, toml) = two_receivers_small_outbox(&env, &files).await;
    let file = env.config_file("sender.toml", &toml);
    r2.stop().await;
    std::fs::remove_file(env.src().join("gone.html")).unwrap();
    std::fs::remove_dir_all(env.src().join("old")).unwrap();
    std::fs::remove_file(env.src().join("back.html")).unwrap();
    let root1 = env.root();
    wait_until("the first receiver deleted them", || {
        !root1.join("old").exists() && !root1.join("back.html").exists()
    })
    .await;
    env.write("back.html", "written again");
    wait_until("the first receiver has it again", || {
        root1.join("back.html").exists()
    })
    .await;
    overfill_the_outbox(&env).await;
    wait_status(&file, "the deletions it missed recorded", |v| {
        v["receivers"][1]["whole_tree_pending"] == true
            && v["receivers"][1]["missed_deletions"].as_u64() >= Some(3)
    })
    .await;
    let root2 = env.path().join("second/www");
    assert!(root2.join("gone.html").exists(), "nothing reached it yet");

    let s = match restart {
        true => {
            s.stop().await;
            env.start_sender_from(r1.addr, &toml)
        }
        false => s,
    };
    let r2 = env.start_receiver_from(&second).await;
    wait_until("the second receiver has the source's tree", || {
        tree(&root2) == tree(&env.src())
    })
    .await;
    assert!(
        !root2.join("old").exists(),
        "its emptied directory is pruned"
    );
    assert_eq!(
        std::fs::read(root2.join("back.html")).unwrap(),
        b"written again"
    );
    wait_status(&file, "whole tree and deletions acknowledged", |v| {
        v["receivers"][1]["whole_tree_pending"] == false
            && v["receivers"][1]["missed_deletions"] == 0
    })
    .await;
    s.stop().await;
    r1.stop().await;
    r2.stop().await;
}

/// An outbox budget above the free space would let the disk fill anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_budget_above_the_free_space_is_refused_naming_the_key() {
    let env = Env::new();
    let _disk = Mount::tmpfs(&env.path().join("state-s"), "4m")
        .unwrap_or_else(|why| panic!("this test needs to mount a tmpfs (run as root): {why}"));
    std::fs::set_permissions(
        env.path().join("state-s"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let addr = free_addr();
    let cfg = env
        .config(&env.sender_toml(&addr.to_string(), "outbox_max = \"1GiB\"\n"))
        .sender
        .unwrap();
    let e = shipper::sender::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("sender.outbox_max"), "{e:#}");
}

/// A damaged ledger (what the receivers acknowledged) must stop the
/// sender at once, naming the file: trusted, or silently started afresh,
/// it would ship the wrong things; waited on, it would hang the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_ledger_stops_the_sender_at_once_naming_the_file() {
    let env = Env::new();
    let state = env.path().join("state-s");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("acked.snapshot"), b"{\"files\": [not json").unwrap();
    let addr = free_addr();
    let cfg = env
        .config(&env.sender_toml(&addr.to_string(), ""))
        .sender
        .unwrap();
    let run = shipper::sender::run(cfg, tokio_util::sync::CancellationToken::new());
    let e = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the sender stops instead of waiting")
        .unwrap_err();
    assert!(format!("{e:#}").contains("acked.snapshot"), "{e:#}");
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Connections were unbounded and never timed out: a thousand idle clients
/// held a thousand descriptors in the receiver, and more would exhaust it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_neither_exhaust_the_receiver_nor_stop_the_sender() {
    let env = Env::new();
    let addr = free_addr();
    let cfg = env.config_file("receiver.toml", &env.receiver_toml(&addr.to_string(), ""));
    let receiver = Daemon::start(&cfg, &env.path().join("receiver.log"), None);
    let pid = receiver.child.id();
    let listening = env.path().join("state-r/listen.addr");
    wait_until("the receiver listening", || listening.exists()).await;
    let baseline = fds(pid);

    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Ok(c) = tokio::net::TcpStream::connect(addr).await {
            idle.push(c);
        }
    }
    assert!(idle.len() >= 900, "only {} connections opened", idle.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = fds(pid);
    assert!(
        held < baseline + 150,
        "the receiver holds {held} descriptors for 1,000 idle connections (baseline {baseline})"
    );

    // The real sender still gets through and ships.
    let s = env.start_sender(addr, "");
    env.write("page.html", "still shipping");
    wait_in_sync(&env).await;
    let log = receiver.log_text();
    assert!(log.contains("too many connections"), "{log}");
    drop(idle);
    s.stop().await;
}
