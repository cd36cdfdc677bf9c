//! The binary: `run` with bad configs, `flush` against a running sender.

use crate::util::*;

#[test]
fn each_config_error_is_refused_naming_file_and_key() {
    let env = Env::new();
    let cases = [
        ("interval = \"10m\"\n", "sender.interval"),
        ("settle = \"5m\"\n", "sender.settle"),
        ("max_delay = \"6m\"\n", "sender.max_delay"),
        ("schedule = \"0 0 * * * *\"\n", "sender.schedule"),
        ("bogus = 1\n", "bogus"),
        ("chunk_size = \"lots\"\n", "sender.chunk_size"),
    ];
    for (i, (extra, key)) in cases.iter().enumerate() {
        let file = env.config_file(
            &format!("bad{i}.toml"),
            &env.sender_toml("127.0.0.1:9", extra),
        );
        let out = shipper(&["run", "--config", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{extra:?} accepted");
        let t = text(&out);
        assert!(
            t.contains(key) && t.contains(&format!("bad{i}.toml")),
            "{extra:?}: {t}"
        );
    }
    let out = shipper(&[
        "run",
        "--config",
        env.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("missing.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_ships_pending_changes_now_and_reports_them() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    // Interval at its 5-minute maximum: only flush can ship within the test.
    let extra = "interval = \"5m\"\nsettle = \"1m\"\n";
    let s = env.start_sender(r.addr, extra);
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), extra));
    wait_until("control socket", || {
        env.path().join("state-s/control.sock").exists()
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    let sock = env.path().join("state-s/control.sock");
    let mode = std::fs::metadata(sock).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "control socket must be private to its user"
    );
    env.write("now.html", "flushed");
    env.write("also/now.txt", "too");
    // The watcher delivers events asynchronously (the new directory's file
    // after a walk of it): flush until flushes have carried both, each
    // saying what it shipped. With a 5-minute interval nothing else could.
    let end = std::time::Instant::now() + DEADLINE;
    let (mut files, mut seq) = (0, 1);
    while files < 2 {
        let f = file.clone();
        let out = shipper_async(owned(&["flush", "--config", f.to_str().unwrap()])).await;
        assert!(out.status.success(), "{}", text(&out));
        let said = text(&out);
        if let Some(n) = ["1 file", "2 files"]
            .iter()
            .position(|n| said.contains(&format!("shipped sequence {seq} (1 bundle): {n}")))
        {
            files += n + 1;
            seq += 1;
        } else {
            assert!(said.contains("nothing to ship"), "{said}");
        }
        assert!(
            std::time::Instant::now() < end,
            "flush never shipped the files"
        );
    }
    assert_eq!(files, 2, "flushes reported more files than were written");
    assert_eq!(
        std::fs::read(env.root().join("now.html")).unwrap(),
        b"flushed"
    );
    assert_eq!(
        std::fs::read(env.root().join("also/now.txt")).unwrap(),
        b"too"
    );
    s.stop().await;
    r.stop().await;
}

/// A change larger than one packing run (four bundles' worth of files) is
/// packed in runs one after the other: a flush answers once the last run's
/// bundles are acknowledged, counting every file, and they are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_answers_once_a_change_larger_than_one_packing_run_is_all_shipped() {
    let env = Env::new();
    for i in 0..30 {
        env.write(&format!("site/p{i:02}.html"), format!("page {i}"));
    }
    let r = env.start_receiver("").await;
    // Runs of 4 bundles of 2 files; nothing ships but what a flush forces.
    let extra = "interval = \"5m\"\nsettle = \"1m\"\nmax_files_per_bundle = 2\n";
    let s = env.start_sender(r.addr, extra);
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), extra));
    wait_until("control socket", || {
        env.path().join("state-s/control.sock").exists()
    })
    .await;
    let end = std::time::Instant::now() + DEADLINE;
    let said = loop {
        // Until the sender's comparison of the tree has queued the files.
        let out = shipper_async(owned(&["flush", "--config", file.to_str().unwrap()])).await;
        assert!(out.status.success(), "{}", text(&out));
        let said = text(&out);
        if !said.contains("nothing to ship") {
            break said;
        }
        assert!(
            std::time::Instant::now() < end,
            "flush never shipped: {said}"
        );
    };
    assert!(said.contains(": 30 files, 0 deletions"), "{said}");
    assert_eq!(
        tree(&env.root()),
        tree(&env.src()),
        "the flush answered before its last run was acknowledged"
    );
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_fails_with_the_reason_when_the_receiver_is_unreachable() {
    let env = Env::new();
    let addr = free_addr();
    let s = env.start_sender(addr, "interval = \"5m\"\n");
    let file = env.config_file(
        "sender.toml",
        &env.sender_toml(&addr.to_string(), "interval = \"5m\"\n"),
    );
    wait_until("control socket", || {
        env.path().join("state-s/control.sock").exists()
    })
    .await;
    env.write("x.html", "x");
    let out = shipper_async(owned(&[
        "flush",
        "--config",
        file.to_str().unwrap(),
        "--timeout",
        "2s",
    ]))
    .await;
    assert!(!out.status.success(), "flush succeeded with no receiver");
    let t = text(&out);
    assert!(
        t.contains(&addr.to_string()) && t.to_lowercase().contains("refused"),
        "{t}"
    );
    s.stop().await;
}

#[test]
fn flush_without_a_running_sender_says_so() {
    let env = Env::new();
    let file = env.config_file("sender.toml", &env.sender_toml("127.0.0.1:9", ""));
    let out = shipper(&["flush", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no sender is running"),
        "{}",
        text(&out)
    );
}

#[test]
fn man_page_and_completions_cover_every_subcommand() {
    let man = shipper(&["man"]);
    assert!(man.status.success());
    let roff = String::from_utf8(man.stdout).unwrap();
    assert!(roff.contains(".TH shipper"), "not a man page");
    let bash = shipper(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8(bash.stdout).unwrap();
    for sub in [
        "run", "flush", "replay", "inspect", "status", "pause", "resume", "keygen",
    ] {
        assert!(roff.contains(sub), "man page lacks {sub}");
        assert!(script.contains(sub), "completions lack {sub}");
    }
}

/// A second `shipper run` on a running sender's state_dir (an operator
/// trying it by hand beside the service) removed the running sender's
/// bundles and files in use, then kept running beside it, both numbering
/// bundles from the same state. It is refused at once, naming the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sender_on_one_state_dir_is_refused_and_touches_nothing() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    env.write("a.txt", "a");
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let first = Daemon::start(&file, &env.path().join("first.log"), None);
    wait_in_sync(&env).await;
    let inflight = env.path().join("state-s/.shipper-tmp-inflight");
    std::fs::write(&inflight, "a snapshot being written").unwrap();
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_shipper"))
        .args(["run", "--config", &file.to_string_lossy()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Refused at once; a second sender that runs on is killed, and fails.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while run.try_wait().unwrap().is_none() && std::time::Instant::now() < end {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = run.try_wait().unwrap().is_some();
    if !refused {
        let _ = run.kill();
    }
    let second = run.wait_with_output().unwrap();
    assert!(refused, "a second sender kept running: {}", text(&second));
    assert!(!second.status.success(), "{}", text(&second));
    let pid = first.child.id().to_string();
    assert!(
        text(&second).contains("a sender is running with this state_dir")
            && text(&second).contains(&pid),
        "{}",
        text(&second)
    );
    assert!(inflight.exists(), "the running sender's file was removed");
    env.write("b.txt", "b");
    wait_in_sync(&env).await;
    drop(first);
    r.stop().await;
}
