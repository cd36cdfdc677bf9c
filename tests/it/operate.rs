//! Operating a running sender or receiver: status, pause and resume, JSON
//! logs, metrics.

use crate::util::*;

fn args(cmd: &str, file: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        cmd.to_string(),
        "--config".into(),
        file.to_string_lossy().into_owned(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_receiver_and_pause_holds_changes_across_a_restart() {
    let env = Env::new();
    env.write("first.html", "1");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    wait_in_sync(&env).await;

    // JSON status names the receiver, its acknowledgements and what was shipped.
    let end = std::time::Instant::now() + DEADLINE;
    let report = loop {
        let out = shipper_async(args("status", &file, &["--json"])).await;
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["receivers"][0]["last_ack_seq"].as_u64().is_some() {
            break v;
        }
        assert!(
            std::time::Instant::now() < end,
            "no acknowledgement in status: {v}"
        );
    };
    assert_eq!(report["paused"], false);
    assert_eq!(report["receivers"][0]["receiver"], r.addr.to_string());
    assert_eq!(report["receivers"][0]["connected"], true);
    assert!(report["receivers"][0]["bundles_shipped"].as_u64().unwrap() >= 1);
    let human = shipper_async(args("status", &file, &[])).await;
    assert!(text(&human).contains("connected since"), "{}", text(&human));

    // Paused: changes accumulate, nothing ships, flush says why.
    let out = shipper_async(args("pause", &file, &[])).await;
    assert!(out.status.success(), "{}", text(&out));
    env.write("while-paused.html", "2");
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let out = shipper_async(args("status", &file, &["--json"])).await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["pending_paths"].as_u64() == Some(1) {
            assert_eq!(v["paused"], true);
            break;
        }
        assert!(std::time::Instant::now() < end, "change not pending: {v}");
    }
    let out = shipper_async(args("flush", &file, &[])).await;
    assert!(
        !out.status.success() && text(&out).contains("paused"),
        "{}",
        text(&out)
    );
    assert!(!env.root().join("while-paused.html").exists());

    // The pause outlives a restart of the sender.
    s.stop().await;
    let s = env.start_sender(r.addr, "");
    wait_until("control socket", || {
        env.path().join("state-s/control.sock").exists()
    })
    .await;
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let out = shipper_async(args("status", &file, &["--json"])).await;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["paused"], true, "pause lost in a restart: {v}");
            break;
        }
        assert!(std::time::Instant::now() < end, "{}", text(&out));
    }
    assert!(!env.root().join("while-paused.html").exists());

    let out = shipper_async(args("resume", &file, &[])).await;
    assert!(out.status.success(), "{}", text(&out));
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}

#[test]
fn log_lines_can_be_json() {
    let env = Env::new();
    let bundles = {
        env.write("a.html", "x");
        vec![crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]).path]
    };
    let restored = env.path().join("restored");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shipper"))
        .args([
            "--log-format",
            "json",
            "replay",
            "--root",
            restored.to_str().unwrap(),
            bundles[0].to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.contains("bundle replayed"))
        .map(str::to_owned)
        .expect("a log line for the replayed bundle");
    let v: serde_json::Value = serde_json::from_str(&line).expect("log line is JSON");
    assert_eq!(v["fields"]["seq"], 1);
    assert_eq!(v["level"], "INFO");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_the_status_figures() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new();
    env.write("a.html", "x");
    let r = env.start_receiver("").await;
    let metrics = free_addr();
    let s = env.start_sender(r.addr, &format!("metrics = \"{metrics}\"\n"));
    wait_in_sync(&env).await;
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let mut body = String::new();
        if let Ok(mut c) = tokio::net::TcpStream::connect(metrics).await {
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            c.read_to_string(&mut body).await.unwrap();
        }
        let line = format!(
            "shipper_receiver_bundles_shipped_total{{receiver=\"{}\"}} 1",
            r.addr
        );
        if body.lines().any(|l| l == line) {
            assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
            assert!(
                body.contains("shipper_pending_paths{sender=\"test\"} 0"),
                "{body}"
            );
            assert!(
                body.contains(&format!(
                    "shipper_receiver_connected{{receiver=\"{}\"}} 1",
                    r.addr
                )),
                "{body}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "metrics never showed the shipped bundle:\n{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    s.stop().await;
    r.stop().await;
}

/// A receiver with `metrics` set counts, per sender, the bundles it applied
/// (and their bytes and time) and those it refused by kind and reason, and
/// tells how much space is left on root's filesystem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_metrics_count_applied_and_refused_bundles_and_free_space() {
    use shipper::proto::Frame;
    let env = Env::new();
    // Root on a filesystem of a known size, so its free space is known.
    let disk = env.path().join("disk");
    let _mount = Mount::tmpfs(&disk, "8m").unwrap_or_else(|why| {
        panic!("this test needs to mount a tmpfs (root or CAP_SYS_ADMIN): {why}")
    });
    std::fs::write(disk.join("ballast"), vec![1u8; 3 << 20]).unwrap();
    let metrics = free_addr();
    let r = env
        .start_receiver_from(&format!(
            "[receiver]\nlisten = \"127.0.0.1:0\"\nroot = \"disk/www\"\nstate_dir = \"state-r\"\narchive_dir = \"archive\"\nmetrics = \"{metrics}\"\n"
        ))
        .await;
    env.write("a.html", "applied");
    let b = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
    let before = shipper::status::unix_now();
    let (mut c, _) = crate::bundles::session(r.addr).await;
    assert_eq!(
        crate::bundles::send(&mut c, &b).await,
        Frame::Ack {
            seq: 1,
            hook: Default::default()
        }
    );
    let after = shipper::status::unix_now();
    for hostile in ["dotdot", "hash-mismatch", "huge-declared-size"] {
        let answer = crate::hostile::send_hostile(r.addr, hostile).await;
        assert!(
            matches!(answer, Frame::Refuse { .. }),
            "{hostile}: {answer:?}"
        );
    }

    let body = scrape(metrics).await;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let at =
        |series: &str| sample(&body, series).unwrap_or_else(|| panic!("no {series} in:\n{body}"));
    assert_eq!(at(r#"shipper_bundles_applied_total{sender="test"}"#), 1.0);
    assert_eq!(
        at(r#"shipper_bundle_bytes_applied_total{sender="test"}"#),
        b.size as f64
    );
    let applied_at = at(r#"shipper_last_apply_timestamp_seconds{sender="test"}"#);
    assert!(
        (before as f64..=after as f64).contains(&applied_at),
        "{applied_at}"
    );
    for reason in ["path", "hash", "limit"] {
        let series = format!(
            r#"shipper_bundles_refused_total{{sender="hostile",kind="permanent",reason="{reason}"}}"#
        );
        assert_eq!(at(&series), 1.0, "{series}");
    }
    assert_eq!(
        sample(&body, r#"shipper_bundles_applied_total{sender="hostile"}"#),
        None
    );
    // 8 MiB less the 3 MiB ballast, less what root and the filesystem hold.
    let free = at("shipper_root_free_bytes");
    assert!(
        (4.5 * 1048576.0..=5.0 * 1048576.0).contains(&free),
        "root's filesystem has about 5 MiB free, the metric says {free}"
    );
    r.stop().await;
}

/// A receiver whose metrics address cannot be listened on does not start,
/// and says which key is at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refuses_to_start_when_its_metrics_address_is_taken() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = env
        .config(&env.receiver_toml("127.0.0.1:0", &format!("metrics = \"{addr}\"\n")))
        .receiver
        .unwrap();
    let Err(e) = shipper::receiver::Receiver::bind(cfg).await else {
        panic!("the receiver started without its metrics endpoint");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains(&format!("receiver.metrics: cannot listen on {addr}")),
        "{e}"
    );
}

#[test]
fn replay_shows_progress_on_a_terminal_and_nothing_in_a_pipe() {
    let env = Env::new();
    let mut bundles = Vec::new();
    for i in 0..3 {
        env.write(&format!("f{i}.html"), "x");
        bundles.push(
            crate::bundles::pack(&env.src(), &env.path().join(format!("out{i}")), i + 1, &[]).path,
        );
    }
    let restored = env.path().join("restored");
    let mut cmd = vec![
        env!("CARGO_BIN_EXE_shipper").to_string(),
        "replay".into(),
        "--root".into(),
        restored.to_string_lossy().into_owned(),
    ];
    cmd.extend(bundles.iter().map(|b| b.to_string_lossy().into_owned()));
    // In a pipe: no bar.
    let piped = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", text(&piped));
    assert!(
        !text(&piped).contains("bundles,"),
        "progress drawn into a pipe: {}",
        text(&piped)
    );
    // On a terminal (script(1) gives it a pty): a bar.
    // script(1) is in bsdutils, which .ci/run installs when missing.
    let tty = std::process::Command::new("script")
        .args(["-qec", &cmd.join(" "), "/dev/null"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("script(1) runs the command on a pty (install bsdutils)");
    assert!(tty.status.success(), "{}", text(&tty));
    assert!(
        text(&tty).contains("replaying"),
        "no progress on a terminal: {}",
        text(&tty)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_holds_back_no_other_and_catches_up_when_it_returns() {
    let env = Env::new();
    let second = env.path().join("second");
    std::fs::create_dir_all(&second).unwrap();
    let first = env.start_receiver("").await;
    // A second receiver with its own root and state, on a fixed port.
    let addr2 = free_addr();
    let second_toml = format!(
        "[receiver]\nlisten = \"{addr2}\"\nroot = \"second/www\"\nstate_dir = \"second/state\"\narchive_dir = \"second/archive\"\n"
    );
    let r2 = env.start_receiver_from(&second_toml).await;
    env.write("both.html", "to both");
    let extra = format!("receiver = [\"{}\", \"{addr2}\"]\n", first.addr);
    let toml = env
        .sender_toml("unused:1", "")
        .replace("receiver = \"unused:1\"\n", "")
        .replace("[sender]\n", &format!("[sender]\n{extra}"));
    let cfg = env.config(&toml).sender.unwrap();
    assert_eq!(cfg.receivers.len(), 2);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(shipper::sender::run(cfg, stop.clone()));
    let s = Role {
        addr: first.addr,
        stop,
        task,
    };
    let root2 = second.join("www");
    wait_until("both receivers have the file", || {
        env.root().join("both.html").exists() && root2.join("both.html").exists()
    })
    .await;

    // The second receiver dies; the first keeps getting every change.
    r2.stop().await;
    for i in 0..5 {
        env.write(&format!("while-down-{i}.html"), format!("{i}"));
    }
    wait_until("first receiver in sync while the second is down", || {
        tree(&env.root()) == tree(&env.src())
    })
    .await;
    assert!(!root2.join("while-down-0.html").exists());

    // Status shows one receiver up and one down.
    let file = env.config_file("sender.toml", &toml);
    let v = wait_status(&file, "the first up, the second down", |v| {
        v["receivers"][0]["connected"] == true && v["receivers"][1]["connected"] == false
    })
    .await;
    assert_eq!(v["receivers"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(v["receivers"][0]["last_ack_seq"].as_u64().is_some(), "{v}");
    assert!(v["receivers"][1]["last_error"].is_string(), "{v}");

    // It returns and catches up.
    let r2 = env.start_receiver_from(&second_toml).await;
    wait_until("second receiver caught up", || {
        tree(&root2) == tree(&env.src())
    })
    .await;
    s.stop().await;
    r2.stop().await;
    first.stop().await;
}

#[test]
fn a_long_first_ship_shows_progress_on_a_terminal_only() {
    let env = Env::new();
    env.write("media/big.bin", noise(80 << 20, 5));
    // Both roles in one process, on loopback, from a config file.
    let addr = free_addr();
    let both = format!(
        "{}\n{}",
        env.sender_toml(&addr.to_string(), ""),
        env.receiver_toml(&addr.to_string(), "")
    );
    let file = env.config_file("both.toml", &both);
    // Run until the file is in root (at most 60 s), then stop it.
    let run = format!(
        "{} run --config {} & pid=$!; for i in $(seq 600); do [ -f {} ] && break; sleep 0.1; done; kill $pid; wait $pid",
        env!("CARGO_BIN_EXE_shipper"),
        file.display(),
        env.root().join("media/big.bin").display()
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &run, "/dev/null"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("script(1) runs the command on a pty (install bsdutils)");
    assert!(
        text(&tty).contains("first ship"),
        "no progress bar on a terminal: {}",
        text(&tty)
    );
    assert_eq!(
        std::fs::read(env.root().join("media/big.bin"))
            .unwrap()
            .len(),
        80 << 20
    );
}
