//! Fault injection: kill -9 of either side under a steady write load, a
//! proxy that corrupts or cuts the stream, a full disk on the receiver, a
//! publish that fails part-way.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::util::*;

// The library's own copy (its unit tests use it too); test-only, so the
// library does not export it.
#[path = "../../src/beneath/snapshot.rs"]
pub(crate) mod snapshot;
use snapshot::snapshot;

/// A small deterministic generator, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// File content that proves itself whole: payload, then the payload's hash.
fn sealed(payload: &[u8]) -> Vec<u8> {
    let mut v = payload.to_vec();
    v.extend_from_slice(b"\n#");
    v.extend_from_slice(blake3::hash(payload).to_hex().as_bytes());
    v
}

fn is_sealed(content: &[u8]) -> bool {
    if content.len() < 66 {
        return false;
    }
    let (payload, tail) = content.split_at(content.len() - 66);
    tail.starts_with(b"\n#") && &tail[2..] == blake3::hash(payload).to_hex().as_bytes()
}

/// A shipper process that is killed when dropped, so a failing test never
/// leaves one running.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, log: &Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_shipper"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info,shipper=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Proc)
        .expect("start shipper")
}

/// What a differing path looks like everywhere it left a trace: in source
/// and root, in the writer's history, in the sender's ledger, in the
/// archived bundles and in the logs. Printed when the kill test fails.
fn explain(env: &Env, path: &str, history: &[(String, String, String)], logs: &[&Path]) -> String {
    use std::fmt::Write as _;
    let describe = |p: &Path| -> String {
        match (std::fs::read(p), std::fs::symlink_metadata(p)) {
            (Ok(c), Ok(md)) => {
                use std::os::unix::fs::MetadataExt;
                format!(
                    "{} bytes, mtime {}.{:09}, ino {}, hash {}, sealed {}",
                    c.len(),
                    md.mtime(),
                    md.mtime_nsec(),
                    md.ino(),
                    &blake3::hash(&c).to_hex()[..12],
                    is_sealed(&c)
                )
            }
            _ => "absent".into(),
        }
    };
    let mut out = format!("=== {path}\n");
    let _ = writeln!(out, "source: {}", describe(&env.src().join(path)));
    let _ = writeln!(out, "root:   {}", describe(&env.root().join(path)));
    for (t, p, what) in history {
        if p == path {
            let _ = writeln!(out, "writer at {t}: {what}");
        }
    }
    let meta = |m: &Option<shipper::bundle::manifest::FileMeta>| match m {
        Some(m) => format!(
            "{} bytes, mtime {}.{:09}, hash {}, racy {}",
            m.size,
            m.mtime,
            m.mtime_nsec,
            &m.hash[..12],
            m.racy
        ),
        None => "deleted".into(),
    };
    let state = env.path().join("state-s");
    if let Ok(bytes) = std::fs::read(state.join("acked.snapshot")) {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let _ = writeln!(
            out,
            "ledger snapshot (to seq {}): {}",
            v["acked_seq"], v["files"][path]
        );
    }
    let journal = std::fs::read(state.join("acked.journal")).unwrap_or_default();
    for r in shipper::ledger::decode_journal(&journal).0 {
        match r {
            shipper::ledger::Record::Acked(r) => {
                for (p, m) in r.changes.iter().filter(|(p, _)| p == path) {
                    let _ = writeln!(out, "ledger seq {} acknowledged {p}: {}", r.seq, meta(m));
                }
            }
            shipper::ledger::Record::Shipping(r) => {
                if r.paths.iter().any(|p| p == path) {
                    let _ = writeln!(out, "ledger seq {} shipping", r.seq);
                }
            }
        }
    }
    for zip in env.archived() {
        let limits = shipper::bundle::apply::Limits::default();
        let Ok(b) = shipper::bundle::apply::open(&zip, &limits) else {
            continue;
        };
        let m = &b.manifest;
        for f in m.files.iter().filter(|f| f.path == path) {
            let _ = writeln!(
                out,
                "archived seq {}: {} bytes, mtime {}.{:09}, hash {}",
                m.seq,
                f.size,
                f.mtime,
                f.mtime_nsec,
                &f.hash[..12]
            );
        }
        if m.deletions.iter().any(|d| d == path) {
            let _ = writeln!(out, "archived seq {}: deleted", m.seq);
        }
    }
    for log in logs {
        for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
            if line.contains(path) {
                let _ = writeln!(out, "{}: {line}", log.display());
            }
        }
    }
    out
}

fn tail(log: &Path) -> String {
    let t = std::fs::read_to_string(log).unwrap_or_default();
    t.lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_either_side_under_load_loses_nothing() {
    let seed = std::env::var("SHIPPER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    let kills_wanted = 24;
    let env = Env::new();
    let addr = free_addr();
    // Every bundle is kept, so a failure can show which ones carried a path.
    let recv_cfg = env.config_file(
        "receiver.toml",
        &env.receiver_toml(&addr.to_string(), "archive_keep = 100000\n"),
    );
    let send_cfg = env.config_file(
        "sender.toml",
        &env.sender_toml(&addr.to_string(), "settle = \"100ms\"\n"),
    );
    let (recv_log, send_log) = (
        env.path().join("receiver.log"),
        env.path().join("sender.log"),
    );
    let mut receiver = spawn(&recv_cfg, &recv_log);
    let mut sender = spawn(&send_cfg, &send_log);

    // Steady load: create, rewrite in place (torn reads possible), delete.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    // (wall-clock time, path, what happened): the writer's and the killer's
    // history, to set beside the logs when a path is lost.
    let history = Arc::new(std::sync::Mutex::new(Vec::<(String, String, String)>::new()));
    let now = || chrono::Utc::now().format("%H:%M:%S%.6f").to_string();
    let writer = {
        let (src, stop, writes, history) =
            (env.src(), stop.clone(), writes.clone(), history.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(seed ^ 0xabcdef);
            while !stop.load(Ordering::SeqCst) {
                let n = rng.below(120);
                let rel = format!("d{}/f{n}.html", n % 6);
                let path = src.join(&rel);
                if rng.below(10) == 0 {
                    let started = now();
                    let what = match std::fs::remove_file(&path) {
                        Ok(()) => "removed".to_string(),
                        Err(e) => format!("remove: {e}"),
                    };
                    history.lock().unwrap().push((started, rel, what));
                } else {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    let len = 10 + rng.below(40_000) as usize;
                    let payload = noise(len, rng.next());
                    let data = sealed(&payload);
                    // Written in two pieces so the sender can catch it half-done.
                    let started = now();
                    let mut f = std::fs::File::create(&path).unwrap();
                    f.write_all(&data[..data.len() / 2]).unwrap();
                    f.write_all(&data[data.len() / 2..]).unwrap();
                    drop(f);
                    let what = {
                        use std::os::unix::fs::MetadataExt;
                        let md = std::fs::metadata(&path).unwrap();
                        format!(
                            "wrote {} bytes, mtime {}.{:09}, hash {}, closed at {}",
                            data.len(),
                            md.mtime(),
                            md.mtime_nsec(),
                            &blake3::hash(&data).to_hex()[..12],
                            now()
                        )
                    };
                    history.lock().unwrap().push((started, rel, what));
                }
                writes.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
            }
        })
    };
    // A reader of root that must never see a partial file.
    let partial = Arc::new(std::sync::Mutex::new(Vec::<PathBuf>::new()));
    let checked = Arc::new(AtomicU64::new(0));
    let reader = {
        let (root, stop, partial, checked) =
            (env.root(), stop.clone(), partial.clone(), checked.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for e in walkdir::WalkDir::new(&root).into_iter().flatten() {
                    if !e.file_type().is_file() {
                        continue;
                    }
                    if let Ok(content) = std::fs::read(e.path()) {
                        checked.fetch_add(1, Ordering::SeqCst);
                        if !is_sealed(&content) {
                            partial.lock().unwrap().push(e.path().to_owned());
                        }
                    }
                }
            }
        })
    };

    let mut rng = Rng(seed);
    let (mut sender_kills, mut receiver_kills) = (0, 0);
    for _ in 0..kills_wanted {
        tokio::time::sleep(Duration::from_millis(150 + rng.below(900))).await;
        let kill_sender = rng.below(2) == 0;
        let victim = if kill_sender {
            &mut sender
        } else {
            &mut receiver
        };
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        let who = if kill_sender { "sender" } else { "receiver" };
        history
            .lock()
            .unwrap()
            .push((now(), "*".into(), format!("killed the {who}")));
        if kill_sender {
            sender_kills += 1;
            sender = spawn(&send_cfg, &send_log);
        } else {
            receiver_kills += 1;
            receiver = spawn(&recv_cfg, &recv_log);
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    // With the load stopped, the receiver must converge on the source.
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        if tree(&env.src()) == tree(&env.root()) {
            break;
        }
        if Instant::now() > end {
            let (a, b) = (tree(&env.src()), tree(&env.root()));
            let mut differ: Vec<&String> = a
                .keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .collect();
            differ.dedup();
            differ.truncate(10);
            let status = shipper(&["status", "--config", send_cfg.to_str().unwrap(), "--json"]);
            let _ = sender.kill();
            let _ = receiver.kill();
            // SHIPPER_FAULT_KEEP=DIR keeps the whole run (trees, state, archive, logs).
            if let Ok(keep) = std::env::var("SHIPPER_FAULT_KEEP") {
                let _ = Command::new("cp")
                    .arg("-a")
                    .arg(env.path())
                    .arg(&keep)
                    .status();
            }
            let history = history.lock().unwrap();
            let kills: Vec<String> = history
                .iter()
                .filter(|(_, p, _)| p == "*")
                .map(|(t, _, what)| format!("{t} {what}"))
                .collect();
            let explained: String = differ
                .iter()
                .map(|p| explain(&env, p, &history, &[&send_log, &recv_log]))
                .collect();
            panic!(
                "not in sync after {sender_kills} sender and {receiver_kills} receiver kills (seed {seed:#x})\ndiffering: {differ:?}\n{explained}kills:\n{}\nstatus: {}\nsender log:\n{}\nreceiver log:\n{}",
                kills.join("\n"),
                text(&status),
                tail(&send_log),
                tail(&recv_log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.join().unwrap();
    let _ = sender.kill();
    let _ = receiver.kill();
    let _ = sender.wait();
    let _ = receiver.wait();
    let partial = partial.lock().unwrap();
    assert!(
        partial.is_empty(),
        "a reader of root saw partial files: {:?}",
        &partial[..partial.len().min(5)]
    );
    let files = tree(&env.root());
    assert!(
        files.values().all(|c| is_sealed(c)),
        "a file in root is not whole"
    );
    eprintln!(
        "fault run (seed {seed:#x}): {} kills ({sender_kills} sender, {receiver_kills} receiver), {} writes, {} reads of root checked, {} files compared, 0 lost or corrupt",
        sender_kills + receiver_kills,
        writes.load(Ordering::SeqCst),
        checked.load(Ordering::SeqCst),
        files.len()
    );
    assert_eq!(sender_kills + receiver_kills, kills_wanted);
}

/// A TCP proxy that damages the first `faults` connections that carry a
/// bundle body: alternately flips a byte in it or cuts the connection.
async fn damaging_proxy(upstream: SocketAddr, faults: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let d = done.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            n += 1;
            let damage = n <= faults;
            let flip = n % 2 == 1;
            let d = d.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let upstream = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total = 0usize;
                    loop {
                        let k = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => k,
                        };
                        // Past the hello (a few dozen bytes): inside a bundle.
                        if damage && total < 400 && total + k > 400 {
                            if flip {
                                buf[400 - total] ^= 0x55;
                                d.fetch_add(1, Ordering::SeqCst);
                            } else {
                                let _ = sw.write_all(&buf[..400 - total]).await;
                                d.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                        total += k;
                        if sw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let downstream = tokio::io::copy(&mut sr, &mut cw);
                tokio::select! { _ = upstream => {}, _ = downstream => {} }
            });
        }
    });
    (addr, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_and_truncated_streams_are_refused_and_retried() {
    let env = Env::new();
    for i in 0..20 {
        env.write(&format!("p{i}.html"), sealed(&noise(5000, i)));
    }
    let r = env.start_receiver("").await;
    let (proxy, damaged) = damaging_proxy(r.addr, 4).await;
    let s = env.start_sender(proxy, "");
    wait_in_sync(&env).await;
    assert_eq!(
        damaged.load(Ordering::SeqCst),
        4,
        "the proxy did not damage the first streams"
    );
    assert!(tree(&env.root()).values().all(|c| is_sealed(c)));
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_bundle_then_succeeds_once_space_is_freed() {
    let env = Env::new();
    let disk = env.path().join("disk");
    // Fails (never skips) where a tmpfs cannot be mounted: run as root, as CI does.
    let _mount = Mount::tmpfs(&disk, "8m").unwrap_or_else(|why| {
        panic!("this test needs to mount a tmpfs (root or CAP_SYS_ADMIN): {why}")
    });
    // Root and receiver state on the small filesystem; a ballast fills it.
    let ballast = disk.join("ballast");
    std::fs::write(&ballast, vec![1u8; 7 << 20]).unwrap();
    env.write("before.html", sealed(b"fits"));
    let cfg = env
        .config("[receiver]\nlisten = \"127.0.0.1:0\"\nroot = \"disk/www\"\nstate_dir = \"disk/state\"\narchive_dir = \"archive\"\n")
        .receiver
        .unwrap();
    let (recv, listener) = shipper::receiver::Receiver::bind(cfg).await.unwrap();
    let raddr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let rtask = tokio::spawn({
        let stop = stop.clone();
        async move { recv.serve(listener, stop).await }
    });
    let extra = "interval = \"1s\"\n";
    let s = env.start_sender(raddr, extra);
    let www = disk.join("www");
    wait_until("small file shipped", || www.join("before.html").exists()).await;

    // 2 MiB does not fit in what is left.
    let big = sealed(&noise(2 << 20, 9));
    env.write("big.bin", &big);
    let file = env.config_file("sender.toml", &env.sender_toml(&raddr.to_string(), extra));
    let end = Instant::now() + DEADLINE;
    loop {
        let f = file.clone();
        let out = tokio::task::spawn_blocking(move || {
            shipper(&["flush", "--config", f.to_str().unwrap(), "--timeout", "2s"])
        })
        .await
        .unwrap();
        assert!(
            !www.join("big.bin").exists(),
            "a bundle was applied on a full disk"
        );
        if !out.status.success() && text(&out).contains("disk full") {
            break;
        }
        assert!(
            Instant::now() < end,
            "no disk-full refusal seen: {}",
            text(&out)
        );
    }
    // Nothing partial in root, and what was there is intact.
    assert_eq!(tree(&www).len(), 1);
    assert!(tree(&www).values().all(|c| is_sealed(c)));

    std::fs::remove_file(&ballast).unwrap();
    wait_until("big file shipped after space was freed", || {
        std::fs::read(www.join("big.bin")).is_ok_and(|c| c == big)
    })
    .await;
    s.stop().await;
    stop.cancel();
    let _ = rtask.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inotify_queue_overflow_triggers_a_rescan_that_misses_nothing() {
    let queue: u64 = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(16384);
    // .ci/run keeps the kernel's default (16384); a machine raised far
    // above it would need too many files, so the test says so and fails.
    assert!(
        queue <= 100_000,
        "fs.inotify.max_queued_events is {queue}: lower it to 16384 to run this test"
    );
    let env = Env::new();
    let r = env.start_receiver("").await;
    let cfg = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let log = env.path().join("sender.log");
    let mut sender = spawn(&cfg, &log);
    wait_until("sender watching", || {
        env.path().join("state-s/control.sock").exists()
    })
    .await;
    // Freeze the sender so nobody drains the kernel's event queue, then
    // raise more events (create, modify, close per file) than it holds.
    let pid = sender.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let files = queue / 3 + 1000;
    for i in 0..files {
        // Straight into the watched root: every file raises events.
        env.write(&format!("f{i}.html"), "x");
    }
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let end = Instant::now() + Duration::from_secs(60);
    while tree(&env.src()) != tree(&env.root()) {
        assert!(
            Instant::now() < end,
            "not in sync after an overflow:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = sender.kill();
    let _ = sender.wait();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("events may have been lost"),
        "overflow not reported:\n{}",
        tail(&log)
    );
    r.stop().await;
}

/// A file made immutable (`chattr +i`) for a test: neither root can replace,
/// rename nor link it. Made mutable again on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Self {
        let out = Command::new("chattr").arg("+i").arg(path).output();
        let out = out.expect("chattr is needed for this test (e2fsprogs; .ci/run installs it)");
        assert!(
            out.status.success(),
            "chattr +i {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// A bundle whose publish failed part-way (here on a file it replaces that
/// cannot be replaced; the same for a full disk at `mkdirat`, a permission,
/// a symlink planted after the check) left root half-changed: its deletions
/// done, the files before the failure published, new directories made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_failing_part_way_leaves_root_as_it_was_then_applies_whole() {
    let env = Env::new();
    let www = env.root();
    let before = [
        ("a.html", "old a"),
        ("c", "a file where the bundle puts a directory"),
        (
            "dir/inner.html",
            "in a directory where the bundle puts a file",
        ),
        ("gone/old.html", "deleted, and its directory with it"),
        ("keep/del.html", "deleted"),
        ("keep/stay.html", "untouched"),
        ("m/locked.html", "old, immutable"),
    ];
    for (rel, body) in before {
        std::fs::create_dir_all(www.join(rel).parent().unwrap()).unwrap();
        std::fs::write(www.join(rel), body).unwrap();
    }
    let new = [
        ("a.html", "new a"),
        ("b/new/n.html", "new, in new directories"),
        ("c/x.html", "below what was a file"),
        ("dir", "a file where a directory was"),
        ("m/locked.html", "new locked"),
        ("z.html", "new z"),
    ];
    for (rel, body) in new {
        env.write(rel, body);
    }
    let bundle = crate::bundles::pack(
        &env.src(),
        &env.path().join("out"),
        1,
        &["gone/old.html", "keep/del.html"],
    );
    let was = snapshot(&www);
    let lock = Immutable::set(&www.join("m/locked.html"));

    let r = env.start_receiver("").await;
    let (mut c, _) = crate::bundles::session(r.addr).await;
    match crate::bundles::send(&mut c, &bundle).await {
        shipper::proto::Frame::Refuse { seq: 1, reason, .. } => {
            assert!(reason.contains("m/locked.html"), "{reason}")
        }
        f => panic!("expected a refusal, got {f:?}"),
    }
    assert_eq!(snapshot(&www), was, "root changed by a refused bundle");
    // Nothing kept aside (for rollback either) or waiting to be finished
    // at the next start.
    let left = |d: &str| std::fs::read_dir(env.path().join(d)).map_or(0, |d| d.count());
    let staged = std::fs::read_dir(env.path().join("state-r/staging")).unwrap();
    let staged: Vec<_> = staged.map(|e| e.unwrap().file_name()).collect();
    assert_eq!(staged, [".shipper-rollback"], "stage left behind");
    assert_eq!(
        left("state-r/staging/.shipper-rollback/from-test"),
        0,
        "kept for rollback"
    );
    assert_eq!(
        left("state-r/publishing"),
        0,
        "refused bundle left to finish"
    );

    // The fault gone, the same bundle applies whole, on a new session:
    // a refusal to retry ends the one it came on.
    drop(lock);
    let (mut c, _) = crate::bundles::session(r.addr).await;
    assert_eq!(
        crate::bundles::send(&mut c, &bundle).await,
        shipper::proto::Frame::Ack {
            seq: 1,
            hook: Default::default()
        }
    );
    let mut want = tree(&env.src());
    want.insert("keep/stay.html".into(), b"untouched".to_vec());
    assert_eq!(tree(&www), want);
    assert!(!www.join("gone").exists(), "emptied directory kept");
    r.stop().await;
}
