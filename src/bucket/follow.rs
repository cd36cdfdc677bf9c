//! A receiver's course through one sender's folder, pure: which listed
//! seals it takes ([`takes`]), whether what a bundle builds on is there
//! ([`builds_on`]), when it starts from a base ([`start`]), and when a base
//! is fully taken ([`goes_on`]).
//!
//! In step, a receiver follows the chain and passes over bases' members.
//! Starting empty, or behind what the bucket keeps (a chain bundle names
//! one before it that is gone), it follows the newest complete base: its
//! members and the chain from its first member on, in sequence order, which
//! is the order they were uploaded in. Once it has the base's last member
//! it is in step again: every chain bundle from then on builds on one it
//! has, or on one the base covers.

use super::names::Kind;

/// A complete base: its first and last member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Base {
    pub first: u64,
    pub last: u64,
}

/// Whether the listed bundle `seq` of `kind` is taken by a receiver
/// following `base` (`None`: the chain).
pub fn takes(base: Option<Base>, seq: u64, kind: Kind) -> bool {
    match (base, kind) {
        (None, Kind::Chain) => true,
        (None, Kind::Member) => false,
        (Some(b), Kind::Member) => (b.first..=b.last).contains(&seq),
        (Some(b), Kind::Chain) => seq >= b.first,
    }
}

/// Whether a bundle of `kind` sealed after `prev` may be applied by a
/// receiver at `position` following `base`: the bundle before it is
/// applied, or (a chain bundle, while taking a base) the base covers it.
pub fn builds_on(base: Option<Base>, kind: Kind, prev: u64, position: u64) -> bool {
    prev <= position || (kind == Kind::Chain && base.is_some_and(|b| prev < b.first))
}

/// The base a receiver at `position` still follows: `None` once it has
/// the last member.
pub fn goes_on(base: Option<Base>, position: u64) -> Option<Base> {
    base.filter(|b| position < b.last)
}

/// Where a receiver not following a base starts.
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
/// folder with no base at all is followed along the chain); `behind` (a
/// chain bundle builds on one the bucket no longer has), from the newest
/// base past its position, if there is one.
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
    fn in_step_a_receiver_takes_the_chain_and_passes_over_members() {
        assert!(takes(None, 11, Kind::Chain));
        assert!(!takes(None, 11, Kind::Member));
        assert!(builds_on(None, Kind::Chain, 8, 8));
        assert!(!builds_on(None, Kind::Chain, 9, 8), "bundle 9 is missing");
    }

    #[test]
    fn following_a_base_takes_its_members_and_the_chain_from_its_first_on() {
        let b = Some(B);
        assert!(!takes(b, 9, Kind::Chain), "before the base: covered by it");
        assert!(takes(b, 11, Kind::Chain) && takes(b, 20, Kind::Chain));
        assert!(takes(b, 10, Kind::Member) && takes(b, 14, Kind::Member));
        assert!(!takes(b, 15, Kind::Member), "the next base's");
        assert!(!takes(b, 5, Kind::Member), "an older base's");
        // The chain's first bundle inside the base names one before it.
        assert!(builds_on(b, Kind::Chain, 7, 0));
        assert!(
            !builds_on(b, Kind::Chain, 11, 10),
            "chain bundle 11 is missing"
        );
        assert!(builds_on(b, Kind::Member, 0, 0), "the first member");
        assert!(!builds_on(b, Kind::Member, 12, 11), "member 12 is missing");
        assert_eq!(goes_on(b, 13), b);
        assert_eq!(goes_on(b, 14), None, "the last member taken");
        // In step again: the chain after the base builds on what it has.
        assert!(builds_on(None, Kind::Chain, 13, 14));
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
}
