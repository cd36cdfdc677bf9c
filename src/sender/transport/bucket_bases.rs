//! The sender's bases in its bucket: asking for one when it is due (a
//! whole tree for the bucket, which goes up as a base), and once one is
//! complete, removing what no receiver needs any more: the bundles below
//! the oldest of the `bucket_keep` newest bases, and older bases' ends.
//! The rules are pure, in [`crate::bucket::bases`]; this holds the clock
//! they read and does the listing and deleting.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::Link;
use super::bucket::Bucket;
use crate::bucket::bases::{Newest, base_due, prune_below};
use crate::bucket::fetch::BaseListed;
use crate::bucket::names::{
    base_end_first, base_end_name, bases_dir, bundle_object_seq, sender_dir,
};
use crate::bucket::seal::{Belongs, Sealed};
use crate::config::fmt_dur;
use crate::peers::TreeNeed;

/// What the sender knows of its newest base, and what went up since.
#[derive(Debug, Default)]
pub(in crate::sender) struct Clock {
    /// The newest complete base: its first member, when it was seen or
    /// made, and its bytes when this process uploaded it.
    newest: Option<(u64, Instant, Option<u64>)>,
    /// Bytes of the chain uploaded since it.
    chain_bytes: u64,
    /// Bytes of the base under way so far.
    base_bytes: u64,
    /// When a base was last asked for: not again within `every`, so that
    /// a tree with nothing in it (no base comes of it) is not asked for at
    /// every turn.
    asked: Option<Instant>,
}

impl Bucket {
    /// A bundle of `size` bytes went up where `belongs` says.
    pub(super) fn uploaded(&self, size: u64, belongs: Belongs) {
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        match belongs {
            Belongs::Chain => c.chain_bytes += size,
            Belongs::Base { .. } => c.base_bytes += size,
        }
    }

    /// The complete bases in the bucket whose ends hold (an end that does
    /// not, someone else's or altered, is passed over), oldest first.
    async fn complete_bases(&self) -> Result<Vec<(BaseListed, Sealed)>, String> {
        let reader = self.reader();
        let mut out = Vec::new();
        for listed in reader.bases(&self.me).await? {
            if let Ok(end) = reader.open_base_end(&self.me, &listed).await? {
                out.push((listed, end));
            }
        }
        Ok(out)
    }

    /// Learn the newest complete base from the bucket (at each connect):
    /// its size is not known after a restart, only its age. A folder with
    /// no base counts from its `oldest` seal (nothing is pruned without a
    /// base, so receivers take the chain from its start until then), and
    /// an empty folder from now.
    pub(super) async fn read_newest_base(
        &self,
        oldest: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), String> {
        let made_here = |c: &Clock| c.newest.is_some_and(|(_, _, bytes)| bytes.is_some());
        if made_here(&self.clock.lock().unwrap_or_else(|e| e.into_inner())) {
            // This process made it, and knows more: nothing to list.
            return Ok(());
        }
        let bases = self.complete_bases().await?;
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if made_here(&c) {
            // One was completed while the bucket was being listed.
            return Ok(());
        }
        let newest = bases.last();
        if let Some((_, end)) = newest {
            self.kept_from.fetch_max(end.kept_from, Ordering::SeqCst);
        }
        let since = newest.map(|(b, _)| b.modified).or(oldest);
        let age = since.map_or(Duration::ZERO, |t| {
            (chrono::Utc::now() - t).to_std().unwrap_or(Duration::ZERO)
        });
        let seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        c.newest = Some((newest.map_or(0, |(b, _)| b.first), seen, None));
        Ok(())
    }

    /// Why a base is due now, if it is; `under_way`: one is being packed
    /// or uploaded, or a whole tree waits for the bucket.
    fn base_due(&self, under_way: bool) -> Option<String> {
        let c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let every = self.bases.every;
        if c.asked.is_some_and(|t| t.elapsed() < every) {
            return None;
        }
        let newest = c.newest.map(|(_, at, bytes)| Newest {
            age: at.elapsed(),
            bytes,
        });
        // The chain went on since the newest base began (with no base, the
        // folder's age counts from its oldest bundle).
        let changed = c
            .newest
            .is_none_or(|(first, _, _)| first == 0 || self.cursor().chain > first);
        if !base_due(newest, (c.chain_bytes, changed), every, under_way) {
            return None;
        }
        Some(match newest {
            None => "the bucket has no base yet: receivers starting empty take one".to_owned(),
            Some(n) if n.age >= every => format!(
                "its newest base (or, with none, its oldest bundle) is {} old (sender.bucket_base_every = {})",
                fmt_dur(Duration::from_secs(n.age.as_secs())),
                fmt_dur(every)
            ),
            Some(_) => format!(
                "the {} bytes uploaded since its newest base outweigh it",
                c.chain_bytes
            ),
        })
    }

    /// End the base under way once its last member is up (`uploaded`:
    /// the bundle just uploaded, if one was): its end, a copy of that
    /// member's seal marked last, makes it complete; then what no receiver
    /// needs goes. A base whose last member will never be uploaded (its
    /// bundle dropped from the outbox) is given up.
    pub(super) async fn end_base(&self, uploaded: Option<u64>) -> Result<(), String> {
        let ends_at = self.trees.lock().unwrap_or_else(|e| e.into_inner()).ends_at;
        let Some((number, last)) = ends_at else {
            return Ok(());
        };
        let under = self.cursor().base.filter(|b| b.number == number);
        match under {
            Some(b) if b.last.seq == last => {
                let seal = b.last;
                let hash = blake3::Hash::from_hex(&seal.hash).map_err(|e| e.to_string())?;
                // The end says what the bucket keeps once it is complete:
                // a receiver missing a bundle below that takes a base.
                let complete = self.complete_bases().await?;
                let mut firsts: Vec<u64> = complete.iter().map(|(l, _)| l.first).collect();
                firsts.push(b.first);
                let floor = prune_below(&firsts, self.bases.keep).unwrap_or(0);
                let kept_from = self.kept_from().max(floor);
                let end = self.sealer.seal(
                    &self.cfg.url,
                    &seal.sender,
                    (seal.seq, seal.prev, seal.size),
                    &hash,
                    (
                        Belongs::Base {
                            first: b.first,
                            last: true,
                        },
                        kept_from,
                    ),
                );
                self.put_seal(&base_end_name(&self.me, b.first), &end)
                    .await?;
                // Said from now on, once the end that says it is up, before
                // anything goes.
                self.kept_from.fetch_max(floor, Ordering::SeqCst);
                self.base_complete(b.first, last);
                if floor > 0 {
                    self.prune(floor).await;
                }
            }
            _ if uploaded.is_some_and(|s| s > last) => {
                warn!(bucket = %self.cfg.url, last, "a base's last bundle never went up (dropped from the outbox): that base is given up; the next is asked for when due");
                self.base_done();
                // Not held off for a whole period by the ask that made it.
                self.clock.lock().unwrap_or_else(|e| e.into_inner()).asked = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// The base from `first` to `last` is complete.
    fn base_complete(&self, first: u64, last: u64) {
        let bytes = {
            let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
            let bytes = c.base_bytes;
            *c = Clock {
                newest: Some((first, Instant::now(), Some(bytes))),
                ..Clock::default()
            };
            bytes
        };
        info!(bucket = %self.cfg.url, first, last, bytes, "base complete in the bucket: receivers starting empty or behind take it");
        self.base_done();
    }

    /// No base is under way any more.
    pub(super) fn base_done(&self) {
        self.trees.lock().unwrap_or_else(|e| e.into_inner()).ends_at = None;
        self.cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .give_up_base();
        self.clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .base_bytes = 0;
    }

    /// Remove what no receiver needs now that a base is complete: every
    /// bundle below `floor`, the first member of the oldest base kept (but
    /// the chain's newest), and the ends of older bases. A failure is
    /// logged and left for the next base.
    async fn prune(&self, floor: u64) {
        if let Err(e) = self.remove_below(floor).await {
            warn!(bucket = %self.cfg.url, error = %e, "could not remove old bundles from the bucket; tried again after the next base");
        }
    }

    async fn remove_below(&self, floor: u64) -> Result<(), String> {
        let (me, chain) = (self.me, self.cursor().chain);
        let below = |rel: &str| match bundle_object_seq(&me, rel) {
            // The chain's newest stays, whatever its number.
            Some(seq) => seq < floor && seq != chain,
            None => base_end_first(&me, rel).is_some_and(|first| first < floor),
        };
        let reader = self.reader();
        let mut gone = Vec::new();
        for dir in [bases_dir(&me), sender_dir(&me)] {
            let dir = reader.object(&dir);
            let listed = reader.list_named((&dir, None), usize::MAX, |rel, o| {
                below(rel).then_some(o.location)
            });
            gone.extend(listed.await?);
        }
        let count = gone.len();
        // Ends first: a base whose end is gone is never started from.
        gone.sort_by_key(|at| !at.as_ref().contains("/bases/"));
        let deleted = futures::stream::iter(gone.into_iter().map(Ok)).boxed();
        self.opened
            .store
            .delete_stream(deleted)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.opened.explain(&e))?;
        info!(bucket = %self.cfg.url, below = floor, objects = count, keep = self.bases.keep, "removed bundles no receiver needs from the bucket: every one below the oldest base kept");
        Ok(())
    }
}

impl Link {
    /// Ask the sender's loop for a whole tree for the bucket, to go up as
    /// a base, when one is due and none is under way (packed, being
    /// uploaded, or waiting to be packed: repair or base).
    pub(super) async fn ask_for_base(&self, bucket: &Bucket, instance: [u8; 16]) {
        let marked = {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            peers
                .receivers
                .get(&self.receiver)
                .is_some_and(|r| r.whole_tree)
        };
        let busy = {
            let t = bucket.trees.lock().unwrap_or_else(|e| e.into_inner());
            t.packing || t.ends_at.is_some()
        };
        let Some(reason) = bucket.base_due(marked || busy) else {
            return;
        };
        bucket.clock.lock().unwrap_or_else(|e| e.into_inner()).asked = Some(Instant::now());
        info!(bucket = %bucket.cfg.url, %reason, "a base is due: the whole tree goes to the bucket");
        self.record_needs(instance, Some(TreeNeed::new(reason, true)), None)
            .await;
    }
}
