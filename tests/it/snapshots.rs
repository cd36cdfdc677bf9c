//! `publish = "tree"`: root a symlink to a snapshot of the whole tree,
//! replaced after each bundle in one rename; a snapshot never changes once
//! root pointed at it; a stop at any step of a publish finished at start.

use std::path::{Path, PathBuf};

use crate::util::*;

const TREE: &str = "publish = \"tree\"\ntree_keep = 3\n";

/// The snapshot root points at now.
fn current(env: &Env) -> PathBuf {
    let link = std::fs::read_link(env.root()).expect("root is a symlink");
    env.path().join(link)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

async fn sender_cmd(env: &Env, file: &Path, cmd: &str) {
    let out = shipper_async(owned(&[cmd, "--config", file.to_str().unwrap()])).await;
    assert!(out.status.success(), "{cmd}: {}", text(&out));
    let _ = env;
}

/// Root becomes a symlink to a snapshot; two files changed in one bundle
/// appear together in the next snapshot while the one before keeps both
/// old versions; a file only touched (kept, new mtime) gets its mtime in the
/// new snapshot through a copy, the older snapshot's file untouched; only
/// `tree_keep` snapshots stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bundle_is_a_new_snapshot_and_old_ones_never_change() {
    let env = Env::new();
    std::fs::remove_dir(env.root()).unwrap();
    let r = env.start_receiver(TREE).await;
    let _s = env.start_sender(r.addr, "");
    let sfile = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    env.write("a.html", "1");
    env.write("b.html", "1");
    wait_in_sync(&env).await;
    assert!(std::fs::symlink_metadata(env.root()).unwrap().is_symlink());
    let first = current(&env);
    assert!(
        first.starts_with(env.path().join(".www.shipper-trees")),
        "{first:?}"
    );

    // Both in one bundle: paused while they are written.
    sender_cmd(&env, &sfile, "pause").await;
    env.write("a.html", "2");
    env.write("b.html", "2");
    sender_cmd(&env, &sfile, "resume").await;
    wait_in_sync(&env).await;
    let second = current(&env);
    assert_ne!(first, second);
    assert_eq!(
        (read(&first.join("a.html")), read(&first.join("b.html"))),
        ("1".into(), "1".into())
    );

    // Touched only: the receiver holds the content, the mtime travels.
    let then = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let old_mtime = std::fs::metadata(second.join("a.html"))
        .unwrap()
        .modified()
        .unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(env.src().join("a.html"))
        .unwrap();
    f.set_modified(then).unwrap();
    drop(f); // closed: a file still open for writing is not settled
    wait_until("the touched file's mtime in root", || {
        std::fs::metadata(env.root().join("a.html")).is_ok_and(|m| m.modified().unwrap() == then)
    })
    .await;
    let in_second = std::fs::metadata(second.join("a.html"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(in_second, old_mtime, "a published snapshot's file changed");

    for v in 3..=5 {
        env.write("b.html", v.to_string());
        wait_in_sync(&env).await;
    }
    let snapshots = || {
        std::fs::read_dir(env.path().join(".www.shipper-trees"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("t-")
            })
            .count()
    };
    // Old snapshots go just after root points at the new one, so the
    // tree can be in step a moment before they are gone.
    wait_until("the snapshots past tree_keep removed", || snapshots() == 3).await;
    r.stop().await;
}

/// A root that is a directory already becomes a snapshot of itself at the
/// first start (the same files), the directory kept aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_root_directory_becomes_the_first_snapshot() {
    let env = Env::new();
    std::fs::write(env.root().join("index.html"), "served before").unwrap();
    let r = env.start_receiver(TREE).await;
    assert!(std::fs::symlink_metadata(env.root()).unwrap().is_symlink());
    assert_eq!(read(&env.root().join("index.html")), "served before");
    let aside = env
        .path()
        .join(".www.shipper-trees/was-a-directory/index.html");
    assert_eq!(read(&aside), "served before");
    r.stop().await;
}

/// What a receiver stopped at each step of a tree publish leaves, and what
/// the next start makes of it: before root pointed at the new snapshot (a
/// half-made snapshot and the bundle's record there), the snapshot is
/// thrown away and the bundle applied again; after (root points at it, the
/// sequence not recorded), it is only recorded and archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_publish_stopped_at_either_side_of_the_flip_is_finished_at_start() {
    for flipped in [false, true] {
        let env = Env::new();
        std::fs::remove_dir(env.root()).unwrap();
        // A first start makes root a symlink to t-1.
        env.start_receiver(TREE).await.stop().await;
        env.write("a.html", "one");
        let b = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
        let publishing = env.path().join("state-r/publishing");
        std::fs::copy(&b.path, publishing.join("test-00000000000000000001.zip")).unwrap();
        let trees = env.path().join(".www.shipper-trees");
        std::fs::create_dir(trees.join("t-2")).unwrap();
        let record = env
            .path()
            .join("state-r/staging/.shipper-rollback/from-test/1");
        std::fs::create_dir_all(&record).unwrap();
        std::fs::write(record.join("steps.json"), "[]").unwrap();
        std::fs::write(
            record.join("bundle.json"),
            r#"{"seq":1,"prev":0,"snapshot":2}"#,
        )
        .unwrap();
        if flipped {
            std::fs::write(trees.join("t-2/a.html"), "one").unwrap();
            std::fs::remove_file(env.root()).unwrap();
            std::os::unix::fs::symlink(".www.shipper-trees/t-2", env.root()).unwrap();
        } else {
            std::fs::write(trees.join("t-2/half.html"), "half made").unwrap();
        }
        let r = env.start_receiver(TREE).await;
        assert_eq!(tree(&env.root()), tree(&env.src()), "flipped: {flipped}");
        assert_eq!(current(&env), trees.join("t-2"), "flipped: {flipped}");
        let state = read(&env.path().join("state-r/receiver.json"));
        assert!(state.contains("\"test\": 1"), "{state}");
        assert_eq!(std::fs::read_dir(&publishing).unwrap().count(), 0);
        r.stop().await;
    }
}

/// `shipper replay --config` into a receiver that publishes by snapshot
/// publishes each bundle as a new snapshot too: root stays a symlink, the
/// snapshot it pointed at is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_into_a_tree_receiver_makes_a_new_snapshot() {
    let env = Env::new();
    std::fs::remove_dir(env.root()).unwrap();
    let r = env.start_receiver(TREE).await;
    let s = env.start_sender(r.addr, "");
    env.write("a.html", "shipped");
    wait_in_sync(&env).await;
    archived_holding(&env, &["a.html".to_owned()]).await;
    let before = current(&env);
    s.stop().await;
    r.stop().await;
    let rfile = env.config_file("receiver.toml", &env.receiver_toml("127.0.0.1:0", TREE));
    let mut args = owned(&["replay", "--config", rfile.to_str().unwrap()]);
    args.extend(
        env.archived()
            .iter()
            .map(|p| p.to_string_lossy().into_owned()),
    );
    let out = shipper_async(args).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::symlink_metadata(env.root()).unwrap().is_symlink());
    assert_ne!(current(&env), before, "a new snapshot");
    assert_eq!(read(&env.root().join("a.html")), "shipped");
    assert_eq!(read(&before.join("a.html")), "shipped");
}
