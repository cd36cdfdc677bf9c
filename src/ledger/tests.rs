//! Tests of the [`super::Ledger`]: torn journals, reopening, compaction,
//! paths in doubt, and the state handed over at start.

use super::*;

fn meta(size: u64) -> FileMeta {
    FileMeta {
        size,
        mtime: 1,
        mtime_nsec: 2,
        mode: 0o644,
        hash: "00".repeat(32),
        racy: false,
        kind: crate::stamp::Kind::File,
    }
}

fn rec(seq: u64, path: &str, m: Option<u64>) -> AckRecord {
    AckRecord {
        seq,
        changes: vec![(path.into(), m.map(meta))],
    }
}

fn shipping(seq: u64, paths: &[&str]) -> Record {
    Record::Shipping(ShippingRecord {
        seq,
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn in_doubt(l: &Ledger) -> Vec<&str> {
    l.in_doubt().collect()
}

#[test]
fn a_torn_or_corrupt_tail_is_dropped_at_every_cut() {
    let mut bytes = encode_record(&Record::Acked(rec(1, "a", Some(1))));
    let first = bytes.len();
    bytes.extend(encode_record(&shipping(2, &["b"])));
    let second = bytes.len();
    bytes.extend(encode_record(&Record::Acked(rec(2, "b", Some(2)))));
    for cut in first..second {
        let (r, good) = decode_journal(&bytes[..cut]);
        assert_eq!(r.len(), 1, "cut at {cut}");
        assert_eq!(good, first);
    }
    for cut in second..bytes.len() {
        let (r, good) = decode_journal(&bytes[..cut]);
        assert_eq!(
            r,
            [Record::Acked(rec(1, "a", Some(1))), shipping(2, &["b"])]
        );
        assert_eq!(good, second);
    }
    let mut flipped = bytes.clone();
    flipped[first + 20] ^= 1;
    assert_eq!(decode_journal(&flipped).0.len(), 1);
    assert_eq!(decode_journal(&bytes).0.len(), 3);
}

#[test]
fn records_survive_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut l = Ledger::open(dir.path()).unwrap();
        l.record(rec(1, "a", Some(1))).unwrap();
        l.record(rec(2, "b", Some(2))).unwrap();
        l.record(rec(3, "a", None)).unwrap();
    }
    let mut l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.files().keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(l.acked_seq(), 3);
    l.compact().unwrap();
    l.record(rec(4, "c", Some(4))).unwrap();
    drop(l);
    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.files().keys().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(l.acked_seq(), 4);
}

#[test]
fn reopening_after_a_torn_write_appends_after_the_last_good_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut l = Ledger::open(dir.path()).unwrap();
        l.record(rec(1, "a", Some(1))).unwrap();
    }
    let jp = dir.path().join("acked.journal");
    let mut f = OpenOptions::new().append(true).open(&jp).unwrap();
    f.write_all(b"0123456789abcdef {\"seq\":2,\"chan").unwrap();
    drop(f);
    {
        let mut l = Ledger::open(dir.path()).unwrap();
        l.record(rec(3, "c", Some(3))).unwrap();
    }
    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.files().keys().collect::<Vec<_>>(), ["a", "c"]);
}

#[test]
fn records_already_in_the_snapshot_are_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(dir.path()).unwrap();
    l.record(rec(1, "a", None)).unwrap();
    l.shipping(2, vec!["a".into()]).unwrap();
    drop(l);
    // A crash after the snapshot (which re-added "a" at seq 2) was
    // written but before the journal was emptied.
    let snap = Snapshot {
        acked_seq: 2,
        files: [("a".to_string(), meta(5))].into_iter().collect(),
        in_doubt: BTreeMap::new(),
    };
    let bytes = serde_json::to_vec(&snap).unwrap();
    durable::write_atomic(&dir.path().join("acked.snapshot"), &bytes).unwrap();
    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.files().get("a"), Some(&meta(5)), "stale record replayed");
    assert_eq!(l.acked_seq(), 2);
    assert!(in_doubt(&l).is_empty(), "stale shipping record replayed");
}

#[test]
fn a_bundle_applied_but_not_acknowledged_before_a_crash_leaves_its_paths_in_doubt() {
    // Regression (kill suite): a receiver applied a bundle creating
    // "b", the sender was killed before recording its acknowledgement,
    // and the restarted sender believed the receiver had no "b": the
    // deletion of "b" was never shipped and the receiver kept it.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut l = Ledger::open(dir.path()).unwrap();
        l.shipping(1, vec!["a".into()]).unwrap();
        l.record(rec(1, "a", Some(1))).unwrap();
        assert!(in_doubt(&l).is_empty());
        l.shipping(2, vec!["a".into(), "b".into()]).unwrap();
        // Killed here: bundle 2 may or may not have been applied.
    }
    let mut l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.files().keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(in_doubt(&l), ["a", "b"]);
    // Shipped again after the restart and acknowledged: known again.
    l.shipping(3, vec!["b".into()]).unwrap();
    l.record(rec(3, "b", None)).unwrap();
    assert_eq!(in_doubt(&l), ["a"]);
    l.compact().unwrap();
    drop(l);
    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(in_doubt(&l), ["a"], "in doubt across a compaction");
}

#[test]
fn an_acknowledgement_leaves_a_path_in_doubt_while_a_later_bundle_carries_it() {
    let mut s = Snapshot::default();
    s.apply(&shipping(4, &["a"]));
    s.apply(&shipping(5, &["a"]));
    s.apply(&Record::Acked(rec(4, "a", Some(4))));
    assert_eq!(s.in_doubt.get("a"), Some(&5), "bundle 5 may still land");
    s.apply(&Record::Acked(rec(5, "a", Some(5))));
    assert!(s.in_doubt.is_empty());
    assert_eq!(s.files.get("a"), Some(meta(5)));
}

#[test]
fn what_changed_since_the_snapshot_is_merged_into_it_before_it_grows_large() {
    // Deletions make short journal lines: the journal stays small while
    // what changed since the snapshot passes its bound.
    let dir = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(dir.path()).unwrap();
    let many = MIN_SINCE as usize + 1;
    let changes = (0..many).map(|i| (format!("gone/{i}"), None)).collect();
    l.record(AckRecord { seq: 1, changes }).unwrap();
    assert!(l.since.is_empty(), "merged into the snapshot");
    let journal = std::fs::metadata(dir.path().join("acked.journal")).unwrap();
    assert_eq!(journal.len(), 0);
    assert_eq!(l.acked_seq(), 1);
}

#[test]
fn the_state_loaded_is_handed_over_once_and_records_after_it_still_count() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut l = Ledger::open(dir.path()).unwrap();
        l.record(rec(1, "a", Some(1))).unwrap();
    }
    let mut l = Ledger::open(dir.path()).unwrap();
    let files = l.take_files();
    assert_eq!(files.keys().collect::<Vec<_>>(), ["a"]);
    assert!(l.take_files().is_empty(), "handed over once");
    l.record(rec(2, "b", Some(2))).unwrap();
    assert_eq!(l.files().keys().collect::<Vec<_>>(), ["a", "b"]);
    l.compact().unwrap();
    drop(l);
    let mut l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.take_files().keys().collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn a_compaction_that_fails_loses_no_record_and_is_tried_again_later() {
    // Broke once: the error of the compaction after a durable record
    // failed the record, and so the whole packing run, on every retry.
    let dir = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(dir.path()).unwrap();
    // A directory where the snapshot goes: its rename fails.
    let blocker = dir.path().join("acked.snapshot");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), "").unwrap();
    let many = |seq: u64| AckRecord {
        seq,
        changes: (0..MIN_SINCE + 1)
            .map(|i| (format!("p{seq}/{i}"), Some(meta(1))))
            .collect(),
    };
    l.record(many(1))
        .expect("the record is durable; the compaction's failure is not its own");
    assert_eq!(l.compact_failed_at, Some(l.journal_len));
    // Not tried again on the next small record…
    l.record(rec(2, "a", Some(1))).unwrap();
    assert!(!l.compaction_due(), "tried again at once");
    std::fs::remove_dir_all(&blocker).unwrap();
    // …but once the journal has grown by MIN_COMPACT more.
    l.record(many(3)).unwrap();
    assert_eq!(l.compact_failed_at, None);
    assert_eq!(l.journal_len, 0, "compacted");
    drop(l);
    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.acked_seq(), 3);
    assert_eq!(l.files().len(), 2 * (MIN_SINCE as usize + 1) + 1);
}

#[test]
fn a_record_torn_by_a_full_disk_loses_no_later_record() {
    // Broke once: the torn line stayed, the next record followed it, and
    // both were dropped at load as one corrupt tail.
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "this test needs to mount a tmpfs (run as root)");
    let result = std::panic::catch_unwind(|| {
        let mut l = Ledger::open(dir.path()).unwrap();
        l.record(rec(1, "a", Some(1))).unwrap();
        let filler = dir.path().join("filler");
        let mut f = File::create(&filler).unwrap();
        let _ = f.write_all(&vec![7u8; 1 << 20]);
        drop(f);
        let big = AckRecord {
            seq: 2,
            changes: (0..300)
                .map(|i| (format!("dir/file-{i:05}.html"), Some(meta(i))))
                .collect(),
        };
        assert!(l.record(big).is_err(), "the disk is full");
        std::fs::remove_file(&filler).unwrap();
        l.record(rec(3, "c", Some(3))).unwrap();
        drop(l);
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.acked_seq(), 3, "the record written after space was freed");
    });
    let _ = std::process::Command::new("umount")
        .arg(dir.path())
        .status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
