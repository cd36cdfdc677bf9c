//! Unit tests of the change set: coalescing, settling, max_delay, portions.

use super::*;

const SETTLE: Duration = Duration::from_secs(2);
const MAX: Duration = Duration::from_secs(300);
const TICK: Duration = Duration::from_secs(10);

fn set() -> (ChangeSet, Instant) {
    (ChangeSet::new(SETTLE, MAX), Instant::now())
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn paths(v: &[Change]) -> Vec<(&str, Op)> {
    v.iter().map(|c| (c.path.as_str(), c.op)).collect()
}

#[test]
fn create_modify_modify_is_one_entry() {
    let (mut cs, t0) = set();
    cs.changed("a", true, t0);
    cs.changed("a", true, t0 + s(1));
    cs.closed("a", t0 + s(1));
    assert_eq!(cs.len(), 1);
    let due = cs.take_due(t0 + s(4), t0 + s(14), false);
    assert_eq!(paths(&due), [("a", Op::Upsert)]);
    assert!(cs.is_empty());
}

#[test]
fn nothing_is_due_before_settle() {
    let (mut cs, t0) = set();
    cs.changed("a", false, t0);
    assert!(cs.take_due(t0 + s(1), t0 + s(11), false).is_empty());
    assert_eq!(
        paths(&cs.take_due(t0 + s(2), t0 + s(12), false)),
        [("a", Op::Upsert)]
    );
}

#[test]
fn each_event_restarts_the_settle_clock() {
    let (mut cs, t0) = set();
    cs.changed("a", false, t0);
    cs.changed("a", false, t0 + s(1));
    assert!(cs.take_due(t0 + s(2), t0 + s(12), false).is_empty());
    assert_eq!(cs.take_due(t0 + s(3), t0 + s(13), false).len(), 1);
}

#[test]
fn an_open_writer_holds_the_entry_until_close() {
    let (mut cs, t0) = set();
    cs.changed("a", true, t0);
    assert!(cs.take_due(t0 + s(10), t0 + s(20), false).is_empty());
    cs.closed("a", t0 + s(10));
    assert!(cs.take_due(t0 + s(11), t0 + s(21), false).is_empty());
    assert_eq!(cs.take_due(t0 + s(12), t0 + s(22), false).len(), 1);
}

#[test]
fn a_writer_quiet_for_max_delay_counts_as_settled() {
    let (mut cs, t0) = set();
    cs.changed("a", true, t0);
    let due = cs.take_due(t0 + MAX, t0 + MAX + TICK, false);
    assert_eq!(due.len(), 1);
    assert!(cs.is_empty(), "settled entries are not re-armed");
}

#[test]
fn a_failed_path_waits_for_its_retry_unless_an_event_comes() {
    let (mut cs, t0) = set();
    cs.failed("a", t0, t0 + s(8));
    assert!(cs.take_due(t0 + s(5), t0 + s(15), false).is_empty());
    assert!(
        cs.take_due(t0 + s(7), t0 + MAX + s(7), false).is_empty(),
        "not overdue either"
    );
    assert_eq!(cs.take_due(t0 + s(8), t0 + s(18), false).len(), 1);
    // A chmod that fixes it raises an event: due after settle, not at retry.
    cs.failed("b", t0, t0 + s(60));
    cs.changed("b", false, t0 + s(1));
    assert_eq!(cs.take_due(t0 + s(3), t0 + s(13), false).len(), 1);
}

#[test]
fn only_an_unsettled_entry_taken_for_max_delay_is_overdue() {
    let (mut cs, t0) = set();
    cs.changed("busy", true, t0);
    cs.changed("calm", false, t0);
    let due = cs.take_due(t0 + MAX, t0 + MAX + TICK, false);
    let get = |p: &str| due.iter().find(|c| c.path == p).unwrap().clone();
    // A writer quiet for max_delay counts as settled; write again to stay busy.
    assert!(!get("calm").overdue && get("calm").settled);
    cs.changed("log", true, t0 + MAX);
    let due = cs.take_due(t0 + MAX + s(1), t0 + MAX * 2 + s(1), false);
    let log = due.iter().find(|c| c.path == "log").unwrap();
    assert!(log.overdue && !log.settled);
}

#[test]
fn create_then_delete_leaves_a_delete_for_the_sender_to_judge() {
    let (mut cs, t0) = set();
    cs.changed("a", false, t0);
    cs.removed("a", t0 + s(1));
    assert_eq!(
        paths(&cs.take_due(t0 + s(5), t0 + s(15), false)),
        [("a", Op::Delete)]
    );
}

#[test]
fn delete_then_recreate_is_an_upsert() {
    let (mut cs, t0) = set();
    cs.removed("a", t0);
    cs.changed("a", false, t0 + s(1));
    assert_eq!(
        paths(&cs.take_due(t0 + s(5), t0 + s(15), false)),
        [("a", Op::Upsert)]
    );
}

#[test]
fn a_path_that_never_settles_is_taken_before_max_delay_and_rearmed() {
    let (mut cs, t0) = set();
    let mut now = t0;
    let mut taken_at = None;
    // A write every second, forever.
    while now < t0 + s(600) {
        cs.changed("log", true, now);
        if !cs.take_due(now, now + TICK, false).is_empty() {
            taken_at = Some(now);
            break;
        }
        now += s(1);
    }
    let taken_at = taken_at.expect("never shipped");
    assert!(
        taken_at + TICK >= t0 + MAX,
        "shipped too early: {:?}",
        taken_at - t0
    );
    assert!(
        taken_at <= t0 + MAX,
        "shipped after max_delay: {:?}",
        taken_at - t0
    );
    assert_eq!(cs.len(), 1, "still pending so it ships again when settled");
    // Once the writer stops and closes, it ships again after settle.
    cs.closed("log", taken_at + s(1));
    assert_eq!(
        cs.take_due(taken_at + s(3), taken_at + s(13), false).len(),
        1
    );
    assert!(cs.is_empty());
}

#[test]
fn every_change_is_taken_within_max_delay_at_any_tick_phase() {
    // Whatever the phase of the ticks, a single change is shipped by a
    // cut no later than max_delay after it happened.
    for phase in 0..10 {
        let (mut cs, t0) = set();
        cs.changed("a", true, t0); // never closed: only max_delay can ship it
        let mut cut = t0 + s(phase);
        loop {
            if !cs.take_due(cut, cut + TICK, false).is_empty() {
                break;
            }
            cut += TICK;
        }
        assert!(cut <= t0 + MAX, "phase {phase}: taken at {:?}", cut - t0);
    }
}

#[test]
fn force_takes_unsettled_entries_and_keeps_them_for_later() {
    let (mut cs, t0) = set();
    cs.changed("a", true, t0);
    cs.changed("b", false, t0);
    cs.closed("b", t0);
    let due = cs.take_due(t0, t0 + TICK, true);
    assert_eq!(due.len(), 2);
    assert_eq!(cs.len(), 2, "both still unsettled, both re-armed");
}

#[test]
fn requeued_paths_wait_to_settle_again() {
    let (mut cs, t0) = set();
    cs.requeue("a", t0);
    assert!(cs.take_due(t0 + s(1), t0 + s(11), false).is_empty());
    assert_eq!(cs.take_due(t0 + s(2), t0 + s(12), false).len(), 1);
}

#[test]
fn a_file_deleted_while_it_was_packed_stays_a_deletion() {
    // Regression (kill suite): the packer handed back a file that was
    // deleted while it read it, and the requeue turned the pending
    // deletion into an upsert; the upsert found no file and the
    // receiver kept its copy.
    let (mut cs, t0) = set();
    cs.changed("a", false, t0);
    cs.changed("b", false, t0);
    assert_eq!(cs.take_due(t0 + s(3), t0 + s(13), false).len(), 2);
    cs.removed("a", t0 + s(4));
    cs.requeue("a", t0 + s(5));
    cs.removed("b", t0 + s(4));
    cs.failed("b", t0 + s(5), t0 + s(60));
    assert_eq!(
        paths(&cs.take_due(t0 + s(8), t0 + s(18), false)),
        [("a", Op::Delete), ("b", Op::Delete)]
    );
    // Nothing newer: a requeued path is an upsert again.
    cs.requeue("c", t0);
    assert_eq!(
        paths(&cs.take_due(t0 + s(3), t0 + s(13), false)),
        [("c", Op::Upsert)]
    );
}

#[test]
fn a_walk_knows_a_deletion_seen_after_it_began_is_newer_than_what_it_found() {
    // Regression (kill suite): the catch-up walk at start found a file,
    // the file was deleted and its event handled before the walk's
    // result arrived, and the walk's finding turned the deletion back
    // into an upsert that found no file: the receiver kept it.
    let (mut cs, t0) = set();
    cs.removed("a", t0 + s(2));
    assert!(cs.removed_since("a", t0 + s(1)), "walk began before");
    assert!(!cs.removed_since("a", t0 + s(3)), "walk began after");
    cs.changed("a", false, t0 + s(4));
    assert!(!cs.removed_since("a", t0 + s(1)), "there again");
    assert!(!cs.removed_since("b", t0));
}

#[test]
fn after_lost_events_a_missing_close_does_not_hold_a_path_for_max_delay() {
    // Regression: after an inotify overflow dropped a close, the path
    // waited the full max_delay.
    let (mut cs, t0) = set();
    cs.changed("a", true, t0);
    cs.writers_unknown();
    assert_eq!(cs.take_due(t0 + SETTLE, t0 + SETTLE + TICK, false).len(), 1);
}

#[test]
fn a_close_is_remembered_for_later_writer_reports() {
    // Regression: a walk reported a file open for writing, its close
    // event was handled first, and the stale report then held the path
    // as "being written" until max_delay.
    let (mut cs, t0) = set();
    cs.closed("a", t0 + s(1));
    assert!(cs.closed_since("a", t0));
    assert!(!cs.closed_since("a", t0 + s(2)));
    assert!(!cs.closed_since("b", t0));
}

#[test]
fn forced_and_overdue_changes_are_marked_unsettled() {
    let (mut cs, t0) = set();
    cs.changed("a", true, t0);
    cs.changed("b", false, t0);
    let due = cs.take_due(t0 + s(3), t0 + s(13), true);
    let settled: Vec<_> = due.iter().map(|c| (c.path.as_str(), c.settled)).collect();
    assert_eq!(settled, [("a", false), ("b", true)]);
}

#[test]
fn pending_within_finds_a_subtree_only() {
    let (mut cs, t0) = set();
    for p in ["a/x", "a/y/z", "ab", "b"] {
        cs.changed(p, false, t0);
    }
    assert_eq!(cs.pending_within("a"), ["a/x", "a/y/z"]);
    assert_eq!(cs.oldest(), Some(t0));
}

#[test]
fn a_portion_takes_at_most_n_upserts_and_leaves_the_rest_due_and_takes_every_deletion() {
    let (mut cs, t0) = set();
    for p in ["a", "b", "c", "d"] {
        cs.changed(p, false, t0);
    }
    cs.removed("e", t0);
    let two = |after| Portion {
        max_upserts: 2,
        after,
    };
    let (due, left) = cs.take_due_portion(t0 + s(3), t0 + s(13), false, two(None));
    assert_eq!(
        paths(&due),
        [("a", Op::Upsert), ("b", Op::Upsert), ("e", Op::Delete)]
    );
    assert!(left);
    let (due, left) = cs.take_due_portion(t0 + s(3), t0 + s(13), false, two(Some("b")));
    assert_eq!(paths(&due), [("c", Op::Upsert), ("d", Op::Upsert)]);
    assert!(!left, "nothing due is left");
    assert!(cs.is_empty());
}

#[test]
fn a_forced_cut_in_portions_takes_each_unsettled_path_once() {
    // Broke once: a flush's second portion took again the unsettled
    // paths the first had taken (they stay pending, re-armed), and so
    // did every portion after it, until they settled.
    let (mut cs, t0) = set();
    for p in ["a", "b", "c"] {
        cs.changed(p, true, t0);
    }
    let mut after = None;
    let mut taken = Vec::new();
    loop {
        let portion = Portion {
            max_upserts: 2,
            after: after.as_deref(),
        };
        let (due, left) = cs.take_due_portion(t0, t0 + s(10), true, portion);
        after = due.last().map(|c| c.path.clone());
        taken.extend(due.into_iter().map(|c| c.path));
        if !left {
            break;
        }
    }
    assert_eq!(taken, ["a", "b", "c"]);
    assert_eq!(cs.len(), 3, "re-armed: they ship again once settled");
}
