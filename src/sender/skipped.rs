//! Symlinks the sender does not ship (absolute, or pointing outside the
//! tree: rsync's `--safe-links`), each logged once and listed in `status`
//! until it is fixed, replaced or removed. Pure: fed by packing reports
//! and removals.

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::bundle::pack::{Report, SkippedLink};
use crate::paths::is_within;
use crate::status::SkippedLinkStatus;

#[derive(Debug, Default)]
pub(super) struct SkippedLinks {
    links: BTreeMap<String, SkippedLink>,
}

impl SkippedLinks {
    /// Take in a packing run: links it skipped (warned of when new or
    /// pointing elsewhere now), and paths it shipped, no longer skipped.
    pub(super) fn record(&mut self, report: &Report) {
        for (path, _) in &report.shipped {
            if self.links.remove(path).is_some() {
                info!(path = %path, "a symlink skipped before is shipped now");
            }
        }
        for l in &report.skipped_links {
            if self.links.get(&l.path) != Some(l) {
                warn!(path = %l.path, target = %l.target, why = l.why, "symlink not shipped: {}; only links that stay inside the tree travel", l.why);
                self.links.insert(l.path.clone(), l.clone());
            }
        }
    }

    /// `path` is gone from the source, with everything below it.
    pub(super) fn removed(&mut self, path: &str) {
        self.links.retain(|p, _| !is_within(p, path));
    }

    /// What `status` lists.
    pub(super) fn status(&self) -> Vec<SkippedLinkStatus> {
        self.links
            .values()
            .map(|l| SkippedLinkStatus {
                path: l.path.clone(),
                target: l.target.clone(),
                why: l.why.to_owned(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped(path: &str, target: &str) -> SkippedLink {
        SkippedLink {
            path: path.into(),
            target: target.into(),
            why: "its target leaves the tree",
        }
    }

    #[test]
    fn a_skipped_link_is_listed_until_shipped_or_removed() {
        let mut s = SkippedLinks::default();
        s.record(&Report {
            skipped_links: vec![skipped("a/out", "../../x"), skipped("etc", "/etc")],
            ..Report::default()
        });
        let paths = |s: &SkippedLinks| s.status().into_iter().map(|l| l.path).collect::<Vec<_>>();
        assert_eq!(paths(&s), ["a/out", "etc"]);
        let mut fixed = Report::default();
        fixed.shipped.push(("etc".into(), None));
        s.record(&fixed);
        assert_eq!(paths(&s), ["a/out"]);
        s.removed("a");
        assert!(s.status().is_empty());
    }
}
