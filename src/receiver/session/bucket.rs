//! Bundles taken from a bucket (`receiver.bucket`) instead of a
//! connection. Every `bucket_poll`, each allowed sender's folder is listed
//! past this receiver's position for that sender, and each seal is taken
//! in sequence order: opened (made with that sender's key, its signature
//! holding), the bundle sealed before it applied here already, its zip
//! downloaded into `incoming/` and checked against the seal; then it is
//! applied, archived and hooked as a session's bundle is. Nothing is
//! acknowledged: the sender counts a bundle shipped once it is in the
//! bucket.
//!
//! What the bucket holds is not trusted. A seal that does not open is
//! passed over; a zip that is not the one sealed, or a bundle refused, is
//! taken again only once its objects change (by their entity tags; at
//! every poll where the store gives none), and nothing of its sender
//! after it is applied meanwhile: the next seal names it as the one
//! before. Each reason is logged once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::halves::Taken;
use super::{SESSIONS, Sessions};
use crate::bucket::fetch::{BucketReader, Listed};
use crate::bucket::names::zip_name;
use crate::bucket::seal::{self, Sealed};
use crate::bucket::store::Opened;
use crate::config::BucketConfig;
use crate::receiver::identity::Sender;
use crate::receiver::names::incoming_name;
use crate::tls::Fingerprint;

/// Seals looked at per sender and poll; more wait for the next.
const SEALS_PER_POLL: usize = 1000;

/// A receiver's bucket: the client, where it is, how often to look.
pub(in crate::receiver) struct Relay {
    pub(in crate::receiver) opened: Opened,
    pub(in crate::receiver) cfg: BucketConfig,
    pub(in crate::receiver) poll: Duration,
}

impl Relay {
    fn reader(&self) -> BucketReader<'_> {
        BucketReader {
            opened: &self.opened,
            url: &self.cfg.url,
        }
    }
}

/// A bundle not taken: why, and the entity tags of its seal and zip then.
struct NotTaken {
    why: String,
    tags: (Option<String>, Option<String>),
}

impl NotTaken {
    /// Whether its objects are as they were when it was not taken (never,
    /// where the store gives no tags).
    fn unchanged(&self, tags: &(Option<String>, Option<String>)) -> bool {
        self.tags.0.is_some() && self.tags.1.is_some() && self.tags == *tags
    }
}

/// What passes over the bucket found wrong, each said once until it
/// changes.
#[derive(Default)]
struct Said {
    /// The bucket itself could not be listed or read.
    bucket: Option<String>,
    /// Per sender and sequence, a bundle not taken.
    objects: HashMap<(Fingerprint, u64), NotTaken>,
}

impl Said {
    fn object(&mut self, key: (Fingerprint, u64), not: NotTaken, url: &str) {
        let said = self.objects.get(&key).is_some_and(|n| n.why == not.why);
        if !said {
            warn!(bucket = url, sender = %key.0, seq = key.1, reason = %not.why, "bundle in the bucket not taken; taken again once its objects change");
        }
        self.objects.insert(key, not);
    }

    /// Forget what is behind each sender's position now.
    fn prune(&mut self, position: impl Fn(&Fingerprint) -> u64) {
        self.objects.retain(|(f, seq), _| *seq > position(f));
    }
}

/// Why a pass over the bucket stopped short.
enum Stop {
    /// The bucket could not be listed or read: the next poll tries again.
    Bucket(String),
    /// Applying failed past a refusal (its task died): logged, and the
    /// next poll tries again.
    Apply(anyhow::Error),
}

impl Sessions {
    /// Take bundles from `relay` until `stop`.
    pub(in crate::receiver) async fn poll_bucket(
        self: Arc<Self>,
        relay: Relay,
        stop: CancellationToken,
    ) {
        let url = relay.cfg.url.to_string();
        let mut said = Said::default();
        info!(bucket = %url, poll = %crate::config::fmt_dur(relay.poll), "taking bundles from the bucket");
        loop {
            let pass = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.take_from_bucket(&relay, &mut said) => r,
            };
            match pass {
                Ok(()) => {
                    if said.bucket.take().is_some() {
                        info!(bucket = %url, "bucket readable again");
                    }
                }
                Err(Stop::Bucket(why)) => {
                    if said.bucket.as_ref() != Some(&why) {
                        warn!(bucket = %url, error = %why, "cannot read the bucket; trying again at each poll");
                        said.bucket = Some(why);
                    }
                }
                Err(Stop::Apply(e)) => {
                    warn!(bucket = %url, error = format!("{e:#}"), "applying a bundle from the bucket failed; trying again at the next poll");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(relay.poll) => {}
            }
        }
    }

    /// This receiver's position for each allowed sender: the last of its
    /// bundles applied here.
    async fn positions(&self) -> HashMap<Fingerprint, u64> {
        let allowed = self.cfg.tls.iter().flat_map(|t| t.allowed.clone());
        let state = self.state.lock().await;
        allowed
            .map(|f| (f, state.applied.get(&f.to_string()).copied().unwrap_or(0)))
            .collect()
    }

    /// One pass: each allowed sender's seals past its position, in order.
    async fn take_from_bucket(&self, relay: &Relay, said: &mut Said) -> Result<(), Stop> {
        let positions = self.positions().await;
        said.prune(|f| positions.get(f).copied().unwrap_or(0));
        for (sender, from) in positions {
            let seals = relay
                .reader()
                .seals_after(&sender, from, SEALS_PER_POLL)
                .await;
            let mut last = from;
            for listed in seals.map_err(Stop::Bucket)? {
                match self
                    .take_listed(relay, said, (sender, last), &listed)
                    .await?
                {
                    Some(applied) => last = applied,
                    // Not taken: nothing of this sender after it is.
                    None if self.waits_on(said, sender, listed.seq) => break,
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// Whether the bundle `seq` of `sender`, not taken, holds back the
    /// ones after it: a seal that did not open does not (it carries no
    /// authority, and the next genuine seal names the one before it).
    fn waits_on(&self, said: &Said, sender: Fingerprint, seq: u64) -> bool {
        said.objects
            .get(&(sender, seq))
            .is_some_and(|n| !n.why.starts_with("seal refused"))
    }

    /// Take the listed seal of `sender`, whose last bundle applied here is
    /// `last`: `Some(seq)` once applied.
    async fn take_listed(
        &self,
        relay: &Relay,
        said: &mut Said,
        (sender, last): (Fingerprint, u64),
        listed: &Listed,
    ) -> Result<Option<u64>, Stop> {
        let url = relay.cfg.url.to_string();
        let key = (sender, listed.seq);
        let reader = relay.reader();
        let zip = reader.object(&zip_name(&sender, listed.seq));
        if let Some(not) = said.objects.get(&key) {
            let zip_tag = match &listed.tag {
                Some(_) => reader.tag(&zip).await.map_err(Stop::Bucket)?,
                None => None,
            };
            if not.unchanged(&(listed.tag.clone(), zip_tag)) {
                return Ok(None);
            }
        }
        let not_taken = |why: String, zip_tag: Option<String>| NotTaken {
            why,
            tags: (listed.tag.clone(), zip_tag),
        };
        let opened = match reader.read_seal(&listed.at).await.map_err(Stop::Bucket)? {
            Ok(bytes) => seal::open(&bytes, &relay.cfg.url, listed.seq, &[sender])
                .map_err(|e| format!("seal refused: {e}")),
            Err(why) => Err(format!("seal refused: {why}")),
        };
        let sealed = match opened {
            Ok(s) => s,
            Err(why) => {
                said.object(key, not_taken(why, None), &url);
                return Ok(None);
            }
        };
        if sealed.prev > last {
            let why = format!(
                "bundle {} of this sender comes first and is not in the bucket (or not sealed yet)",
                sealed.prev
            );
            said.object(key, not_taken(why, None), &url);
            return Ok(None);
        }
        let zip_tag = reader.tag(&zip).await.map_err(Stop::Bucket)?;
        match self.take_sealed(relay, &sealed).await? {
            Ok(()) => {
                said.objects.remove(&key);
                Ok(Some(listed.seq))
            }
            Err(why) => {
                said.object(key, not_taken(why, zip_tag), &url);
                Ok(None)
            }
        }
    }

    /// Download, check and apply the bundle `sealed` names; the inner
    /// error says why it was not applied.
    async fn take_sealed(
        &self,
        relay: &Relay,
        sealed: &Sealed,
    ) -> Result<Result<(), String>, Stop> {
        let seq = sealed.seq;
        if sealed.size > self.cfg.max_bundle_size {
            return Ok(Err(format!(
                "bundle of {} bytes exceeds receiver.max_bundle_size ({} bytes)",
                sealed.size, self.cfg.max_bundle_size
            )));
        }
        let sender = Sender::new(sealed.sender.clone(), Some(sealed.fingerprint));
        if let Some(hold) = self.state.lock().await.held.get(&sender.key) {
            // Not downloaded while it could not be applied.
            return Ok(Err(super::super::rollback::held_reason(hold)));
        }
        let session = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = Taken(self.incoming.join(incoming_name(&sender.key, seq, session)));
        let started = Instant::now();
        let reader = relay.reader();
        let zip = reader.object(&zip_name(&sealed.fingerprint, seq));
        let downloaded = reader.download(&zip, &file.0, sealed.size).await;
        let (size, hash) = match downloaded.map_err(Stop::Bucket)? {
            Ok(got) => got,
            Err(why) => return Ok(Err(why)),
        };
        if let Err(mismatch) = sealed.check_zip(size, &hash) {
            return Ok(Err(format!("not the zip sealed: {mismatch}")));
        }
        match self
            .apply_then_hook(&sender, seq, size, &file.0, started)
            .await
            .map_err(Stop::Apply)?
        {
            Ok(_) => Ok(Ok(())),
            Err(refusal) => Ok(Err(format!("refused: {refusal}"))),
        }
    }
}
