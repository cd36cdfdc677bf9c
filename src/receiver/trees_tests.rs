//! Tests of [`super::Trees`]: root made a symlink to snapshots, each
//! publish one rename, old snapshots unchanged and pruned, a snapshot
//! never published removed.

use std::os::unix::fs::MetadataExt;

use super::*;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn a_new_root_becomes_a_symlink_to_an_empty_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    let trees = Trees::open(&root, 3, 0o755).unwrap();
    assert_eq!(
        std::fs::read_link(&root).unwrap(),
        Path::new(".www.shipper-trees/t-1")
    );
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    let mode = std::fs::metadata(&root).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    assert_eq!(trees.current().unwrap().0, 1);
}

/// A directory already there is taken as the first snapshot: the same
/// files (inodes), root a symlink to it in one exchange, the directory
/// kept aside.
#[test]
fn a_root_directory_becomes_the_first_snapshot_of_itself() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/page.html"), "page").unwrap();
    std::os::unix::fs::symlink("a/b/page.html", root.join("link")).unwrap();
    let ino = std::fs::metadata(root.join("a/b/page.html")).unwrap().ino();
    Trees::open(&root, 3, 0o755).unwrap();
    assert!(std::fs::symlink_metadata(&root).unwrap().is_symlink());
    assert_eq!(
        std::fs::metadata(root.join("a/b/page.html")).unwrap().ino(),
        ino
    );
    assert_eq!(read(&root.join("link")), "page");
    let aside = t.path().join(".www.shipper-trees/was-a-directory");
    assert_eq!(read(&aside.join("a/b/page.html")), "page");
}

/// Each publish builds the next snapshot from the current one and points
/// root at it: the snapshot before is not changed by what the bundle did
/// in the next, and only the newest `tree_keep` remain.
#[test]
fn each_publish_points_root_at_the_next_snapshot_and_keeps_tree_keep() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    let trees = Trees::open(&root, 3, 0o755).unwrap();
    std::fs::write(root.join("page.html"), "v1").unwrap();
    for v in 2..=5 {
        let (_, next) = trees.next().unwrap();
        let (_, before) = trees.current().unwrap();
        // A bundle replaces by rename, never in place.
        std::fs::write(next.join(".new"), format!("v{v}")).unwrap();
        std::fs::rename(next.join(".new"), next.join("page.html")).unwrap();
        assert_eq!(
            read(&root.join("page.html")),
            format!("v{}", v - 1),
            "not yet"
        );
        trees.publish(&next).unwrap();
        assert_eq!(read(&root.join("page.html")), format!("v{v}"));
        assert_eq!(read(&before.join("page.html")), format!("v{}", v - 1));
    }
    let mut left: Vec<String> = std::fs::read_dir(t.path().join(".www.shipper-trees"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["t-3", "t-4", "t-5"]);
}

#[test]
fn a_snapshot_begun_and_never_published_is_removed_at_open() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("www");
    let trees = Trees::open(&root, 3, 0o755).unwrap();
    let (_, next) = trees.next().unwrap();
    std::fs::write(next.join("half.html"), "half").unwrap();
    let trees = Trees::open(&root, 3, 0o755).unwrap();
    assert!(!next.exists());
    assert_eq!(trees.current().unwrap().0, 1);
    assert!(!root.join("half.html").exists());
}

#[test]
fn a_root_symlink_shipper_did_not_make_is_refused() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("elsewhere")).unwrap();
    let root = t.path().join("www");
    std::os::unix::fs::symlink("elsewhere", &root).unwrap();
    let e = format!("{:#}", Trees::open(&root, 3, 0o755).unwrap_err());
    assert!(e.contains("is a symlink shipper did not make"), "{e}");
    assert!(std::fs::symlink_metadata(&root).unwrap().is_symlink());
}
