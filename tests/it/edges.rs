//! The edges real sites reach: trees over the receiver's entry limit, files
//! the sender cannot read, names that cannot travel, a full sender disk, a
//! file that never goes quiet.

use std::os::unix::fs::{PermissionsExt, chown};
use std::time::{Duration, Instant};

use crate::util::*;

/// Wait up to `limit` for `cond`, polling every 200 ms.
async fn wait_long(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count_files(dir: &std::path::Path) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .count()
}

/// A site of 110,000 files never shipped: the first bundle carried 110,001
/// entries, the receiver refused it as over its limit of 100,000, and the
/// sender re-sent the same bundle forever. Deleting them all did the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_over_the_receivers_entry_limit_ships_and_deletes_in_several_bundles() {
    const FILES: usize = 110_000;
    let env = Env::new();
    // On a tmpfs of its own: the receiver's syncfs per bundle then never
    // waits on other tests' dirty data, nor theirs on these 110,000 files.
    let _disk = Mount::tmpfs(env.path(), "4g")
        .unwrap_or_else(|why| panic!("this test needs to mount a tmpfs (run as root): {why}"));
    for d in ["src", "www", "state-s", "state-r", "archive"] {
        std::fs::create_dir_all(env.path().join(d)).unwrap();
    }
    std::fs::set_permissions(
        env.path().join("state-s"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(
        env.path().join("state-r"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let src = env.src();
    tokio::task::spawn_blocking(move || {
        for d in 0..110 {
            let dir = src.join(format!("d{d:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..FILES / 110 {
                std::fs::write(dir.join(format!("p{f:04}.html")), format!("{d}/{f}")).unwrap();
            }
        }
    })
    .await
    .unwrap();
    // Both sides on their defaults for the entry limit; the guard would
    // (rightly) hold a deletion of everything, so it is told not to.
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "mass_delete_share = 1.0\n");
    let root = env.root();
    wait_long(
        "all 110,000 files on the receiver",
        Duration::from_secs(600),
        || count_files(&root) == FILES,
    )
    .await;
    assert_eq!(tree(&env.src()), tree(&env.root()));
    let bundles = env.archived().len();
    assert!(bundles >= 11, "only {bundles} bundles for {FILES} files");

    // Deleting them all spans bundles too.
    std::fs::remove_dir_all(env.src()).unwrap();
    std::fs::create_dir(env.src()).unwrap();
    wait_long(
        "every file deleted on the receiver",
        Duration::from_secs(600),
        || count_files(&root) == 0,
    )
    .await;
    s.stop().await;
    r.stop().await;
}

/// Running as a user who could not read one of 40 new pages, the whole cut
/// failed with EACCES, 0 of 40 arrived, and the log's "changes stay pending"
/// was false: they had been taken out of the change set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_file_costs_only_itself_and_ships_once_readable() {
    const NOBODY: u32 = 65534;
    let env = Env::new();
    std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(env.src(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown(env.path().join("state-s"), Some(NOBODY), Some(NOBODY)).unwrap();
    let r = env.start_receiver("").await;
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let sender = Daemon::start(&file, &env.path().join("sender.log"), Some(NOBODY));
    wait_status(&file, "sender answering", |_| true).await;

    // 40 pages around one file the sender may not read (root's, 0600).
    for i in 0..20 {
        env.write(&format!("pages/a{i:02}.html"), format!("page a{i}"));
    }
    env.write("pages/secret.html", "not for nobody");
    let secret = env.src().join("pages/secret.html");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    for i in 0..20 {
        env.write(&format!("pages/b{i:02}.html"), format!("page b{i}"));
    }
    let root = env.root();
    wait_until("the 40 readable pages", || {
        count_files(&root.join("pages")) == 40
    })
    .await;
    assert!(!root.join("pages/secret.html").exists());
    let v = wait_status(&file, "the unreadable file named", |v| {
        v["failing_paths"] == 1
    })
    .await;
    let failing = &v["failing"][0];
    assert_eq!(failing["path"], "pages/secret.html", "{v}");
    let error = failing["error"].as_str().unwrap();
    assert!(
        error.contains("pages/secret.html") && error.contains("ermission denied"),
        "{error}"
    );
    assert!(
        sender.log_text().contains("cannot ship this file"),
        "{}",
        sender.log_text()
    );

    // It stayed pending: made readable, it ships without being rewritten.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_in_sync(&env).await;
    wait_status(&file, "nothing failing any more", |v| {
        v["failing_paths"] == 0
    })
    .await;
    drop(sender);
    r.stop().await;
}

/// A directory the sender could not read was listed as empty, and every
/// file below it the receivers had was deleted at the sender's next start:
/// `chmod 000` on a directory emptied it on every web server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_the_sender_cannot_read_keeps_its_files_on_the_receivers() {
    const NOBODY: u32 = 65534;
    let env = Env::new();
    std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(env.src(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown(env.path().join("state-s"), Some(NOBODY), Some(NOBODY)).unwrap();
    for i in 0..5 {
        env.write(&format!("locked/p{i}.html"), format!("page {i}"));
    }
    env.write("locked/deep/q.html", "deep");
    let r = env.start_receiver("").await;
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let log = env.path().join("sender.log");
    let sender = Daemon::start(&file, &log, Some(NOBODY));
    wait_in_sync(&env).await;
    drop(sender);

    // Root's directory, now closed to the sender's user.
    let locked = env.src().join("locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    env.write("after.html", "shipped after the comparison");
    let sender = Daemon::start(&file, &log, Some(NOBODY));
    let root = env.root();
    wait_until("the page written while the sender was down", || {
        root.join("after.html").exists()
    })
    .await;
    assert_eq!(
        count_files(&root.join("locked")),
        6,
        "files below the unreadable directory were deleted"
    );
    let text = sender.log_text();
    assert!(
        text.contains("cannot read this source directory")
            && text.contains("locked: Permission denied"),
        "{text}"
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(sender);
    r.stop().await;
}

/// With the sender's state_dir full, a page written beside a 5 MB file never
/// shipped, not even after space was freed (the pack's changes were lost),
/// and zip's "ZipWriter::drop: failed to finalize archive" was printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sender_disk_keeps_changes_pending_until_space_returns() {
    let env = Env::new();
    let state = env.path().join("state-s");
    let disk = Mount::tmpfs(&state, "2m")
        .unwrap_or_else(|why| panic!("this test needs to mount a tmpfs (run as root): {why}"));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let r = env.start_receiver("").await;
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let sender = Daemon::start(&file, &env.path().join("sender.log"), None);
    wait_status(&file, "sender answering", |_| true).await;

    env.write("big.bin", noise(5_000_000, 7));
    env.write("page.html", "<p>small page</p>");
    let v = wait_status(&file, "the failed pack reported", |v| {
        v["pack_error"].is_string()
    })
    .await;
    assert!(
        v["pack_error"].as_str().unwrap().contains("No space left"),
        "{v}"
    );
    assert!(v["pending_paths"].as_u64().unwrap() >= 2, "{v}");
    assert!(!env.root().join("page.html").exists());

    disk.resize("64m");
    wait_in_sync(&env).await;
    wait_status(&file, "packing works again", |v| v["pack_error"].is_null()).await;
    let log = sender.log_text();
    assert!(log.contains("changes stay pending"), "{log}");
    assert!(!log.contains("ZipWriter::drop"), "{log}");
    drop(sender);
    r.stop().await;
}

/// A name written by a Latin-1 tool (`caf\xe9.html`) was skipped without a
/// word: nothing in the log or status said it would never arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_is_named_in_status_and_the_rest_ships() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let bad = env.src().join(std::ffi::OsStr::from_bytes(b"caf\xe9.html"));
    std::fs::write(&bad, "latin-1").unwrap();
    env.write("ok.html", "fine");
    wait_until("the good page", || env.root().join("ok.html").exists()).await;
    let v = wait_status(&file, "the bad name listed", |v| v["failing_paths"] == 1).await;
    assert_eq!(v["failing"][0]["path"], "caf\u{FFFD}.html", "{v}");
    assert!(
        v["failing"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not valid UTF-8"),
        "{v}"
    );
    // Renamed to a name that can travel, it ships and leaves the list.
    std::fs::rename(&bad, env.src().join("café.html")).unwrap();
    wait_in_sync(&env).await;
    wait_status(&file, "the bad name gone", |v| v["failing_paths"] == 0).await;
    s.stop().await;
    r.stop().await;
}

/// A file appended every 5 ms never shipped, though max_delay promised it:
/// the packer's "changed while read" check deferred it on every try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_never_goes_quiet_ships_within_max_delay() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    let extra = "max_delay = \"5s\"\n";
    let s = env.start_sender(r.addr, extra);
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), extra));
    let log = env.src().join("growing.log");
    std::fs::write(&log, noise(2 << 20, 3)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(format!("line {n}\n").as_bytes()).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let shipped = env.root().join("growing.log");
    // max_delay (5 s) + one interval (1 s), with room for a loaded machine.
    wait_long(
        "a version of the growing file",
        Duration::from_secs(30),
        || shipped.exists(),
    )
    .await;
    let waited = started.elapsed();
    let got = std::fs::read(&shipped).unwrap();
    let now = std::fs::read(&log).unwrap();
    assert!(
        got.len() >= 2 << 20 && now.starts_with(&got),
        "not a prefix"
    );
    let v = wait_status(&file, "listed as shipped unsettled", |v| {
        v["unsettled"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p == "growing.log"))
    })
    .await;
    assert!(v["unsettled"].is_array());
    eprintln!("first version arrived after {waited:?}");

    // Once the writer stops, the settled file ships whole.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    wait_in_sync(&env).await;
    wait_status(&file, "no longer unsettled", |v| {
        v["unsettled"].as_array().is_some_and(|a| a.is_empty())
    })
    .await;
    s.stop().await;
    r.stop().await;
}

/// A receiver configured with a lower entry limit than the sender's refused
/// every bundle, and the sender re-sent the same bundle forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_a_lower_entry_limit_gets_bundles_it_accepts() {
    let env = Env::new();
    for i in 0..120 {
        env.write(&format!("p/{i:03}.html"), format!("{i}"));
    }
    let r = env.start_receiver("max_files_per_bundle = 50\n").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    // 120 files at 50 a bundle.
    wait_until("three bundles archived", || env.archived().len() >= 3).await;
    s.stop().await;
    r.stop().await;
}

/// A file over the receiver's max_file_size got its whole bundle refused,
/// again and again, and the pages packed with it never arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_receivers_size_limit_is_named_and_the_rest_ships() {
    let env = Env::new();
    env.write("big.bin", noise(2 << 20, 5));
    env.write("page.html", "small");
    let r = env.start_receiver("max_file_size = \"1MiB\"\n").await;
    let s = env.start_sender(r.addr, "");
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    wait_until("the page", || env.root().join("page.html").exists()).await;
    let v = wait_status(&file, "big.bin named", |v| v["failing_paths"] == 1).await;
    assert_eq!(v["failing"][0]["path"], "big.bin", "{v}");
    assert!(
        v["failing"][0]["error"]
            .as_str()
            .unwrap()
            .contains("max_file_size"),
        "{v}"
    );
    assert!(!env.root().join("big.bin").exists());
    s.stop().await;
    r.stop().await;
}

/// A bundle refused for one path (here a symlink planted in the receiver's
/// root over a directory shipper made, which the bundle does not ship
/// again) was refused every time it was sent, so nothing packed with that
/// path ever arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_refused_over_one_path_ships_the_rest() {
    let env = Env::new();
    let outside = env.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    env.write("evil/keep.html", "first");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    std::fs::remove_dir_all(env.root().join("evil")).unwrap();
    std::os::unix::fs::symlink(&outside, env.root().join("evil")).unwrap();
    env.write("evil/a.html", "must not land outside root");
    env.write("ok.html", "fine");
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    wait_until("the page shipped with it", || {
        env.root().join("ok.html").exists()
    })
    .await;
    let v = wait_status(&file, "the refused path named", |v| {
        v["failing"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f["path"] == "evil/a.html"))
    })
    .await;
    assert!(v.to_string().contains("refused"), "{v}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    s.stop().await;
    r.stop().await;
}
