//! The source directory itself replaced, removed or re-pointed while the
//! sender runs (or while it is stopped).

use std::path::Path;

use crate::util::*;

/// Wait until status reports the source missing (or, with `missing`
/// false, present again).
async fn wait_source_missing(config: &Path, missing: bool) -> serde_json::Value {
    let what = if missing {
        "source missing"
    } else {
        "source back"
    };
    wait_status(config, what, |v| v["source_missing"].is_object() == missing).await
}

/// Broke: after `mv src src.old && mv src.new src` the sender kept watching
/// the old directory under its new name, shipped nothing of the new tree and
/// saw no later edit in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_replaced_by_a_rename_is_watched_and_compared_again() {
    let env = Env::new();
    env.write("same.html", "unchanged");
    env.write("changed.html", "v1");
    env.write("removed.html", "only in the old tree");
    env.write("sub/deep.html", "deep v1");
    env.write("linked.html", "the same inode in both trees");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;

    // A generator builds the new tree beside the old one (unchanged files
    // hard-linked, as `cp -al` and rsync --link-dest do), then swaps.
    let new = env.path().join("src.new");
    let old = env.path().join("src.old");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::hard_link(env.src().join("linked.html"), new.join("linked.html")).unwrap();
    for (rel, data) in [
        ("same.html", "unchanged"),
        ("changed.html", "v2"),
        ("added.html", "new in this build"),
        ("sub/deep.html", "deep v2"),
        ("sub/more/deeper.html", "new and nested"),
    ] {
        let p = new.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    std::fs::rename(env.src(), &old).unwrap();
    std::fs::rename(&new, env.src()).unwrap();
    wait_in_sync(&env).await;

    // A later edit inside the new tree ships.
    env.write("sub/more/later.html", "written after the swap");
    wait_in_sync(&env).await;

    // What happens to the old tree is none of the receiver's business: an
    // edit there, then its removal, ship nothing.
    std::fs::write(old.join("ghost.html"), "in the old tree").unwrap();
    std::fs::write(old.join("same.html"), "edited in the old tree").unwrap();
    std::fs::remove_dir_all(&old).unwrap();
    env.write("marker.html", "after the old tree went");
    wait_until("marker shipped", || env.root().join("marker.html").exists()).await;
    wait_in_sync(&env).await;
    assert!(!env.root().join("ghost.html").exists());

    s.stop().await;
    r.stop().await;
}

/// Broke: removing the source while the sender ran shipped the removal of
/// every file (a vanished source became a mass deletion), and nothing said
/// the source was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_is_held_not_shipped_as_deletions() {
    let env = Env::new();
    env.write("a.html", "a");
    env.write("b.html", "b");
    env.write("dir/c.html", "c");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    wait_in_sync(&env).await;
    let before = tree(&env.root());

    std::fs::remove_dir_all(env.src()).unwrap();
    let v = wait_source_missing(&file, true).await;
    assert!(
        v["source_missing"]["reason"].as_str().is_some(),
        "no reason: {v}"
    );
    let human = shipper_async(owned(&["status", "--config", file.to_str().unwrap()])).await;
    assert!(text(&human).contains("source missing"), "{}", text(&human));
    // A flush says why it ships nothing, and nothing was deleted.
    let out = shipper_async(owned(&["flush", "--config", file.to_str().unwrap()])).await;
    assert!(
        !out.status.success() && text(&out).contains("missing"),
        "{}",
        text(&out)
    );
    assert_eq!(tree(&env.root()), before, "the receiver lost files");

    // Recreated in place, with one file gone and one new: it converges.
    env.write("a.html", "a v2");
    env.write("dir/c.html", "c");
    env.write("d.html", "new");
    wait_source_missing(&file, false).await;
    wait_in_sync(&env).await;

    s.stop().await;
    r.stop().await;
}

/// Broke: a sender restarted while its source was missing created an empty
/// source and shipped the removal of everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_missing_at_restart_is_held_not_recreated_empty() {
    let env = Env::new();
    env.write("a.html", "a");
    env.write("b.html", "b");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    wait_in_sync(&env).await;
    // A flush answers once the acknowledgement is in the sender's ledger.
    let out = shipper_async(owned(&["flush", "--config", file.to_str().unwrap()])).await;
    assert!(out.status.success(), "{}", text(&out));
    let before = tree(&env.root());
    s.stop().await;

    std::fs::rename(env.src(), env.path().join("src.away")).unwrap();
    let s = env.start_sender(r.addr, "");
    wait_source_missing(&file, true).await;
    assert!(!env.src().exists(), "the sender created an empty source");
    assert_eq!(tree(&env.root()), before, "the receiver lost files");

    // Back under its name, changed meanwhile: compared as at start.
    std::fs::write(env.path().join("src.away/b.html"), "b v2").unwrap();
    std::fs::rename(env.path().join("src.away"), env.src()).unwrap();
    wait_source_missing(&file, false).await;
    wait_in_sync(&env).await;

    s.stop().await;
    r.stop().await;
}

/// A first start with no source directory creates it, watches it and ships
/// what is written there: only a source that something was shipped from
/// is held when missing (the start walks a source that is there while its
/// state loads, and looks at a missing one only after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_without_a_source_creates_it_and_ships_from_it() {
    let env = Env::new();
    std::fs::remove_dir_all(env.src()).unwrap();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_until("the sender to create its source", || env.src().is_dir()).await;
    env.write("dir/a.html", "a");
    wait_in_sync(&env).await;
    assert_eq!(
        std::fs::read_to_string(env.root().join("dir/a.html")).unwrap(),
        "a"
    );
    s.stop().await;
    r.stop().await;
}

/// Broke: with the source configured as a symlink (`current ->
/// releases/1`), re-pointing it went unnoticed: the sender kept shipping
/// the old release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_pointed_source_symlink_ships_the_new_target() {
    let env = Env::new();
    let releases = env.path().join("releases");
    std::fs::create_dir_all(releases.join("1")).unwrap();
    std::fs::create_dir_all(releases.join("2/css")).unwrap();
    std::fs::write(releases.join("1/index.html"), "release 1").unwrap();
    std::fs::write(releases.join("1/old.html"), "only in 1").unwrap();
    std::fs::write(releases.join("2/index.html"), "release 2").unwrap();
    std::fs::write(releases.join("2/css/site.css"), "body{}").unwrap();
    std::fs::remove_dir(env.src()).unwrap();
    std::os::unix::fs::symlink("releases/1", env.src()).unwrap();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;

    // Re-pointed atomically, the way deploy tools do it.
    let tmp = env.path().join("src.tmp");
    std::os::unix::fs::symlink("releases/2", &tmp).unwrap();
    std::fs::rename(&tmp, env.src()).unwrap();
    wait_in_sync(&env).await;
    assert!(!env.root().join("old.html").exists());

    // Edits in the new target ship; edits in the old one do not.
    std::fs::write(releases.join("1/stale.html"), "old release").unwrap();
    std::fs::write(releases.join("2/fresh.html"), "new release").unwrap();
    wait_until("edit in the new target shipped", || {
        env.root().join("fresh.html").exists()
    })
    .await;
    wait_in_sync(&env).await;
    assert!(!env.root().join("stale.html").exists());

    s.stop().await;
    r.stop().await;
}
