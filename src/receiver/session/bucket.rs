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

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::halves::Taken;
use super::{SESSIONS, Sessions};
use crate::bucket::names::{BUNDLES, seal_name, seal_seq, zip_name};
use crate::bucket::seal::{self, MAX_SEAL_BYTES, Sealed};
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
    fn object(&self, rel: &str) -> ObjectPath {
        ObjectPath::from(self.cfg.url.key(rel))
    }

    /// The bucket could not be read: why, naming refused credentials.
    fn fail(&self, e: &object_store::Error) -> Stop {
        Stop::Bucket(self.opened.explain(e))
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
        let seals = list_seals(relay, from).await?;
        // Senders with a bundle not taken this pass: nothing after it is.
        let mut waiting: HashSet<Fingerprint> = HashSet::new();
        for (seq, at) in seals {
            let bytes = match read_seal(relay, &at).await? {
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
        let (size, hash) =
            match download(relay, &relay.object(&zip_name(seq)), &file.0, sealed.size).await? {
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

/// The seals under the bucket's prefix numbered above `from`, in order.
async fn list_seals(relay: &Relay, from: u64) -> Result<Vec<(u64, ObjectPath)>, Stop> {
    let dir = relay.object(BUNDLES);
    // Listing starts after this key: every later seal sorts after it.
    let offset = relay.object(&seal_name(from));
    let listed: Vec<_> = relay
        .opened
        .store
        .list_with_offset(Some(&dir), &offset)
        .try_collect()
        .await
        .map_err(|e| relay.fail(&e))?;
    let prefix = relay.cfg.url.key("");
    let mut seals: Vec<(u64, ObjectPath)> = listed
        .into_iter()
        .filter_map(|o| {
            let rel = o
                .location
                .as_ref()
                .strip_prefix(prefix.as_str())?
                .to_owned();
            Some((seal_seq(&rel)?, o.location))
        })
        .filter(|(seq, _)| *seq > from)
        .collect();
    seals.sort_by_key(|(seq, _)| *seq);
    Ok(seals)
}

/// A seal's bytes; the inner error when it is larger than any seal.
async fn read_seal(relay: &Relay, at: &ObjectPath) -> Result<Result<Vec<u8>, String>, Stop> {
    let got = relay
        .opened
        .store
        .get(at)
        .await
        .map_err(|e| relay.fail(&e))?;
    if got.meta.size > MAX_SEAL_BYTES as u64 {
        return Ok(Err(format!(
            "the seal is {} bytes, over the {MAX_SEAL_BYTES} a seal may have",
            got.meta.size
        )));
    }
    Ok(Ok(got.bytes().await.map_err(|e| relay.fail(&e))?.to_vec()))
}

/// Download the object `at` into `dest`, hashing it as it comes, taking at
/// most `max` bytes; its size and BLAKE3. A blocking thread writes and
/// hashes while this task reads the body. The inner error: the object is
/// larger than sealed, or `dest` could not be written.
async fn download(
    relay: &Relay,
    at: &ObjectPath,
    dest: &std::path::Path,
    max: u64,
) -> Result<Result<(u64, blake3::Hash), String>, Stop> {
    let got = relay
        .opened
        .store
        .get(at)
        .await
        .map_err(|e| relay.fail(&e))?;
    if got.meta.size > max {
        return Ok(Err(format!(
            "the zip is {} bytes, more than the {max} sealed",
            got.meta.size
        )));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let path = dest.to_owned();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut out = std::fs::File::create(&path)?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            out.write_all(&chunk)?;
            size += chunk.len() as u64;
        }
        Ok::<_, std::io::Error>((size, hasher.finalize()))
    });
    let mut body = got.into_stream();
    let mut taken = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| relay.fail(&e))?;
        taken += chunk.len() as u64;
        if taken > max {
            return Ok(Err(format!(
                "the zip holds more than the {max} bytes sealed"
            )));
        }
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    match writer.await {
        Ok(Ok(got)) => Ok(Ok(got)),
        Ok(Err(e)) => Ok(Err(format!("cannot store it in {}: {e}", dest.display()))),
        Err(e) => Err(Stop::Apply(anyhow::anyhow!("download task: {e}"))),
    }
}
