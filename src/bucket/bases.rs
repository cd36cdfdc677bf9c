//! A sender's side of bases, pure: where each upload goes (the chain or
//! the base under way, and the bundle sealed before it there:
//! [`Cursor`]), when the next base is due ([`base_due`]), and what the
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

    /// A bundle (of base `number`, if it has one) was sealed as `sealed`.
    pub fn sealed(&mut self, sealed: Sealed, number: Option<u64>) {
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

    #[test]
    fn members_go_to_their_base_and_the_chain_keeps_its_own_links() {
        let mut c = Cursor {
            chain: 9,
            base: None,
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
