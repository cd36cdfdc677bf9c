//! Bundles taken from a bucket (`receiver.bucket`) instead of a
//! connection. Every `bucket_poll` the seals past this receiver's position
//! are listed, and each is taken in sequence order: its seal opened (made
//! by a sender in `allowed_senders`, its signature holding), the bundle
//! sealed before it applied here already, its zip downloaded into
//! `incoming/` and checked against the seal; then it is applied, archived
//! and hooked as a session's bundle is. Nothing is acknowledged: the
//! sender counts a bundle shipped once it is in the bucket.
//!
//! What the bucket holds is not trusted. A seal that does not open is
//! passed over (logged once: whoever can write the bucket could otherwise
//! stop every receiver with one object); a zip that is not the one sealed,
//! or a bundle refused, is looked at again at the next poll, and nothing
//! of its sender after it is applied meanwhile: the next seal names it as
//! the one before.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::halves::Taken;
use super::{SESSIONS, Sessions};
use crate::bucket::fetch::BucketReader;
use crate::bucket::names::zip_name;
use crate::bucket::seal::{self, Sealed};
use crate::bucket::store::Opened;
use crate::config::BucketConfig;
use crate::receiver::identity::Sender;
use crate::receiver::names::incoming_name;
use crate::tls::Fingerprint;

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

/// What one pass over the bucket found wrong, each said once until it
/// changes.
#[derive(Default)]
struct Said {
    /// The bucket itself could not be listed or read.
    bucket: Option<String>,
    /// Per seal, or zip, the last reason it was not taken.
    objects: HashMap<u64, String>,
}

impl Said {
    fn object(&mut self, seq: u64, why: String, url: &str) {
        if self.objects.get(&seq) != Some(&why) {
            warn!(bucket = url, seq, reason = %why, "bundle in the bucket not taken; looked at again at the next poll");
            self.objects.insert(seq, why);
        }
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
                        info!(bucket = %url, "bucket reachable again");
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

    /// The senders allowed to publish through a bucket: there is no bucket
    /// without keys (refused at start).
    fn sealers(&self) -> Vec<Fingerprint> {
        self.cfg
            .tls
            .as_ref()
            .map(|t| t.allowed.clone())
            .unwrap_or_default()
    }

    /// One pass: every seal past the lowest position of the allowed
    /// senders, in sequence order.
    async fn take_from_bucket(&self, relay: &Relay, said: &mut Said) -> Result<(), Stop> {
        let allowed = self.sealers();
        let applied: HashMap<String, u64> = {
            let state = self.state.lock().await;
            state.applied.clone().into_iter().collect()
        };
        let position = |f: &Fingerprint| applied.get(&f.to_string()).copied().unwrap_or(0);
        let from = allowed.iter().map(position).min().unwrap_or(0);
        let reader = relay.reader();
        let seals = reader.seals_after(from).await.map_err(Stop::Bucket)?;
        // Senders with a bundle not taken this pass: nothing after it is.
        let mut waiting: HashSet<Fingerprint> = HashSet::new();
        for (seq, at) in seals {
            let bytes = match reader.read_seal(&at).await.map_err(Stop::Bucket)? {
                Ok(b) => b,
                Err(why) => {
                    said.object(seq, why, &relay.cfg.url.to_string());
                    continue;
                }
            };
            let sealed = match seal::open(&bytes, &relay.cfg.url.prefix, seq, &allowed) {
                Ok(s) => s,
                Err(refused) => {
                    said.object(
                        seq,
                        format!("seal refused: {refused}"),
                        &relay.cfg.url.to_string(),
                    );
                    continue;
                }
            };
            if waiting.contains(&sealed.fingerprint) {
                continue;
            }
            let last = position(&sealed.fingerprint);
            if seq <= last {
                continue;
            }
            if sealed.prev > last {
                let why = format!(
                    "bundle {} of this sender comes first and is not in the bucket (or not sealed yet)",
                    sealed.prev
                );
                said.object(seq, why, &relay.cfg.url.to_string());
                waiting.insert(sealed.fingerprint);
                continue;
            }
            match self.take_sealed(relay, &sealed).await? {
                Ok(()) => {
                    said.objects.remove(&seq);
                }
                Err(why) => {
                    said.object(seq, why, &relay.cfg.url.to_string());
                    waiting.insert(sealed.fingerprint);
                }
            }
        }
        Ok(())
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
        let session = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = Taken(self.incoming.join(incoming_name(&sender.key, seq, session)));
        let started = Instant::now();
        let reader = relay.reader();
        let zip = reader.object(&zip_name(seq));
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
