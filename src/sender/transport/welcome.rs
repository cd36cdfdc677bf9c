//! Taking in a receiver's `Welcome`: its limits, the sequence floor, what
//! it already applied (done with), whether it needs the whole tree or its
//! root compared after a rollback (recorded durably first), and, while a
//! rollback holds this sender there, a session kept open with no bundle
//! sent.

use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::connect::Welcome;
use super::exchange::{describe, next_bundle};
use super::handoff::{TransportEvent, record_peer};
use super::{Link, Lost};
use crate::peers::{
    Known, TreeNeed, gone_from_outbox, must_skip, plan_welcome, restored_from_backup,
};
use crate::proto::Connection;
use crate::proto::connection::Stream;
use crate::sender::outbox::{Outbox, Presence};
use crate::status::unix_now;

impl Link {
    /// Take in the receiver's `Welcome`: its limits for the packer, the
    /// sequence floor, whether it needs the whole tree or a compare
    /// (recorded before anything relies on it), and what it already has is
    /// done with. Returns the sequence a rollback holds it at, if it does.
    pub(super) async fn welcome(&self, s: Welcome) -> Option<u64> {
        self.accepts.lock().unwrap_or_else(|e| e.into_inner())[self.index] = Some(s.accepts);
        // connect() turned away a last_applied with no successor.
        self.seq_floor
            .fetch_max(s.last_applied.saturating_add(1), Ordering::SeqCst);
        let mut known = Known {
            base_lost: s.base_lost,
            backlog_dropped: self.outbox.take_dropped(self.index),
            ..self.known()
        };
        let said = (s.last_applied, s.instance, s.rolled_back);
        if restored_from_backup(said, &known) {
            // Rewound before reading what left the outbox: from here on,
            // none of what it lost can leave, so what is read is final.
            self.outbox.rewind(self.index, s.last_applied);
            known.everyone = self.gone_from_outbox_now();
        }
        let plan = plan_welcome(said, known);
        // Any bundle it has numbers for but was never sent is covered by
        // the whole tree, recorded before those bundles can be let go.
        let reused = self.outbox.take_stale(self.index)
            || self
                .outbox
                .next_for(self.index)
                .is_some_and(|b| must_skip(b.seq, plan.skip_upto) && b.seq > plan.release_upto);
        // Bundles it was never sent are let go below: no whole tree
        // under way covers them.
        let whole_tree = plan.whole_tree.clone().filter(|n| !(reused && n.begun)).or_else(|| {
            reused.then(|| TreeNeed::new(format!("it has applied up to sequence {}, numbers this sender used again (its state restored from an older copy?)", s.last_applied), false))
        });
        let tree_too = whole_tree.is_some();
        self.record_needs(s.instance, whole_tree, plan.compare)
            .await;
        if plan.rewound {
            let then = match tree_too {
                true => "then it gets the whole tree",
                false => "the outbox holds all of it",
            };
            warn!(peer = %self.receiver, last_applied = s.last_applied, "this receiver applied less than it acknowledged (its state restored from a backup?): what it acknowledged after that is sent again; {then}");
        }
        // From now on it has applied what it says: rolled back (its root
        // is compared with the source instead) or new (it gets the whole
        // tree), what was sent after stays done with, but a later Welcome
        // must not look restored.
        self.outbox.said_applied(self.index, s.last_applied);
        // What it applied before a lost acknowledgement counts as
        // acknowledged (it may end its whole tree: `release_upto`, not
        // `skip_upto`, which may cover numbers it was never sent), and
        // what it has numbers for is never sent to it: both are done with
        // up to what it applied (skip_upto covers release_upto; bundles in
        // between are covered by the whole tree recorded above).
        self.acknowledged(plan.release_upto, plan.skip_upto).await;
        // Held by a rollback, it takes no bundle: no whole tree is packed
        // for it meanwhile (it would never be acknowledged).
        let presence = match plan.held {
            Some(_) => Presence::Held,
            None => Presence::Taking,
        };
        self.outbox.set_presence(self.index, presence);
        if self.outbox.take_dropped(self.index) {
            // Dropped after it was read above, while it still counted as
            // away; from now on it cannot be.
            self.record_needs(s.instance, Some(TreeNeed::backlog_dropped()), None)
                .await;
        }
        let _ = self.events.send(TransportEvent::Connected);
        self.status.send_modify(|st| {
            st.connected = true;
            st.since = Some(unix_now());
            if let Some(to) = plan.held {
                st.last_error = Some(held_reason(to));
                st.last_error_at = Some(unix_now());
            }
        });
        if let Some(to) = plan.held {
            warn!(peer = %self.receiver, to, "{}", held_reason(to));
        }
        plan.held
    }

    /// What the sender knows of its receiver as a `Welcome` arrives.
    fn known(&self) -> Known {
        let (sent, acked, applied) = self.outbox.position(self.index);
        // Before the peers lock below: it takes that lock too.
        let everyone = self.gone_from_outbox_now();
        let p = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let rec = p.receivers.get(&self.receiver);
        Known {
            sent,
            acked,
            // A bucket says nothing itself: its position is what a listing
            // found, and what it lost is judged by its own checks
            // (`base_lost`), not against what was uploaded.
            applied: if self.bucket.is_some() { 0 } else { applied },
            everyone,
            instance: rec.and_then(|r| {
                data_encoding::HEXLOWER
                    .decode(r.instance.as_bytes())
                    .ok()
                    .and_then(|b| b.try_into().ok())
            }),
            whole_tree_pending: rec.is_some_and(|r| r.whole_tree),
            pending_base: rec.is_some_and(|r| r.base),
            base_lost: false,
            backlog_dropped: false,
        }
    }

    /// Up to what sequence bundles may be gone from the outbox for this
    /// receiver ([`Known::everyone`]): what the ledger recorded as left,
    /// what left since and is on its way there, and the last whole tree
    /// it acknowledged unless the outbox still holds it (a restart
    /// emptied it).
    fn gone_from_outbox_now(&self) -> u64 {
        // One lock at a time.
        let recorded = self
            .ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acked_seq();
        let left = recorded.max(self.outbox.left());
        let p = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let tree = p
            .receivers
            .get(&self.receiver)
            .map_or(0, |r| r.tree_through);
        drop(p);
        gone_from_outbox(left, (tree, self.outbox.holds(tree)))
    }

    /// Record durably the receiver's `instance`, whether it needs the
    /// whole tree (why, and whether as a bucket's base), and whether its
    /// root, rolled back to `compare`, is to be compared with the source;
    /// tell the sender's loop of either.
    pub(super) async fn record_needs(
        &self,
        instance: [u8; 16],
        whole_tree: Option<TreeNeed>,
        compare: Option<u64>,
    ) {
        let needed = whole_tree.as_ref().map(|n| n.base);
        record_peer(
            &self.peers,
            &self.state_dir,
            &self.receiver,
            instance,
            (needed, compare),
        )
        .await;
        let index = self.index;
        if let Some(need) = whole_tree {
            let _ = self.events.send(TransportEvent::WholeTree { index, need });
        }
        if let Some(to) = compare {
            info!(peer = %self.receiver, to, "the receiver's root was rolled back: comparing the source with it to ship the difference");
            let _ = self.events.send(TransportEvent::Compare);
        }
    }

    /// Keep `conn` open, sending no bundle, until it fails or ends (the
    /// receiver ends it when it releases this sender) or until shutdown
    /// (`None`).
    pub(super) async fn idle(
        &self,
        mut conn: Connection<Stream>,
        shutdown: &CancellationToken,
    ) -> Option<Lost> {
        // An outbox that never holds a bundle: only pings, and the end.
        let none = Outbox::new(1, 0);
        match next_bundle((&none, 0, None), &mut conn, self.peer_timeout, shutdown).await {
            Ok(None) => None,
            Ok(Some(_)) => unreachable!("an empty outbox has no bundle"),
            Err(e) => Some(Lost {
                error: format!("held session ended: {}", describe(e)),
                in_flight: false,
            }),
        }
    }
}

/// What a sender held by its receiver's rollback shows in its status.
fn held_reason(to: u64) -> String {
    format!(
        "held: root was rolled back to sequence {to} on this receiver; it takes bundles again after `shipper rollback --release` there"
    )
}
