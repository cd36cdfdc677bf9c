//! Tests of [`super::undo_kept`]: a kept publish undone exactly, after a
//! stop at any change, and never over what was put in root since.

use std::os::unix::fs::MetadataExt;

use rustix::io::Errno;

use super::*;
use crate::beneath::fault::{self, snapshot};
use crate::beneath::publish::tests::{make_changes, plant_fault_tree};
use crate::beneath::root::tests::setup;
use crate::perms::Policy;

/// Root's entries, and the mtime of the file the bundle keeps.
type Snapshot = (
    std::collections::BTreeMap<String, (u64, u32, String)>,
    std::time::SystemTime,
);

fn kept_mtime(was: &Snapshot) -> std::time::SystemTime {
    was.1
}

/// Publish the fault test's bundle (every kind of change) and keep it as
/// the record `rec`; returns root's snapshot from before.
fn publish_and_keep(t: &Path, root: &Root, stage: &std::os::fd::OwnedFd) -> Snapshot {
    plant_fault_tree(t);
    let was = snapshot(&t.join("root"));
    let stay = std::fs::metadata(t.join("root/keep/stay.html")).unwrap();
    let was = (was, stay.modified().unwrap());
    let mut p = root.begin(&t.join("undo"), &Policy::mirror()).unwrap();
    make_changes(&mut p, stage).unwrap();
    p.keep(&t.join("rec"), &[("bundle.json", b"{}")]).unwrap();
    assert!(
        !t.join("undo").exists(),
        "the undo directory became the record"
    );
    assert!(t.join("rec").join(RECORD_STEPS).exists());
    assert_eq!(std::fs::read(t.join("rec/bundle.json")).unwrap(), b"{}");
    assert_ne!(snapshot(&t.join("root")), was.0, "the bundle changed root");
    was
}

/// What a bundle replaced, deleted, made and re-moded comes back from its
/// record: the very same entries (inodes), modes (setgid included) and
/// mtimes.
#[test]
fn a_kept_publish_is_undone_exactly() {
    let (t, root, stage) = setup();
    let r = t.path().join("root");
    let mtime = |rel: &str| std::fs::metadata(r.join(rel)).unwrap().modified().unwrap();
    let was = publish_and_keep(t.path(), &root, &stage);
    let left = undo_kept(&root, &t.path().join("rec"), Restore::Move).unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(snapshot(&r), was.0);
    assert_eq!(
        mtime("keep/stay.html"),
        kept_mtime(&was),
        "the kept file's mtime"
    );
    // Run again: nothing left to undo, nothing changes.
    assert!(
        undo_kept(&root, &t.path().join("rec"), Restore::Move)
            .unwrap()
            .is_empty()
    );
    assert_eq!(snapshot(&r), was.0);
}

/// An undo that stopped at any one of its changes (a crash: that change
/// and every one after it fail) finishes when it is run again, and root
/// is exactly what it was before the bundle.
#[test]
fn an_undo_stopped_at_any_change_finishes_when_run_again() {
    let changes = {
        let (t, root, stage) = setup();
        publish_and_keep(t.path(), &root, &stage);
        fault::arm(None, Errno::IO, false);
        undo_kept(&root, &t.path().join("rec"), Restore::Move).unwrap();
        fault::count()
    };
    assert!(changes > 10, "only {changes} changes counted");
    for at in 1..=changes {
        let (t, root, stage) = setup();
        let was = publish_and_keep(t.path(), &root, &stage);
        fault::arm(Some(at), Errno::IO, true);
        assert!(
            undo_kept(&root, &t.path().join("rec"), Restore::Move).is_err(),
            "at {at}"
        );
        fault::arm(None, Errno::IO, false);
        let left = undo_kept(&root, &t.path().join("rec"), Restore::Move).unwrap();
        assert!(left.is_empty(), "at {at}: {left:?}");
        assert_eq!(
            snapshot(&t.path().join("root")),
            was.0,
            "stopped at change {at}"
        );
        let stay = std::fs::metadata(t.path().join("root/keep/stay.html")).unwrap();
        assert_eq!(
            stay.modified().unwrap(),
            kept_mtime(&was),
            "stopped at change {at}"
        );
    }
}

/// What was put in root after the bundle (a file replacing one it placed,
/// a file written in place, a file in a directory it made) is never
/// deleted or replaced by the undo; each such change is named and left as
/// it is.
#[test]
fn an_undo_never_touches_what_was_put_there_since() {
    let (t, root, stage) = setup();
    let r = t.path().join("root");
    std::fs::write(r.join("old.html"), "old").unwrap();
    std::fs::write(r.join("edited.html"), "old").unwrap();
    for (i, body) in ["new", "made", "new"].iter().enumerate() {
        std::fs::write(t.path().join(format!("stage/f{i}")), body).unwrap();
    }
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::mirror())
        .unwrap();
    p.publish("old.html", &stage, "f0").unwrap();
    p.publish("dir/made.html", &stage, "f1").unwrap();
    p.publish("edited.html", &stage, "f2").unwrap();
    p.sync().unwrap();
    p.keep(&t.path().join("rec"), &[]).unwrap();
    // Since: old.html replaced by someone else, a file added in dir, and
    // edited.html written in place (the same inode).
    std::fs::write(r.join("other"), "someone else's").unwrap();
    std::fs::rename(r.join("other"), r.join("old.html")).unwrap();
    std::fs::write(r.join("dir/theirs.html"), "theirs").unwrap();
    let then = std::fs::metadata(r.join("edited.html"))
        .unwrap()
        .modified()
        .unwrap();
    let f = std::fs::File::options()
        .append(true)
        .open(r.join("edited.html"))
        .unwrap();
    std::io::Write::write_all(&mut &f, b" and edited here").unwrap();
    f.set_modified(then).unwrap(); // even with its mtime put back
    drop(f);
    let left = undo_kept(&root, &t.path().join("rec"), Restore::Move).unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        left[0].starts_with("edited.html: changed since"),
        "{left:?}"
    );
    assert!(left[1].starts_with("dir: "), "{left:?}");
    assert!(left[2].starts_with("old.html: changed since"), "{left:?}");
    let read = |rel: &str| std::fs::read_to_string(r.join(rel)).unwrap();
    assert_eq!(read("edited.html"), "new and edited here");
    assert_eq!(read("old.html"), "someone else's");
    assert_eq!(read("dir/theirs.html"), "theirs");
    assert!(
        !r.join("dir/made.html").exists(),
        "what the bundle placed is undone"
    );
}

/// For a snapshot no reader sees yet: the undo links what the record kept
/// into it, leaving the record whole (a crash may throw the snapshot away,
/// and the undo is then made again into another) and the root the bundle
/// changed as it is. The files come back as the very same inodes.
#[test]
fn an_undo_by_links_leaves_the_record_whole_and_can_be_made_again() {
    let (t, root, stage) = setup();
    let r = t.path().join("root");
    let was = publish_and_keep(t.path(), &root, &stage);
    let after = snapshot(&r);
    let record_before = snapshot(&t.path().join("rec"));
    let files = |s: &std::collections::BTreeMap<String, (u64, u32, String)>| {
        s.iter()
            .filter(|(_, (_, mode, _))| mode & 0o170000 != 0o040000)
            .map(|(rel, (ino, _, body))| (rel.clone(), (*ino, body.clone())))
            .collect::<Vec<_>>()
    };
    for copy in ["snap1", "snap2"] {
        let snap = t.path().join(copy);
        crate::beneath::link_tree(&r, &snap).unwrap();
        let snap_root = Root::open(&snap).unwrap();
        let left = undo_kept(&snap_root, &t.path().join("rec"), Restore::Link).unwrap();
        // The fixture's kept file (retimed in place: only in a plain root).
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(
            left[0].starts_with("keep/stay.html: its earlier mode"),
            "{left:?}"
        );
        let mut want = files(&was.0);
        for (rel, (ino, _)) in &mut want {
            if rel == "keep/stay.html" {
                *ino = std::fs::metadata(r.join(rel)).unwrap().ino();
            }
        }
        assert_eq!(files(&snapshot(&snap)), want, "{copy}");
        assert_eq!(
            snapshot(&t.path().join("rec")),
            record_before,
            "record kept whole"
        );
        assert_eq!(
            snapshot(&r),
            after,
            "the root the bundle changed is untouched"
        );
    }
}

/// A directory on a path the bundle changed became a symlink since (a
/// deploy that moved it and linked it back): the undo of what lies below
/// it is reported and left, never done through the symlink, and the undo
/// of the rest goes on.
#[test]
fn a_symlink_put_on_the_way_since_is_reported_not_followed() {
    let (t, root, stage) = setup();
    let r = t.path().join("root");
    std::fs::create_dir(r.join("d")).unwrap();
    std::fs::write(r.join("d/y.html"), "old").unwrap();
    for (i, body) in ["new x", "new y", "top"].iter().enumerate() {
        std::fs::write(t.path().join(format!("stage/f{i}")), body).unwrap();
    }
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::mirror())
        .unwrap();
    p.publish("d/x.html", &stage, "f0").unwrap();
    p.publish("d/y.html", &stage, "f1").unwrap();
    p.publish("top.html", &stage, "f2").unwrap();
    p.sync().unwrap();
    p.keep(&t.path().join("rec"), &[]).unwrap();
    std::fs::rename(r.join("d"), r.join("d-real")).unwrap();
    std::os::unix::fs::symlink("d-real", r.join("d")).unwrap();
    let left = undo_kept(&root, &t.path().join("rec"), Restore::Move).unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().all(|l| l.contains("is a symlink now")),
        "{left:?}"
    );
    assert!(!r.join("top.html").exists(), "the rest is undone");
    assert_eq!(
        std::fs::read_to_string(r.join("d-real/y.html")).unwrap(),
        "new y"
    );
    assert!(r.join("d-real/x.html").exists());
}
