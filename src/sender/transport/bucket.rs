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
use crate::bucket::bases::Cursor;
use crate::bucket::fetch::BucketReader;
use crate::bucket::names::{Kind, base_end_name, listed_name, sender_dir, zip_name};
use crate::bucket::seal::{Belongs, Sealer};
use crate::bucket::settings::Bases;
use crate::bucket::store::Opened;
use crate::bundle::pack::Packed;
use crate::config::BucketConfig;
use crate::proto::frame::Accepts;
use crate::sender::link_rate::Measure;
use crate::status::unix_now;
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
    /// and where uploads go on, in the chain and in a base under way.
    async fn position(&self) -> Result<(Welcome, Cursor), String> {
        let instance = self.instance().await.map_err(|e| self.opened.explain(&e))?;
        let (last_applied, cursor, oldest) = self.newest_sealed().await?;
        self.read_newest_base(oldest).await?;
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
        };
        Ok((welcome, cursor))
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
    /// when the folder holds no seal), where uploads go on (the newest of
    /// the chain, and the base under way: its newest member sealed, if not
    /// its last), and when the oldest seal there was written. Seals are opened from the newest down until one of
    /// each kind holds: seals there and none holding is an error (not this
    /// sender's, or altered), never taken for an empty folder, which would
    /// number bundles again from where receivers already are.
    async fn newest_sealed(
        &self,
    ) -> Result<(u64, Cursor, Option<chrono::DateTime<chrono::Utc>>), String> {
        let reader = self.reader();
        let seals = reader.seals_after(&self.me, 0, usize::MAX).await?;
        let (mut newest, mut cursor) = (None, Cursor::default());
        let (mut chain, mut member) = (false, false);
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
            match sealed.belongs {
                Belongs::Chain => cursor.chain = listed.seq,
                Belongs::Base { first, last } => {
                    cursor.base = (!last).then_some((first, listed.seq));
                }
            }
            if chain && member {
                break;
            }
        }
        let oldest = seals.first().map(|l| l.modified);
        match (newest, seals.last()) {
            (Some(seq), _) => Ok((seq, cursor, oldest)),
            (None, None) => Ok((0, cursor, oldest)),
            (None, Some(last)) => Err(format!(
                "none of the {} seals in {} (the newest {}) opens with this sender's key: not its own, or altered",
                seals.len(),
                reader.object(&sender_dir(&self.me)),
                last.seq
            )),
        }
    }

    /// Upload bundle `b` of sender `id`, then its seal, where `cursor`
    /// says it goes (a bundle for the bucket alone is a base's member; the
    /// last one ends its base, and its seal is copied to the base's end).
    async fn upload(&self, b: &Packed, cursor: &mut Cursor, id: &str) -> Result<(), String> {
        let member = b.only.is_some();
        let (belongs, prev) = cursor.place(b.seq, member, b.ends_tree);
        let zip = self.reader().object(&zip_name(&self.me, b.seq));
        let hash = self
            .put_file(&zip, b)
            .await
            .map_err(|e| format!("{}: {e}", zip))?;
        let seal = self
            .sealer
            .seal(&self.cfg.url, id, (b.seq, prev, b.size), &hash, belongs);
        let bytes = serde_json::to_vec(&seal).expect("a seal serializes");
        let kind = if member { Kind::Member } else { Kind::Chain };
        let mut at = vec![listed_name(&self.me, b.seq, kind)];
        if let Belongs::Base { first, last: true } = belongs {
            at.push(base_end_name(&self.me, first));
        }
        for rel in at {
            let at = self.reader().object(&rel);
            self.opened
                .store
                .put(&at, PutPayload::from(bytes.clone()))
                .await
                .map_err(|e| format!("{at}: {}", self.opened.explain(&e)))?;
        }
        cursor.sealed(b.seq, belongs);
        self.uploaded(b.size, belongs);
        Ok(())
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
    type Opened = (Welcome, Cursor);

    async fn open(&self, _link: &Link) -> Result<(Welcome, Cursor), String> {
        self.0.position().await
    }

    async fn serve(
        &self,
        link: &Link,
        (welcome, cursor): (Welcome, Cursor),
        back: bool,
        shutdown: &CancellationToken,
    ) -> Option<Lost> {
        if back {
            info!(peer = %link.receiver, "bucket reachable again");
        }
        let instance = welcome.instance;
        // A bucket is never rolled back: nothing holds it.
        let _ = link.welcome(welcome).await;
        link.serve_bucket(&self.0, (cursor, instance), shutdown)
            .await
    }
}

impl Link {
    /// Upload bundles in order until one fails (`Some`: why) or until
    /// shutdown (`None`), from `cursor` in the bucket of `instance`; while
    /// none waits, ask for a base when one is due.
    async fn serve_bucket(
        &self,
        bucket: &Bucket,
        (mut cursor, instance): (Cursor, [u8; 16]),
        shutdown: &CancellationToken,
    ) -> Option<Lost> {
        loop {
            let b = loop {
                let arrived = self.outbox.arrived.notified();
                if let Some(b) = self.outbox.next_for(self.index) {
                    break b;
                }
                self.ask_for_base(bucket, &cursor, instance).await;
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
                r = bucket.upload(&b, &mut cursor, &self.id) => r,
            };
            if let Err(error) = uploaded {
                return Some(Lost {
                    error: format!("sequence {}: {error}", b.seq),
                    in_flight: true,
                });
            }
            if b.ends_tree && b.only.is_some() {
                bucket.prune(cursor.chain).await;
            }
            let measured = self.link_rates.record(
                self.index,
                Measure::Sent,
                (b.size, started.elapsed()),
                unix_now(),
            );
            self.tell_measured(measured);
            self.shipped(&b, started).await;
        }
    }
}
