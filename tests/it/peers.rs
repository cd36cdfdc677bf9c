//! Receivers that join late, come back empty, or meet a sender whose state
//! went back in time all end up with the whole tree.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::util::*;

/// A second receiver table with its own root and state under `dir`.
fn receiver_at(dir: &str, addr: SocketAddr) -> String {
    format!(
        "[receiver]\nlisten = \"{addr}\"\nroot = \"{dir}/www\"\nstate_dir = \"{dir}/state\"\narchive_dir = \"{dir}/archive\"\n"
    )
}

fn files(n: usize) -> impl Iterator<Item = (String, String)> {
    (0..n).map(|i| (format!("pages/p{i:03}.html"), format!("page {i}")))
}

/// Adding a second entry to `receiver = [...]` left it with only the files
/// changed after it was added (1 of 51): nothing brought it the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_added_later_gets_the_whole_tree() {
    let env = Env::new();
    for (p, c) in files(50) {
        env.write(&p, c);
    }
    let r1 = env.start_receiver("").await;
    let s = env.start_sender(r1.addr, "");
    wait_in_sync(&env).await;
    s.stop().await;

    let r2 = env
        .start_receiver_from(&receiver_at("second", free_addr()))
        .await;
    let s = env.start_sender_from(r1.addr, &env.sender_toml_to(&[r1.addr, r2.addr], ""));
    env.write("later.html", "after the second receiver was added");
    wait_in_sync(&env).await;
    let second = env.path().join("second/www");
    wait_until("the second receiver has the whole tree", || {
        tree(&second) == tree(&env.src())
    })
    .await;
    s.stop().await;
    r1.stop().await;
    r2.stop().await;
}

/// The whole tree for a receiver added later is packed a few bundles at a
/// time (here runs of 4 bundles of 2 files): every run of it arrives, and
/// the receiver is done with it only after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_tree_larger_than_one_packing_run_reaches_a_receiver_added_later() {
    let env = Env::new();
    for (p, c) in files(30) {
        env.write(&p, c);
    }
    let small = "max_files_per_bundle = 2\n";
    let r1 = env.start_receiver("").await;
    let s = env.start_sender(r1.addr, small);
    wait_in_sync(&env).await;
    s.stop().await;

    let r2 = env
        .start_receiver_from(&receiver_at("second", free_addr()))
        .await;
    let toml = env.sender_toml_to(&[r1.addr, r2.addr], small);
    let s = env.start_sender_from(r1.addr, &toml);
    let second = env.path().join("second/www");
    wait_until("the second receiver has the whole tree", || {
        tree(&second) == tree(&env.src())
    })
    .await;
    let config = env.config_file("both.toml", &toml);
    wait_status(
        &config,
        "the second receiver no longer waits for it",
        |st| st["receivers"][1]["whole_tree_pending"] == false,
    )
    .await;
    s.stop().await;
    r1.stop().await;
    r2.stop().await;
}

/// A web server rebuilt empty (root and state wiped) got only the changes
/// made after it came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_receiver_gets_the_whole_tree() {
    let env = Env::new();
    for (p, c) in files(50) {
        env.write(&p, c);
    }
    let addr = free_addr();
    let toml = env.receiver_toml(&addr.to_string(), "");
    let r = env.start_receiver_from(&toml).await;
    let s = env.start_sender(addr, "");
    wait_in_sync(&env).await;

    r.stop().await;
    for d in ["www", "state-r", "archive"] {
        remove_stopped(&env.path().join(d));
        std::fs::create_dir(env.path().join(d)).unwrap();
    }
    let r = env.start_receiver_from(&toml).await;
    env.write("later.html", "after the rebuild");
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}

/// Two receivers, the first at `env`'s root and the second (with
/// `second_extra` in its table) under `second/`, and a sender (with
/// `sender_extra`) to both, once both have the source's tree. Each is
/// `None` while stopped.
struct Two {
    first: String,
    first_addr: SocketAddr,
    r1: Option<Role>,
    second: String,
    r2: Option<Role>,
    /// The sender's table, and its config file for `shipper status`.
    toml: String,
    config: std::path::PathBuf,
    s: Option<Role>,
    root2: std::path::PathBuf,
}

async fn two_receivers_in_step(env: &Env, second_extra: &str, sender_extra: &str) -> Two {
    let first = env.receiver_toml(&free_addr().to_string(), "");
    let r1 = env.start_receiver_from(&first).await;
    let second = receiver_at("second", free_addr()) + second_extra;
    let r2 = env.start_receiver_from(&second).await;
    let toml = env.sender_toml_to(&[r1.addr, r2.addr], sender_extra);
    let config = env.config_file("both.toml", &toml);
    let s = env.start_sender_from(r1.addr, &toml);
    let root2 = env.path().join("second/www");
    wait_until("both have the tree", || {
        tree(&root2) == tree(&env.src()) && tree(&env.root()) == tree(&env.src())
    })
    .await;
    Two {
        first,
        first_addr: r1.addr,
        r1: Some(r1),
        second,
        r2: Some(r2),
        toml,
        config,
        s: Some(s),
        root2,
    }
}

impl Two {
    /// The first goes away, and a change (`later.html`) waits for it in
    /// the outbox once the second has it.
    async fn first_away_with_a_change(&mut self, env: &Env) {
        self.r1.take().expect("the first runs").stop().await;
        env.write("later.html", "while the first is away");
        let later = self.root2.join("later.html");
        wait_until("the second has it", || later.exists()).await;
    }

    /// Stop the second, do `meanwhile` with its directory, start it again.
    async fn restart_second(&mut self, env: &Env, meanwhile: impl FnOnce(&std::path::Path)) {
        self.r2.take().expect("the second runs").stop().await;
        meanwhile(&env.path().join("second"));
        self.r2 = Some(env.start_receiver_from(&self.second).await);
    }

    /// The second has the source's tree, and its whole tree is done (not
    /// pending in status) while the first is still away.
    async fn second_has_its_whole_tree_with_the_first_away(&self, env: &Env) {
        wait_until("the second has the tree", || {
            tree(&self.root2) == tree(&env.src())
        })
        .await;
        wait_status(
            &self.config,
            "its whole tree done, the first still away",
            |v| {
                v["receivers"][1]["whole_tree_pending"] == false
                    && v["receivers"][0]["connected"] == false
            },
        )
        .await;
    }

    /// The first back if it was away, both in step with the source, then
    /// everything stopped.
    async fn end_in_step(mut self, env: &Env) {
        let r1 = match self.r1.take() {
            Some(r1) => r1,
            None => env.start_receiver_from(&self.first).await,
        };
        wait_in_sync(env).await;
        for r in [self.s, Some(r1), self.r2].into_iter().flatten() {
            r.stop().await;
        }
    }
}

/// The highest sequence the second receiver archived: the last bundle it
/// applied.
fn newest_archived_by_the_second(env: &Env) -> u64 {
    std::fs::read_dir(env.path().join("second/archive"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            shipper::receiver::parse_archive_name(&name).map(|(_, seq)| seq)
        })
        .max()
        .expect("bundles archived")
}

/// A web server rebuilt while another was away got its whole tree, but
/// status said it was still being sent one (and `receivers.json` kept it
/// marked, so a restart sent it again) until the other came back: the
/// tree's bundles could not leave the outbox behind the one the other
/// had yet to take, and only their leaving counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_tree_is_done_when_its_receiver_has_it_though_another_is_away() {
    let env = Env::new();
    for (p, c) in files(20) {
        env.write(&p, c);
    }
    let mut t = two_receivers_in_step(&env, "", "").await;
    t.first_away_with_a_change(&env).await;
    // The second is rebuilt empty: it needs the whole tree.
    t.restart_second(&env, remove_stopped).await;
    // Only a whole tree brings it the pages written before.
    t.second_has_its_whole_tree_with_the_first_away(&env).await;
    t.end_in_step(&env).await;
}

/// Remove a stopped receiver's directory `dir`. The apply of its last
/// bundle runs to its end though its session was dropped (recorded and
/// archived, its incoming copy removed by a blocking thread), so it may
/// still write or remove there a moment after `stop` returned: a removal
/// that met a new or vanished file is tried again.
fn remove_stopped(dir: &std::path::Path) {
    for _ in 0..100 {
        if !dir.exists() {
            return;
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::NotFound
                ) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("{}: {e}", dir.display()),
        }
    }
    panic!("{} kept changing after its receiver stopped", dir.display());
}

/// Copy a receiver's directory `from` to `to` as `cp -a` does (a backup,
/// or its restore). A receiver stopped, or held in its hook, may still be
/// removing a staging directory or taking in the next bundle: a copy that
/// met a file vanishing is taken again.
fn back_up(from: &std::path::Path, to: &std::path::Path) {
    for _ in 0..10 {
        let _ = std::fs::remove_dir_all(to);
        let out = std::process::Command::new("cp")
            .arg("-a")
            .args([from, to])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No such file"), "cp -a failed: {err}");
    }
    panic!("{} kept changing under cp -a", from.display());
}

/// A receiver config's `on_apply` hook (in `dir`) that, once `dir/arm`
/// exists, holds the next bundle it applies unanswered until `dir/gate`
/// exists, saying so with `dir/paused`: a moment in the middle of a
/// whole tree, to take a backup in.
fn pause_once_hook(dir: &std::path::Path) -> String {
    let hook = dir.join("pause.sh");
    let d = dir.display();
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh
if [ -e {d}/arm ]; then rm {d}/arm; touch {d}/paused; while [ ! -e {d}/gate ]; do sleep 0.05; done; fi
"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "on_apply = [\"{}\"]\non_apply_timeout = \"60s\"\n",
        hook.display()
    )
}

/// A whole tree is done once its receiver acknowledges it, though its
/// bundles wait in the outbox behind one another receiver, away, has yet
/// to take; a restart then empties the outbox before the ledger records
/// them. A receiver restored from a backup taken in the middle of that
/// tree, after the restart, said it applied more than the ledger's level
/// and was sent nothing: the tree's later files were missing there for
/// good (the catch-up finds them in the ledger, unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_restored_to_the_middle_of_a_whole_tree_after_a_restart_gets_it_again() {
    let env = Env::new();
    for (p, c) in files(12) {
        env.write(&p, c);
    }
    let hooks = env.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let hook = pause_once_hook(&hooks);
    let mut t = two_receivers_in_step(&env, &hook, "max_files_per_bundle = 2\n").await;
    t.first_away_with_a_change(&env).await;
    // Acknowledged, so that it is not sent again to the rebuilt receiver
    // (held there instead of the whole tree's first bundle).
    let newest = newest_archived_by_the_second(&env);
    wait_status(&t.config, "the second acknowledged it", |v| {
        v["receivers"][1]["last_ack_seq"].as_u64() >= Some(newest)
    })
    .await;

    // The second is rebuilt empty and gets the whole tree, held once in
    // its middle for a backup.
    t.restart_second(&env, |dir| {
        remove_stopped(dir);
        std::fs::write(hooks.join("arm"), "").unwrap();
    })
    .await;
    wait_until("the second paused in its whole tree", || {
        hooks.join("paused").exists()
    })
    .await;
    let backup = env.path().join("backup");
    back_up(&env.path().join("second"), &backup);
    // Taken in the middle of the whole tree: its first bundle (the
    // receiver was wiped, and bundles it acknowledged before are not sent
    // again), not all of it.
    let backed = tree(&backup.join("www"));
    assert!(
        backed.contains_key("later.html"),
        "taken before the whole tree began"
    );
    assert_ne!(backed, tree(&env.src()), "taken after it ended");
    std::fs::write(hooks.join("gate"), "").unwrap();
    t.second_has_its_whole_tree_with_the_first_away(&env).await;

    // The sender restarts (its outbox emptied), and the second comes back
    // from the backup.
    t.s.take().expect("the sender runs").stop().await;
    t.restart_second(&env, |dir| back_up(&backup, dir)).await;
    t.s = Some(env.start_sender_from(t.first_addr, &t.toml));
    wait_until("the restored receiver has the tree again", || {
        tree(&t.root2) == tree(&env.src())
    })
    .await;
    t.end_in_step(&env).await;
}

/// Pages the restored receiver's scenario starts with (4 KiB each): a
/// whole tree sends them all again (they do not compress), a resend of
/// what it lost sends none of them.
const RESTORED_PAGES: usize = 60;

/// Content for page `i` that deflate cannot shrink: 4 KiB of random
/// bytes.
fn page(i: usize) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&i.to_le_bytes());
    let mut out = vec![0u8; 4096];
    h.finalize_xof().fill(&mut out);
    out
}

/// A receiver ("second") backed up, then sent a deletion and a new page
/// and acknowledging them, then restored from that backup and started
/// again. The first receiver is away meanwhile when `first_away`, so the
/// outbox holds every bundle the second lost; otherwise both acknowledge
/// them and they leave it. Returns what the sender shipped to the second
/// after its restore, in bytes, once its tree has `new.html`.
async fn restore_a_receiver_from_a_backup(first_away: bool) -> (Env, u64) {
    let env = Env::new();
    for i in 0..RESTORED_PAGES {
        env.write(&format!("pages/p{i:03}.html"), page(i));
    }
    env.write("old.html", "deleted after the backup");
    let mut t = two_receivers_in_step(&env, "", "").await;

    // The second's backup.
    let backup = env.path().join("backup");
    t.restart_second(&env, |dir| back_up(dir, &backup)).await;
    if first_away {
        t.r1.take().expect("the first runs").stop().await;
    }
    std::fs::remove_file(env.src().join("old.html")).unwrap();
    env.write("new.html", "written after the backup");
    wait_until("the second has the changes", || {
        tree(&t.root2) == tree(&env.src())
    })
    .await;
    // Acknowledged, not only applied: else the sender simply sends again
    // what it never heard back about. Acknowledged by both, they leave the
    // outbox.
    let newest = newest_archived_by_the_second(&env);
    let acked = |v: &serde_json::Value, r: usize| {
        v["receivers"][r]["last_ack_seq"].as_u64() >= Some(newest)
    };
    let v = wait_status(&t.config, "acknowledged", |v| {
        acked(v, 1) && (first_away || acked(v, 0))
    })
    .await;
    let before = v["receivers"][1]["bytes_shipped"].as_u64().unwrap();

    t.restart_second(&env, |dir| {
        back_up(&backup, dir);
        assert!(dir.join("www/old.html").exists(), "restored as it was");
        assert!(!dir.join("www/new.html").exists(), "restored as it was");
    })
    .await;
    wait_until("the restored receiver has the new page", || {
        t.root2.join("new.html").exists()
    })
    .await;
    let v = wait_status(&t.config, "the restored receiver is up to date", |v| {
        v["receivers"][1]["whole_tree_pending"] == false
            && v["receivers"][1]["last_ack_seq"].as_u64() >= Some(newest)
    })
    .await;
    let after = v["receivers"][1]["bytes_shipped"].as_u64().unwrap();
    t.end_in_step(&env).await;
    (env, after - before)
}

/// A web server restored from a backup of itself (root and state, the
/// same instance) said it had applied less than it had acknowledged. With
/// another receiver behind it, nothing had left the outbox, so nothing
/// asked for a whole tree, and the bundles in between were never sent to
/// it again: it kept a deleted page and lacked a new one for good. Then,
/// fixed, it got a whole tree besides, every page sent again though the
/// outbox held all it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_restored_from_a_backup_of_itself_gets_what_it_lost() {
    let (env, shipped) = restore_a_receiver_from_a_backup(true).await;
    let root2 = env.path().join("second/www");
    assert_eq!(tree(&root2), tree(&env.src()), "the deletion too");
    let pages = RESTORED_PAGES as u64 * 4096;
    assert!(
        shipped < pages / 4,
        "{shipped} bytes shipped after the restore: more than what it lost (a whole tree of {pages} bytes of pages?)"
    );
}

/// The same, but what it lost had left the outbox (every receiver
/// acknowledged it): only a whole tree brings it the new page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_restored_from_a_backup_after_its_bundles_left_gets_the_whole_tree() {
    let (env, shipped) = restore_a_receiver_from_a_backup(false).await;
    let root2 = env.path().join("second/www");
    let mut expect = tree(&env.src());
    // A whole tree adds and updates; what was deleted in bundles gone from
    // the outbox stays until `shipper verify --delete-extra` (README).
    expect.insert("old.html".into(), b"deleted after the backup".to_vec());
    assert_eq!(tree(&root2), expect);
    let pages = RESTORED_PAGES as u64 * 4096;
    assert!(
        shipped > pages / 2,
        "{shipped} bytes shipped after the restore: no whole tree"
    );
}

/// A sender restored from an older sender.json numbered its next bundles
/// with sequences the receiver had applied: the receiver acknowledged them
/// as "already applied" and their files never arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_restored_from_older_state_never_counts_unsent_bundles_as_applied() {
    let env = Env::new();
    let state = env.path().join("state-s/sender.json");
    let addr = free_addr();
    let toml = env.receiver_toml(&addr.to_string(), "");
    let r = env.start_receiver_from(&toml).await;
    let s = env.start_sender(addr, "");
    env.write("first.html", "1");
    wait_in_sync(&env).await;
    let old = std::fs::read(&state).unwrap();
    for i in 0..5 {
        env.write(&format!("more-{i}.html"), format!("{i}"));
        wait_in_sync(&env).await;
    }
    s.stop().await;
    r.stop().await;
    // Restored from the backup taken after the first bundle, and started
    // while the receiver is away, so it numbers bundles before it can learn
    // where the receiver stands.
    std::fs::write(&state, old).unwrap();
    let s = env.start_sender(addr, "");
    for i in 0..5 {
        env.write(&format!("after-{i}.html"), format!("{i}"));
    }
    let outbox = env.path().join("state-s/outbox");
    wait_until("bundles packed while the receiver is away", || {
        std::fs::read_dir(&outbox)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".zip"))
            })
            .unwrap_or(false)
    })
    .await;
    let r = env.start_receiver_from(&toml).await;
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}

/// A receiver added later got its whole tree run after run, and every
/// change made meanwhile waited for the last of them, for every receiver:
/// adding a web server to a large site held publishing back on all the
/// others for minutes. Whole-tree runs and the usual cuts now take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_the_other_receivers_while_a_new_one_gets_its_whole_tree() {
    let env = Env::new();
    // Written an hour ago: not racy, so the restart finds nothing to
    // compare again, only the new receiver's whole tree to send.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for (p, c) in files(400) {
        env.write(&p, c);
        let f = std::fs::File::options()
            .write(true)
            .open(env.src().join(&p))
            .unwrap();
        f.set_times(std::fs::FileTimes::new().set_modified(hour_ago))
            .unwrap();
    }
    let r1 = env.start_receiver("").await;
    let s = env.start_sender(r1.addr, "");
    wait_in_sync(&env).await;
    s.stop().await;

    // A web server that applies each bundle in no less than 50 ms: its
    // whole tree takes 10 s however loaded this machine is.
    let slow = format!(
        "{}on_apply = [\"/bin/sleep\", \"0.05\"]\n",
        receiver_at("second", free_addr())
    );
    let r2 = env.start_receiver_from(&slow).await;
    // Runs of 4 bundles of 2 files: the whole tree takes 50 runs.
    let toml = env.sender_toml_to(&[r1.addr, r2.addr], "max_files_per_bundle = 2\n");
    let s = env.start_sender_from(r1.addr, &toml);
    let second = env.path().join("second/www");
    wait_until("the whole tree under way", || second.join("pages").exists()).await;
    env.write("later.html", "published while the new receiver catches up");
    wait_until("the change at the first receiver", || {
        env.root().join("later.html").exists()
    })
    .await;
    let there = tree(&second).len();
    assert!(
        there < 300,
        "the change waited for the whole tree: {there} of 401 files there"
    );
    wait_until("the second receiver has the whole tree", || {
        tree(&second) == tree(&env.src())
    })
    .await;
    s.stop().await;
    r1.stop().await;
    r2.stop().await;
}

/// A site of 100 pages shipped to a first receiver; then a second added
/// (applying each bundle in no less than 50 ms, `receiver_extra` in its
/// table), stopped part way through its whole tree packed two files a
/// bundle (`sender_extra` in the sender's table). Returns the first
/// receiver, the sender, the sender's table and the second's.
async fn second_away_mid_tree(
    env: &Env,
    receiver_extra: &str,
    sender_extra: &str,
) -> (Role, Role, String, String) {
    for (p, c) in files(100) {
        env.write(&p, c);
    }
    let r1 = env.start_receiver("").await;
    let s = env.start_sender(r1.addr, "");
    wait_in_sync(env).await;
    s.stop().await;

    let slow = format!(
        "{}on_apply = [\"/bin/sleep\", \"0.05\"]\n{receiver_extra}",
        receiver_at("second", free_addr())
    );
    let r2 = env.start_receiver_from(&slow).await;
    let extra = format!("max_files_per_bundle = 2\n{sender_extra}");
    let toml = env.sender_toml_to(&[r1.addr, r2.addr], &extra);
    let s = env.start_sender_from(r1.addr, &toml);
    let second = env.path().join("second/www");
    wait_until("part of the whole tree there", || tree(&second).len() >= 10).await;
    r2.stop().await;
    let there = tree(&second).len();
    assert!(
        there < 100,
        "the whole tree arrived before the stop: {there} files"
    );
    (r1, s, toml, slow)
}

/// Wait until the second receiver (`second/www`) has the source's tree and
/// the sender (table `toml`) is done with its whole tree.
async fn second_has_the_whole_tree(env: &Env, toml: &str) {
    let second = env.path().join("second/www");
    wait_until("the second receiver has the whole tree", || {
        tree(&second) == tree(&env.src())
    })
    .await;
    let config = env.config_file("both.toml", toml);
    wait_status(&config, "the second receiver is done with it", |st| {
        st["receivers"][1]["whole_tree_pending"] == false
    })
    .await;
}

/// A receiver that went away while its whole tree was under way (a web
/// server restarted, a connection dropped) was queued a second whole tree
/// when it came back, on top of the rest of the first: every file of a
/// large site shipped to it twice. It now goes on with the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_back_during_its_whole_tree_gets_each_file_once() {
    let env = Env::new();
    // Every bundle it applies is kept.
    let (r1, s, toml, slow) = second_away_mid_tree(&env, "archive_keep = 1000\n", "").await;
    let r2 = env.start_receiver_from(&slow).await;
    second_has_the_whole_tree(&env, &toml).await;
    s.stop().await;
    r1.stop().await;
    r2.stop().await;
    // Each file is in one bundle the second receiver applied.
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for zip in std::fs::read_dir(env.path().join("second/archive")).unwrap() {
        let zip = zip.unwrap().path();
        if zip.extension().is_none_or(|e| e != "zip") {
            continue;
        }
        let limits = shipper::bundle::apply::Limits::default();
        let bundle = shipper::bundle::apply::open(&zip, &limits).unwrap();
        for f in bundle.manifest.files {
            *times.entry(f.path).or_default() += 1;
        }
    }
    assert_eq!(times.len(), 100, "{times:?}");
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "shipped more than once: {twice:?}");
}

/// The same, but while it was away the other receiver kept getting
/// changes, enough to drop its backlog (the outbox over
/// `sender.outbox_max`). Its whole tree's bundles, left in the outbox,
/// paused the packer until it came back, so the other receiver got none
/// of those changes meanwhile. Now they flow, and the whole tree begins
/// again from its first file, with the files changed while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_away_during_its_whole_tree_holds_back_no_one_and_gets_everything() {
    let env = Env::new();
    let small = "outbox_max = \"2MiB\"\nmax_bundle_size = \"1MiB\"\nchunk_size = \"512KiB\"\n";
    let (r1, s, toml, slow) = second_away_mid_tree(&env, "", small).await;
    // 5.6 MB for the first receiver alone: the second's backlog goes.
    for i in 0..8 {
        let name = format!("media/{i}.bin");
        env.write(&name, noise(700_000, i));
        let root1 = env.root();
        wait_until("the first receiver has it", || root1.join(&name).exists()).await;
    }
    let r2 = env.start_receiver_from(&slow).await;
    second_has_the_whole_tree(&env, &toml).await;
    s.stop().await;
    r1.stop().await;
    r2.stop().await;
}
