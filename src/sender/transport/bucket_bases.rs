//! The sender's bases in its bucket: asking for one when it is due (a
//! whole tree for the bucket, which goes up as a base), and once one is
//! complete, removing what no receiver needs any more: the bundles below
//! the oldest of the `bucket_keep` newest bases, and older bases' ends.
//! The rules are pure, in [`crate::bucket::bases`]; this holds the clock
//! they read and does the listing and deleting.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::Link;
use super::bucket::Bucket;
use crate::bucket::bases::{Cursor, Newest, base_due, prune_below};
use crate::bucket::names::{base_end_first, bases_dir, bundle_object_seq, sender_dir};
use crate::bucket::seal::Belongs;
use crate::config::fmt_dur;

/// What the sender knows of its newest base, and what went up since.
#[derive(Debug, Default)]
pub(in crate::sender) struct Clock {
    /// The newest complete base: when it was seen or made, and its bytes
    /// when this process uploaded it.
    newest: Option<(Instant, Option<u64>)>,
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
            Belongs::Base { last: false, .. } => c.base_bytes += size,
            Belongs::Base { last: true, .. } => {
                let bytes = c.base_bytes + size;
                *c = Clock {
                    newest: Some((Instant::now(), Some(bytes))),
                    ..Clock::default()
                };
            }
        }
    }

    /// Learn the newest complete base's age from the bucket (at each
    /// connect): its size is not known after a restart, only its age. A
    /// folder with no base counts from its `oldest` seal (nothing is
    /// pruned without a base, so receivers take the chain from its start
    /// until then), and an empty folder from now.
    pub(super) async fn read_newest_base(
        &self,
        oldest: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), String> {
        let bases = self.reader().bases(&self.me).await?;
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if c.newest.is_some_and(|(_, bytes)| bytes.is_some()) {
            // This process made it, and knows more.
            return Ok(());
        }
        let since = bases.last().map(|b| b.modified).or(oldest);
        let age = since.map_or(Duration::ZERO, |t| {
            (chrono::Utc::now() - t).to_std().unwrap_or(Duration::ZERO)
        });
        let seen = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        c.newest = Some((seen, None));
        Ok(())
    }

    /// Why a base is due now, if it is; `under_way`: one is being packed
    /// or uploaded.
    fn base_due(&self, under_way: bool) -> Option<String> {
        let c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let every = self.bases.every;
        if c.asked.is_some_and(|t| t.elapsed() < every) {
            return None;
        }
        let newest = c.newest.map(|(at, bytes)| Newest {
            age: at.elapsed(),
            bytes,
        });
        if !base_due(newest, c.chain_bytes, every, under_way) {
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

    /// Remove what no receiver needs now that a base is complete: every
    /// bundle below the first member of the oldest base kept (but the
    /// chain's newest, `chain`), and the ends of older bases. A failure is
    /// logged and left for the next base.
    pub(super) async fn prune(&self, chain: u64) {
        if let Err(e) = self.prune_below_kept(chain).await {
            warn!(bucket = %self.cfg.url, error = %e, "could not remove old bundles from the bucket; tried again after the next base");
        }
    }

    async fn prune_below_kept(&self, chain: u64) -> Result<(), String> {
        let reader = self.reader();
        let bases = reader.bases(&self.me).await?;
        let firsts: Vec<u64> = bases.iter().map(|b| b.first).collect();
        let Some(floor) = prune_below(&firsts, self.bases.keep, chain) else {
            return Ok(());
        };
        let prefix = self.cfg.url.key("");
        let me = self.me;
        let below = |rel: &str| {
            bundle_object_seq(&me, rel)
                .or_else(|| base_end_first(&me, rel))
                .is_some_and(|seq| seq < floor)
        };
        let mut gone = Vec::new();
        for dir in [bases_dir(&me), sender_dir(&me)] {
            let listed: Vec<_> = self
                .opened
                .store
                .list(Some(&reader.object(&dir)))
                .map_ok(|o| o.location)
                .try_collect()
                .await
                .map_err(|e| self.opened.explain(&e))?;
            gone.extend(listed.into_iter().filter(|at| {
                below(
                    at.as_ref()
                        .strip_prefix(prefix.as_str())
                        .unwrap_or_default(),
                )
            }));
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
    /// a base, when one is due and none is under way (packed or being
    /// uploaded: `cursor`, or still marked as needed).
    pub(super) async fn ask_for_base(&self, bucket: &Bucket, cursor: &Cursor, instance: [u8; 16]) {
        let marked = {
            let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            peers
                .receivers
                .get(&self.receiver)
                .is_some_and(|r| r.whole_tree)
        };
        let Some(reason) = bucket.base_due(marked || cursor.base.is_some()) else {
            return;
        };
        bucket.clock.lock().unwrap_or_else(|e| e.into_inner()).asked = Some(Instant::now());
        info!(bucket = %bucket.cfg.url, %reason, "a base is due: the whole tree goes to the bucket");
        self.record_needs(instance, Some(reason), None).await;
    }
}
