//! The catch-up: what a walk of the source found, compared with what the
//! receivers have. At start (and when the source is replaced) this brings
//! the receivers up to date; after lost events it repairs what they missed.
//!
//! Pure: [`diff`] reads the walk, [`Shipped`] and the change set, never the
//! disk or the clock. Which missing paths are really gone (not re-created
//! since the walk passed) and when each found file last changed are for
//! the caller to ask the disk.

use crate::changes::ChangeSet;
use crate::stamp::Stamp;
use crate::watch::Walk;

use super::shipped::Shipped;

/// A file the walk found that the receivers may not have as it is.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Differs<'w> {
    pub(super) path: &'w str,
    pub(super) stamp: &'w Stamp,
    /// Still open for writing: it waits for its close event.
    pub(super) open: bool,
    /// Its place in the walk's `files`.
    pub(super) index: usize,
}

/// What differs between a walk and what the receivers have.
#[derive(Debug, Default)]
pub(super) struct Diff<'w> {
    /// New, changed or in doubt: to queue.
    pub(super) changed: Vec<Differs<'w>>,
    /// Paths a receiver has (or may have) in the walk's scope that the walk
    /// did not find: deleted, unless re-created since. Never a path below
    /// a directory the walk could not read: not seen is not gone.
    pub(super) missing: Vec<String>,
}

/// Compare what `walk` found with what the receivers have. `changes` holds
/// what is pending: a deletion learned since the walk began is newer than
/// what it saw. (One learned before, of a path it found, is the cut's to
/// undo: it ships whatever is there when it is taken.)
pub(super) fn diff<'w>(walk: &'w Walk, shipped: &Shipped, changes: &ChangeSet) -> Diff<'w> {
    let mut out = Diff::default();
    for (index, (path, stamp)) in walk.files.iter().enumerate() {
        // Removed since the walk passed it: the pending deletion is newer
        // than what the walk saw, and must not become an upsert again.
        if walk.began.is_some_and(|t| changes.removed_since(path, t)) {
            continue;
        }
        if shipped.unchanged(path, stamp) {
            continue;
        }
        // Still open for writing: hold it until its close event, unless
        // that close was already seen after the report.
        let closed_since = walk
            .writers_at
            .is_some_and(|t| changes.closed_since(path, t));
        out.changed.push(Differs {
            path,
            stamp,
            open: walk.writers.contains(path) && !closed_since,
            index,
        });
    }
    let scope = walk.dir.as_deref().unwrap_or_default();
    let mut known = shipped.known_within(scope).peekable();
    if known.peek().is_none() {
        return out; // nothing could be missing (a first ship): no set of what was found
    }
    let found: std::collections::HashSet<&str> =
        walk.files.iter().map(|(p, _)| p.as_str()).collect();
    let unseen = |p: &str| {
        walk.unreadable
            .iter()
            .any(|(dir, _)| dir.is_empty() || (crate::paths::is_within(p, dir) && p != dir))
    };
    out.missing = known
        .filter(|p| !found.contains(p.as_str()) && !unseen(p))
        .cloned()
        .collect();
    out
}

/// Bytes of the files `walk` found that differ from what was shipped: what
/// a first ship has to move.
pub(super) fn unshipped_bytes(walk: &Walk, shipped: &Shipped) -> u64 {
    walk.files
        .iter()
        .filter(|(_, stamp)| stamp.kind == crate::stamp::Kind::File)
        .filter(|(p, stamp)| !shipped.matches(p, stamp))
        .map(|(_, stamp)| stamp.size)
        .sum()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sender::shipped::tests::{shipped, stamp};

    fn walk(dir: Option<&str>, files: &[(&str, u64)]) -> Walk {
        Walk {
            dir: dir.map(str::to_owned),
            files: files
                .iter()
                .map(|(p, s)| (p.to_string(), stamp(*s)))
                .collect(),
            ..Walk::default()
        }
    }

    fn changed<'w>(d: &Diff<'w>) -> Vec<(&'w str, bool)> {
        d.changed.iter().map(|c| (c.path, c.open)).collect()
    }

    fn changes() -> ChangeSet {
        ChangeSet::new(Duration::from_secs(2), Duration::from_secs(300))
    }

    #[test]
    fn new_and_changed_files_differ_unchanged_ones_do_not() {
        let w = walk(None, &[("same", 1), ("grown", 2), ("new", 1)]);
        let d = diff(&w, &shipped(&["same", "grown"], &[]), &changes());
        assert_eq!(changed(&d), [("grown", false), ("new", false)]);
        assert!(d.missing.is_empty());
    }

    #[test]
    fn a_path_in_doubt_differs_even_when_it_matches() {
        let w = walk(None, &[("a", 1)]);
        let d = diff(&w, &shipped(&["a"], &["a"]), &changes());
        assert_eq!(changed(&d), [("a", false)]);
    }

    #[test]
    fn shipped_paths_not_found_in_the_walked_scope_are_missing() {
        let s = shipped(&["d/kept", "d/gone", "other/gone"], &["d/doubt"]);
        let w = walk(Some("d"), &[("d/kept", 1)]);
        let d = diff(&w, &s, &changes());
        assert_eq!(d.missing, ["d/gone", "d/doubt"], "only within d");
        let whole = walk(None, &[("d/kept", 1)]);
        let d = diff(&whole, &s, &changes());
        assert_eq!(d.missing, ["d/gone", "other/gone", "d/doubt"]);
    }

    #[test]
    fn nothing_below_a_directory_the_walk_could_not_read_is_missing() {
        // Broke once: a directory made unreadable (chmod 000) listed as
        // empty, and every file below it was deleted on the receivers.
        let s = shipped(
            &["locked", "locked/a", "locked/b/c", "lockedx", "open/gone"],
            &[],
        );
        let mut w = walk(None, &[("locked", 1)]);
        w.unreadable = vec![("locked".into(), "locked: Permission denied".into())];
        let d = diff(&w, &s, &changes());
        assert_eq!(d.missing, ["lockedx", "open/gone"]);
        w.unreadable = vec![(String::new(), "source: Permission denied".into())];
        assert!(
            diff(&w, &s, &changes()).missing.is_empty(),
            "the source unreadable"
        );
    }

    #[test]
    fn a_file_removed_after_the_walk_passed_it_stays_a_deletion() {
        // Broke once: the walk's older sighting turned the newer pending
        // deletion back into an upsert.
        let began = Instant::now();
        let mut c = changes();
        c.removed("new", began + Duration::from_millis(5));
        let mut w = walk(None, &[("new", 1)]);
        w.began = Some(began);
        let d = diff(&w, &shipped(&[], &[]), &c);
        assert!(d.changed.is_empty());
        assert!(
            d.missing.is_empty(),
            "found by the walk: not missing either"
        );
    }

    #[test]
    fn a_deletion_learned_after_a_walk_began_stays_one_though_back_dated() {
        // A shorter walk that began later found p/x gone: its deletion
        // counts as settled at once, but it is newer than what this walk
        // saw (p/x changed, or not), and must not be undone by it.
        let began = Instant::now();
        let mut c = changes();
        c.gone("p/x", began + Duration::from_millis(5));
        for size in [1, 2] {
            let mut w = walk(None, &[("p/x", size)]);
            w.began = Some(began);
            let d = diff(&w, &shipped(&["p/x"], &[]), &c);
            assert!(d.changed.is_empty(), "size {size}");
        }
    }

    #[test]
    fn a_writer_holds_a_file_unless_its_close_came_after_the_report() {
        let at = Instant::now();
        let mut w = walk(None, &[("open", 1), ("closed", 1)]);
        w.writers = ["open".to_string(), "closed".to_string()].into();
        w.writers_at = Some(at);
        let mut c = changes();
        c.closed("closed", at + Duration::from_millis(1));
        let d = diff(&w, &shipped(&[], &[]), &c);
        assert_eq!(changed(&d), [("open", true), ("closed", false)]);
    }

    #[test]
    fn a_first_ship_counts_the_bytes_not_already_shipped() {
        let w = walk(None, &[("same", 1), ("grown", 20), ("new", 300)]);
        assert_eq!(unshipped_bytes(&w, &shipped(&["same", "grown"], &[])), 320);
    }
}
