//! What the receivers have, as the sender knows it: per path, the metadata
//! last shipped (acknowledged, or on its way in the outbox), and the paths
//! in doubt, whose state on some receiver is not what that says.
//!
//! The one copy of the per-path state in the sender (a million-file tree
//! makes it the largest thing the sender holds): loaded from the ledger at
//! start ([`crate::ledger::Ledger::take_files`]), updated from each packing
//! run's report and each refusal. Pure: it never reads the disk.

use std::collections::BTreeSet;

use crate::bundle::manifest::FileMeta;
use crate::ledger::{Files, Meta};
use crate::paths::is_within;
use crate::stamp::Stamp;

use super::held::{HeldIndex, SharedIndex};

/// What the receivers have (or will have once the outbox drains), per path.
#[derive(Debug, Default)]
pub(super) struct Shipped {
    files: Files,
    /// Paths a receiver may hold in a state `files` does not say (a bundle
    /// carrying them went out before a crash, unacknowledged, or a receiver
    /// refused it for good): they ship again as they are now, deletions
    /// included, whatever `files` says.
    in_doubt: BTreeSet<String>,
    /// Where the receivers hold each content worth reusing (see `held.rs`):
    /// what `files` says, less the paths in doubt.
    held: SharedIndex,
}

impl Shipped {
    /// What the ledger loaded, with the paths it holds in doubt.
    pub(super) fn loaded(files: Files, in_doubt: BTreeSet<String>) -> Self {
        let mut held = HeldIndex::default();
        for (path, meta) in files.iter() {
            if !in_doubt.contains(path) {
                held.add(path, meta);
            }
        }
        let held = SharedIndex::new(held.into());
        Self {
            files,
            in_doubt,
            held,
        }
    }

    /// Where the receivers hold each content, for the packer.
    pub(super) fn held(&self) -> SharedIndex {
        self.held.clone()
    }

    /// Whether the receivers' copy of `path` is known: not in doubt. A
    /// path in doubt is rebuilt from nothing a receiver may lack: its
    /// content travels.
    pub(super) fn known(&self, path: &str) -> bool {
        !self.in_doubt.contains(path)
    }

    /// Change `path`'s entry in the index from what `files` says to `now`.
    fn reindex(&mut self, path: &str, now: Option<&Meta>) {
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        if let Some(was) = self.files.meta(path) {
            held.remove(path, was);
        }
        if let Some(m) = now {
            held.add(path, m);
        }
    }

    #[cfg(test)]
    pub(super) fn new(
        files: std::collections::BTreeMap<String, FileMeta>,
        in_doubt: BTreeSet<String>,
    ) -> Self {
        Self::loaded(files.into_iter().collect(), in_doubt)
    }

    /// What the receivers have, per path.
    pub(super) fn files(&self) -> &Files {
        &self.files
    }

    /// How many files the receivers have.
    pub(super) fn len(&self) -> usize {
        self.files.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether the receivers have `path`.
    pub(super) fn has(&self, path: &str) -> bool {
        self.files.contains(path)
    }

    /// The paths the receivers have after `after` (all: `None`), in order.
    pub(super) fn paths_after<'a>(
        &'a self,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = &'a String> + 'a {
        self.files
            .from(after.unwrap_or_default())
            .skip_while(move |p| Some(p.as_str()) == after)
    }

    /// Shipped paths equal to or below `dir` (`""`: all of them).
    pub(super) fn within<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.files
            .from(dir)
            .take_while(move |p| p.starts_with(dir))
            .filter(move |p| dir.is_empty() || is_within(p, dir))
    }

    /// Whether a deletion of `path` a receiver missed still has to reach
    /// it: nothing was shipped at or below `path` since, and nothing above
    /// it was shipped as a file or link, or is in doubt (either may stand
    /// where its directory was there; deleting below it would be refused).
    /// A path in doubt at or below it does not count: it ships again, as
    /// it is now, after the deletion. A few lookups, however many paths
    /// lie beside it.
    pub(super) fn deletion_owed(&self, path: &str) -> bool {
        let below = format!("{path}/");
        let shipped_below = self.files.from(&below).next();
        let known =
            self.files.contains(path) || shipped_below.is_some_and(|p| p.starts_with(&below));
        let replaced = path.match_indices('/').any(|(slash, _)| {
            let dir = &path[..slash];
            self.in_doubt.contains(dir)
                || self
                    .files
                    .meta(dir)
                    .is_some_and(|m| m.kind != crate::stamp::Kind::Dir)
        });
        !known && !replaced
    }

    /// Whether a file found with `stamp` is known to be what the receivers
    /// have. A racy entry's stat proves nothing (the packer compares
    /// content), and a path in doubt ships whatever it matches.
    pub(super) fn unchanged(&self, path: &str, stamp: &Stamp) -> bool {
        !self.in_doubt.contains(path)
            && self
                .files
                .meta(path)
                .is_some_and(|m| m.matches(stamp) && !m.racy)
    }

    /// Whether `stamp` matches what was shipped of `path`, racy or not.
    pub(super) fn matches(&self, path: &str, stamp: &Stamp) -> bool {
        self.files.meta(path).is_some_and(|m| m.matches(stamp))
    }

    /// What the packer may compare `path` with: what was shipped, unless
    /// the path is in doubt.
    pub(super) fn previous(&self, path: &str) -> Option<FileMeta> {
        if self.in_doubt.contains(path) {
            return None;
        }
        self.files.get(path)
    }

    /// Whether deleting `path` is something to ship: a receiver has it, or
    /// may. Deleting what no receiver got is nothing.
    pub(super) fn deletion_ships(&self, path: &str) -> bool {
        self.files.contains(path) || self.in_doubt.contains(path)
    }

    /// The paths a receiver has or may have equal to or below `scope`
    /// (`""`: everywhere): what a walk of `scope` must find. Looked up by
    /// range: a walk of one new directory in a million-file tree visits
    /// only what lies there.
    pub(super) fn known_within<'a>(&'a self, scope: &'a str) -> impl Iterator<Item = &'a String> {
        let doubt = self
            .in_doubt
            .range::<str, _>((std::ops::Bound::Included(scope), std::ops::Bound::Unbounded))
            .take_while(move |p| p.starts_with(scope))
            .filter(move |p| (scope.is_empty() || is_within(p, scope)) && !self.files.contains(p));
        self.within(scope).chain(doubt)
    }

    /// A bundle now says what the receivers will have of `path`: `Some`
    /// that metadata, `None` deleted. It is no longer in doubt.
    pub(super) fn record(&mut self, path: &str, meta: Option<&FileMeta>) {
        self.in_doubt.remove(path);
        let meta = meta.map(Meta::from);
        self.reindex(path, meta.as_ref());
        self.files.set(path, meta);
    }

    /// What some receiver has of `path` is unknown now: ship it as it is.
    pub(super) fn doubt(&mut self, path: &str) {
        self.reindex(path, None);
        self.in_doubt.insert(path.to_owned());
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::stamp::Kind;

    /// Metadata for a file of `size` bytes, as shipped.
    pub(in crate::sender) fn meta(size: u64) -> FileMeta {
        FileMeta {
            size,
            mtime: 1_000,
            mtime_nsec: 0,
            mode: 0o644,
            hash: String::new(),
            racy: false,
            kind: Kind::File,
        }
    }

    /// The stamp of a file matching [`meta`] of `size`.
    pub(in crate::sender) fn stamp(size: u64) -> Stamp {
        Stamp {
            dev: 1,
            ino: 1,
            size,
            mtime: 1_000,
            mtime_nsec: 0,
            mode: 0o644,
            kind: Kind::File,
        }
    }

    pub(in crate::sender) fn shipped(files: &[&str], in_doubt: &[&str]) -> Shipped {
        Shipped::new(
            files.iter().map(|p| (p.to_string(), meta(1))).collect(),
            in_doubt.iter().map(|p| p.to_string()).collect(),
        )
    }

    #[test]
    fn a_path_in_doubt_is_never_unchanged_and_has_no_previous() {
        let s = shipped(&["a", "b"], &["b"]);
        assert!(s.unchanged("a", &stamp(1)));
        assert!(!s.unchanged("a", &stamp(2)), "another size");
        assert!(!s.unchanged("b", &stamp(1)), "in doubt");
        assert!(s.matches("b", &stamp(1)), "matching ignores doubt");
        assert_eq!(s.previous("a"), Some(meta(1)));
        assert_eq!(s.previous("b"), None);
    }

    #[test]
    fn a_racy_entry_proves_nothing() {
        let mut racy = meta(1);
        racy.racy = true;
        let s = Shipped::new([("a".to_string(), racy)].into(), Default::default());
        assert!(!s.unchanged("a", &stamp(1)));
        assert!(s.matches("a", &stamp(1)));
    }

    #[test]
    fn a_deletion_ships_only_where_a_receiver_has_or_may_have_the_path() {
        let s = shipped(&["a"], &["gone"]);
        assert!(s.deletion_ships("a"));
        assert!(s.deletion_ships("gone"));
        assert!(!s.deletion_ships("never"));
    }

    #[test]
    fn within_a_directory_means_below_it_not_beside_it() {
        let s = shipped(&["d", "d/x", "d/y/z", "d2/x", "e"], &[]);
        let below: Vec<&String> = s.within("d").collect();
        assert_eq!(below, ["d", "d/x", "d/y/z"]);
    }

    #[test]
    fn a_missed_deletion_is_owed_unless_something_stands_at_or_above_it() {
        let mut s = shipped(&["d/x", "d2", "f", "p/10"], &["doubt", "q/y"]);
        assert!(s.deletion_owed("gone.html"));
        assert!(
            s.deletion_owed("d/x2"),
            "beside a file shipped, not above it"
        );
        assert!(s.deletion_owed("p/1"), "p/10 lies beside it");
        assert!(!s.deletion_owed("f"), "shipped again since");
        assert!(
            !s.deletion_owed("d"),
            "a directory holding a file shipped since"
        );
        assert!(s.deletion_owed("q"), "in doubt below: it ships again after");
        assert!(s.deletion_owed("doubt"), "in doubt: the same");
        assert!(
            !s.deletion_owed("doubt/old"),
            "what is in doubt above may be a file"
        );
        assert!(
            !s.deletion_owed("f/old"),
            "a file stands where its directory was"
        );
        let mut link = meta(1);
        link.kind = Kind::Link;
        s.record("l", Some(&link));
        assert!(!s.deletion_owed("l/old"), "so does a link");
        let mut dir = meta(0);
        dir.kind = Kind::Dir;
        s.record("e", Some(&dir));
        assert!(
            s.deletion_owed("e/old"),
            "a directory shipped still holds it"
        );
    }

    #[test]
    fn a_whole_tree_is_taken_in_runs_from_after_the_last_path_taken() {
        let s = shipped(&["a", "b", "b/c", "d"], &[]);
        let all: Vec<&String> = s.paths_after(None).collect();
        assert_eq!(all, ["a", "b", "b/c", "d"]);
        let rest: Vec<&String> = s.paths_after(Some("b")).collect();
        assert_eq!(rest, ["b/c", "d"]);
        let gone_since: Vec<&String> = s.paths_after(Some("c")).collect();
        assert_eq!(gone_since, ["d"], "the last path taken may be gone");
    }

    #[test]
    fn what_a_walk_must_find_includes_paths_in_doubt_once() {
        let s = shipped(&["a/1", "b/1"], &["a/1", "a/2"]);
        let all: Vec<&String> = s.known_within("").collect();
        assert_eq!(all, ["a/1", "b/1", "a/2"]);
        let a: Vec<&String> = s.known_within("a").collect();
        assert_eq!(a, ["a/1", "a/2"]);
    }

    #[test]
    fn a_recorded_path_is_no_longer_in_doubt() {
        let mut s = shipped(&["a"], &[]);
        s.doubt("a");
        assert!(!s.unchanged("a", &stamp(1)));
        s.record("a", Some(&meta(1)));
        assert!(s.unchanged("a", &stamp(1)));
        s.doubt("a");
        s.record("a", None);
        assert!(!s.has("a"));
        assert!(!s.deletion_ships("a"), "deleted and no longer in doubt");
    }
}
