//! Tests of rollback: which records a rollback undoes, which sender it
//! means, and a rollback stopped at any change (a crash) finished at start.

use rustix::io::Errno;

use std::path::PathBuf;

use super::*;
use crate::beneath::fault::{self, snapshot};

fn chain(links: &[(u64, u64)]) -> BTreeMap<u64, u64> {
    links.iter().copied().collect()
}

#[test]
fn a_rollback_undoes_the_records_above_its_target_newest_first() {
    let c = chain(&[(3, 2), (4, 3), (7, 4), (8, 7)]);
    assert_eq!(plan(&c, 8, 4), Ok(vec![8, 7]));
    assert_eq!(plan(&c, 8, 2), Ok(vec![8, 7, 4, 3]));
}

#[test]
fn a_rollback_past_the_records_names_the_oldest_reachable() {
    let c = chain(&[(3, 2), (4, 3), (7, 4)]);
    assert_eq!(
        plan(&c, 7, 1),
        Err(RollbackRefused::BeyondKept { to: 1, oldest: 2 })
    );
    assert_eq!(
        plan(&c, 7, 7),
        Err(RollbackRefused::NotBehind { last: 7, to: 7 })
    );
    assert_eq!(
        plan(&c, 7, 5),
        Err(RollbackRefused::NotApplied {
            to: 5,
            below: 4,
            above: 7
        })
    );
    // A gap in the records (none kept for 4) stops the chain there.
    let gap = chain(&[(3, 2), (7, 4)]);
    assert_eq!(
        plan(&gap, 7, 2),
        Err(RollbackRefused::BeyondKept { to: 2, oldest: 4 })
    );
}

#[test]
fn the_sender_is_the_one_named_or_the_only_one() {
    let mut s = ReceiverState::default();
    let what = "that applied bundles here";
    let pick = |s: &ReceiverState, given| which_sender(s.applied.keys(), given, what);
    assert_eq!(
        pick(&s, None).unwrap_err(),
        "no sender that applied bundles here"
    );
    s.applied.insert("a".into(), 3);
    assert_eq!(pick(&s, None).unwrap(), "a");
    s.applied.insert("b".into(), 3);
    assert!(pick(&s, None).unwrap_err().contains("--sender (a, b)"));
    assert_eq!(pick(&s, Some("b")).unwrap(), "b");
    assert!(
        pick(&s, Some("c"))
            .unwrap_err()
            .ends_with("applied bundles here: a, b")
    );
}

/// Three bundles of sender `s`, each kept as a record, over `t/root` (in
/// snapshots, with `trees`): 1 places a.html; 2 replaces it and places
/// b.html; 3 deletes b.html and places c/d.html. Returns root's files
/// right after bundle 1 (with their inodes).
fn three_bundles(
    t: &Path,
    (records, trees): (&Records, Option<&Trees>),
    state: &mut ReceiverState,
) -> BTreeMap<String, (u64, u32, String)> {
    use crate::beneath::{Root, open_dir_path};
    std::fs::create_dir_all(t.join("stage")).unwrap();
    let stage = open_dir_path(&t.join("stage")).unwrap();
    let mut after_first = BTreeMap::new();
    for (seq, files, deletions) in [
        (1, &[("a.html", "1")][..], &[][..]),
        (2, &[("a.html", "2"), ("b.html", "2")][..], &[][..]),
        (3, &[("c/d.html", "3")][..], &["b.html"][..]),
    ] {
        let next = trees.map(|t| t.next().unwrap());
        let root_path = next.as_ref().map_or(t.join("root"), |(_, p)| p.clone());
        let root = Root::open(&root_path).unwrap();
        let policy = crate::perms::Policy::default();
        let mut p = root.begin(&t.join(format!("undo{seq}")), &policy).unwrap();
        for d in deletions {
            p.delete(d).unwrap();
        }
        for (i, (rel, body)) in files.iter().enumerate() {
            std::fs::write(t.join(format!("stage/f{seq}{i}")), body).unwrap();
            p.publish(rel, &stage, &format!("f{seq}{i}")).unwrap();
        }
        p.sync().unwrap();
        let n = next.as_ref().map(|(n, _)| *n);
        let k = records.keep_as("s", (seq, seq - 1), n).unwrap().unwrap();
        let with: Vec<(&str, &[u8])> = k
            .with
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        p.keep(&k.record, &with).unwrap();
        if let (Some(trees), Some((_, snap))) = (trees, &next) {
            trees.publish(snap).unwrap();
        }
        state.record_applied("s", seq);
        if seq == 1 {
            after_first = files_of(&t.join("root"));
        }
    }
    state.save(&t.join("state")).unwrap();
    after_first
}

/// Root's entries but its directories (whose inodes a snapshot makes anew).
fn files_of(root: &Path) -> BTreeMap<String, (u64, u32, String)> {
    snapshot(root)
        .into_iter()
        .filter(|(_, (_, mode, _))| mode & 0o170000 != 0o040000)
        .collect()
}

struct Fixture {
    t: tempfile::TempDir,
    root: PathBuf,
    records: Records,
    trees: Option<Trees>,
    want: BTreeMap<String, (u64, u32, String)>,
}

impl Fixture {
    /// The three bundles applied, and the state they left.
    fn new(tree: bool) -> (Self, ReceiverState) {
        let t = tempfile::tempdir().unwrap();
        for d in ["staging", "state"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let root = t.path().join("root");
        let trees = tree.then(|| Trees::open(&root, 3, 0o755).unwrap());
        if !tree {
            std::fs::create_dir(&root).unwrap();
        }
        let records = Records::new(&t.path().join("staging"), 10, tree);
        let mut state = ReceiverState::default();
        let want = three_bundles(t.path(), (&records, trees.as_ref()), &mut state);
        let f = Self {
            root,
            t,
            records,
            trees,
            want,
        };
        (f, state)
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn at(&self) -> (RootAt<'_>, PathBuf) {
        let at = match &self.trees {
            Some(t) => RootAt::Trees(t),
            None => RootAt::Dir(&self.root),
        };
        (at, self.t.path().join("state"))
    }
}

/// A rollback from 3 to 1 stopped at each of its changes to root, as if
/// the receiver died there, is finished at the next start: root exactly as
/// right after bundle 1, the sender held at 1, the records undone gone.
/// Under `publish = "tree"` too (the changes are then to the next
/// snapshot, which a stop throws away, and the records stay whole).
#[test]
fn a_rollback_stopped_at_any_change_is_finished_at_start() {
    for tree in [false, true] {
        let changes = {
            let (f, mut state) = Fixture::new(tree);
            fault::arm(None, Errno::IO, false);
            let (at, dir) = f.at();
            let r = roll_back(at, &f.records, &mut state, &dir, ("s", 1)).unwrap();
            assert_eq!((r.from, r.to, r.bundles), (3, 1, 2));
            assert!(r.left.is_empty(), "{:?}", r.left);
            assert_eq!(files_of(&f.root()), f.want, "tree: {tree}");
            fault::count()
        };
        assert!(changes >= 6, "only {changes} changes counted");
        for at_change in 1..=changes {
            let (f, mut state) = Fixture::new(tree);
            let (at, dir) = f.at();
            fault::arm(Some(at_change), Errno::IO, true);
            let stopped = roll_back(at, &f.records, &mut state, &dir, ("s", 1));
            assert!(stopped.is_err(), "at {at_change}");
            fault::arm(None, Errno::IO, false);
            // The next start: what is on disk only.
            let trees = tree.then(|| Trees::open(&f.root(), 3, 0o755).unwrap());
            let at = trees.as_ref().map_or(at, RootAt::Trees);
            let mut state = ReceiverState::load(&dir).unwrap();
            assert_eq!(
                state.held.get("s").map(|h| h.to),
                Some(1),
                "held from the first change"
            );
            finish_interrupted(at, &f.records, &mut state, &dir);
            let what = format!("tree: {tree}, stopped at change {at_change}");
            assert_eq!(files_of(&f.root()), f.want, "{what}");
            assert_eq!(ReceiverState::load(&dir).unwrap().applied["s"], 1, "{what}");
            let has = |seq| {
                f.records
                    .published("s", seq, trees.as_ref().map(|t| t.current().unwrap().0))
            };
            assert!(has(1) && !has(2) && !has(3), "{what}");
            // Rolling back to 1 again: nothing after it is left.
            assert!(matches!(
                roll_back(at, &f.records, &mut state, &dir, ("s", 1)),
                Err(RollbackError::Refused(RollbackRefused::NotBehind {
                    last: 1,
                    to: 1
                }))
            ));
        }
    }
}

/// Under `publish = "tree"`, a stop after root pointed at the snapshot
/// rolled back, before the state said so: the next start only records it
/// (no snapshot made again) and lets the records go.
#[test]
fn a_tree_rollback_stopped_after_root_pointed_at_it_is_only_recorded() {
    let (f, mut state) = Fixture::new(true);
    let (at, dir) = f.at();
    let trees = f.trees.clone().unwrap();
    let mut done = RolledBack::default();
    let hold = Hold {
        to: 1,
        since: 0,
        snapshot: None,
        rolling: true,
    };
    state.held.insert("s".into(), hold);
    state.save(&dir).unwrap();
    in_snapshot(
        &trees,
        &f.records,
        &mut state,
        &dir,
        "s",
        (&[3, 2], &mut done),
    )
    .unwrap();
    let pointed = trees.current().unwrap().0;
    let mut state = ReceiverState::load(&dir).unwrap();
    assert_eq!(
        state.applied["s"], 3,
        "the stop came before the state said so"
    );
    finish_interrupted(at, &f.records, &mut state, &dir);
    assert_eq!(
        trees.current().unwrap().0,
        pointed,
        "no snapshot made again"
    );
    assert_eq!(files_of(&f.root()), f.want);
    assert_eq!(ReceiverState::load(&dir).unwrap().applied["s"], 1);
    assert_eq!(ReceiverState::load(&dir).unwrap().held["s"].snapshot, None);
}
