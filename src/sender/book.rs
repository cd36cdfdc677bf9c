//! The sender's book of paths: what is pending (the [`ChangeSet`]), what
//! the receivers have ([`Shipped`]), and the paths that do not ship as
//! they should: failing (retried with backoff), badly named (they cannot
//! travel), shipped unsettled (a snapshot went), unsafe links skipped, the
//! deletions the [`DeletionGuard`] holds.
//!
//! It turns watch events, catch-up diffs, packing reports and refusals
//! into entries, and says what a cut takes. It never touches the disk
//! (whether a path is still absent is asked of the caller); it reads the
//! clock only to judge whether a file a walk found has been quiet for
//! `settle`, and for status (when a path first failed, how old the oldest
//! change is).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::bundle::manifest::FileMeta;
use crate::bundle::pack::{PackItem, Report};
use crate::changes::{Change, ChangeSet, Op, Portion};
use crate::config::MassDelete;
use crate::paths::is_within;
use crate::proto::refusal::{Refusal, RefusalKind};
use crate::stamp::Stamp;
use crate::status::{FailingPath, StatusReport, unix_now};

use super::guard::DeletionGuard;
use super::shipped::Shipped;
use super::skipped::SkippedLinks;
use super::source::OnDisk;

/// Why a badly named file is not shipped.
const BAD_NAME: &str = "name is not valid UTF-8, so it cannot travel in a bundle (zip names are UTF-8): rename it to ship it";
/// How many failing paths `status` lists by name.
const STATUS_FAILING_MAX: usize = 100;
/// Retries of an unreadable file back off up to this.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// How long a path waits after its `attempts`-th failed packing: 1 s,
/// doubling, at most [`RETRY_MAX`].
pub(super) fn retry_delay(attempts: u32) -> Duration {
    let secs = 1u64 << attempts.saturating_sub(1).min(16);
    Duration::from_secs(secs).min(RETRY_MAX)
}

/// Every path the sender keeps track of, and why.
pub(super) struct Book {
    settle: Duration,
    max_delay: Duration,
    pub(super) changes: ChangeSet,
    pub(super) shipped: Shipped,
    guard: DeletionGuard,
    /// Paths that could not be packed, retried with backoff.
    failing: BTreeMap<String, FailingPath>,
    /// Paths whose names are not UTF-8 (they cannot travel), each with
    /// whether the last word on it said it is there, and when: a walk that
    /// began before that word does not overrule it.
    bad_names: BTreeMap<String, (bool, Instant)>,
    /// Paths shipped as a snapshot while still being written.
    unsettled: BTreeSet<String>,
    skipped_links: SkippedLinks,
}

impl Book {
    /// A book of what was `shipped`, nothing pending; `settle`, `max_delay`
    /// and the mass-deletion `rule` as configured.
    pub(super) fn new(
        settle: Duration,
        max_delay: Duration,
        rule: MassDelete,
        shipped: Shipped,
    ) -> Self {
        Self {
            settle,
            max_delay,
            changes: ChangeSet::new(settle, max_delay),
            shipped,
            guard: DeletionGuard::new(rule),
            failing: BTreeMap::new(),
            bad_names: BTreeMap::new(),
            unsettled: BTreeSet::new(),
            skipped_links: SkippedLinks::default(),
        }
    }

    /// The source was replaced or lost: what is pending was seen in a
    /// directory that went, so it is dropped.
    pub(super) fn forget_pending(&mut self) {
        self.changes = ChangeSet::new(self.settle, self.max_delay);
    }

    /// How many deletions the guard holds.
    pub(super) fn held(&self) -> usize {
        self.guard.held()
    }

    /// `path` is gone. A removed directory takes every shipped or pending
    /// path below it.
    pub(super) fn removed(&mut self, path: String, now: Instant) {
        self.failing.retain(|p, _| !is_within(p, &path));
        self.skipped_links.removed(&path);
        let mut affected: Vec<String> = self.shipped.within(&path).cloned().collect();
        affected.extend(self.changes.pending_within(&path));
        affected.push(path);
        for p in affected {
            self.changes.removed(&p, now);
        }
    }

    /// The watch saw a badly named path appear, or go, at `now`.
    pub(super) fn bad_name(&mut self, path: String, gone: bool, now: Instant) {
        let was_there = self.bad_names.get(&path).is_some_and(|&(there, _)| there);
        if !gone && !was_there {
            warn!(path = %path, "{BAD_NAME}");
        }
        self.bad_names.insert(path, (!gone, now));
    }

    /// A walk of `scope` (`""`: the whole source), begun at `began`, found
    /// these badly named paths, and no others there; what the watch said
    /// of a path since the walk began stands (a name that appeared, or
    /// went, after the walk passed its directory).
    pub(super) fn bad_names_walked(&mut self, scope: &str, found: &[String], began: Instant) {
        self.bad_names
            .retain(|p, &mut (_, at)| at >= began || !(scope.is_empty() || is_within(p, scope)));
        for p in found {
            if !self.bad_names.contains_key(p) {
                self.bad_name(p.clone(), false, began);
            }
        }
    }

    /// The badly named paths there now.
    fn bad_names_there(&self) -> impl Iterator<Item = &String> {
        self.bad_names
            .iter()
            .filter(|(_, (there, _))| *there)
            .map(|(p, _)| p)
    }

    /// A file that has been quiet for `settle` at `now` counts as settled.
    fn quiet_since(&self, now: Instant) -> Instant {
        now.checked_sub(self.settle).unwrap_or(now)
    }

    /// Queue the files a walk found differing: `found` says which of the
    /// walk's `files` (by index), and whether each is still open for
    /// writing; their paths are taken from `files`. One last modified
    /// longer than `settle` ago has been quiet that long already: it
    /// counts as settled at once.
    pub(super) fn queue_found(
        &mut self,
        files: &mut [(String, Stamp)],
        found: &[(usize, bool)],
        now: Instant,
    ) {
        let quiet_since = self.quiet_since(now);
        for &(i, open) in found {
            let Some((path, stamp)) = files.get_mut(i) else {
                continue;
            };
            let path = std::mem::take(path);
            if open {
                self.changes.changed_owned(path, true, now);
                continue;
            }
            // The same test the packer applies (a future mtime proves nothing).
            let quiet = !stamp.modified_within(self.settle);
            let at = if quiet { quiet_since } else { now };
            self.changes.changed_owned(path, false, at);
        }
    }

    /// Queue the deletion of paths gone before a walk reached them: nothing
    /// is left to settle.
    pub(super) fn queue_gone(&mut self, gone: &[String], now: Instant) {
        for p in gone {
            self.changes.gone(p, now);
        }
    }

    /// Take what the cut at `now` ships, the next cut being at `next_cut`;
    /// `force`: everything pending. Upserts are taken in `portion`s;
    /// returns whether due ones were left for the next. Every due deletion
    /// is taken, so the guard judges them together: they pass it (`allow`:
    /// a flush allowed a mass deletion), and a held deletion is released
    /// only if its path is still gone `on_disk`. A pending deletion of a
    /// path that is there ships the path as it is instead.
    pub(super) fn take_due(
        &mut self,
        now: Instant,
        next_cut: Instant,
        (force, allow): (bool, bool),
        portion: Portion<'_>,
        on_disk: impl Fn(&str) -> OnDisk,
    ) -> (Vec<PackItem>, bool) {
        self.removals_found_there(&on_disk);
        let (due, left) = self.changes.take_due_portion(now, next_cut, force, portion);
        let mut items = Vec::with_capacity(due.len());
        let mut deletions = Vec::new();
        for c in due {
            match c.op {
                Op::Upsert => items.push(self.upsert(c)),
                Op::Delete if self.shipped.deletion_ships(&c.path) => deletions.push(c.path),
                Op::Delete => {}
            }
        }
        let settling = self
            .changes
            .pending_deletes()
            .filter(|p| self.shipped.has(p))
            .count();
        let shipped = self.shipped.len();
        let absent = |p: &str| on_disk(p) == OnDisk::Gone;
        self.guard
            .check(&mut deletions, settling, shipped, allow, absent);
        items.extend(deletions.into_iter().map(PackItem::delete));
        (items, left)
    }

    /// A pending deletion of a path that is there: notify names a moved
    /// directory's events by where it was watched, so removing an old
    /// build swapped out (`mv site site.old; mv site.new site; rm -rf
    /// site.old`) reads as removing the new one's files. It waits as an
    /// upsert instead, taken and settled as any: what is there ships as it
    /// is (nothing, if the receivers have it). A path that cannot be looked
    /// at stays a deletion.
    fn removals_found_there(&mut self, on_disk: &impl Fn(&str) -> OnDisk) {
        let there: Vec<String> = self
            .changes
            .pending_deletes()
            .filter(|p| self.shipped.deletion_ships(p) && on_disk(p) == OnDisk::There)
            .map(str::to_owned)
            .collect();
        for p in there {
            debug!(path = %p, "removal of a path that is there: it ships as it is");
            self.changes.found_there(&p);
        }
    }

    /// The item that ships `c`'s path as it is: compared with what was
    /// shipped of it, its deletion no longer held.
    fn upsert(&mut self, c: Change) -> PackItem {
        self.guard.forget(&c.path);
        PackItem {
            previous: self.shipped.previous(&c.path),
            reuse: self.shipped.known(&c.path),
            path: c.path,
            op: Op::Upsert,
            quiet_for: c.settled.then_some(self.settle),
            overdue: c.overdue,
        }
    }

    /// Take in what a packing run did: what it shipped, what changed while
    /// it read it, what it could not read. Returns the paths it accounted
    /// for.
    pub(super) fn record(&mut self, report: &Report, now: Instant) -> HashSet<String> {
        let mut accounted = HashSet::new();
        self.skipped_links.record(report);
        let snapshots: HashSet<&str> = report.unsettled.iter().map(String::as_str).collect();
        for (path, meta) in &report.shipped {
            accounted.insert(path.clone());
            self.failing.remove(path);
            // Its bundle says what the receivers will have.
            self.shipped.record(path, meta.as_ref());
            if snapshots.contains(path.as_str()) {
                if self.unsettled.insert(path.clone()) {
                    warn!(path = %path, max_delay = %crate::config::fmt_dur(self.max_delay), "shipped unsettled: still being written at max_delay, so a snapshot of it went; it ships again once it settles");
                }
            } else if self.unsettled.remove(path) {
                info!(path = %path, "shipped settled after an unsettled snapshot");
            }
        }
        for p in &report.requeue {
            debug!(path = %p, "changed while packing; stays pending");
            accounted.insert(p.clone());
            self.changes.requeue(p, now);
        }
        self.failed(&report.failed, now);
        accounted.extend(report.failed.iter().map(|(p, _)| p.clone()));
        accounted
    }

    /// Paths a packing run could not pack, with why.
    pub(super) fn failed(&mut self, failed: &[(String, String)], now: Instant) {
        for (p, error) in failed {
            self.path_failed(p, error, now);
        }
    }

    /// A packing run that took `taken` succeeded: what it took and did not
    /// fail again was packed, unchanged or gone.
    pub(super) fn clear_failing(&mut self, taken: &[(String, Op)], failed: &[(String, String)]) {
        let failed: HashSet<&str> = failed.iter().map(|(p, _)| p.as_str()).collect();
        for (path, _) in taken {
            if !failed.contains(path.as_str()) {
                self.failing.remove(path);
            }
        }
    }

    /// A packing run failed as a whole: what it took and did not account
    /// for goes back, so nothing is lost because a bundle could not be
    /// written.
    pub(super) fn put_back(
        &mut self,
        taken: Vec<(String, Op)>,
        accounted: &HashSet<String>,
        now: Instant,
    ) {
        for (path, op) in taken {
            if accounted.contains(&path) || self.changes.contains(&path) {
                continue; // shipped, handled, or superseded by a newer event
            }
            match op {
                Op::Upsert => self.changes.requeue(&path, now),
                Op::Delete => self.changes.removed(&path, now),
            }
        }
    }

    /// Receiver `peer` refused, for good, a bundle carrying `changes`. The
    /// path at fault waits as failing; the rest is packed again in full so
    /// that receiver gets it too (in doubt, nothing is taken as held there).
    pub(super) fn refused(
        &mut self,
        peer: &str,
        refusal: &Refusal,
        changes: Vec<(String, Option<FileMeta>)>,
        now: Instant,
    ) {
        // A receiver lacking files a bundle kept faults no path: they all
        // ship again with their content.
        let at_fault = refusal
            .path
            .as_deref()
            .filter(|_| refusal.kind == RefusalKind::Permanent);
        for (path, meta) in changes {
            if at_fault.is_some_and(|f| is_within(&path, f)) {
                let error = format!("receiver {peer} refused it: {}", refusal.reason);
                self.path_failed(&path, &error, now);
                continue;
            }
            // What that receiver has of it is unknown now: it ships as it
            // is, deletions included, like a path in doubt after a crash.
            self.shipped.doubt(&path);
            if self.changes.contains(&path) {
                continue; // a newer change is pending anyway
            }
            match meta {
                Some(_) => self.changes.requeue(&path, now),
                None => self.changes.removed(&path, now),
            }
        }
    }

    /// A receiver lacked content a bundle named: the paths its copies were
    /// made from may be what it lost. Each is in doubt (never copied from
    /// again until it is shipped) and ships again as it is, so the
    /// receiver gets it back and later copies of its content work.
    pub(super) fn sources_not_held(&mut self, sources: &[String], now: Instant) {
        for path in sources {
            self.shipped.doubt(path);
            if !self.changes.contains(path) {
                self.changes.requeue(path, now);
            }
        }
    }

    /// `path` could not be packed: keep it pending, retry with backoff, and
    /// say so once per distinct error.
    fn path_failed(&mut self, path: &str, error: &str, now: Instant) {
        let entry = self
            .failing
            .entry(path.to_owned())
            .or_insert_with(|| FailingPath {
                path: path.to_owned(),
                error: String::new(),
                since: unix_now(),
                attempts: 0,
            });
        entry.attempts += 1;
        let delay = retry_delay(entry.attempts);
        if entry.error != error {
            warn!(path = %path, error = %error, retry_in = %crate::config::fmt_dur(delay), "cannot ship this file; it stays pending and is retried, the rest ships");
            entry.error = error.to_owned();
        }
        self.changes.failed(path, now, now + delay);
    }

    /// The book's part of `shipper status`, the rest left default.
    pub(super) fn status(&self) -> StatusReport {
        StatusReport {
            pending_paths: self.changes.len() as u64,
            oldest_pending_secs: self.changes.oldest().map(|t| t.elapsed().as_secs_f64()),
            held_deletions: self.guard.held() as u64,
            failing_paths: (self.failing.len() + self.bad_names_there().count()) as u64,
            failing: self
                .bad_names_there()
                .map(|p| FailingPath {
                    path: p.clone(),
                    error: BAD_NAME.into(),
                    since: 0,
                    attempts: 0,
                })
                .chain(self.failing.values().cloned())
                .take(STATUS_FAILING_MAX)
                .collect(),
            unsettled: self.unsettled.iter().cloned().collect(),
            skipped_links: self.skipped_links.status(),
            ..StatusReport::default()
        }
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
