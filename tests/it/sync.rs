//! End to end: a sender and a receiver on 127.0.0.1 keep two trees equal.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_tree_then_every_kind_of_change_reaches_the_receiver() {
    let env = Env::new();
    // Present before start: the first bundles bring an empty receiver up to date.
    env.write("index.html", "<h1>home</h1>");
    env.write("2026/11/page one.html", "first");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;

    // Nested new directories, names with spaces and non-ASCII, empty files.
    env.write("a/b/c/d/deep.html", "deep");
    env.write("médias/été 2026/ü.txt", "unicode");
    env.write("empty.css", "");
    wait_in_sync(&env).await;
    assert_eq!(std::fs::read(env.root().join("empty.css")).unwrap(), b"");

    // Modify.
    env.write("index.html", "<h1>home v2</h1>");
    wait_in_sync(&env).await;

    // Delete a file: the directories it empties go too.
    std::fs::remove_file(env.src().join("a/b/c/d/deep.html")).unwrap();
    wait_in_sync(&env).await;

    // Rename a file.
    std::fs::rename(
        env.src().join("2026/11/page one.html"),
        env.src().join("2026/11/page-1.html"),
    )
    .unwrap();
    wait_in_sync(&env).await;

    // Rename a whole directory.
    std::fs::rename(env.src().join("médias"), env.src().join("media")).unwrap();
    wait_in_sync(&env).await;
    // Files first, then the directories they emptied: wait for both (a
    // check right after the files match can fall between the two).
    wait_until("renamed-away directory removed", || {
        !env.root().join("médias").exists()
    })
    .await;

    // Delete a directory tree.
    std::fs::remove_dir_all(env.src().join("media")).unwrap();
    wait_in_sync(&env).await;
    wait_until("deleted directory removed", || {
        !env.root().join("media").exists()
    })
    .await;
    wait_until("emptied directories removed", || {
        !env.root().join("a").exists()
    })
    .await;

    // A directory moved in from outside the source, files already inside.
    let outside = env.path().join("outside");
    std::fs::create_dir_all(outside.join("x/y")).unwrap();
    std::fs::write(outside.join("x/y/z.html"), "moved in").unwrap();
    std::fs::rename(&outside, env.src().join("moved")).unwrap();
    wait_in_sync(&env).await;

    // Editor droppings are never shipped.
    env.write(".index.html.swp", "swap");
    env.write("notes~", "backup");
    env.write("marker.html", "after the droppings");
    wait_until("marker shipped", || env.root().join("marker.html").exists()).await;
    assert!(!env.root().join(".index.html.swp").exists());
    assert!(!env.root().join("notes~").exists());

    s.stop().await;
    r.stop().await;
}

/// The directories of a tree present at start are watched by the walk that
/// compares it (the source's own watch covers only its top): a file
/// changed deep in one afterwards ships without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_deep_in_a_tree_present_at_start_is_seen() {
    let env = Env::new();
    for d in ["a/b/c", "a/d", "e"] {
        env.write(&format!("{d}/page.html"), "before");
    }
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    for d in ["a/b/c", "a/d", "e"] {
        env.write(&format!("{d}/page.html"), "after");
        env.write(&format!("{d}/new.html"), "new");
    }
    std::fs::create_dir(env.src().join("a/b/c/empty")).unwrap();
    wait_in_sync(&env).await;
    wait_until("the new empty directory", || {
        env.root().join("a/b/c/empty").is_dir()
    })
    .await;
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_created_in_a_new_directory_before_its_watch_exists_are_found() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_until("sender connected", || {
        env.path().join("state-s/sender.json").exists()
    })
    .await;
    // mkdir -p and many files at once: some land before the new watches do.
    for i in 0..200 {
        env.write(
            &format!("burst/{}/{}/f{i}.html", i % 7, i % 3),
            format!("file {i}"),
        );
    }
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_is_never_seen_partially() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    let final_content: Vec<u8> = b"<html>"
        .iter()
        .chain([b'x'; 20_000].iter())
        .chain(b"</html>")
        .copied()
        .collect();

    // A reader of root that records any version that is not the final one.
    let seen_partial = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, want, bad, done) = (
            env.root().join("slow.html"),
            final_content.clone(),
            seen_partial.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Ok(got) = std::fs::read(&path)
                    && got != want
                {
                    bad.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Write in pieces, with a pause longer than settle + interval while the
    // file is still open: settle alone would ship it torn, the open writer
    // must hold it back.
    let mut f = std::fs::File::create(env.src().join("slow.html")).unwrap();
    let (head, tail) = final_content.split_at(10_000);
    for piece in head.chunks(1000) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    f.write_all(tail).unwrap();
    drop(f);
    wait_until("slow file shipped", || {
        std::fs::read(env.root().join("slow.html")).ok().as_deref() == Some(&final_content[..])
    })
    .await;
    done.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(
        !seen_partial.load(Ordering::SeqCst),
        "a reader of root saw a partial file"
    );
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_never_settles_still_ships_within_max_delay() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "settle = \"2s\"\nmax_delay = \"4s\"\n");
    // Appended to every 100 ms and never closed: it never settles.
    let mut f = std::fs::File::create(env.src().join("busy.log")).unwrap();
    let start = std::time::Instant::now();
    let mut shipped_while_busy = false;
    while start.elapsed() < DEADLINE {
        writeln!(f, "line at {:?}", start.elapsed()).unwrap();
        if std::fs::metadata(env.root().join("busy.log")).is_ok_and(|m| m.len() > 0) {
            shipped_while_busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        shipped_while_busy,
        "a file under constant writes was never shipped"
    );
    // Once the writer stops, it ships again with its final content.
    drop(f);
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_travels_as_parts_across_bundles() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    let big = noise(1 << 20, 7);
    env.write("media/big.bin", &big);
    env.write("small.html", "small");
    let s = env.start_sender(
        r.addr,
        "chunk_size = \"64KiB\"\nmax_bundle_size = \"160KiB\"\n",
    );
    wait_in_sync(&env).await;
    // 1 MiB in 64 KiB parts under 160 KiB per bundle needs 8+ bundles. The
    // last is archived just after its files are published: wait for it.
    wait_until("8 bundles archived", || env.archived().len() >= 8).await;
    let bundles = env.archived();
    for b in &bundles {
        let size = std::fs::metadata(b).unwrap().len();
        assert!(
            size <= 160 * 1024,
            "{} is {size} bytes, over max_bundle_size",
            b.display()
        );
    }
    // Parts are gone from the receiver's state once the file is published.
    let leftovers = tree(&env.path().join("state-r/parts"));
    assert!(
        leftovers.is_empty(),
        "part files left in state_dir: {:?}",
        leftovers.keys()
    );
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_reconnects_and_resends_after_the_receiver_returns() {
    let env = Env::new();
    // Find a free port, then start the sender against it before any receiver.
    let listen = free_addr().to_string();
    let s = env.start_sender(listen.parse().unwrap(), "");
    env.write("early.html", "written while the receiver was down");
    // Let a few connection attempts fail.
    wait_until("sender state written", || {
        env.path().join("state-s/sender.json").exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!env.root().join("early.html").exists());

    let r = receiver_at(&env, &listen).await;
    wait_in_sync(&env).await;

    // Drop the receiver and bring it back: changes made meanwhile arrive.
    r.stop().await;
    env.write("during-outage.html", "x");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = receiver_at(&env, &listen).await;
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}

async fn receiver_at(env: &Env, listen: &str) -> Role {
    env.start_receiver_from(&env.receiver_toml(listen, ""))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_and_a_directory_may_swap_places() {
    let env = Env::new();
    env.write("thing", "a file first");
    env.write("dir/inside.html", "a directory first");
    env.write("link-me", "will become a symlink");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    // Regression: shipping deletion "thing" with file "thing/x" in one bundle
    // used to be refused by the manifest check, wedging the sender.
    std::fs::remove_file(env.src().join("thing")).unwrap();
    env.write("thing/now-a-dir.html", "x");
    std::fs::remove_dir_all(env.src().join("dir")).unwrap();
    env.write("dir", "now a file");
    wait_in_sync(&env).await;
    // A file replaced by a symlink (inside the tree, so shipped as one):
    // the file must not linger.
    std::fs::remove_file(env.src().join("link-me")).unwrap();
    std::os::unix::fs::symlink("thing", env.src().join("link-me")).unwrap();
    wait_until("replaced file replaced by the link", || {
        std::fs::read_link(env.root().join("link-me")).is_ok_and(|t| t == Path::new("thing"))
    })
    .await;
    // And a symlink pointing outside is not shipped: the link it replaced
    // must not linger either.
    std::fs::remove_file(env.src().join("link-me")).unwrap();
    std::os::unix::fs::symlink("/etc", env.src().join("link-me")).unwrap();
    wait_until("replaced link removed", || {
        std::fs::symlink_metadata(env.root().join("link-me")).is_err()
    })
    .await;
    s.stop().await;
    r.stop().await;
}

/// How it broke (kill suite): a file deleted while it was being packed came
/// back from the packer as "changed while packing", which turned its
/// pending deletion into an update again; the update found no file, and
/// the receiver kept its old copy for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_while_it_is_packed_is_deleted_on_the_receiver() {
    let env = Env::new();
    let listen = free_addr().to_string();
    let extra = "chunk_size = \"64KiB\"\nmax_bundle_size = \"160KiB\"\n";
    env.write("media/big.bin", "small at first");
    let r = receiver_at(&env, &listen).await;
    let s = env.start_sender(listen.parse().unwrap(), extra);
    wait_in_sync(&env).await;
    // With the receiver gone, the outbox is full after two bundles and the
    // packer waits for room half-way through the file's parts.
    r.stop().await;
    env.write("media/big.bin", noise(1 << 20, 3));
    let outbox = env.path().join("state-s/outbox");
    wait_until("the packer waiting for room in the outbox", || {
        std::fs::read_dir(&outbox).is_ok_and(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
                >= 2
        })
    })
    .await;
    std::fs::remove_file(env.src().join("media/big.bin")).unwrap();
    // The sender has seen the deletion before the packer reads on.
    let cfg = env.config_file("sender.toml", &env.sender_toml(&listen, extra));
    wait_status(&cfg, "the deletion pending", |v| v["pending_paths"] == 1).await;
    let r = receiver_at(&env, &listen).await;
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}
