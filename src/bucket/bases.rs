//! A sender's side of bases, pure: where each upload goes (the chain or
//! the base under way, and the bundle sealed before it there:
//! [`Cursor`]), when the next base is due ([`base_due`]), and what the
//! bucket may let go once a base is complete ([`prune_below`]).
//!
//! A base is a whole tree for the bucket (the bundles packed for it alone,
//! `Packed::only`), uploaded as members beside the chain; the last one
//! ends it. A receiver starting empty, or fallen behind what the bucket
//! keeps, takes the newest complete base with the chain from its first
//! member on ([`super::follow`]).

use std::time::Duration;

use super::seal::Belongs;

/// Where a sender's uploads to its folder stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The newest bundle of the chain sealed (0: none).
    pub chain: u64,
    /// The base being uploaded: its first member and its newest so far.
    pub base: Option<(u64, u64)>,
}

impl Cursor {
    /// Where bundle `seq` goes, and the bundle sealed before it there: a
    /// member of the base under way (or of a new one) when `member`,
    /// ending it when `ends`; else the chain.
    pub fn place(&self, seq: u64, member: bool, ends: bool) -> (Belongs, u64) {
        if !member {
            return (Belongs::Chain, self.chain);
        }
        match self.base {
            Some((first, prev)) => (Belongs::Base { first, last: ends }, prev),
            None => (
                Belongs::Base {
                    first: seq,
                    last: ends,
                },
                0,
            ),
        }
    }

    /// Bundle `seq` was sealed where `belongs` says.
    pub fn sealed(&mut self, seq: u64, belongs: Belongs) {
        match belongs {
            Belongs::Chain => self.chain = seq,
            Belongs::Base { last: true, .. } => self.base = None,
            Belongs::Base { first, last: false } => self.base = Some((first, seq)),
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
/// one and the chain. Never while one is under way.
pub fn base_due(
    newest: Option<Newest>,
    chain_bytes: u64,
    every: Duration,
    under_way: bool,
) -> bool {
    if under_way {
        return false;
    }
    match newest {
        None => true,
        Some(n) => n.age >= every || n.bytes.is_some_and(|b| chain_bytes > b.max(1)),
    }
}

/// With the complete bases beginning at `firsts` (any order), keeping the
/// newest `keep`: every bundle below the returned sequence may go (the
/// first member of the oldest base kept), with the ends of the bases that
/// begin below it; but never the chain's newest bundle, `chain`, so that
/// a receiver in the chain always finds one bundle past its position
/// naming the one before it, and so learns when it fell behind. `None`:
/// nothing goes yet.
pub fn prune_below(firsts: &[u64], keep: usize, chain: u64) -> Option<u64> {
    let mut sorted = firsts.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if keep == 0 || sorted.len() <= keep {
        return None;
    }
    let floor = sorted[sorted.len() - keep];
    Some(if chain > 0 { floor.min(chain) } else { floor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_go_to_the_base_under_way_and_the_chain_keeps_its_own_links() {
        let mut c = Cursor {
            chain: 9,
            base: None,
        };
        // A base begins with the first member; the chain goes on between.
        let first = c.place(10, true, false);
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
        c.sealed(10, first.0);
        let chain = c.place(11, false, false);
        assert_eq!(chain, (Belongs::Chain, 9), "the chain's link skips members");
        c.sealed(11, chain.0);
        let end = c.place(12, true, true);
        assert_eq!(
            end,
            (
                Belongs::Base {
                    first: 10,
                    last: true
                },
                10
            )
        );
        c.sealed(12, end.0);
        assert_eq!(
            c,
            Cursor {
                chain: 11,
                base: None
            }
        );
        // The next base is a new one.
        assert_eq!(
            c.place(13, true, true).0,
            Belongs::Base {
                first: 13,
                last: true
            }
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
        assert!(base_due(None, 0, day, false));
        assert!(!base_due(None, 0, day, true), "never two at once");
        assert!(!base_due(newest(60, Some(1000)), 1000, day, false));
        assert!(base_due(newest(86_400, Some(1000)), 0, day, false));
        assert!(base_due(newest(60, Some(1000)), 1001, day, false));
        assert!(
            !base_due(newest(60, None), u64::MAX, day, false),
            "size unknown: age alone"
        );
    }

    #[test]
    fn pruning_keeps_the_newest_bases_and_everything_from_the_oldest_kept() {
        assert_eq!(prune_below(&[], 2, 99), None);
        assert_eq!(prune_below(&[10, 50], 2, 99), None);
        assert_eq!(prune_below(&[90, 10, 50], 2, 99), Some(50));
        assert_eq!(prune_below(&[90, 10, 50], 1, 99), Some(90));
        assert_eq!(
            prune_below(&[10, 10, 50], 2, 99),
            None,
            "one base listed twice"
        );
        // The chain's newest bundle stays, older than the base kept or not.
        assert_eq!(prune_below(&[10, 50], 1, 40), Some(40));
        assert_eq!(prune_below(&[10, 50], 1, 0), Some(50), "no chain at all");
    }
}
