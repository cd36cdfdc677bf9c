//! A receiver's course through one sender's folder, pure: which listed
//! seals it takes ([`Course::takes`]), whether a bundle is the one that
//! comes next ([`Course::verdict`]), when it starts from a base
//! ([`start`]), and what applying a bundle makes of its course
//! ([`Course::applied`]).
//!
//! In step, a receiver follows the chain and passes over bases' members.
//! Starting empty, or behind what the bucket keeps, it takes the newest
//! complete base: its members and the chain from its first member on, in
//! sequence order, which is the order they were uploaded in. Each kind is
//! linked exactly: a member names the member before it, a chain bundle the
//! chain bundle before it, so a bundle deleted from the bucket is never
//! skipped. Only what the sender says it let go (`kept_from`, signed)
//! sends a receiver to a base; anything else missing is waited for.

use serde::{Deserialize, Serialize};

use super::names::Kind;

/// A complete base: its first and last member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub first: u64,
    pub last: u64,
}

/// A base being taken: which, and its last member applied (0: none yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taking {
    pub base: Base,
    pub member: u64,
}

/// Where a receiver is in one sender's folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Course {
    /// The last bundle of the chain applied (0: none).
    pub chain: u64,
    /// The first member of the last base taken: what the chain had before
    /// it, the base brought (0: none taken).
    #[serde(default)]
    pub covered: u64,
    /// The base being taken, until its last member is applied.
    #[serde(default)]
    pub taking: Option<Taking>,
    /// The receiver's position (its last bundle of this sender applied)
    /// this course goes with: one recorded at another position (a root
    /// rolled back since) is stale, but for `pending`.
    #[serde(default)]
    pub at: u64,
    /// The bundle being applied, recorded before it is: if a stop comes
    /// after it is applied but before this course is, the course resumes
    /// past it ([`Course::resume`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<(u64, Kind)>,
}

/// What to do with a listed seal that holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its bundle comes next: take it.
    Take,
    /// A bundle before it is missing: wait for it (unless the sender let
    /// it go: see [`Course::let_go`]).
    Wait,
}

impl Course {
    /// A receiver with `position` applied and no course recorded (one from
    /// before bases): the chain, up to there.
    pub fn at(position: u64) -> Self {
        Self {
            chain: position,
            at: position,
            ..Self::default()
        }
    }

    /// This course, recorded as it was, for a receiver whose position is
    /// now `position`: as recorded, or past the bundle it was applying
    /// when that bundle is the position; after a rollback, the course as
    /// it was right after the bundle rolled back to (from `log`, the
    /// courses after each of the last bundles applied); else (bundles of
    /// this sender applied another way) the chain up to there.
    pub fn resume(self, position: u64, log: &[Course]) -> Self {
        let mut c = Course {
            pending: None,
            ..self
        };
        match self.pending {
            _ if self.at == position => c,
            Some((seq, kind)) if seq == position => {
                c.applied(seq, kind);
                c
            }
            _ => log
                .iter()
                .rev()
                .find(|l| l.at == position)
                .copied()
                .unwrap_or(Course::at(position)),
        }
    }

    /// The base being taken.
    pub fn base(&self) -> Option<Base> {
        self.taking.map(|t| t.base)
    }

    /// Whether the listed bundle `seq` of `kind` is on this course: the
    /// chain's bundles (from the base's first member on, while taking
    /// one) and the base's own members.
    pub fn takes(&self, seq: u64, kind: Kind) -> bool {
        match (self.base(), kind) {
            (None, Kind::Chain) => true,
            (None, Kind::Member) => false,
            (Some(b), Kind::Member) => (b.first..=b.last).contains(&seq),
            (Some(b), Kind::Chain) => seq >= b.first,
        }
    }

    /// The last bundle of `kind` applied on this course.
    fn last(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Member => self.taking.map_or(0, |t| t.member),
            Kind::Chain => self.chain,
        }
    }

    /// Whether a bundle of `kind` sealed after `prev` comes next. A chain
    /// bundle sealed after none is the first of a folder begun anew (a new
    /// or emptied bucket: the sender puts the whole tree there first, on
    /// the chain); it is listed past this receiver's position, so it is
    /// never an old one.
    pub fn verdict(&self, kind: Kind, prev: u64) -> Verdict {
        let covered = kind == Kind::Chain && self.chain < self.covered && prev < self.covered;
        let anew = kind == Kind::Chain && prev == 0;
        if prev == self.last(kind) || covered || anew {
            Verdict::Take
        } else {
            Verdict::Wait
        }
    }

    /// Whether the bundle of `kind` sealed after `prev`, which does not
    /// come next, is so because the sender let go of the ones between (it
    /// keeps every bundle from `kept_from` on, so every one missing, up to
    /// `prev`, must be below that): a base is then taken.
    pub fn let_go(&self, kind: Kind, prev: u64, kept_from: u64) -> bool {
        prev > self.last(kind) && prev < kept_from
    }

    /// Bundle `seq` of `kind` was applied.
    pub fn applied(&mut self, seq: u64, kind: Kind) {
        self.at = self.at.max(seq);
        match kind {
            Kind::Chain => self.chain = seq,
            Kind::Member => {
                if let Some(t) = &mut self.taking {
                    t.member = seq;
                    if seq >= t.base.last {
                        self.taking = None;
                    }
                }
            }
        }
    }

    /// Start taking `base`.
    pub fn take_base(&mut self, base: Base) {
        self.covered = base.first;
        self.taking = Some(Taking { base, member: 0 });
    }
}

/// Where a receiver not taking a base starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The chain, from its position.
    Chain,
    /// This base.
    Base(Base),
    /// Nothing yet: the first base is still being uploaded.
    WaitForBase,
}

/// Where a receiver at `position` starts, the newest complete base being
/// `newest`: with nothing applied, from the newest base (or, while the
/// folder begins with a base not yet complete, nothing until it is; a
/// folder with no base at all is followed along the chain); `behind` (its
/// next bundle was let go), from the newest base past its position, if
/// there is one.
pub fn start(
    position: u64,
    newest: Option<Base>,
    first_listed: Option<Kind>,
    behind: bool,
) -> Start {
    match newest {
        Some(b) if position == 0 || (behind && b.first > position) => Start::Base(b),
        None if position == 0 && first_listed == Some(Kind::Member) => Start::WaitForBase,
        _ => Start::Chain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Base = Base {
        first: 10,
        last: 14,
    };

    #[test]
    fn in_step_a_receiver_takes_the_chain_exactly_and_passes_over_members() {
        let c = Course::at(8);
        assert!(c.takes(11, Kind::Chain));
        assert!(!c.takes(11, Kind::Member));
        assert_eq!(c.verdict(Kind::Chain, 8), Verdict::Take);
        assert_eq!(
            c.verdict(Kind::Chain, 9),
            Verdict::Wait,
            "bundle 9 is missing"
        );
        assert_eq!(
            c.verdict(Kind::Chain, 7),
            Verdict::Wait,
            "not the one after 8"
        );
        // Missing, and let go by the sender: a base; not let go: waited for.
        assert!(c.let_go(Kind::Chain, 9, 10));
        assert!(c.let_go(Kind::Chain, 12, 13));
        assert!(
            !c.let_go(Kind::Chain, 12, 10),
            "12 is kept: missing, it was deleted by someone else"
        );
        assert!(!c.let_go(Kind::Chain, 7, 99), "not a gap at all");
        // The first bundle of a folder begun anew names none before it.
        assert_eq!(c.verdict(Kind::Chain, 0), Verdict::Take);
    }

    #[test]
    fn taking_a_base_links_members_and_chain_each_exactly() {
        let mut c = Course::at(3);
        c.take_base(B);
        assert!(!c.takes(9, Kind::Chain), "before the base: covered by it");
        assert!(c.takes(11, Kind::Chain) && c.takes(20, Kind::Chain));
        assert!(c.takes(10, Kind::Member) && c.takes(14, Kind::Member));
        assert!(!c.takes(15, Kind::Member) && !c.takes(5, Kind::Member));
        // The first member, then the chain's first bundle inside the base,
        // which names one before it the base covers.
        assert_eq!(c.verdict(Kind::Member, 0), Verdict::Take);
        c.applied(10, Kind::Member);
        assert_eq!(c.verdict(Kind::Chain, 7), Verdict::Take);
        c.applied(11, Kind::Chain);
        // Member 12 deleted: 13 names it, and is waited on.
        assert_eq!(c.verdict(Kind::Member, 12), Verdict::Wait);
        assert_eq!(c.verdict(Kind::Member, 10), Verdict::Take);
        c.applied(12, Kind::Member);
        // Chain 13 deleted: 15 names it, and is waited on, even past the
        // base's last member.
        c.applied(14, Kind::Member);
        assert_eq!(c.taking, None, "the base is taken");
        assert_eq!(c.verdict(Kind::Chain, 13), Verdict::Wait);
        assert_eq!(c.verdict(Kind::Chain, 11), Verdict::Take);
    }

    #[test]
    fn after_a_base_with_no_chain_inside_the_chain_goes_on_from_before_it() {
        let mut c = Course::at(0);
        c.take_base(B);
        for m in [10, 12, 14] {
            c.applied(m, Kind::Member);
        }
        // The chain's next bundle names one before the base: covered.
        assert_eq!(c.verdict(Kind::Chain, 9), Verdict::Take);
        // One inside the base's span that this receiver never had: missing.
        assert_eq!(c.verdict(Kind::Chain, 11), Verdict::Wait);
    }

    #[test]
    fn a_receiver_starts_from_the_newest_base_when_empty_or_behind() {
        assert_eq!(start(0, Some(B), Some(Kind::Chain), false), Start::Base(B));
        assert_eq!(
            start(0, None, Some(Kind::Member), false),
            Start::WaitForBase
        );
        assert_eq!(
            start(0, None, Some(Kind::Chain), false),
            Start::Chain,
            "a folder of chain only"
        );
        assert_eq!(start(0, None, None, false), Start::Chain);
        assert_eq!(start(5, Some(B), None, true), Start::Base(B));
        assert_eq!(
            start(12, Some(B), None, true),
            Start::Chain,
            "no base past it: it waits"
        );
        assert_eq!(start(5, Some(B), None, false), Start::Chain, "in step");
    }

    #[test]
    fn a_course_resumes_past_the_bundle_a_stop_left_applied() {
        let mut c = Course::at(3);
        c.take_base(B);
        c.applied(10, Kind::Member);
        let mut pending = c;
        pending.pending = Some((12, Kind::Member));
        // Stopped before 12 was applied, and after.
        assert_eq!(pending.resume(10, &[]), c);
        let mut after = c;
        after.applied(12, Kind::Member);
        assert_eq!(pending.resume(12, &[]), after);
        assert_eq!(after.taking.map(|t| t.member), Some(12));
        // Rolled back to a position no course was logged at: the chain.
        assert_eq!(pending.resume(5, &[]), Course::at(5));
    }

    /// Members 10, 12, 14 and chain 11, 13, 15: the course after each, as
    /// a receiver logs them.
    fn taken_with_log(upto: u64) -> (Course, Vec<Course>) {
        let mut c = Course::at(0);
        c.take_base(B);
        let mut log = Vec::new();
        for (s, k) in [
            (10, Kind::Member),
            (11, Kind::Chain),
            (12, Kind::Member),
            (13, Kind::Chain),
            (14, Kind::Member),
            (15, Kind::Chain),
        ] {
            if s > upto {
                break;
            }
            c.applied(s, k);
            log.push(c);
        }
        (c, log)
    }

    #[test]
    fn a_rollback_resumes_the_course_as_it_was_after_the_bundle_rolled_back_to() {
        // Back to a member: the chain's 15 (sealed after 13) comes next.
        let (c, log) = taken_with_log(15);
        let r = c.resume(14, &log);
        assert_eq!(r.verdict(Kind::Chain, 13), Verdict::Take, "{r:?}");
        // Back inside the base: its members after 11 are taken again.
        let (c, log) = taken_with_log(13);
        let r = c.resume(11, &log);
        assert!(
            r.takes(12, Kind::Member) && r.takes(14, Kind::Member),
            "{r:?}"
        );
        assert_eq!(r.verdict(Kind::Member, 10), Verdict::Take);
    }
}
