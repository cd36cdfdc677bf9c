//! The bucket as a destination (`sender.bucket`): one more link, served
//! by uploads instead of a session. Its "Welcome" is read from the bucket
//! ([`Bucket::position`]): the instance object says whether it is the
//! bucket bundles went to before (a new or emptied one gets the whole
//! tree), and the newest bundles sealed with this sender's key are how far
//! it got, in the chain and in a base under way.
//! Each bundle is uploaded whole (in parts when large, read from the
//! outbox as it goes, never held in memory), then its seal; once the seal
//! is there the bundle counts as shipped to the bucket and is released
//! like an acknowledged one. A whole tree for the bucket goes up as a
//! base, whose last member's seal is copied to its end object; when bases
//! are due and what goes once one is complete is in `bucket_bases.rs`.
//! Receivers taking from the bucket are not known here.

use std::sync::Arc;
use std::time::Instant;

use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutPayload};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::bucket_bases::Clock;
use super::connect::Welcome;
use super::{Link, Lost};
use crate::bucket::bases::{BaseFound, Cursor};
use crate::bucket::fetch::BucketReader;
use crate::bucket::names::{Kind, listed_name, sender_dir, zip_name};
use crate::bucket::seal::{Belongs, Seal, Sealed, Sealer};
use crate::bucket::settings::Bases;
use crate::bucket::store::Opened;
use crate::bundle::pack::Packed;
use crate::config::BucketConfig;
use crate::proto::frame::Accepts;
use crate::sender::link_rate::Measure;
use crate::sender::whole_tree::BaseTrees;
use crate::tls::Fingerprint;

/// Where the bucket keeps its instance: 32 hex digits, made by the first
/// sender to use it.
const INSTANCE: &str = "instance";
/// Bundles at most this large go up in one request; larger ones in parts
/// this large (S3 wants parts of at least 5 MiB, but the last).
const PART_BYTES: usize = 16 << 20;
/// The instance object is 32 hex digits: anything much larger is not one.
const INSTANCE_MAX_BYTES: u64 = 64;

/// A sender's bucket: the client, where it is, and the key pair sealing
/// each bundle.
pub(in crate::sender) struct Bucket {
    pub(in crate::sender) opened: Opened,
    pub(in crate::sender) cfg: BucketConfig,
    pub(in crate::sender) sealer: Sealer,
    /// This sender's fingerprint: its seals are the ones that count.
    pub(in crate::sender) me: Fingerprint,
    /// How often a base is due, and how many are kept.
    pub(in crate::sender) bases: Bases,
    /// What is known of the newest base, and what went up since.
    pub(in crate::sender) clock: std::sync::Mutex<Clock>,
    /// The bases being packed, as the sender's packing tells.
    pub(in crate::sender) trees: Arc<std::sync::Mutex<BaseTrees>>,
    /// Where uploads stand: the chain read from the bucket at each
    /// connect, the base under way kept across reconnects (one begun
    /// before a restart is not gone on with: it is packed again, anew).
    pub(in crate::sender) cursor: std::sync::Mutex<Cursor>,
    /// Every bundle from this on is kept in the bucket: from the newest
    /// chain seal at connect, raised at each pruning.
    pub(in crate::sender) kept_from: std::sync::atomic::AtomicU64,
    /// A base under way was found lost at a connect ([`BaseFound::Lost`])
    /// and no welcome has told the sender's loop yet: kept until one does,
    /// whatever fails in between.
    pub(in crate::sender) base_lost: std::sync::atomic::AtomicBool,
}

/// Where a sender's folder in the bucket stands at connect.
#[derive(Debug, Default)]
struct Position {
    /// The newest bundle sealed there.
    newest: u64,
    /// The newest of the chain, and what its seal said the bucket keeps.
    chain: u64,
    kept_from: u64,
    /// The newest member of a base, as sealed.
    member: Option<Sealed>,
    /// When the oldest seal there was written.
    oldest: Option<chrono::DateTime<chrono::Utc>>,
}

impl Bucket {
    /// The bucket as receivers read it: its objects' keys, its seals.
    pub(super) fn reader(&self) -> BucketReader<'_> {
        BucketReader {
            opened: &self.opened,
            url: &self.cfg.url,
        }
    }

    /// What the bucket says of itself, as a receiver's `Welcome` would:
    /// its instance and the newest bundle sealed with this sender's key;
    /// where the chain goes on is taken in.
    async fn position(&self) -> Result<Welcome, String> {
        let instance = self.instance().await.map_err(|e| self.opened.explain(&e))?;
        let at = self.newest_sealed().await?;
        self.take_in(&at);
        self.read_newest_base(at.oldest).await?;
        let last_applied = at.newest;
        let defaults = crate::bundle::apply::Limits::default();
        let welcome = Welcome {
            last_applied,
            instance,
            // What a receiver accepts unless configured otherwise: the
            // bucket's receivers are not known here.
            accepts: Accepts {
                max_entries: defaults.max_entries as u64,
                max_bundle_size: crate::config::DEFAULT_RECEIVER_MAX_BUNDLE_SIZE,
                max_file_size: defaults.max_file_size,
                max_unpacked: defaults.max_unpacked,
            },
            rolled_back: None,
            base_lost: self
                .base_lost
                .swap(false, std::sync::atomic::Ordering::SeqCst),
        };
        Ok(welcome)
    }

    /// The bucket's instance, made now if it has none.
    async fn instance(&self) -> object_store::Result<[u8; 16]> {
        let at = self.reader().object(INSTANCE);
        loop {
            match self.opened.store.get(&at).await {
                Ok(got) if got.meta.size > INSTANCE_MAX_BYTES => {
                    // Not one this sender wrote: taken for a new bucket.
                    return Ok([0; 16]);
                }
                Ok(got) => {
                    let text = got.bytes().await?;
                    let parsed = std::str::from_utf8(&text)
                        .ok()
                        .and_then(|t| data_encoding::HEXLOWER.decode(t.trim().as_bytes()).ok())
                        .and_then(|b| <[u8; 16]>::try_from(b).ok());
                    // Unreadable: taken for a bucket this sender never used.
                    return Ok(parsed.unwrap_or([0; 16]));
                }
                Err(object_store::Error::NotFound { .. }) => {
                    let new: [u8; 16] = rand_bytes();
                    let text = data_encoding::HEXLOWER.encode(&new);
                    let put = self
                        .opened
                        .store
                        .put_opts(
                            &at,
                            PutPayload::from(text.into_bytes()),
                            PutMode::Create.into(),
                        )
                        .await;
                    match put {
                        Ok(_) => return Ok(new),
                        // Another sender made it first: read theirs.
                        Err(object_store::Error::AlreadyExists { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The newest bundle in this sender's folder sealed with its key (0
    /// when the folder holds no seal), the newest of the chain with what
    /// its seal says the bucket keeps, and when the oldest seal there was
    /// written. Seals are opened from the newest down until one of each
    /// kind holds: seals there and none holding is an error (not this
    /// sender's, or altered), never taken for an empty folder, which would
    /// number bundles again from where receivers already are.
    async fn newest_sealed(&self) -> Result<Position, String> {
        let reader = self.reader();
        let seals = reader.seals_after(&self.me, 0, usize::MAX).await?;
        let mut at = Position {
            oldest: seals.first().map(|l| l.modified),
            ..Position::default()
        };
        let (mut newest, mut chain, mut member) = (None, false, false);
        for listed in seals.iter().rev() {
            let done = match listed.kind {
                Kind::Chain => &mut chain,
                Kind::Member => &mut member,
            };
            if *done {
                continue;
            }
            let Ok(sealed) = reader.open_seal(&self.me, listed).await? else {
                continue;
            };
            *done = true;
            newest = newest.max(Some(listed.seq));
            if sealed.belongs == Belongs::Chain {
                (at.chain, at.kept_from) = (listed.seq, sealed.kept_from);
            } else {
                at.member = Some(sealed);
            }
            if chain && member {
                break;
            }
        }
        match (newest, seals.last()) {
            (Some(seq), _) => Ok(Position { newest: seq, ..at }),
            (None, None) => Ok(at),
            (None, Some(last)) => Err(format!(
                "none of the {} seals in {} (the newest {}) opens with this sender's key: not its own, or altered",
                seals.len(),
                reader.object(&sender_dir(&self.me)),
                last.seq
            )),
        }
    }

    /// Upload bundle `b` of sender `id`, then its seal: on the chain, or
    /// as a member of the base it was packed for.
    async fn upload(&self, b: &Packed, id: &str) -> Result<(), String> {
        let (belongs, prev) = self
            .cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upload(b.seq, b.base);
        let zip = self.reader().object(&zip_name(&self.me, b.seq));
        let hash = self
            .put_file(&zip, b)
            .await
            .map_err(|e| format!("{}: {e}", zip))?;
        let kept_from = self.kept_from();
        let sealing = ((b.seq, prev, b.size), (belongs, kept_from));
        let seal = self
            .sealer
            .seal(&self.cfg.url, id, sealing.0, &hash, sealing.1);
        let kind = match belongs {
            Belongs::Chain => Kind::Chain,
            Belongs::Base { .. } => Kind::Member,
        };
        self.put_seal(&listed_name(&self.me, b.seq, kind), &seal)
            .await?;
        self.cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sealed(seal.held_by(self.me), b.base);
        self.uploaded(b.size, belongs);
        Ok(())
    }

    /// Put `seal` at `rel` under the prefix.
    pub(super) async fn put_seal(&self, rel: &str, seal: &Seal) -> Result<(), String> {
        let bytes = serde_json::to_vec(seal).expect("a seal serializes");
        let at = self.reader().object(rel);
        self.opened
            .store
            .put(&at, PutPayload::from(bytes))
            .await
            .map_err(|e| format!("{at}: {}", self.opened.explain(&e)))?;
        Ok(())
    }

    /// Take in where the folder stands at a connect: the chain goes on
    /// from its newest; a base under way goes on from its newest member
    /// there (one whose seal went up though its upload seemed to fail, its
    /// first member's too), or is given up when that is another base's (or
    /// none; see [`Cursor::take_in`]); an empty folder (a new or emptied
    /// bucket) keeps nothing.
    fn take_in(&self, at: &Position) {
        let mut cursor = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        cursor.chain = at.chain;
        if at.oldest.is_none() {
            self.kept_from.store(0, std::sync::atomic::Ordering::SeqCst);
        } else {
            self.kept_from
                .fetch_max(at.kept_from, std::sync::atomic::Ordering::SeqCst);
        }
        let found = cursor.take_in(at.member.as_ref());
        drop(cursor);
        if found == BaseFound::Lost {
            tracing::warn!(bucket = %self.cfg.url, "the base under way is not in the bucket as uploaded (emptied, or altered): given up");
            self.base_done();
            self.base_lost
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Where uploads stand now.
    pub(super) fn cursor(&self) -> Cursor {
        self.cursor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every bundle from this on is kept in the bucket, as far as this
    /// sender knows.
    pub(super) fn kept_from(&self) -> u64 {
        self.kept_from.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Put the bundle file of `b` at `at`, in parts when it is large; its
    /// BLAKE3, hashed as it is read.
    async fn put_file(&self, at: &ObjectPath, b: &Packed) -> Result<blake3::Hash, String> {
        let mut reader = Chunks::open(&b.path).await?;
        if b.size <= PART_BYTES as u64 {
            let (chunk, _) = reader.next().await?;
            self.opened
                .store
                .put(at, PutPayload::from(chunk))
                .await
                .map_err(|e| self.opened.explain(&e))?;
            return reader.finish(b.size);
        }
        let mut upload = self
            .opened
            .store
            .put_multipart(at)
            .await
            .map_err(|e| self.opened.explain(&e))?;
        loop {
            let (chunk, last) = match reader.next().await {
                Ok(c) => c,
                Err(e) => {
                    let _ = upload.abort().await;
                    return Err(e);
                }
            };
            if !chunk.is_empty()
                && let Err(e) = upload.put_part(PutPayload::from(chunk)).await
            {
                let _ = upload.abort().await;
                return Err(self.opened.explain(&e));
            }
            if last {
                break;
            }
        }
        upload
            .complete()
            .await
            .map_err(|e| self.opened.explain(&e))?;
        reader.finish(b.size)
    }
}

/// 16 bytes from the operating system's random source.
fn rand_bytes() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .expect("the system's random source");
    out
}

/// A bundle file read in [`PART_BYTES`] chunks off the runtime, hashed as
/// it is read.
struct Chunks {
    file: Option<std::fs::File>,
    hasher: Option<blake3::Hasher>,
    path: std::path::PathBuf,
    /// Bytes read so far.
    read: u64,
}

impl Chunks {
    async fn open(path: &std::path::Path) -> Result<Self, String> {
        let p = path.to_owned();
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(&p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            file: Some(file),
            hasher: Some(blake3::Hasher::new()),
            path: path.to_owned(),
            read: 0,
        })
    }

    /// The next chunk, and whether it is the last.
    async fn next(&mut self) -> Result<(Vec<u8>, bool), String> {
        let (mut file, mut hasher) = (
            self.file.take().expect("read after the last chunk"),
            self.hasher.take().expect("hasher"),
        );
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut chunk = Vec::with_capacity(PART_BYTES);
            let n = (&mut file)
                .take(PART_BYTES as u64)
                .read_to_end(&mut chunk)?;
            hasher.update(&chunk);
            Ok::<_, std::io::Error>((chunk, n < PART_BYTES, file, hasher))
        });
        let (chunk, last, file, hasher) = read
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.file = Some(file);
        self.hasher = Some(hasher);
        self.read += chunk.len() as u64;
        Ok((chunk, last))
    }

    /// The hash of what was read, which must be the `size` bytes the
    /// bundle has: a seal of anything else could never be matched.
    fn finish(self, size: u64) -> Result<blake3::Hash, String> {
        if self.read != size {
            return Err(format!(
                "{} holds {} bytes, the bundle {size}",
                self.path.display(),
                self.read
            ));
        }
        Ok(self.hasher.expect("hasher").finalize())
    }
}

/// The bucket, served by uploads: its position read as a receiver's
/// `Welcome` would be taken in, then bundles uploaded in order.
pub(super) struct Uploads(pub(super) Arc<Bucket>);

impl super::Served for Uploads {
    type Opened = Welcome;

    async fn open(&self, _link: &Link) -> Result<Welcome, String> {
        self.0.position().await
    }

    async fn serve(
        &self,
        link: &Link,
        welcome: Welcome,
        back: bool,
        shutdown: &CancellationToken,
    ) -> Option<Lost> {
        if back {
            info!(peer = %link.receiver, "bucket reachable again");
        }
        let instance = welcome.instance;
        // A bucket is never rolled back: nothing holds it.
        let _ = link.welcome(welcome).await;
        link.serve_bucket(&self.0, instance, shutdown).await
    }
}

impl Link {
    /// Upload bundles in order until one fails (`Some`: why) or until
    /// shutdown (`None`), to the bucket of `instance`; end each base once
    /// its last member is up, and, while no bundle waits, ask for a base
    /// when one is due.
    async fn serve_bucket(
        &self,
        bucket: &Bucket,
        instance: [u8; 16],
        shutdown: &CancellationToken,
    ) -> Option<Lost> {
        loop {
            let b = loop {
                let arrived = self.outbox.arrived.notified();
                if let Err(error) = bucket.end_base(None).await {
                    return Some(Lost {
                        error,
                        in_flight: false,
                    });
                }
                if let Some(b) = self.outbox.next_for(self.index) {
                    break b;
                }
                self.ask_for_base(bucket, instance).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = arrived => {}
                    _ = tokio::time::sleep(super::exchange::OUTBOX_RECHECK) => {}
                }
            };
            self.outbox.mark_sent(self.index, b.seq);
            let started = Instant::now();
            let uploaded = tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = bucket.upload(&b, &self.id) => r,
            };
            if let Err(error) = uploaded {
                return Some(Lost {
                    error: format!("sequence {}: {error}", b.seq),
                    in_flight: true,
                });
            }
            if let Err(error) = bucket.end_base(Some(b.seq)).await {
                return Some(Lost {
                    error,
                    in_flight: false,
                });
            }
            self.measured(Measure::Sent, (b.size, started.elapsed()));
            self.shipped((&b, false), started).await;
        }
    }
}
