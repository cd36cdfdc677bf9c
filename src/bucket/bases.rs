//! A sender's side of bases, pure: where each upload goes (the chain or
//! the base under way, and the bundle sealed before it there:
//! [`Cursor`]), what a reconnect finds of the base under way
//! ([`Cursor::take_in`]), when the next base is due ([`base_due`]), and what the
//! bucket may let go once a base is complete ([`prune_below`]).
//!
//! A base is a whole tree for the bucket packed as one (its bundles carry
//! its number), uploaded as members beside the chain; once its last member
//! is up, its end makes it complete. A receiver starting empty, or fallen
//! behind what the bucket keeps, takes the newest complete base with the
//! chain from its first member on ([`super::follow`]).

use std::time::Duration;

use super::seal::{Belongs, Sealed};

/// The base being uploaded: its number (as packed), its first member and
/// its newest member so far, as sealed (its end copies it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderWay {
    pub number: u64,
    pub first: u64,
    pub last: Sealed,
}

/// Where a sender's uploads to its folder stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The newest bundle of the chain sealed (0: none).
    pub chain: u64,
    /// The base being uploaded.
    pub base: Option<UnderWay>,
    /// A base's first member being uploaded, `(number, seq)`, until its
    /// seal is known to be up: if the seal went up but its reply was lost,
    /// the reconnect finds the member in the bucket and the base goes on
    /// from it ([`Cursor::take_in`]).
    pub beginning: Option<(u64, u64)>,
}

/// What a reconnect found of the base under way ([`Cursor::take_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseFound {
    /// No base is under way, or it goes on from its newest member there.
    GoesOn,
    /// The base under way is not in the bucket as uploaded: give it up.
    Lost,
}

impl Cursor {
    /// Where bundle `seq` goes, and the bundle sealed before it there: a
    /// member of base `number` when it has one (the base under way if it
    /// is that one, else a new base beginning with it), else the chain.
    pub fn place(&self, seq: u64, number: Option<u64>) -> (Belongs, u64) {
        let Some(number) = number else {
            return (Belongs::Chain, self.chain);
        };
        match &self.base {
            Some(b) if b.number == number => (
                Belongs::Base {
                    first: b.first,
                    last: false,
                },
                b.last.seq,
            ),
            _ => (
                Belongs::Base {
                    first: seq,
                    last: false,
                },
                0,
            ),
        }
    }

    /// Place bundle `seq` (of base `number`, if it has one) as
    /// [`Cursor::place`] does, for its upload now: a base's first member is
    /// noted as beginning, and any other base still under way is given up
    /// (`place` begins a base only when its number is not that one's: it
    /// was packed again under a new number).
    pub fn upload(&mut self, seq: u64, number: Option<u64>) -> (Belongs, u64) {
        let (belongs, prev) = self.place(seq, number);
        self.beginning = match (number, belongs) {
            (Some(number), Belongs::Base { first, .. }) if first == seq => Some((number, seq)),
            _ => None,
        };
        if self.beginning.is_some() {
            self.base = None;
        }
        (belongs, prev)
    }

    /// No base is under way any more, nor beginning.
    pub fn give_up_base(&mut self) {
        (self.base, self.beginning) = (None, None);
    }

    /// Take in `member`, the newest member sealed in the bucket, at a
    /// connect: the base under way goes on from it if it is that base's;
    /// a base whose first member was being uploaded (its seal went up,
    /// the reply was lost) goes on from that member if it is the one; any
    /// other base under way is lost.
    pub fn take_in(&mut self, member: Option<&Sealed>) -> BaseFound {
        let beginning = self.beginning.take();
        let first_of = |m: &Sealed| match m.belongs {
            Belongs::Base { first, .. } => Some(first),
            Belongs::Chain => None,
        };
        match (&mut self.base, beginning, member) {
            (Some(base), _, Some(m)) if first_of(m) == Some(base.first) => {
                base.last = m.clone();
                BaseFound::GoesOn
            }
            (Some(_), _, _) => BaseFound::Lost,
            (None, Some((number, seq)), Some(m)) if m.seq == seq && first_of(m) == Some(seq) => {
                self.base = Some(UnderWay {
                    number,
                    first: seq,
                    last: m.clone(),
                });
                BaseFound::GoesOn
            }
            (None, _, _) => BaseFound::GoesOn,
        }
    }

    /// A bundle (of base `number`, if it has one) was sealed as `sealed`.
    pub fn sealed(&mut self, sealed: Sealed, number: Option<u64>) {
        self.beginning = None;
        match (sealed.belongs, number) {
            (Belongs::Base { first, .. }, Some(number)) => {
                self.base = Some(UnderWay {
                    number,
                    first,
                    last: sealed,
                });
            }
            _ => self.chain = sealed.seq,
        }
    }
}

/// What the sender knows of its newest complete base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Newest {
    /// How long ago its end was written.
    pub age: Duration,
    /// Its bytes, when this process uploaded it (`None` after a restart:
    /// then only its age counts).
    pub bytes: Option<u64>,
}

/// Whether a new base is due: there is none, the newest is `every` old,
/// or the chain uploaded since it (`chain_bytes`) outweighs it, so that a
/// receiver catching up downloads less from a new base than from the old
/// one and the chain. Never while one is `under_way`, nor when nothing
/// went up on the chain since the newest (`changed`: a base of the same
/// tree would only take room).
pub fn base_due(
    newest: Option<Newest>,
    (chain_bytes, changed): (u64, bool),
    every: Duration,
    under_way: bool,
) -> bool {
    if under_way {
        return false;
    }
    match newest {
        None => true,
        Some(_) if !changed => false,
        Some(n) => n.age >= every || n.bytes.is_some_and(|b| chain_bytes > b.max(1)),
    }
}

/// With the complete bases beginning at `firsts` (any order), keeping the
/// newest `keep`: every bundle below the returned sequence may go (the
/// first member of the oldest base kept), with the ends of the bases that
/// begin below it; the caller keeps the chain's newest bundle whatever its
/// number, so that a receiver in the chain always finds one bundle past
/// its position naming the one before it. `None`: nothing goes yet.
pub fn prune_below(firsts: &[u64], keep: usize) -> Option<u64> {
    let mut sorted = firsts.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if keep == 0 || sorted.len() <= keep {
        return None;
    }
    Some(sorted[sorted.len() - keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bundle `seq`, sealed after `prev` where `belongs` says.
    fn sealed((seq, prev): (u64, u64), belongs: Belongs) -> Sealed {
        Sealed {
            fingerprint: crate::tls::Fingerprint::of(b"sender"),
            sender: "cms".into(),
            seq,
            prev,
            size: 1,
            hash: String::new(),
            belongs,
            kept_from: 0,
        }
    }

    /// A base's first member whose seal went up though its reply was
    /// lost (the server gone meanwhile): the reconnect finds it newest in
    /// the bucket, and the base goes on from it. Before, the base began
    /// again at the next member, without the first member's files, and its
    /// end still made it complete: a receiver started empty from it never
    /// had them.
    #[test]
    fn a_first_member_sealed_though_its_reply_was_lost_begins_the_base() {
        let first = Belongs::Base {
            first: 6,
            last: false,
        };
        let mut c = Cursor {
            chain: 5,
            ..Cursor::default()
        };
        assert_eq!(c.place(6, Some(2)), (first, 0));
        assert_eq!(c.upload(6, Some(2)), (first, 0));
        assert_eq!(c.beginning, Some((2, 6)));
        let m6 = sealed((6, 0), first);
        assert_eq!(c.take_in(Some(&m6)), BaseFound::GoesOn);
        assert_eq!(
            c.base,
            Some(UnderWay {
                number: 2,
                first: 6,
                last: m6.clone(),
            })
        );
        assert_eq!(
            c.place(7, Some(2)),
            (first, 6),
            "the next member follows it"
        );
        // Its seal did not go up (the newest member there is an older
        // base's): it is uploaded again, as the first of its base.
        let mut c = Cursor {
            chain: 5,
            ..Cursor::default()
        };
        c.upload(6, Some(2));
        let older = member((4, 3), 3, true);
        assert_eq!(c.take_in(Some(&older)), BaseFound::GoesOn);
        assert_eq!((c.base.clone(), c.beginning), (None, None));
        assert_eq!(c.upload(6, Some(2)), (first, 0));
        assert_eq!(c.take_in(None), BaseFound::GoesOn, "an empty bucket");
        assert_eq!((c.base.clone(), c.beginning), (None, None));
        // Only a base's first member begins one, until it is sealed.
        c.upload(6, None);
        assert_eq!(c.beginning, None);
        c.upload(6, Some(2));
        c.sealed(m6, Some(2));
        assert_eq!(c.beginning, None);
        c.upload(7, Some(2));
        assert_eq!(c.beginning, None, "not a first member");
        c.upload(8, Some(3));
        c.give_up_base();
        assert_eq!((c.base, c.beginning), (None, None));
    }

    /// Bundle `seq`, sealed after `prev` as a member of the base from `first`.
    fn member((seq, prev): (u64, u64), first: u64, last: bool) -> Sealed {
        sealed((seq, prev), Belongs::Base { first, last })
    }

    /// Base 2 under way from member 6, sealed up to `last`, after chain 5.
    fn base_2_from_6(last: u64) -> Cursor {
        let of_6 = Belongs::Base {
            first: 6,
            last: false,
        };
        let prev = if last == 6 { 0 } else { last - 1 };
        Cursor {
            chain: 5,
            base: Some(UnderWay {
                number: 2,
                first: 6,
                last: sealed((last, prev), of_6),
            }),
            beginning: None,
        }
    }

    /// A base given up while under way (packed again under a new number)
    /// leaves no base under way once the new one's first member uploads,
    /// so that member, sealed though its reply was lost, begins the new
    /// base at the reconnect instead of losing it as not the old one's.
    #[test]
    fn a_new_bases_first_member_replaces_a_base_given_up() {
        let mut c = base_2_from_6(7);
        let of_20 = Belongs::Base {
            first: 20,
            last: false,
        };
        assert_eq!(c.place(20, Some(3)), (of_20, 0));
        assert_eq!(c.upload(20, Some(3)), (of_20, 0));
        assert_eq!(c.base, None);
        let m20 = sealed((20, 0), of_20);
        assert_eq!(c.take_in(Some(&m20)), BaseFound::GoesOn);
        assert_eq!(c.base.as_ref().map(|b| (b.number, b.first)), Some((3, 20)));
        assert_eq!(c.place(21, Some(3)), (of_20, 20));
    }

    /// At a connect, a base under way goes on from its newest member in
    /// the bucket, and is lost when that is another base's, or none.
    #[test]
    fn a_base_under_way_goes_on_from_its_member_there_or_is_lost() {
        let under_way = base_2_from_6(6);
        let mut c = under_way.clone();
        let m8 = member((8, 7), 6, false);
        assert_eq!(c.take_in(Some(&m8)), BaseFound::GoesOn);
        assert_eq!(c.base.as_ref().map(|b| b.last.seq), Some(8));
        let other = member((4, 3), 3, false);
        for found in [Some(&other), None] {
            let mut c = under_way.clone();
            assert_eq!(c.take_in(found), BaseFound::Lost);
        }
    }

    #[test]
    fn members_go_to_their_base_and_the_chain_keeps_its_own_links() {
        let mut c = Cursor {
            chain: 9,
            ..Cursor::default()
        };
        // Base 1 begins with its first member; the chain goes on between.
        let first = c.place(10, Some(1));
        assert_eq!(
            first,
            (
                Belongs::Base {
                    first: 10,
                    last: false
                },
                0
            )
        );
        c.sealed(sealed((10, first.1), first.0), Some(1));
        let chain = c.place(11, None);
        assert_eq!(chain, (Belongs::Chain, 9), "the chain's link skips members");
        c.sealed(sealed((11, chain.1), chain.0), None);
        let second = c.place(12, Some(1));
        assert_eq!(
            second,
            (
                Belongs::Base {
                    first: 10,
                    last: false
                },
                10
            )
        );
        c.sealed(sealed((12, second.1), second.0), Some(1));
        assert_eq!(c.chain, 11);
        // A member of another base (packed again from its start, or the
        // next one) begins a base of its own.
        assert_eq!(
            c.place(13, Some(2)),
            (
                Belongs::Base {
                    first: 13,
                    last: false
                },
                0
            )
        );
    }

    #[test]
    fn a_base_is_due_when_none_is_there_when_old_or_when_the_chain_outweighs_it() {
        let day = Duration::from_secs(86_400);
        let newest = |age, bytes| {
            Some(Newest {
                age: Duration::from_secs(age),
                bytes,
            })
        };
        assert!(base_due(None, (0, false), day, false));
        assert!(!base_due(None, (0, true), day, true), "never two at once");
        assert!(!base_due(newest(60, Some(1000)), (1000, true), day, false));
        assert!(base_due(newest(86_400, Some(1000)), (0, true), day, false));
        assert!(base_due(newest(60, Some(1000)), (1001, true), day, false));
        assert!(
            !base_due(newest(60, None), (u64::MAX, true), day, false),
            "size unknown: age alone"
        );
        assert!(
            !base_due(newest(86_400 * 9, Some(1)), (0, false), day, false),
            "nothing changed since the newest base"
        );
    }

    #[test]
    fn pruning_keeps_the_newest_bases_and_everything_from_the_oldest_kept() {
        assert_eq!(prune_below(&[], 2), None);
        assert_eq!(prune_below(&[10, 50], 2), None);
        assert_eq!(prune_below(&[90, 10, 50], 2), Some(50));
        assert_eq!(prune_below(&[90, 10, 50], 1), Some(90));
        assert_eq!(prune_below(&[10, 10, 50], 2), None, "one base listed twice");
    }
}
