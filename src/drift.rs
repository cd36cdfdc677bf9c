//! Drift: what a receiver's root holds that the source does not say, as
//! `shipper verify` reports it. [`compare`] sets a listing of the source
//! (path -> BLAKE3 of the content) against one of root and sorts every path
//! where they disagree into missing (in the source only), different (in
//! both, other content) and extra (in root only), except that a path with a
//! change the sender has not shipped yet is *pending*: it explains the
//! difference, and is not drift. Pure: the listings are made elsewhere
//! (`receiver/root_hashes.rs`, `sender/verify.rs`).
//!
//! Only regular files are compared: directories and symlinks are not listed
//! on either side.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// BLAKE3 of a file's content.
pub type Hash = [u8; 32];

/// Path -> content hash, in path order.
pub type Listing = BTreeMap<String, Hash>;

/// Where one root disagrees with the source; each list in path order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// In the source, not in root.
    pub missing: Vec<String>,
    /// In both, with other content.
    pub different: Vec<String>,
    /// In root, not in the source (nor excluded from it).
    pub extra: Vec<String>,
    /// Would be one of the above, but a change of it waits to be shipped.
    pub pending: Vec<String>,
}

impl Drift {
    /// Root is the source, but for what is pending.
    pub fn in_step(&self) -> bool {
        self.missing.is_empty() && self.different.is_empty() && self.extra.is_empty()
    }
}

/// What `shipper verify` reports: the source, each receiver's root against
/// it, and what a repair did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Regular files in the source, and how many of them were read (the
    /// others' hashes were known: unchanged since they were shipped).
    pub source_files: u64,
    pub source_hashed: u64,
    pub receivers: Vec<ReceiverDrift>,
    /// With `--repair`: what was shipped to put root right.
    pub repair: Option<Repair>,
}

/// One receiver's root against the source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverDrift {
    /// As in `sender.receiver`.
    pub receiver: String,
    /// Why it could not be compared; then the lists are empty.
    pub error: Option<String>,
    /// Regular files in root, and how many the receiver read to list them
    /// (the others' hashes were cached).
    pub files: u64,
    pub hashed: u64,
    /// Other senders whose bundles this root takes: their files look
    /// extra from here, so extras are never deleted on such a root.
    pub other_senders: u64,
    #[serde(flatten)]
    pub drift: Drift,
}

/// What `--repair` shipped: `files` again (missing or different in some
/// root), `deletions` of extras (with `--delete-extra`), and the flush's
/// outcome: the sequences acknowledged, or why not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    pub files: u64,
    pub deletions: u64,
    pub outcome: String,
    pub error: Option<String>,
}

impl VerifyReport {
    /// 0: every root in step; 1: some drift; 2: a receiver could not be
    /// compared, or the repair failed.
    pub fn exit_code(&self) -> u8 {
        let failed = self.receivers.iter().any(|r| r.error.is_some())
            || self.repair.as_ref().is_some_and(|r| r.error.is_some());
        if failed {
            2
        } else if self.receivers.iter().all(|r| r.drift.in_step()) {
            0
        } else {
            1
        }
    }
}

/// Where `root` disagrees with `source`. A path for which `pending` holds
/// is reported as pending instead of drift.
pub fn compare(source: &Listing, root: &Listing, pending: &dyn Fn(&str) -> bool) -> Drift {
    let mut d = Drift::default();
    let mut put = |list: fn(&mut Drift) -> &mut Vec<String>, path: &str| {
        let to = if pending(path) {
            &mut d.pending
        } else {
            list(&mut d)
        };
        to.push(path.to_owned());
    };
    let (mut s, mut r) = (source.iter().peekable(), root.iter().peekable());
    loop {
        match (s.peek(), r.peek()) {
            (Some((sp, sh)), Some((rp, rh))) => match sp.cmp(rp) {
                std::cmp::Ordering::Less => {
                    put(|d| &mut d.missing, sp);
                    s.next();
                }
                std::cmp::Ordering::Greater => {
                    put(|d| &mut d.extra, rp);
                    r.next();
                }
                std::cmp::Ordering::Equal => {
                    if sh != rh {
                        put(|d| &mut d.different, sp);
                    }
                    s.next();
                    r.next();
                }
            },
            (Some((sp, _)), None) => {
                put(|d| &mut d.missing, sp);
                s.next();
            }
            (None, Some((rp, _))) => {
                put(|d| &mut d.extra, rp);
                r.next();
            }
            (None, None) => break,
        }
    }
    // Each list was filled in path order, pending included.
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(entries: &[(&str, u8)]) -> Listing {
        entries
            .iter()
            .map(|(p, h)| (p.to_string(), [*h; 32]))
            .collect()
    }

    #[test]
    fn identical_listings_are_in_step() {
        let l = listing(&[("a", 1), ("b/c", 2)]);
        let d = compare(&l, &l, &|_| false);
        assert_eq!(d, Drift::default());
        assert!(d.in_step());
    }

    #[test]
    fn each_kind_of_drift_is_named_in_path_order() {
        let source = listing(&[("a", 1), ("b", 2), ("d", 4), ("f", 6)]);
        let root = listing(&[("a", 1), ("b", 9), ("c", 3), ("e", 5), ("f", 7)]);
        let d = compare(&source, &root, &|_| false);
        assert_eq!(d.missing, ["d"]);
        assert_eq!(d.different, ["b", "f"]);
        assert_eq!(d.extra, ["c", "e"]);
        assert!(d.pending.is_empty());
        assert!(!d.in_step());
    }

    /// A difference a pending change explains is no drift: a verify run
    /// between a write and its bundle must not call root broken.
    #[test]
    fn pending_paths_are_not_drift() {
        let source = listing(&[("new", 1), ("edited", 2)]);
        let root = listing(&[("edited", 3), ("removed", 4)]);
        let pending = |p: &str| p != "x";
        let d = compare(&source, &root, &pending);
        assert_eq!(d.pending, ["edited", "new", "removed"]);
        assert!(d.in_step());
    }

    #[test]
    fn the_exit_code_says_error_over_drift_over_in_step() {
        let mut report = VerifyReport {
            receivers: vec![ReceiverDrift::default(), ReceiverDrift::default()],
            ..VerifyReport::default()
        };
        assert_eq!(report.exit_code(), 0);
        report.receivers[0].drift.pending.push("p".into());
        assert_eq!(report.exit_code(), 0);
        report.receivers[1].drift.extra.push("x".into());
        assert_eq!(report.exit_code(), 1);
        report.receivers[0].error = Some("down".into());
        assert_eq!(report.exit_code(), 2);
    }

    #[test]
    fn a_pending_path_in_step_is_not_listed() {
        let l = listing(&[("a", 1)]);
        assert_eq!(compare(&l, &l, &|_| true), Drift::default());
    }
}
