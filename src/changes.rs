//! The change set: what is waiting to be shipped, one entry per path, and
//! when each entry is due.
//!
//! Pure logic with time injected as `now: Instant`; the watcher feeds it,
//! the sender asks it what to pack. It never touches the filesystem, so
//! coalescing, settling and the max_delay bound are tested without sleeping.
//!
//! Rules:
//! - Any number of events on a path coalesce into one entry whose operation
//!   is the latest one (upsert or delete). Whether a delete of a path the
//!   receiver never had is a no-op is decided by the sender, which knows
//!   what was shipped.
//! - An entry is *settled* once no event touched it for `settle` and its
//!   writer closed it (where the OS reports closes). A writer that stays
//!   quiet for `max_delay` counts as settled even without a close.
//! - An entry that has waited so long that the next cut would be past its
//!   `max_delay` is taken anyway ("overdue"), and re-armed so it ships again
//!   once it settles.
//! - An entry whose packing failed (an unreadable file) waits until its
//!   retry time; any new event on the path makes it due as usual again.
//! - What the packer hands back (changed while read, unreadable) never
//!   overrides an event that came after the path was taken: a file deleted
//!   while it was packed stays a deletion.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::paths::is_within;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The path exists (or may exist) with new content or metadata.
    Upsert,
    /// The path is gone.
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub op: Op,
    /// Taken because it settled (not forced by max_delay or a flush): the
    /// packer then also checks the file itself has been quiet for `settle`.
    pub settled: bool,
    /// Taken because the next cut would be past its `max_delay`, not
    /// settled: if it still will not hold still, a snapshot must ship.
    pub overdue: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    op: Op,
    /// When the oldest change not yet shipped happened.
    first: Instant,
    /// When the latest event on the path happened.
    last: Instant,
    /// A writer wrote and has not been seen closing the file.
    writing: bool,
    /// When a writer was last seen closing it.
    closed_at: Option<Instant>,
    /// Its packing failed: not due before this, unless an event comes.
    retry_at: Option<Instant>,
    /// A deletion: when the sender learned of it (`last` may be set
    /// earlier, so that a path a walk found gone counts as settled).
    removed_at: Option<Instant>,
}

/// Which of the due upserts one take takes: a cut too large to pack at
/// once is taken in portions, in path order. An entry taken before it
/// settled stays pending (re-armed), so a portion starts after the last
/// path the one before took, not at the first due entry.
#[derive(Debug, Clone, Copy)]
pub struct Portion<'a> {
    /// At most this many…
    pub max_upserts: usize,
    /// …of the paths after this one.
    pub after: Option<&'a str>,
}

impl Portion<'_> {
    /// Everything due.
    pub const ALL: Self = Self {
        max_upserts: usize::MAX,
        after: None,
    };
}

#[derive(Debug, Clone)]
pub struct ChangeSet {
    entries: BTreeMap<String, Entry>,
    settle: Duration,
    max_delay: Duration,
}

impl ChangeSet {
    pub fn new(settle: Duration, max_delay: Duration) -> Self {
        Self {
            entries: BTreeMap::new(),
            settle,
            max_delay,
        }
    }

    /// Content or metadata of `path` changed, or it appeared. `writing` says
    /// the event was a write by a writer that may still hold it open.
    pub fn changed(&mut self, path: &str, writing: bool, now: Instant) {
        Self::change(self.entry(path, Op::Upsert, now), writing, now);
    }

    /// [`ChangeSet::changed`], keeping `path` itself rather than a copy.
    pub fn changed_owned(&mut self, path: String, writing: bool, now: Instant) {
        Self::change(self.entry(path, Op::Upsert, now), writing, now);
    }

    fn change(e: &mut Entry, writing: bool, now: Instant) {
        e.op = Op::Upsert;
        e.removed_at = None;
        e.last = now;
        e.writing |= writing;
        e.retry_at = None;
    }

    /// A writer closed `path`.
    pub fn closed(&mut self, path: &str, now: Instant) {
        let e = self.entry(path, Op::Upsert, now);
        e.last = now;
        e.writing = false;
        e.closed_at = Some(now);
        e.retry_at = None;
    }

    /// Whether a writer closed `path` at or after `t`.
    pub fn closed_since(&self, path: &str, t: Instant) -> bool {
        self.entries
            .get(path)
            .and_then(|e| e.closed_at)
            .is_some_and(|c| c >= t)
    }

    /// Whether `path` was last learned removed at or after `t`: a walk
    /// begun at `t` that found it saw it before it went.
    pub fn removed_since(&self, path: &str, t: Instant) -> bool {
        self.entries
            .get(path)
            .is_some_and(|e| e.op == Op::Delete && e.removed_at.is_some_and(|r| r >= t))
    }

    /// `path`, waiting as a deletion, is there after all: it waits as an
    /// upsert instead, its timing kept.
    pub fn found_there(&mut self, path: &str) {
        if let Some(e) = self.entries.get_mut(path).filter(|e| e.op == Op::Delete) {
            e.op = Op::Upsert;
            e.removed_at = None;
        }
    }

    /// `path` was removed (or renamed away).
    pub fn removed(&mut self, path: &str, now: Instant) {
        self.deleted(path, now, now);
    }

    /// `path` was found gone at `now` (by a walk): nothing is left to
    /// settle, so it counts as quiet for `settle` already.
    pub fn gone(&mut self, path: &str, now: Instant) {
        let quiet_since = now.checked_sub(self.settle).unwrap_or(now);
        self.deleted(path, quiet_since, now);
    }

    /// A deletion learned at `now`, its last event at `last`.
    fn deleted(&mut self, path: &str, last: Instant, now: Instant) {
        let e = self.entry(path, Op::Delete, last);
        e.op = Op::Delete;
        e.last = last;
        e.writing = false;
        e.retry_at = None;
        e.removed_at = Some(now);
    }

    fn entry(&mut self, path: impl Into<String>, op: Op, now: Instant) -> &mut Entry {
        self.entries.entry(path.into()).or_insert(Entry {
            op,
            first: now,
            last: now,
            writing: false,
            closed_at: None,
            retry_at: None,
            removed_at: None,
        })
    }

    /// Take every entry that must be packed in the cut happening at `now`,
    /// given that the cut after it happens at `next_cut`. `force` (flush)
    /// takes everything. Entries taken before they settled are re-armed.
    pub fn take_due(&mut self, now: Instant, next_cut: Instant, force: bool) -> Vec<Change> {
        self.take_due_portion(now, next_cut, force, Portion::ALL).0
    }

    /// [`ChangeSet::take_due`], taking the upserts of `portion` only (every
    /// due deletion is taken). Returns what it took, and whether due
    /// upserts were left for the next portion.
    pub fn take_due_portion(
        &mut self,
        now: Instant,
        next_cut: Instant,
        force: bool,
        portion: Portion<'_>,
    ) -> (Vec<Change>, bool) {
        let mut due = Vec::new();
        let (mut upserts, mut left) = (0, false);
        let (settle, max_delay) = (self.settle, self.max_delay);
        self.entries.retain(|path, e| {
            if e.retry_at.is_some_and(|t| now < t) && !force {
                return true;
            }
            let quiet = now.saturating_duration_since(e.last);
            let settled = quiet >= settle && (!e.writing || quiet >= max_delay);
            let overdue = next_cut.saturating_duration_since(e.first) >= max_delay;
            if !(settled || overdue || force) {
                return true;
            }
            if e.op == Op::Upsert {
                if portion.after.is_some_and(|a| path.as_str() <= a) {
                    return true; // an earlier portion took it (or passed it)
                }
                if upserts == portion.max_upserts {
                    left = true;
                    return true;
                }
                upserts += 1;
            }
            due.push(Change {
                path: path.clone(),
                op: e.op,
                settled,
                overdue: overdue && !settled,
            });
            if settled || e.op == Op::Delete {
                return false;
            }
            // Shipped as it is now; ship again once it settles.
            e.first = now;
            true
        });
        (due, left)
    }

    /// Put back paths whose packing failed (they changed while being read).
    /// A writer, if any, shows itself through new events; a requeued path
    /// only waits to settle again. An entry an event made since the path
    /// was taken keeps its operation: that event is newer than the read.
    pub fn requeue(&mut self, path: &str, now: Instant) {
        let e = self.entry(path, Op::Upsert, now);
        e.last = now;
        e.retry_at = None;
    }

    /// Packing `path` failed (it could not be read): it stays pending and
    /// is due again at `retry_at`, or after settling once an event shows
    /// it changed (a chmod that fixes it raises one). If it was removed
    /// since it was taken, the deletion is what is due.
    pub fn failed(&mut self, path: &str, now: Instant, retry_at: Instant) {
        let e = self.entry(path, Op::Upsert, now);
        if e.op == Op::Delete {
            return;
        }
        e.writing = false;
        e.retry_at = Some(retry_at);
    }

    /// Whether `path` has a pending change.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// Events were lost: the close that would end a write may be among them.
    /// Forget which paths have a writer; writers still at work raise new
    /// events and are marked again.
    pub fn writers_unknown(&mut self) {
        for e in self.entries.values_mut() {
            e.writing = false;
        }
    }

    /// Pending paths equal to or below `dir`.
    pub fn pending_within(&self, dir: &str) -> Vec<String> {
        self.entries
            .range(dir.to_owned()..)
            .take_while(|(p, _)| p.starts_with(dir))
            .filter(|(p, _)| is_within(p, dir))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Paths whose pending change is an upsert, settled or not.
    pub fn pending_upserts(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, e)| e.op == Op::Upsert)
            .map(|(p, _)| p.as_str())
    }

    /// Paths whose pending change is a deletion, settled or not.
    pub fn pending_deletes(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, e)| e.op == Op::Delete)
            .map(|(p, _)| p.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the oldest pending change happened.
    pub fn oldest(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.first).min()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
