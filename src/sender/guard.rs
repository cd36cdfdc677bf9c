//! The mass-deletion guard: deletions that would remove too large a share
//! of what was shipped (`sender.mass_delete`) are held, with any held
//! before, until `shipper flush --allow-mass-delete`, or until the deletion
//! no longer looks like one.
//!
//! Pure but for its log lines: whether a released deletion is still gone
//! on disk is asked of the caller.

use std::collections::BTreeSet;

use tracing::{info, warn};

use crate::config::MassDelete;

/// True when deleting `deletions` of `shipped` files is a mass deletion:
/// at least `min` files and over `share` of them.
pub(super) fn mass_deletion(deletions: usize, shipped: usize, share: f64, min: usize) -> bool {
    deletions >= min && deletions as f64 > share * shipped as f64
}

/// Deletions held back, and what the log last said of them.
#[derive(Debug)]
pub(super) struct DeletionGuard {
    rule: MassDelete,
    held: BTreeSet<String>,
    /// How many held deletions were last reported, so the log says it once.
    reported: usize,
}

impl DeletionGuard {
    pub(super) fn new(rule: MassDelete) -> Self {
        Self {
            rule,
            held: BTreeSet::new(),
            reported: 0,
        }
    }

    /// How many deletions are held.
    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    /// `path` is back (an upsert is due): its deletion is no longer held.
    pub(super) fn forget(&mut self, path: &str) {
        self.held.remove(path);
    }

    /// Hold `deletions` (with those already held) when, counting the
    /// `settling` deletions of shipped files still pending, they would
    /// remove too large a share of the `shipped` files, unless a flush
    /// `allow`ed it. Otherwise release what is held into `deletions`, each
    /// only if it is still `absent` on disk.
    pub(super) fn check(
        &mut self,
        deletions: &mut Vec<String>,
        settling: usize,
        shipped: usize,
        allow: bool,
        absent: impl Fn(&str) -> bool,
    ) {
        let total = deletions.len() + self.held.len() + settling;
        let rule = self.rule;
        if !allow && mass_deletion(total, shipped, rule.share, rule.min) {
            self.held.extend(deletions.drain(..));
            if self.held.len() != self.reported {
                self.reported = self.held.len();
                warn!(
                    held = self.held.len(),
                    shipped,
                    "mass deletion held back: it would remove over {:.0}% of the shipped files; run `shipper flush --allow-mass-delete` if it is intended",
                    rule.share * 100.0
                );
            }
            return;
        }
        if !self.held.is_empty() {
            let released = std::mem::take(&mut self.held)
                .into_iter()
                .filter(|p| absent(p));
            deletions.extend(released);
            info!(
                deletions = deletions.len(),
                allowed = allow,
                "held deletions released"
            );
            self.reported = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> DeletionGuard {
        DeletionGuard::new(MassDelete { share: 0.5, min: 3 })
    }

    fn paths(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn mass_deletion_needs_both_the_count_and_the_share() {
        assert!(mass_deletion(100, 150, 0.5, 100));
        assert!(!mass_deletion(99, 100, 0.5, 100), "under the minimum count");
        assert!(
            !mass_deletion(500, 1000, 0.5, 100),
            "exactly half is not over half"
        );
        assert!(mass_deletion(501, 1000, 0.5, 100));
        assert!(!mass_deletion(0, 0, 0.5, 0));
    }

    #[test]
    fn a_mass_deletion_is_held_and_later_deletions_join_it() {
        let mut g = guard();
        let mut d = paths(6, "a");
        g.check(&mut d, 0, 10, false, |_| true);
        assert!(d.is_empty());
        assert_eq!(g.held(), 6);
        let mut more = vec!["b".to_string()];
        g.check(&mut more, 0, 10, false, |_| true);
        assert!(more.is_empty(), "the held ones still count");
        assert_eq!(g.held(), 7);
    }

    #[test]
    fn deletions_still_settling_count_toward_the_share() {
        let mut g = guard();
        let mut d = paths(3, "a");
        g.check(&mut d, 3, 10, false, |_| true);
        assert!(d.is_empty(), "3 now and 3 settling are over half of 10");
        let mut g = guard();
        let mut d = paths(3, "a");
        g.check(&mut d, 0, 10, false, |_| true);
        assert_eq!(d.len(), 3, "3 of 10 pass");
    }

    #[test]
    fn an_allowed_flush_releases_what_is_still_gone_on_disk() {
        let mut g = guard();
        let mut d = paths(6, "a");
        g.check(&mut d, 0, 10, false, |_| true);
        let mut released = Vec::new();
        g.check(&mut released, 0, 10, true, |p| p != "a2");
        assert_eq!(released, ["a0", "a1", "a3", "a4", "a5"], "a2 is back");
        assert_eq!(g.held(), 0);
    }

    #[test]
    fn a_path_back_before_its_deletion_shipped_is_no_longer_held() {
        let mut g = guard();
        let mut d = paths(6, "a");
        g.check(&mut d, 0, 10, false, |_| true);
        g.forget("a0");
        assert_eq!(g.held(), 5);
    }
}
