//! Tests of rollback: which records a rollback undoes, which sender it
//! means, and a rollback stopped at any change (a crash) finished at start.

use rustix::io::Errno;

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

/// Three bundles of sender `s`, each kept as a record, over `root`:
/// 1 places a.html; 2 replaces it and places b.html; 3 deletes b.html and
/// places c/d.html. Returns root's snapshot right after bundle 1.
fn three_bundles(
    t: &Path,
    records: &Records,
    state: &mut ReceiverState,
) -> BTreeMap<String, (u64, u32, String)> {
    use crate::beneath::{Root, open_dir_path};
    let root = Root::open(&t.join("root")).unwrap();
    std::fs::create_dir_all(t.join("stage")).unwrap();
    let stage = open_dir_path(&t.join("stage")).unwrap();
    let mut after_first = BTreeMap::new();
    for (seq, files, deletions) in [
        (1, &[("a.html", "1")][..], &[][..]),
        (2, &[("a.html", "2"), ("b.html", "2")][..], &[][..]),
        (3, &[("c/d.html", "3")][..], &["b.html"][..]),
    ] {
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
        let k = records.keep_as("s", seq, seq - 1).unwrap().unwrap();
        let with: Vec<(&str, &[u8])> = k
            .with
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        p.keep(&k.record, &with).unwrap();
        state.record_applied("s", seq);
        if seq == 1 {
            after_first = snapshot(&t.join("root"));
        }
    }
    state.save(&t.join("state")).unwrap();
    after_first
}

/// A rollback from 3 to 1 stopped at each of its changes to root, as if
/// the receiver died there, is finished at the next start: root exactly as
/// right after bundle 1, the sender held at 1, the records undone gone.
#[test]
fn a_rollback_stopped_at_any_change_is_finished_at_start() {
    let fixture = || {
        let t = tempfile::tempdir().unwrap();
        for d in ["root", "staging", "state"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let records = Records::new(&t.path().join("staging"), 10);
        let mut state = ReceiverState::default();
        let want = three_bundles(t.path(), &records, &mut state);
        (t, records, state, want)
    };
    let changes = {
        let (t, records, mut state, want) = fixture();
        fault::arm(None, Errno::IO, false);
        let r = roll_back(
            &t.path().join("root"),
            &records,
            &mut state,
            &t.path().join("state"),
            ("s", 1),
        )
        .unwrap();
        assert_eq!((r.from, r.to, r.bundles), (3, 1, 2));
        assert!(r.left.is_empty(), "{:?}", r.left);
        assert_eq!(snapshot(&t.path().join("root")), want);
        fault::count()
    };
    assert!(changes >= 6, "only {changes} changes counted");
    for at in 1..=changes {
        let (t, records, mut state, want) = fixture();
        let (root, dir) = (t.path().join("root"), t.path().join("state"));
        fault::arm(Some(at), Errno::IO, true);
        assert!(
            roll_back(&root, &records, &mut state, &dir, ("s", 1)).is_err(),
            "at {at}"
        );
        fault::arm(None, Errno::IO, false);
        // The next start: what is on disk only.
        let mut state = ReceiverState::load(&dir).unwrap();
        assert_eq!(
            state.held.get("s").map(|h| h.to),
            Some(1),
            "held from the first change"
        );
        finish_interrupted(&root, &records, &mut state, &dir).unwrap();
        assert_eq!(snapshot(&root), want, "stopped at change {at}");
        assert_eq!(ReceiverState::load(&dir).unwrap().applied["s"], 1);
        assert!(records.has("s", 1) && !records.has("s", 2) && !records.has("s", 3));
        // Rolling back to 1 again: nothing after it is left.
        assert!(matches!(
            roll_back(&root, &records, &mut state, &dir, ("s", 1)),
            Err(RollbackError::Refused(RollbackRefused::NotBehind {
                last: 1,
                to: 1
            }))
        ));
    }
}
