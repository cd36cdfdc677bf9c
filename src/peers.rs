//! What the sender knows of each receiver across restarts, and the pure
//! decision of what a receiver needs when it says `Welcome`.
//!
//! A receiver can only be brought up to date from the outbox while it lacks
//! nothing older than what left it. A receiver that is new (added to
//! `sender.receiver` later), rebuilt (its state wiped: a new instance), or
//! behind what left the outbox needs the whole tree: [`plan_welcome`] says
//! so, and `state_dir/receivers.json` remembers it until that whole
//! tree is acknowledged, so a restart in the middle starts it again; a
//! receiver back while one is under way in this process has it go on from
//! what was sent ([`TreeNeed::begun`]). One behind what it acknowledged
//! itself (restored from a backup) is sent again what the outbox holds
//! after what it applied ([`Plan::rewound`]). A receiver whose root was rolled
//! back (`shipper rollback`) says so instead, and gets its root compared
//! with the source and repaired, remembered there too until done; so are
//! the deletions a receiver missed when its backlog was dropped
//! ([`PeerRecord::backlog_dropped`]). [`plan_welcome`], what it is made
//! of ([`restored_from_backup`], [`gone_from_outbox`]) and that are pure;
//! [`Peers::load`] and [`Peers::save`] are the only I/O (blocking).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::proto::frame::Rolled;

/// One receiver as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Its state's instance id (hex), from its last `Welcome`.
    pub instance: String,
    /// It needs the whole tree and has not acknowledged all of it yet.
    #[serde(default)]
    pub whole_tree: bool,
    /// That whole tree is a base for a bucket's receivers catching up, not
    /// a repair every receiver there needs (see `sender.bucket_base_every`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base: bool,
    /// Its root was rolled back to this sequence (`shipper rollback`), and
    /// the source has not been compared with it and repaired since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<u64>,
    /// Paths deleted in bundles its backlog held when the outbox dropped
    /// it (`sender.outbox_max`): its whole tree only adds and updates, so
    /// the first run of that tree deletes these there (but those the
    /// source shipped again since), and they are kept here until it
    /// acknowledges that tree.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub missed_deletions: BTreeSet<String>,
    /// How many times its backlog was dropped: a whole tree whose first
    /// run read `missed_deletions` before the last drop settles neither
    /// the mark nor what that drop recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backlogs_dropped: u64,
    /// The last bundle of the last whole tree it acknowledged. Packed for
    /// it alone, that tree is in the ledger only once every receiver is
    /// done with what came before, and the outbox is emptied at a
    /// restart: restored from a backup taken before this, it needs the
    /// tree again unless the outbox still holds it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tree_through: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The most deletions kept for a receiver whose backlog was dropped
/// ([`PeerRecord::missed_deletions`], rewritten whole in `receivers.json`,
/// some 50 bytes a path): a receiver gone for good, still configured,
/// must not grow that file without end.
pub const MAX_MISSED_DELETIONS: usize = 250_000;

impl PeerRecord {
    /// Its backlog, holding the deletions `missed`, is dropped: it needs
    /// the whole tree, as a repair (every receiver behind it needs what
    /// was dropped), and those deletions with it, as many as fit
    /// [`MAX_MISSED_DELETIONS`]. Returns how many did not.
    pub fn backlog_dropped(&mut self, missed: BTreeSet<String>) -> usize {
        self.whole_tree = true;
        self.base = false;
        self.backlogs_dropped += 1;
        let mut unrecorded = 0;
        for path in missed {
            if self.missed_deletions.len() < MAX_MISSED_DELETIONS {
                self.missed_deletions.insert(path);
            } else if !self.missed_deletions.contains(&path) {
                unrecorded += 1;
            }
        }
        unrecorded
    }
}

/// Every receiver by its configured `host:port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    pub receivers: BTreeMap<String, PeerRecord>,
}

impl Peers {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("receivers.json")
    }

    pub fn load(state_dir: &Path) -> std::io::Result<Self> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: corrupt: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Write durably: a whole-tree flag lost in a crash would leave a
    /// receiver without files forever.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        durable::write_atomic(&Self::path(state_dir), &json)
    }
}

/// What the sender knows of one receiver when its `Welcome` arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// Highest sequence written to it by this process (0: none).
    pub sent: u64,
    /// The outbox is done with it up to this sequence: acknowledged,
    /// refused for good, or dropped (0: none).
    pub acked: u64,
    /// What it said it applied, to this process: its acknowledgements
    /// since its last `Welcome`, or what that said (0: none).
    pub applied: u64,
    /// Bundles up to this sequence may be gone from the outbox (every
    /// receiver was done with them, or they are the last whole tree it
    /// acknowledged and not there any more): a receiver behind it cannot
    /// be sent them again.
    pub everyone: u64,
    /// Its instance as last recorded, if it was ever seen.
    pub instance: Option<[u8; 16]>,
    /// A whole tree for it was begun and not finished.
    pub whole_tree_pending: bool,
    /// That whole tree is a base (a bucket's).
    pub pending_base: bool,
    /// The base begun for it is not there as it was uploaded (a bucket
    /// emptied or altered while away): what was sent of it is lost.
    pub base_lost: bool,
    /// Its backlog was dropped while it was away (`sender.outbox_max`):
    /// what was sent of a whole tree does not cover what it missed.
    pub backlog_dropped: bool,
}

impl Known {
    /// Whether a receiver saying `instance` has state other than the one
    /// last recorded (rebuilt or wiped); never for one not seen before.
    fn new_state(&self, instance: [u8; 16]) -> bool {
        self.instance.is_some_and(|i| i != instance)
    }
}

/// Why a receiver needs the whole tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNeed {
    /// Said in the log and in its status.
    pub reason: String,
    /// As a base for a bucket's receivers catching up, not a repair.
    pub base: bool,
    /// Only because one begun for it earlier is not finished: one under
    /// way in this process goes on from what was sent, rather than begin
    /// again from the first file.
    pub begun: bool,
}

impl TreeNeed {
    /// Its backlog was dropped while it was away: a whole tree from the
    /// first file, whatever was sent of one before.
    pub fn backlog_dropped() -> Self {
        let reason = "its backlog was dropped while it was away (sender.outbox_max)";
        Self::new(reason.to_owned(), false)
    }

    /// Needed afresh (not [`TreeNeed::begun`]), for `reason`.
    pub fn new(reason: String, base: bool) -> Self {
        Self {
            reason,
            base,
            begun: false,
        }
    }
}

/// What to do with a receiver that just said `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Bundles up to here it has applied (an acknowledgement was lost):
    /// they count as acknowledged.
    pub release_upto: u64,
    /// Bundles up to here must not be sent to it: it has applied these
    /// numbers. One that was never sent to it (the sender's numbering went
    /// back, [`must_skip`]) would be acknowledged without being applied.
    pub skip_upto: u64,
    /// Why it needs the whole tree, if it does.
    pub whole_tree: Option<TreeNeed>,
    /// Its root was rolled back to this sequence and released: the source
    /// is compared with it and the difference shipped (as `shipper verify
    /// --repair` would, deleting what the rollback brought back that the
    /// source lacks) instead of a whole tree for being behind.
    pub compare: Option<u64>,
    /// Its root was rolled back to this sequence and the receiver holds
    /// this sender's bundles: none is sent until it is released.
    pub held: Option<u64>,
    /// It applied less than it said it had (its state restored from a
    /// backup of itself): what the outbox still holds after `skip_upto`
    /// is sent to it again. Only if some of it had left the outbox does it
    /// need the whole tree too (as any receiver behind `everyone`).
    pub rewound: bool,
}

/// Decide what a receiver that applied `last_applied` of this sender, with
/// state instance `instance`, needs; `rolled`: it said its root was rolled
/// back.
pub fn plan_welcome(
    (last_applied, instance, rolled): (u64, [u8; 16], Option<Rolled>),
    k: Known,
) -> Plan {
    let release_upto = last_applied.min(k.sent.max(k.acked));
    let mut whole_tree = None;
    if k.whole_tree_pending {
        whole_tree = Some(if k.base_lost {
            TreeNeed::new(
                "the base begun for it is not there as uploaded (emptied, or altered)".to_owned(),
                k.pending_base,
            )
        } else {
            TreeNeed {
                reason: "a whole tree begun for it earlier was not finished".to_owned(),
                base: k.pending_base,
                begun: true,
            }
        });
    }
    if k.backlog_dropped {
        whole_tree = Some(TreeNeed::backlog_dropped());
    }
    let new_state = k.new_state(instance);
    if new_state {
        whole_tree = Some(TreeNeed::new(
            "its state is new (a rebuilt or wiped receiver)".to_owned(),
            false,
        ));
    } else if last_applied < k.everyone && rolled.is_none() {
        whole_tree = Some(TreeNeed::new(
            format!(
                "it has applied up to sequence {last_applied}, but bundles up to {} are no longer in the outbox (a new, rebuilt or restored receiver)",
                k.everyone
            ),
            false,
        ));
    }
    let rewound = restored_from_backup((last_applied, instance, rolled), &k);
    // A tree begun for it goes on from what was sent, which it lost: it is
    // begun again. Without one, what it lost and the outbox still holds is
    // sent again, deletions and all (`last_applied < everyone` asked for a
    // tree above if some of it had left).
    if rewound && whole_tree.as_ref().is_some_and(|n| n.begun) {
        whole_tree = Some(TreeNeed::new(
            format!(
                "it has applied up to sequence {last_applied}, less than the {} it said it had (its state restored from a backup?), and a whole tree begun for it is lost with it",
                k.applied
            ),
            false,
        ));
    }
    Plan {
        release_upto,
        skip_upto: last_applied,
        whole_tree,
        compare: rolled.filter(|r| !r.held).map(|r| r.to),
        held: rolled.filter(|r| r.held).map(|r| r.to),
        rewound,
    }
}

/// Up to what sequence bundles may be gone from the outbox for a receiver
/// ([`Known::everyone`]): those that `left` it (in the ledger, or on their
/// way there), and the last whole tree it acknowledged
/// ([`PeerRecord::tree_through`]) unless the outbox holds that tree's last
/// bundle still (`held`; a restart empties it).
pub fn gone_from_outbox(left: u64, (tree_through, held): (u64, bool)) -> u64 {
    match held {
        true => left,
        false => left.max(tree_through),
    }
}

/// Whether a receiver that applied `last_applied` with state `instance`
/// (its root rolled back: `rolled`) applied less than it said before,
/// with the same state: restored from a backup of itself. Its position in
/// the outbox goes back to what it applied ([`Plan::rewound`]). Not so for
/// a rolled-back root (compared instead) or a new state (a whole tree).
pub fn restored_from_backup(
    (last_applied, instance, rolled): (u64, [u8; 16], Option<Rolled>),
    k: &Known,
) -> bool {
    !k.new_state(instance) && last_applied < k.applied && rolled.is_none()
}

/// Whether bundle `seq` must not go to a receiver that said it applied up
/// to `skip_upto`: its number was used before (a sender state restored
/// from an older copy), so the receiver would acknowledge it unapplied and
/// must get the whole tree instead.
pub fn must_skip(seq: u64, skip_upto: u64) -> bool {
    seq <= skip_upto
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 16] = [1; 16];
    const B: [u8; 16] = [2; 16];

    fn known() -> Known {
        Known {
            sent: 0,
            acked: 0,
            applied: 0,
            everyone: 0,
            instance: Some(A),
            whole_tree_pending: false,
            pending_base: false,
            base_lost: false,
            backlog_dropped: false,
        }
    }

    #[test]
    fn a_receiver_in_step_needs_nothing() {
        let p = plan_welcome(
            (10, A, None),
            Known {
                sent: 12,
                acked: 10,
                everyone: 10,
                ..known()
            },
        );
        assert_eq!(p.release_upto, 10);
        assert_eq!(p.whole_tree, None);
    }

    #[test]
    fn a_lost_acknowledgement_releases_only_what_was_sent() {
        let p = plan_welcome(
            (12, A, None),
            Known {
                sent: 12,
                acked: 10,
                everyone: 10,
                ..known()
            },
        );
        assert_eq!((p.release_upto, p.whole_tree), (12, None));
    }

    #[test]
    fn a_new_receiver_behind_what_left_the_outbox_needs_the_whole_tree() {
        let p = plan_welcome(
            (0, A, None),
            Known {
                everyone: 50,
                instance: None,
                ..known()
            },
        );
        assert!(
            p.whole_tree
                .unwrap()
                .reason
                .contains("no longer in the outbox")
        );
        assert_eq!(p.release_upto, 0);
    }

    #[test]
    fn a_rebuilt_receiver_is_known_by_its_new_instance() {
        let p = plan_welcome(
            (0, B, None),
            Known {
                everyone: 0,
                ..known()
            },
        );
        assert!(p.whole_tree.unwrap().reason.contains("state is new"));
    }

    #[test]
    fn a_receiver_ahead_of_a_restored_sender_is_never_released_unsent() {
        // The sender's numbering restarted at 50; the receiver applied 100.
        let p = plan_welcome(
            (100, A, None),
            Known {
                sent: 0,
                acked: 0,
                everyone: 49,
                ..known()
            },
        );
        assert_eq!(p.release_upto, 0, "nothing unsent counts as acknowledged");
        assert_eq!(p.skip_upto, 100);
        // Bundles numbered 50.. are never sent to it.
        assert!(must_skip(50, p.skip_upto) && must_skip(100, p.skip_upto));
        assert!(!must_skip(101, p.skip_upto));
    }

    #[test]
    fn after_a_sender_restart_a_receiver_in_step_needs_nothing() {
        let p = plan_welcome(
            (40, A, None),
            Known {
                everyone: 40,
                ..known()
            },
        );
        assert_eq!(p.whole_tree, None);
        assert_eq!(p.skip_upto, 40);
    }

    #[test]
    fn an_unfinished_whole_tree_goes_on_or_is_begun_again() {
        // What a receiver in step at 40, with instance A, needs.
        let need = |k: Known| plan_welcome((40, A, None), k).whole_tree;
        let pending = Known {
            everyone: 40,
            whole_tree_pending: true,
            pending_base: true,
            ..known()
        };
        let n = need(pending).unwrap();
        assert!(n.begun && n.base, "{n:?}");
        // A base lost in the bucket is begun again from its first file.
        let lost = |k: Known| Known {
            base_lost: true,
            ..k
        };
        let n = need(lost(pending)).unwrap();
        assert!(!n.begun && n.base, "{n:?}");
        assert!(n.reason.contains("not there as uploaded"));
        // So is one whose backlog was dropped, as a repair.
        let dropped = |k: Known| Known {
            backlog_dropped: true,
            ..k
        };
        let n = need(dropped(pending)).unwrap();
        assert!(!n.begun && !n.base, "{n:?}");
        assert!(n.reason.contains("backlog was dropped"));
        // Dropped after its mark was read: the same.
        assert_eq!(need(dropped(known())), Some(TreeNeed::backlog_dropped()));
        // So is one for a receiver rebuilt meanwhile, and as a repair.
        let p = plan_welcome((40, B, None), pending);
        assert_eq!(
            p.whole_tree.map(|n| (n.begun, n.base)),
            Some((false, false))
        );
        // Lost while none was pending: nothing now (the next when due).
        assert_eq!(need(lost(known())), None);
    }

    #[test]
    fn a_rolled_back_receiver_is_held_then_compared_never_sent_the_whole_tree() {
        let behind = Known {
            acked: 40,
            everyone: 40,
            ..known()
        };
        let rolled = |held| Some(Rolled { to: 30, held });
        let p = plan_welcome((30, A, rolled(true)), behind);
        assert_eq!((p.whole_tree, p.compare, p.held), (None, None, Some(30)));
        let p = plan_welcome((30, A, rolled(false)), behind);
        assert_eq!((p.whole_tree, p.compare, p.held), (None, Some(30), None));
        assert_eq!(p.skip_upto, 30);
        // Behind for another reason too: that reason still holds.
        let p = plan_welcome((30, B, rolled(false)), known());
        assert!(p.whole_tree.unwrap().reason.contains("state is new"));
    }

    /// A receiver restored from a backup of itself (same instance) says
    /// it applied less than it acknowledged. With another receiver behind
    /// it, nothing had left the outbox, so nothing asked for a whole tree,
    /// and the bundles in between were never sent again: it missed them
    /// for good. They are sent again now; a whole tree is needed only for
    /// what left the outbox.
    #[test]
    fn a_receiver_that_applied_less_than_it_acknowledged_is_rewound() {
        let restored = Known {
            sent: 30,
            acked: 30,
            applied: 30,
            everyone: 10,
            ..known()
        };
        let p = plan_welcome((20, A, None), restored);
        assert!(p.rewound);
        assert_eq!(p.skip_upto, 20);
        assert_eq!(p.whole_tree, None, "the outbox holds all after 20");
        // Some of what it lost left the outbox: the whole tree too.
        let gone = Known {
            everyone: 25,
            ..restored
        };
        let p = plan_welcome((20, A, None), gone);
        assert!(p.rewound && p.whole_tree.is_some_and(|n| !n.begun && !n.base));
        // Done with more than it applied only by refusals or a drop: no.
        let refused = Known {
            applied: 20,
            ..restored
        };
        assert!(!plan_welcome((20, A, None), refused).rewound);
        // A rolled-back root is compared instead; a new one is new.
        let rolled = Some(Rolled {
            to: 20,
            held: false,
        });
        assert!(!plan_welcome((20, A, rolled), restored).rewound);
        assert!(!plan_welcome((20, B, None), restored).rewound);
        // A tree begun for it is begun again: what was sent of it is lost.
        let mid_tree = Known {
            whole_tree_pending: true,
            ..restored
        };
        let p = plan_welcome((20, A, None), mid_tree);
        assert!(p.rewound && p.whole_tree.is_some_and(|n| !n.begun));
    }

    /// A whole tree for one receiver is done once it acknowledges it,
    /// though its bundles may wait in the outbox behind another's, and a
    /// restart empties the outbox before they reach the ledger: restored
    /// from a backup taken before the tree's end, it needs the tree again
    /// unless the outbox still holds it.
    #[test]
    fn a_tree_acknowledged_but_gone_from_the_outbox_is_needed_again_by_a_restored_receiver() {
        assert_eq!(gone_from_outbox(10, (0, false)), 10);
        assert_eq!(gone_from_outbox(10, (25, true)), 10, "held: sent again");
        assert_eq!(gone_from_outbox(10, (25, false)), 25);
        assert_eq!(gone_from_outbox(30, (25, false)), 30);
        // After a restart, the receiver backed up at 22 mid-tree.
        let after_restart = Known {
            applied: 0,
            everyone: gone_from_outbox(10, (25, false)),
            ..known()
        };
        let p = plan_welcome((22, A, None), after_restart);
        assert!(!p.rewound, "this process never heard it say more");
        assert!(p.whole_tree.is_some_and(|n| !n.begun));
        // The same in the process that holds the tree still: sent again.
        let held = Known {
            applied: 25,
            everyone: gone_from_outbox(10, (25, true)),
            ..known()
        };
        let p = plan_welcome((22, A, None), held);
        assert!(p.rewound && p.whole_tree.is_none());
    }

    #[test]
    fn a_dropped_backlog_records_its_deletions_as_far_as_they_fit() {
        let mut r = PeerRecord {
            base: true,
            ..PeerRecord::default()
        };
        let paths = |from: usize, to: usize| (from..to).map(|i| format!("p/{i}")).collect();
        assert_eq!(r.backlog_dropped(paths(0, 10)), 0);
        assert!(r.whole_tree && !r.base, "a repair, not a base");
        assert_eq!((r.missed_deletions.len(), r.backlogs_dropped), (10, 1));
        // Full: those already there cost nothing, the rest are counted.
        assert_eq!(r.backlog_dropped(paths(0, MAX_MISSED_DELETIONS)), 0);
        let over = paths(5, MAX_MISSED_DELETIONS + 7);
        assert_eq!(r.backlog_dropped(over), 7);
        assert_eq!(r.missed_deletions.len(), MAX_MISSED_DELETIONS);
        assert_eq!(r.backlogs_dropped, 3);
    }
}
