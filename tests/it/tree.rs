//! The tree as it is, not only its files: empty directories and symlinks
//! travel (served through a real nginx running as another user), links
//! that would lead outside the tree never do, and a bundle cannot use a
//! link to write outside root.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use crate::util::*;
use crate::web::Nginx;

use crate::faults::snapshot;

fn serve(env: &Env) -> Nginx {
    let dir = env.path().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    Nginx::serve(&env.root(), &dir, env.path())
}

fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn link_of(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Directories only appeared and disappeared with their files: an empty
/// one made in the source never reached the receiver. Now it arrives with
/// the policy's mode (the default 0755, not the source's 0700) and goes
/// when removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_directory_appears_with_the_policys_mode_and_goes_when_removed() {
    let env = Env::new();
    env.write("index.html", "home");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    let web = serve(&env);
    let uploads = env.src().join("uploads");
    std::fs::create_dir(&uploads).unwrap();
    std::fs::set_permissions(&uploads, std::fs::Permissions::from_mode(0o700)).unwrap();
    let there = env.root().join("uploads");
    // Made private, then given its mode before anything is put in it.
    wait_until("the empty directory arrives with the policy's mode", || {
        is_dir(&there) && std::fs::metadata(&there).is_ok_and(|m| m.mode() & 0o7777 == 0o755)
    })
    .await;
    // nginx sees a directory: it redirects to the slashed name.
    assert_eq!(web.get("uploads").0, 301);
    std::fs::remove_dir(&uploads).unwrap();
    wait_until("the removed directory goes", || !exists(&there)).await;
    assert_eq!(web.get("uploads").0, 404);
    s.stop().await;
    r.stop().await;
}

/// A directory tree renamed in the source arrives whole under its new
/// name, its empty subdirectory included, and the old name is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_directory_tree_arrives_under_its_new_name() {
    let env = Env::new();
    env.write("2026/11/a.html", "a");
    env.write("2026/11/sub/b.html", "b");
    std::fs::create_dir_all(env.src().join("2026/11/empty")).unwrap();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    let root = env.root();
    wait_until("the tree arrives", || is_dir(&root.join("2026/11/empty"))).await;
    let web = serve(&env);
    std::fs::rename(env.src().join("2026"), env.src().join("archive-2026")).unwrap();
    wait_until("the renamed tree arrives and the old one goes", || {
        is_dir(&root.join("archive-2026/11/empty")) && !exists(&root.join("2026"))
    })
    .await;
    wait_in_sync(&env).await;
    assert_eq!(web.get("archive-2026/11/sub/b.html"), (200, b"b".to_vec()));
    assert_eq!(web.get("2026/11/a.html").0, 404);
    s.stop().await;
    r.stop().await;
}

/// Wait until what happened in the source so far has shipped, and root is
/// in step with it: a file written now settles after every change made
/// before it, so once its bundle is archived those have shipped with it or
/// before.
async fn everything_before_shipped(env: &Env) {
    env.write("after.html", "after");
    archived_holding(env, &["after.html".to_string()]).await;
    wait_in_sync(env).await;
}

/// A directory renamed away and straight back (`mv a b; mv b a`, within
/// `settle`) left the deletions of its files pending, and the walk of it
/// found them as shipped: the receiver deleted files the source still had.
/// Now nothing there is deleted, and the tree stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_renamed_away_and_back_loses_nothing_at_the_receiver() {
    let env = Env::new();
    env.write("pages/a.html", "a");
    env.write("pages/sub/b.html", "b");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    let (src, root) = (env.src(), env.root());
    std::fs::rename(src.join("pages"), src.join("moving")).unwrap();
    std::fs::rename(src.join("moving"), src.join("pages")).unwrap();
    everything_before_shipped(&env).await;
    let deleted: Vec<String> = manifests(&env)
        .into_iter()
        .flat_map(|m| m.deletions)
        .collect();
    assert!(deleted.is_empty(), "deleted at the receiver: {deleted:?}");
    assert_eq!(std::fs::read(root.join("pages/sub/b.html")).unwrap(), b"b");
    s.stop().await;
    r.stop().await;
}

/// A deploy that swaps a directory for a new build and removes the old one
/// (`mv site site.old; mv site.new site; rm -rf site.old`): the removal of
/// the old build's files, reported under their old names, deleted the new
/// build's files of the same names at the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_new_build_and_the_old_removed_arrives_whole() {
    let env = Env::new();
    // Many directories: each is a chance for the old build's events to
    // come under the new build's names.
    let build = |dir: &str, version: &str| {
        env.write(&format!("{dir}/index.html"), version);
        for d in 0..20 {
            env.write(&format!("{dir}/{d}/page.html"), version);
            env.write(&format!("{dir}/{d}/img/logo.svg"), "same");
        }
    };
    build("site", "v1");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    let src = env.src();
    build("site.new", "v2");
    std::fs::rename(src.join("site"), src.join("site.old")).unwrap();
    std::fs::rename(src.join("site.new"), src.join("site")).unwrap();
    std::fs::remove_dir_all(src.join("site.old")).unwrap();
    everything_before_shipped(&env).await;
    s.stop().await;
    r.stop().await;
}

/// Symlinks were skipped without a word. A link whose target stays inside
/// the tree now travels as a link (nginx answers the target's content,
/// and follows a retargeted link); one pointing outside, or absolute, is
/// not shipped and is listed in `status` until removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_inside_the_tree_are_served_and_links_outside_are_named_in_status() {
    let env = Env::new();
    env.write("2026/11/a.html", "november");
    symlink("2026/11", env.src().join("current")).unwrap();
    symlink("2026/11/a.html", env.src().join("latest.html")).unwrap();
    symlink("/etc/passwd", env.src().join("passwd")).unwrap();
    symlink("../../outside", env.src().join("2026/out")).unwrap();
    let r = env.start_receiver("").await;
    let cfg = env.config_file("s.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let s = env.start_sender_from(r.addr, &std::fs::read_to_string(&cfg).unwrap());
    let root = env.root();
    wait_until("the links arrive", || {
        link_of(&root.join("current")).is_some() && link_of(&root.join("latest.html")).is_some()
    })
    .await;
    assert_eq!(link_of(&root.join("current")).unwrap(), "2026/11");
    let web = serve(&env);
    assert_eq!(web.get("current/a.html"), (200, b"november".to_vec()));
    assert_eq!(web.get("latest.html"), (200, b"november".to_vec()));
    let skipped = |v: &serde_json::Value| {
        let mut p: Vec<String> = v["skipped_links"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{} -> {}",
                    l["path"].as_str().unwrap(),
                    l["target"].as_str().unwrap()
                )
            })
            .collect();
        p.sort();
        p
    };
    wait_status(&cfg, "both unsafe links listed", |v| {
        skipped(v) == ["2026/out -> ../../outside", "passwd -> /etc/passwd"]
    })
    .await;
    assert!(!exists(&root.join("passwd")) && !exists(&root.join("2026/out")));

    env.write("2026/12/a.html", "december");
    std::fs::remove_file(env.src().join("current")).unwrap();
    symlink("2026/12", env.src().join("current")).unwrap();
    wait_until("the link is retargeted", || {
        link_of(&root.join("current")).as_deref() == Some("2026/12")
    })
    .await;
    assert_eq!(web.get("current/a.html"), (200, b"december".to_vec()));
    std::fs::remove_file(env.src().join("passwd")).unwrap();
    std::fs::remove_file(env.src().join("latest.html")).unwrap();
    wait_until("the removed link goes", || {
        !exists(&root.join("latest.html"))
    })
    .await;
    wait_status(&cfg, "the removed unsafe link no longer listed", |v| {
        skipped(v) == ["2026/out -> ../../outside"]
    })
    .await;
    s.stop().await;
    r.stop().await;
}

/// What the sender's catch-up compares now includes directories and
/// links: ones made, and removed, while it was down reach the receiver
/// when it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_and_links_changed_while_the_sender_is_down_arrive_at_restart() {
    let env = Env::new();
    env.write("a.html", "a");
    std::fs::create_dir(env.src().join("old-empty")).unwrap();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    let root = env.root();
    wait_until("the first tree arrives", || is_dir(&root.join("old-empty"))).await;
    s.stop().await;
    std::fs::create_dir_all(env.src().join("d/e")).unwrap();
    symlink("a.html", env.src().join("alias.html")).unwrap();
    std::fs::remove_dir(env.src().join("old-empty")).unwrap();
    let s = env.start_sender(r.addr, "");
    wait_until("what changed while down arrives", || {
        is_dir(&root.join("d/e"))
            && link_of(&root.join("alias.html")).as_deref() == Some("a.html")
            && !exists(&root.join("old-empty"))
    })
    .await;
    s.stop().await;
    r.stop().await;
}

/// A bundle named `name` with `manifest` (its lists) and `files` (path,
/// content) as entries.
fn hostile_bundle(
    dir: &Path,
    name: &str,
    lists: serde_json::Value,
    files: &[(&str, &str)],
) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join(format!("{name}.zip"));
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    let mut entries = Vec::new();
    for (p, body) in files {
        z.start_file(*p, options).unwrap();
        z.write_all(body.as_bytes()).unwrap();
        entries.push(serde_json::json!({"path": p, "size": body.len(), "mtime": 0,
            "mtime_nsec": 0, "mode": 0o644, "hash": blake3::hash(body.as_bytes()).to_hex().to_string()}));
    }
    let mut m = serde_json::json!({"format": 1, "sender": "hostile", "seq": 1, "created": 0,
        "files": entries, "deletions": []});
    for (k, v) in lists.as_object().unwrap() {
        m[k] = v.clone();
    }
    z.start_file(".shipper/manifest.json", options).unwrap();
    z.write_all(m.to_string().as_bytes()).unwrap();
    z.finish().unwrap();
    path
}

/// Links in bundles are as dangerous as paths: one escaping root, one
/// absolute, one escaping through another link (`a -> .`, `e -> a/..`),
/// a file or directory written through a link already in root,
/// or through a link of the same bundle, are each refused whole, with root
/// and what lies outside it untouched.
#[test]
fn bundles_with_escaping_links_or_writes_through_links_are_refused_untouched() {
    use serde_json::json;
    let env = Env::new();
    std::fs::create_dir_all(env.root().join("sub")).unwrap();
    std::fs::write(env.root().join("sub/page.html"), "page").unwrap();
    symlink("sub", env.root().join("current")).unwrap();
    std::fs::create_dir_all(env.path().join("outside")).unwrap();
    std::fs::write(env.path().join("outside/victim"), "keep").unwrap();
    let lonely = || -> [(&str, &str); 1] { [("canary.html", "canary")] };
    let cases = [
        (
            "escaping",
            json!({"links": [{"path": "out", "target": "../outside"}]}),
            lonely().to_vec(),
            "leaves the tree",
        ),
        (
            "absolute",
            json!({"links": [{"path": "pw", "target": "/etc/passwd"}]}),
            lonely().to_vec(),
            "absolute",
        ),
        (
            // `a` is root itself, so `a/..` is root's parent.
            "climbing-through-own-link",
            json!({"links": [{"path": "a", "target": "."},
                             {"path": "e", "target": "a/../outside/victim"}]}),
            lonely().to_vec(),
            "climbs out of a name",
        ),
        (
            "through-root-link",
            json!({}),
            vec![("canary.html", "canary"), ("current/x.html", "evil")],
            "symlink",
        ),
        (
            "dir-through-root-link",
            json!({"dirs": [{"path": "current/d", "mode": 0o755}]}),
            lonely().to_vec(),
            "symlink",
        ),
        (
            "through-own-link",
            json!({"links": [{"path": "l", "target": "sub"}]}),
            vec![("l/x.html", "evil")],
            "directory of",
        ),
    ];
    let bundles = env.path().join("bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    for (name, lists, files, expect) in cases {
        let was = (
            snapshot::snapshot(&env.root()),
            snapshot::snapshot(&env.path().join("outside")),
        );
        let b = hostile_bundle(&bundles, name, lists, &files);
        let out = shipper(&[
            "replay",
            "--root",
            env.root().to_str().unwrap(),
            b.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(text(&out).contains(expect), "{name}: {}", text(&out));
        let now = (
            snapshot::snapshot(&env.root()),
            snapshot::snapshot(&env.path().join("outside")),
        );
        assert_eq!(now, was, "{name}: root or outside changed");
    }
}

/// A symlink replaced by a directory of the same name in the source (a
/// `current -> 2026/11` made a real directory): the receiver refused every
/// bundle writing below it as "through a symlink", for ever, although the
/// bundle itself ships the directory that replaces the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_replaced_by_a_directory_becomes_that_directory() {
    let env = Env::new();
    env.write("2026/11/a.html", "november");
    symlink("2026/11", env.src().join("current")).unwrap();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    let root = env.root();
    wait_until("the link arrives", || {
        link_of(&root.join("current")).is_some()
    })
    .await;
    std::fs::remove_file(env.src().join("current")).unwrap();
    env.write("current/b.html", "own page");
    wait_until("the directory replaces the link", || {
        is_dir(&root.join("current")) && exists(&root.join("current/b.html"))
    })
    .await;
    wait_in_sync(&env).await;
    assert_eq!(
        std::fs::read(root.join("2026/11/a.html")).unwrap(),
        b"november"
    );
    assert!(
        !exists(&root.join("2026/11/b.html")),
        "written through the link"
    );
    s.stop().await;
    r.stop().await;
}

/// Found in review: a directory the source replaced by a symlink (to a
/// directory inside the tree) was refused for good by the receiver, which
/// tried to sync the directory that was no longer one. The link arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_replaced_by_a_symlink_arrives_as_the_link() {
    let env = Env::new();
    env.write("docs/a.html", "A");
    env.write("v2/docs/b.html", "B");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    let docs = env.root().join("docs");
    wait_until("the directory arrives", || docs.join("a.html").exists()).await;
    std::fs::remove_dir_all(env.src().join("docs")).unwrap();
    std::os::unix::fs::symlink("v2/docs", env.src().join("docs")).unwrap();
    wait_until("the link replaces the directory", || {
        link_of(&docs).as_deref() == Some("v2/docs")
    })
    .await;
    s.stop().await;
    r.stop().await;
}
