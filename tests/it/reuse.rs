//! Content the receiver already has never travels again: an identical
//! rewrite ships metadata only, and a receiver that no longer holds what a
//! bundle kept gets the content after all.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use shipper::bundle::apply::{Limits, open};

use crate::util::*;

/// Give `path` the mtime `secs` after the epoch.
fn set_mtime(path: &Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    f.set_times(std::fs::FileTimes::new().set_modified(t))
        .unwrap();
}

fn mtime(path: &Path) -> i64 {
    std::fs::metadata(path).map(|m| m.mtime()).unwrap_or(-1)
}

/// The manifest of the last bundle the receiver archived.
fn last_manifest(env: &Env) -> shipper::bundle::Manifest {
    let last: PathBuf = env.archived().pop().expect("a bundle archived");
    open(&last, &Limits::default()).unwrap().manifest
}

/// Ship `files` and wait until the receiver has them.
async fn shipped(env: &Env, files: &[(&str, Vec<u8>)]) -> (Role, Role) {
    for (rel, body) in files {
        env.write(rel, body);
    }
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(env).await;
    (r, s)
}

/// Rewrite `files` in the source with the same bytes and the mtime `secs`.
fn rewrite_identically(env: &Env, files: &[(&str, Vec<u8>)], secs: u64) {
    for (rel, body) in files {
        env.write(rel, body);
        set_mtime(&env.src().join(rel), secs);
    }
}

/// A CMS that rewrites every page with the same bytes made the whole site
/// travel again; now the bundle carries only the new mtimes, and root's
/// files are given them in place (the same inodes: nothing rewritten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_rewrite_ships_only_metadata_and_root_keeps_its_files() {
    let env = Env::new();
    let files = [
        ("index.html", b"<h1>home</h1>".to_vec()),
        ("img/photo.jpg", noise(300_000, 7)),
    ];
    let (r, s) = shipped(&env, &files).await;
    let inode = |rel: &str| std::fs::metadata(env.root().join(rel)).unwrap().ino();
    let before: Vec<u64> = files.iter().map(|(rel, _)| inode(rel)).collect();

    rewrite_identically(&env, &files, 1_700_000_000);
    wait_until("root's files given the new mtime", || {
        files
            .iter()
            .all(|(rel, _)| mtime(&env.root().join(rel)) == 1_700_000_000)
    })
    .await;
    let after: Vec<u64> = files.iter().map(|(rel, _)| inode(rel)).collect();
    assert_eq!(before, after, "root's files were rewritten");
    assert_eq!(tree(&env.root()), tree(&env.src()));
    let m = last_manifest(&env);
    assert!(m.files.is_empty() && m.parts.is_empty(), "{m:?}");
    let kept: Vec<&str> = m.kept.iter().map(|k| k.path.as_str()).collect();
    assert_eq!(kept, ["img/photo.jpg", "index.html"]);

    s.stop().await;
    r.stop().await;
}

/// A page edited on the receiver keeps its size: a bundle that only kept
/// it would have given the edited page the source's mtime, and the
/// receiver would have served it for good. The receiver checks the
/// content, refuses naming the page, and the sender sends it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edited_on_the_receiver_is_sent_again_with_its_content() {
    let env = Env::new();
    let files = [("a.html", b"hello".to_vec()), ("b.html", b"world".to_vec())];
    let (r, s) = shipped(&env, &files).await;
    std::fs::write(env.root().join("a.html"), "HELLO").unwrap();

    rewrite_identically(&env, &files, 1_700_000_000);
    wait_until("the edited page put right", || {
        std::fs::read(env.root().join("a.html")).is_ok_and(|b| b == b"hello")
            && mtime(&env.root().join("b.html")) == 1_700_000_000
    })
    .await;
    assert_eq!(tree(&env.root()), tree(&env.src()));
    let m = last_manifest(&env);
    let sent: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert!(sent.contains(&"a.html"), "a.html not sent whole: {m:?}");

    s.stop().await;
    r.stop().await;
}

/// A bundle that keeps files refers to content elsewhere: replayed onto an
/// empty root it must say which files it needs, and apply nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_bundle_of_kept_files_on_an_empty_root_names_what_it_needs() {
    let env = Env::new();
    let files = [
        ("index.html", b"<h1>home</h1>".to_vec()),
        ("img/photo.jpg", noise(3_000, 7)),
    ];
    let (r, s) = shipped(&env, &files).await;
    rewrite_identically(&env, &files, 1_700_000_000);
    wait_until("metadata applied", || {
        mtime(&env.root().join("index.html")) == 1_700_000_000
    })
    .await;
    s.stop().await;
    r.stop().await;

    let bundle = env.archived().pop().unwrap();
    let restored = env.path().join("restored");
    let out = shipper_async(owned(&[
        "replay",
        "--root",
        restored.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ]))
    .await;
    assert!(!out.status.success(), "applied: {}", text(&out));
    let t = text(&out);
    for want in ["\"index.html\" (missing)", "\"img/photo.jpg\" (missing)"] {
        assert!(t.contains(want), "{want} not named in: {t}");
    }
    assert!(tree(&restored).is_empty(), "something applied");
    let out = shipper_async(owned(&["inspect", bundle.to_str().unwrap()])).await;
    let t = text(&out);
    assert!(
        t.contains("kept (content not carried; root must hold it): 2"),
        "{t}"
    );
}
