//! Content the receiver already has never travels again: an identical
//! rewrite ships metadata only, a renamed or copied file is rebuilt from
//! the receiver's own copy, and a receiver that no longer holds what a
//! bundle refers to gets the content after all.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
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

/// Ship `files` and wait until the receiver has them.
async fn shipped(env: &Env, files: &[(&str, Vec<u8>)]) -> (Role, Role) {
    for (rel, body) in files {
        env.write(rel, body);
    }
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(env).await;
    // Archived after it is published: wait, or a later count of the
    // archive may take it for one of the bundles that follow.
    wait_until("the first ship archived", || !env.archived().is_empty()).await;
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
    let m = archived_where(&env, |m| m.seq > 1).await;
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
    // Sent whole after the refusal.
    let whole = |m: &shipper::bundle::Manifest| m.files.iter().any(|f| f.path == "a.html");
    archived_where(&env, |m| m.seq > 1 && whole(m)).await;

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
    archived_where(&env, |m| !m.kept.is_empty()).await;
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
    for want in ["\"index.html\" (not held", "\"img/photo.jpg\" (not held"] {
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

/// Renaming a directory of images shipped every image again (a deletion
/// plus every file); now the receiver moves no image bytes: each new path
/// is a copy of content it holds, made in staging and checked. A copy of
/// an image is made the same way; replayed onto an empty root, such a
/// bundle names each file it needs and where it expected the content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_directory_of_images_moves_no_image_bytes() {
    let env = Env::new();
    let mut files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("img/p{i}.jpg"), noise(40_000 + i, i as u64)))
        .collect();
    files.extend((0..8).map(|i| (format!("pages/{i}.html"), b"<p>page</p>".to_vec())));
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    let (r, s) = shipped(&env, &files).await;
    let before = env.archived().len();

    std::fs::rename(env.src().join("img"), env.src().join("photos")).unwrap();
    std::fs::copy(
        env.src().join("photos/p0.jpg"),
        env.src().join("pages/p0-copy.jpg"),
    )
    .unwrap();
    wait_in_sync(&env).await;
    wait_until("the old directory removed", || {
        !env.root().join("img").exists()
    })
    .await;
    for path in ["photos/p2.jpg", "pages/p0-copy.jpg"] {
        archived_where(&env, |m| m.copies.iter().any(|c| c.path == path)).await;
    }
    s.stop().await;
    r.stop().await;

    let after = manifests(&env).split_off(before);
    let carried: Vec<&str> = after
        .iter()
        .flat_map(|m| &m.files)
        .map(|f| f.path.as_str())
        .collect();
    assert!(
        carried.iter().all(|p| p.ends_with(".html")),
        "image bytes travelled: {carried:?}"
    );
    let mut copies: Vec<(&str, &str)> = after
        .iter()
        .flat_map(|m| &m.copies)
        .map(|c| (c.path.as_str(), c.from.as_str()))
        .collect();
    copies.sort();
    assert_eq!(
        copies,
        [
            ("pages/p0-copy.jpg", "img/p0.jpg"),
            ("photos/p0.jpg", "img/p0.jpg"),
            ("photos/p1.jpg", "img/p1.jpg"),
            ("photos/p2.jpg", "img/p2.jpg"),
        ]
    );
    let ino = |rel: &str| std::fs::metadata(env.root().join(rel)).unwrap().ino();
    assert_ne!(
        ino("photos/p0.jpg"),
        ino("pages/p0-copy.jpg"),
        "one file at two paths"
    );

    let mut with_copies = env.archived().into_iter().rev();
    let copies_of = |b: &Path| open(b, &Limits::default()).unwrap().manifest.copies;
    let p1 = |b: &Path| copies_of(b).iter().any(|c| c.path == "photos/p1.jpg");
    let bundle = with_copies.find(|b| p1(b)).unwrap();
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
    let want = "\"photos/p1.jpg\" (its content, from \"img/p1.jpg\": not held";
    assert!(t.contains(want), "{want} not named in: {t}");
    assert!(tree(&restored).is_empty(), "something applied");
}

/// A copy's source lost on the receiver (deleted there by hand): the
/// receiver refuses the bundle naming the file, and the sender sends it
/// with its content, and the lost source with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_source_the_receiver_lost_is_sent_with_its_content() {
    let env = Env::new();
    let files = [("img/a.jpg", noise(50_000, 9))];
    let (r, s) = shipped(&env, &files).await;
    std::fs::remove_file(env.root().join("img/a.jpg")).unwrap();

    std::fs::create_dir_all(env.src().join("new")).unwrap();
    std::fs::copy(env.src().join("img/a.jpg"), env.src().join("new/b.jpg")).unwrap();
    wait_until("the copy arrived", || {
        std::fs::read(env.root().join("new/b.jpg")).is_ok_and(|b| b == files[0].1)
    })
    .await;
    let whole = |m: &shipper::bundle::Manifest| m.files.iter().any(|f| f.path == "new/b.jpg");
    let m = archived_where(&env, whole).await;
    let mut sent: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    sent.sort();
    assert_eq!(sent, ["img/a.jpg", "new/b.jpg"], "{m:?}");
    wait_in_sync(&env).await;

    s.stop().await;
    r.stop().await;
}

/// The receivers hold content at the paths this index names.
struct Index(std::collections::HashMap<[u8; 32], String>);

impl shipper::bundle::pack::HeldContent for Index {
    fn has_size(&self, _: u64) -> bool {
        true
    }
    fn path_of(&self, _: u64, h: &blake3::Hash) -> Option<String> {
        self.0.get(h.as_bytes()).cloned()
    }
}

/// A source with `new/` and a receiver's target with `old/` in root,
/// in `dir`, for packing and applying renames.
fn rename_fixture(dir: &Path) -> (std::path::PathBuf, shipper::bundle::apply::Target) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("new")).unwrap();
    let target = shipper::bundle::apply::Target {
        root: dir.join("root"),
        staging: dir.join("staging"),
        parts: dir.join("parts"),
        policy: shipper::perms::Policy::default(),
        keep: None,
        snapshot: false,
    };
    target.prepare().unwrap();
    std::fs::create_dir_all(target.root.join("old")).unwrap();
    (src, target)
}

/// Pack `items` from `src` into bundles in `dir`/out, with content the
/// receivers hold in `held`, within `limits`; the bundles' files.
fn pack_held(
    dir: &Path,
    src: &Path,
    held: &Index,
    limits: shipper::bundle::pack::Limits,
    items: Vec<shipper::bundle::pack::PackItem>,
) -> Vec<std::path::PathBuf> {
    let outbox = dir.join("out");
    let packed = pack_items_held(src, (&outbox, "test", 1), limits, items, Some(held));
    packed.into_iter().map(|p| p.path).collect()
}

/// A rename larger than one bundle: a run packs its deletions first, so
/// bundle 1 deleted `old/`, and the copies in bundle 2 named paths that
/// were gone: refused, then sent whole. Now a path an earlier bundle of
/// the run changed or deleted is never copied from: every bundle applies.
#[test]
fn a_rename_spanning_bundles_never_copies_from_what_an_earlier_one_deleted() {
    use shipper::bundle::apply::{Limits as ApplyLimits, apply, open};
    use shipper::bundle::pack::{Limits, PackItem};
    use shipper::changes::Op;
    let t = tempfile::tempdir().unwrap();
    let (src, target) = rename_fixture(t.path());
    let mut index = std::collections::HashMap::new();
    let names = ["a", "b", "c", "d"];
    for (i, n) in names.iter().enumerate() {
        let body = noise(40_000, i as u64);
        std::fs::write(src.join(format!("new/{n}.jpg")), &body).unwrap();
        std::fs::write(target.root.join(format!("old/{n}.jpg")), &body).unwrap();
        index.insert(*blake3::hash(&body).as_bytes(), format!("old/{n}.jpg"));
    }
    let item = |path: String, op| PackItem {
        op,
        reuse: true,
        ..PackItem::upsert(path)
    };
    let items = names
        .iter()
        .map(|n| item(format!("new/{n}.jpg"), Op::Upsert))
        .chain(
            names
                .iter()
                .map(|n| item(format!("old/{n}.jpg"), Op::Delete)),
        )
        .collect();
    // Five entries a bundle: the four deletions and one copy fill the first.
    let out = pack_held(
        t.path(),
        &src,
        &Index(index),
        Limits::new(4096, 1 << 20, 5),
        items,
    );
    assert!(out.len() >= 2, "{out:?}");
    for b in &out {
        let b = open(b, &ApplyLimits::default()).unwrap();
        let seq = b.manifest.seq;
        apply(&target, b).unwrap_or_else(|e| panic!("bundle {seq} refused: {e}"));
    }
    for n in names {
        let want = std::fs::read(src.join(format!("new/{n}.jpg"))).unwrap();
        assert_eq!(
            std::fs::read(target.root.join(format!("new/{n}.jpg"))).unwrap(),
            want
        );
        assert!(!target.root.join(format!("old/{n}.jpg")).exists());
    }
}

/// A receiver lost a file other files were copied from. Before, only the
/// refused bundle's own files were shipped again: the lost file stayed
/// lost, and every later file with its content was packed as a copy from
/// it and refused again. Now the source ships again too, and one refusal
/// is all it costs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_copy_source_ships_again_and_costs_one_refusal() {
    let env = Env::new();
    let metrics = free_addr();
    let body = noise(50_000, 9);
    env.write("img/a.jpg", &body);
    let r = env
        .start_receiver(&format!("metrics = \"{metrics}\"\n"))
        .await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    std::fs::remove_file(env.root().join("img/a.jpg")).unwrap();
    let needs = || async {
        let text = scrape(metrics).await;
        text.lines()
            .filter(|l| {
                l.starts_with("shipper_bundles_refused_total") && l.contains("needs_content")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    for name in ["b", "c", "d"] {
        let rel = format!("new/{name}.jpg");
        env.write(&rel, &body);
        wait_until("the copy arrived", || {
            std::fs::read(env.root().join(&rel)).is_ok_and(|b| b == body)
        })
        .await;
    }
    wait_in_sync(&env).await;
    assert_eq!(
        std::fs::read(env.root().join("img/a.jpg")).unwrap(),
        body,
        "the lost source is back"
    );
    assert_eq!(needs().await, 1.0, "one refusal in all");
    s.stop().await;
    r.stop().await;
}

/// A receiver killed after publishing a rename (its copy made, its source
/// deleted) but before recording it applies the bundle again at start:
/// the copy's source was gone, so the bundle was refused and root kept
/// half a rename until the sender sent the files whole. Now a copy whose
/// path already holds its content is made from there.
#[test]
fn a_rename_applied_again_after_a_crash_finishes() {
    use shipper::bundle::apply::{Limits as ApplyLimits, apply, open};
    use shipper::bundle::pack::{Limits, PackItem};
    use shipper::changes::Op;
    let t = tempfile::tempdir().unwrap();
    let (src, target) = rename_fixture(t.path());
    let body = noise(40_000, 1);
    std::fs::write(src.join("new/a.jpg"), &body).unwrap();
    std::fs::write(target.root.join("old/a.jpg"), &body).unwrap();
    let held = Index([(*blake3::hash(&body).as_bytes(), "old/a.jpg".to_string())].into());
    let item = |path: &str, op| PackItem {
        op,
        reuse: true,
        ..PackItem::upsert(path)
    };
    let items = vec![item("new/a.jpg", Op::Upsert), item("old/a.jpg", Op::Delete)];
    let out = pack_held(
        t.path(),
        &src,
        &held,
        Limits::new(4096, 1 << 20, 100),
        items,
    );
    assert_eq!(out.len(), 1);
    let copies = open(&out[0], &ApplyLimits::default())
        .unwrap()
        .manifest
        .copies;
    assert_eq!(copies.len(), 1, "packed as a copy");
    for attempt in ["applied", "applied again"] {
        let b = open(&out[0], &ApplyLimits::default()).unwrap();
        apply(&target, b).unwrap_or_else(|e| panic!("{attempt}: {e}"));
        assert_eq!(std::fs::read(target.root.join("new/a.jpg")).unwrap(), body);
        assert!(!target.root.join("old/a.jpg").exists(), "{attempt}");
    }
}
