//! Tests of [`super::Publish`]: what each change does, and that a fault
//! at any change leaves root exactly as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use super::*;
use crate::beneath::fault::{self, snapshot};
use crate::beneath::root::tests::setup;

#[test]
fn publish_creates_parents_and_replaces_a_directory_in_the_way() {
    let (t, root, stage) = setup();
    std::fs::create_dir_all(t.path().join("root/a/b/c")).unwrap();
    std::fs::write(t.path().join("root/a/b/c/x"), "old").unwrap();
    std::fs::write(t.path().join("stage/f0"), "new").unwrap();
    std::fs::write(t.path().join("stage/f1"), "deep").unwrap();
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::default())
        .unwrap();
    p.publish("a/b", &stage, "f0").unwrap();
    p.publish("n/e/w.txt", &stage, "f1").unwrap();
    p.sync().unwrap();
    p.commit();
    assert_eq!(std::fs::read(t.path().join("root/a/b")).unwrap(), b"new");
    assert_eq!(
        std::fs::read(t.path().join("root/n/e/w.txt")).unwrap(),
        b"deep"
    );
    assert!(!t.path().join("undo").exists(), "undo kept after commit");
}

#[test]
fn a_directory_moved_aside_is_never_published_into_again() {
    // The directory files were last published in is held open; once it is
    // moved aside (here pruned, emptied by a deletion), a later file below
    // that path goes into a directory made afresh, not into the undo.
    let (t, root, stage) = setup();
    for (i, body) in ["x", "y"].iter().enumerate() {
        std::fs::write(t.path().join(format!("stage/f{i}")), body).unwrap();
    }
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::default())
        .unwrap();
    p.publish("a/b/x", &stage, "f0").unwrap();
    p.delete("a/b/x").unwrap();
    assert!(
        !t.path().join("root/a").exists(),
        "a/ not pruned once emptied"
    );
    p.publish("a/b/y", &stage, "f1").unwrap();
    p.sync().unwrap();
    p.commit();
    assert_eq!(std::fs::read(t.path().join("root/a/b/y")).unwrap(), b"y");
    assert!(!t.path().join("root/a/b/x").exists());
}

#[test]
fn a_directory_moved_by_something_else_mid_bundle_fails_the_bundle() {
    // Files published into a directory held open, which something else
    // then moves: they left root, so the bundle must not count as applied.
    let (t, root, stage) = setup();
    for (i, body) in ["x", "y"].iter().enumerate() {
        std::fs::write(t.path().join(format!("stage/f{i}")), body).unwrap();
    }
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::default())
        .unwrap();
    p.publish("a/x", &stage, "f0").unwrap();
    std::fs::rename(t.path().join("root/a"), t.path().join("moved")).unwrap();
    p.publish("a/y", &stage, "f1").unwrap();
    let e = p.sync().unwrap_err().to_string();
    assert!(e.contains("root/a") && e.contains("moved"), "{e}");
}

#[test]
fn delete_prunes_emptied_directories_but_never_root() {
    let (t, root, _stage) = setup();
    std::fs::create_dir_all(t.path().join("root/a/b")).unwrap();
    std::fs::write(t.path().join("root/a/b/f"), "x").unwrap();
    std::fs::write(t.path().join("root/keep"), "x").unwrap();
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::default())
        .unwrap();
    p.delete("a/b/f").unwrap();
    p.delete("missing/x").unwrap();
    p.commit();
    assert!(!t.path().join("root/a").exists());
    assert!(t.path().join("root").exists());
}

/// Root before the fault test's bundle: a file it replaces, a file it
/// deletes with the directories that empties, a directory whose files it
/// deletes and then itself, a directory where it puts a file, a file where
/// it puts a directory, and a file it leaves alone (with a symlink it
/// replaces) in a directory it gives another mode.
pub(in crate::beneath) const BEFORE: [(&str, &str); 7] = [
    ("a.html", "old a"),
    ("deep/er/gone.html", "gone"),
    ("tree/x/y.html", "tree"),
    ("tree/z.html", "tree"),
    ("dirfile/in.html", "dir becomes a file"),
    ("filedir", "file becomes a dir"),
    ("keep/stay.html", "stays"),
];
/// What the fault test's bundle publishes, staged as `f0`, `f1`, ...
const STAGED: [(&str, &str); 5] = [
    ("a.html", "new a"),
    ("dirfile", "a file now"),
    ("filedir/in.html", "below a former file"),
    ("keep/link", "a file over a symlink"),
    ("n/e/w.html", "new"),
];

/// Make root as [`BEFORE`] (and `keep/link`) and stage [`STAGED`].
pub(in crate::beneath) fn plant_fault_tree(t: &Path) {
    let r = t.join("root");
    for (rel, body) in BEFORE {
        std::fs::create_dir_all(r.join(rel).parent().unwrap()).unwrap();
        std::fs::write(r.join(rel), body).unwrap();
    }
    std::os::unix::fs::symlink("a.html", r.join("keep/link")).unwrap();
    std::fs::create_dir(r.join("empty")).unwrap();
    // Setgid, by someone else: an undo puts the bit back (it once did not).
    let setgid = std::os::unix::fs::PermissionsExt::from_mode(0o2644);
    std::fs::set_permissions(r.join("keep/stay.html"), setgid).unwrap();
    for (i, (_, body)) in STAGED.iter().enumerate() {
        std::fs::write(t.join(format!("stage/f{i}")), body).unwrap();
    }
}

/// The fault test's bundle: its deletions (the files of `tree` before
/// `tree`), its directories, then [`STAGED`], a kept file, then the sync.
pub(in crate::beneath) fn make_changes(
    p: &mut Publish,
    stage: &OwnedFd,
) -> Result<(), BeneathError> {
    for d in [
        "deep/er/gone.html",
        "tree/x/y.html",
        "tree/z.html",
        "tree",
        "empty",
    ] {
        p.delete(d)?;
    }
    // Mirrored: `keep` (0755) becomes 0700, `made/new` is made 0750.
    p.make_shipped_dir("keep", 0o700)?;
    p.make_shipped_dir("made/new", 0o750)?;
    for (i, (rel, _)) in STAGED.iter().enumerate() {
        p.publish(rel, stage, &format!("f{i}"))?;
    }
    // Kept: the same content, given another mode and mtime in place.
    p.retime("keep/stay.html", 0o600, 1_000, 5)?;
    p.sync()
}

/// The regular files below `dir` with their content.
fn files(dir: &Path) -> BTreeMap<String, String> {
    snapshot(dir)
        .into_iter()
        .filter(|(_, (_, mode, _))| mode & 0o170000 == 0o100000)
        .map(|(rel, (_, _, body))| (rel, body))
        .collect()
}

/// Apply the fault test's bundle with change `fail_at` failing with
/// `errno`, and check root is what the bundle makes it, or, when it
/// failed, exactly what it was. Returns the result, the changes
/// counted, and whether every directory the deletions emptied is gone.
fn run_with_fault(fail_at: Option<usize>, errno: Errno) -> (Result<(), BeneathError>, usize, bool) {
    let (t, root, stage) = setup();
    let r = t.path().join("root");
    plant_fault_tree(t.path());
    let was = snapshot(&r);
    let mtime = |rel: &str| std::fs::metadata(r.join(rel)).unwrap().modified().unwrap();
    let kept_mtime = mtime("keep/stay.html");
    fault::arm(fail_at, errno, false);
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::mirror())
        .unwrap();
    let result = make_changes(&mut p, &stage);
    let ops = fault::count();
    match &result {
        Ok(()) => {
            p.commit();
            let want: BTreeMap<String, String> = STAGED
                .iter()
                .map(|(rel, body)| (rel.to_string(), body.to_string()))
                .chain([("keep/stay.html".into(), "stays".into())])
                .collect();
            assert_eq!(files(&r), want, "fault at {fail_at:?}");
            let mode = |rel: &str| std::fs::metadata(r.join(rel)).unwrap().mode() & 0o7777;
            assert_eq!((mode("keep"), mode("made/new")), (0o700, 0o750));
            assert_eq!(mode("keep/stay.html"), 0o600);
            let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_000, 5);
            assert_eq!(mtime("keep/stay.html"), t);
        }
        Err(_) => {
            let failed = p.roll_back();
            assert!(failed.is_empty(), "at {fail_at:?}: {failed:?}");
            assert_eq!(snapshot(&r), was, "root changed, fault at {fail_at:?}");
            assert_eq!(mtime("keep/stay.html"), kept_mtime, "fault at {fail_at:?}");
        }
    }
    fault::arm(None, Errno::IO, false);
    assert!(!t.path().join("undo").exists());
    let pruned = ["deep", "tree", "empty"]
        .iter()
        .all(|d| !r.join(d).exists());
    (result, ops, pruned)
}

/// A publish that failed part-way left root half-changed. Every change
/// of the bundle in [`BEFORE`]/[`STAGED`], and the final sync, is made
/// to fail in turn.
#[test]
fn a_fault_at_any_step_puts_root_back_exactly() {
    let (ok, steps, pruned) = run_with_fault(None, Errno::IO);
    ok.unwrap();
    assert!(pruned, "emptied directories kept");
    assert!(steps > 15, "only {steps} changes counted");
    let (mut kept_empty, mut healed) = (0, 0);
    for at in 1..=steps {
        match run_with_fault(Some(at), Errno::IO) {
            (Err(_), _, _) => {}
            // Removing an emptied directory is the one change allowed to
            // fail: it stays, empty.
            (Ok(()), _, false) => kept_empty += 1,
            // ...or is removed after all by the bundle's own deletion of it.
            (Ok(()), _, true) => healed += 1,
        }
    }
    // Kept: deep/er (so deep), deep, tree/x (so tree), empty. Healed: tree,
    // emptied by tree/z.html and then deleted itself. Any other fault
    // going unnoticed would count here too.
    assert_eq!((kept_empty, healed), (4, 1));
    for errno in [Errno::NOSPC, Errno::ACCESS] {
        assert!(run_with_fault(Some(steps / 2), errno).0.is_err());
    }
}

/// A directory deleted in the source that still holds something after the
/// bundle's own deletions (a file shipper never shipped) is kept, with
/// what is in it; an empty one goes, and a shipped one gets its mode.
#[test]
fn a_deleted_directory_is_removed_only_when_empty() {
    let (t, root, _stage) = setup();
    let r = t.path().join("root");
    std::fs::create_dir_all(r.join("d/sub")).unwrap();
    std::fs::write(r.join("d/shipped.html"), "x").unwrap();
    std::fs::write(r.join("d/sub/not-shipped.html"), "someone else's").unwrap();
    std::fs::create_dir_all(r.join("e/f")).unwrap();
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::default())
        .unwrap();
    for d in ["d/shipped.html", "d", "e/f", "e"] {
        p.delete(d).unwrap();
    }
    p.make_shipped_dir("n", 0o700).unwrap();
    p.commit();
    assert!(!r.join("d/shipped.html").exists() && !r.join("e").exists());
    assert!(r.join("d/sub/not-shipped.html").exists());
    let n = std::fs::metadata(r.join("n")).unwrap();
    assert!(n.is_dir());
    assert_eq!(
        n.mode() & 0o7777,
        0o755,
        "the policy's mode, not the source's"
    );
}

/// Under `fs.protected_hardlinks` a file of another user cannot be
/// linked: it is moved aside instead, and the bundle still applies (and
/// still rolls back).
#[test]
fn a_file_that_cannot_be_linked_is_moved_aside_instead() {
    let (t, root, stage) = setup();
    let r = t.path().join("root");
    std::fs::write(r.join("a.html"), "old").unwrap();
    std::fs::write(t.path().join("stage/f0"), "new").unwrap();
    std::fs::write(t.path().join("stage/f1"), "new b").unwrap();
    let was = snapshot(&r);
    // Change 1 is the rename that finds a.html there, change 2 its link.
    fault::arm(Some(2), Errno::PERM, false);
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::default())
        .unwrap();
    p.publish("a.html", &stage, "f0").unwrap();
    fault::arm(Some(1), Errno::IO, false);
    p.publish("b/b.html", &stage, "f1").unwrap_err();
    assert!(p.roll_back().is_empty());
    assert_eq!(snapshot(&r), was);
    std::fs::write(t.path().join("stage/f0"), "new").unwrap();
    fault::arm(Some(2), Errno::PERM, false);
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::default())
        .unwrap();
    p.publish("a.html", &stage, "f0").unwrap();
    p.commit();
    fault::arm(None, Errno::IO, false);
    assert_eq!(std::fs::read(r.join("a.html")).unwrap(), b"new");
}

/// A file's identity for a step, by its inode alone.
fn id(ino: u64) -> FileId {
    serde_json::from_value(serde_json::json!({"ino": ino, "size": 0, "mtime": 0, "mtime_nsec": 0}))
        .unwrap()
}

#[test]
fn the_directories_synced_are_those_the_steps_changed() {
    let steps = [
        Step::Placed {
            rel: "a/b/page.html".into(),
            kept: None,
            placed: id(1),
        },
        Step::Placed {
            rel: "a/b/other.html".into(),
            kept: Some("k1".into()),
            placed: id(2),
        },
        Step::MovedAside {
            rel: "gone.html".into(),
            kept: "k2".into(),
        },
        Step::Made {
            rel: "new/dir".into(),
        },
        Step::Moded {
            rel: "a".into(),
            mode: 0o755,
            gid: 0,
        },
    ];
    let dirs: Vec<&str> = changed_dirs(&steps).into_iter().collect();
    assert_eq!(dirs, ["", "a", "a/b", "new", "new/dir"]);
    assert!(
        changed_dirs(&[]).is_empty(),
        "nothing changed, nothing to sync"
    );
}

/// Found in review: a directory the bundle replaced by a symlink was
/// opened as a directory to be synced (its files' deletions changed it),
/// and the symlink refused the whole bundle. What changed is its entry, in
/// its parent, which is synced.
#[test]
fn a_directory_replaced_by_a_symlink_syncs() {
    let (t, root, stage) = setup();
    std::fs::create_dir_all(t.path().join("root/docs")).unwrap();
    std::fs::write(t.path().join("root/docs/a.html"), "A").unwrap();
    std::os::unix::fs::symlink("v2/docs", t.path().join("stage/l0")).unwrap();
    let mut p = root
        .begin(&t.path().join("undo"), &Policy::default())
        .unwrap();
    p.delete("docs/a.html").unwrap();
    p.publish("docs", &stage, "l0").unwrap();
    p.sync().unwrap();
    p.commit();
    let link = std::fs::read_link(t.path().join("root/docs")).unwrap();
    assert_eq!(link, std::path::Path::new("v2/docs"));
}
