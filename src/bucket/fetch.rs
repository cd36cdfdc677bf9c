//! Reading sealed bundles from a bucket: the seals past a position, a
//! seal opened for its sender (never more read than a seal may have), a
//! zip downloaded into a file and hashed as it comes, never held in
//! memory. Used by a receiver's polling, by a sender finding how far its
//! bundles got, and by `shipper replay --from-bucket`. The outer error: the
//! bucket could not be read (named, with refused credentials); the inner
//! one: this object is not taken.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;

use super::names::{Kind, base_end_first, bases_dir, listed_seq, seal_name, sender_dir};
use super::seal::{self, MAX_SEAL_BYTES, Named, Sealed};
use super::store::Opened;
use super::url::BucketUrl;
use crate::tls::Fingerprint;

/// A seal as listed.
pub struct Listed {
    pub seq: u64,
    pub kind: Kind,
    pub at: ObjectPath,
    /// Its entity tag, where the store gives one.
    pub tag: Option<String>,
    /// When it was written.
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// Ends of bases listed at most: a sender keeps `bucket_keep` of them.
const MAX_BASES_LISTED: usize = 1000;

/// A complete base as listed: its first member, its end object, and
/// when that was written.
pub struct BaseListed {
    pub first: u64,
    pub at: ObjectPath,
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// A bucket's sealed bundles, as read by a receiver.
pub struct BucketReader<'a> {
    pub opened: &'a Opened,
    pub url: &'a BucketUrl,
}

impl BucketReader<'_> {
    /// `rel` under the bucket's prefix.
    pub fn object(&self, rel: &str) -> ObjectPath {
        ObjectPath::from(self.url.key(rel))
    }

    /// The seals in `sender`'s folder numbered above `from` (of the chain
    /// and of bases' members), in order, at most `most` of them (the rest
    /// at the next call), each with its entity tag where the store gives
    /// one (it changes with the object). The store lists keys in order and
    /// the sender uploads in sequence order: a listing is never missing a
    /// seal below one it holds.
    pub async fn seals_after(
        &self,
        sender: &Fingerprint,
        from: u64,
        most: usize,
    ) -> Result<Vec<Listed>, String> {
        let dir = self.object(&sender_dir(sender));
        // Listing starts after this key: every later seal sorts after it.
        let offset = self.object(&seal_name(sender, from));
        let mut seals = self
            .list_named((&dir, Some(&offset)), most, |rel, o| {
                let (seq, kind) = listed_seq(sender, rel).filter(|(s, _)| *s > from)?;
                Some(Listed {
                    seq,
                    kind,
                    at: o.location,
                    tag: o.e_tag,
                    modified: o.last_modified,
                })
            })
            .await?;
        seals.sort_by_key(|l| l.seq);
        Ok(seals)
    }

    /// The objects under `dir` (after `offset`, if given) whose names,
    /// relative to the prefix, `take` makes something of: at most `most`
    /// of them, the listing streamed and cut short there, since whoever
    /// can write the bucket can put any number of keys.
    pub async fn list_named<T>(
        &self,
        (dir, offset): (&ObjectPath, Option<&ObjectPath>),
        most: usize,
        take: impl Fn(&str, object_store::ObjectMeta) -> Option<T>,
    ) -> Result<Vec<T>, String> {
        let prefix = self.url.key("");
        let mut listed = match offset {
            Some(offset) => self.opened.store.list_with_offset(Some(dir), offset),
            None => self.opened.store.list(Some(dir)),
        };
        let mut out = Vec::new();
        while out.len() < most
            && let Some(o) = listed
                .try_next()
                .await
                .map_err(|e| self.opened.explain(&e))?
        {
            let rel = o.location.as_ref().strip_prefix(prefix.as_str());
            let rel = rel.unwrap_or_default().to_owned();
            out.extend(take(&rel, o));
        }
        Ok(out)
    }

    /// The listed seal of `sender`, opened for that sender alone: the
    /// inner error says why it does not hold.
    pub async fn open_seal(
        &self,
        sender: &Fingerprint,
        listed: &Listed,
    ) -> Result<Result<Sealed, SealNotHeld>, String> {
        let named = Named::Bundle(listed.seq, listed.kind);
        self.read_seal(&listed.at, named, sender).await
    }

    /// `sender`'s complete bases, oldest first: the first member of each,
    /// with where its end is and when it was written.
    pub async fn bases(&self, sender: &Fingerprint) -> Result<Vec<BaseListed>, String> {
        let dir = self.object(&bases_dir(sender));
        let mut bases = self
            .list_named((&dir, None), MAX_BASES_LISTED, |rel, o| {
                Some(BaseListed {
                    first: base_end_first(sender, rel)?,
                    at: o.location,
                    modified: o.last_modified,
                })
            })
            .await?;
        bases.sort_by_key(|b| b.first);
        Ok(bases)
    }

    /// The end of the listed base of `sender`, opened for that sender
    /// alone: the base's last member's seal. The inner error says why it
    /// does not hold.
    pub async fn open_base_end(
        &self,
        sender: &Fingerprint,
        base: &BaseListed,
    ) -> Result<Result<Sealed, SealNotHeld>, String> {
        let named = Named::BaseEnd { first: base.first };
        self.read_seal(&base.at, named, sender).await
    }

    /// The seal at `at`, stored as `named`, opened for `sender` alone:
    /// never more read than a seal may have.
    async fn read_seal(
        &self,
        at: &ObjectPath,
        named: Named,
        sender: &Fingerprint,
    ) -> Result<Result<Sealed, SealNotHeld>, String> {
        let got = match self.get_within(at, MAX_SEAL_BYTES as u64).await? {
            Capped::Got(got) => got,
            Capped::Missing => return Ok(Err(SealNotHeld::Gone)),
            Capped::Over(size) => return Ok(Err(SealNotHeld::Oversized(size))),
        };
        let bytes = got.bytes().await.map_err(|e| self.opened.explain(&e))?;
        Ok(seal::open(&bytes, self.url, named, &[*sender]).map_err(SealNotHeld::Refused))
    }

    /// The object at `at`, to be read, when it is there and at most `max`
    /// bytes.
    async fn get_within(&self, at: &ObjectPath, max: u64) -> Result<Capped, String> {
        match self.opened.store.get(at).await {
            Ok(got) if got.meta.size > max => Ok(Capped::Over(got.meta.size)),
            Ok(got) => Ok(Capped::Got(got)),
            Err(object_store::Error::NotFound { .. }) => Ok(Capped::Missing),
            Err(e) => Err(self.opened.explain(&e)),
        }
    }

    /// The entity tag of the object at `at`, where the store gives one;
    /// `None` too when it is not there.
    pub async fn tag(&self, at: &ObjectPath) -> Result<Option<String>, String> {
        match self.opened.store.head(at).await {
            Ok(meta) => Ok(meta.e_tag),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.opened.explain(&e)),
        }
    }

    /// Download the object `at` into `dest`, hashing it as it comes, taking
    /// at most `max` bytes. A blocking thread writes and hashes while this
    /// task reads the body. The inner error: why this object was not
    /// downloaded.
    pub async fn download(
        &self,
        at: &ObjectPath,
        dest: &std::path::Path,
        max: u64,
    ) -> Result<Result<Downloaded, NotDownloaded>, String> {
        let explain = |e: object_store::Error| self.opened.explain(&e);
        let got = match self.get_within(at, max).await? {
            Capped::Got(got) => got,
            Capped::Missing => return Ok(Err(NotDownloaded::Missing)),
            Capped::Over(size) => return Ok(Err(NotDownloaded::TooLarge { size, max })),
        };
        let tag = got.meta.e_tag.clone();
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
            let chunk = chunk.map_err(explain)?;
            taken += chunk.len() as u64;
            if taken > max {
                drop(tx);
                // Its file is made by then: removed with it, not after.
                let _ = writer.await;
                return Ok(Err(NotDownloaded::TooLarge { size: taken, max }));
            }
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
        drop(tx);
        match writer.await {
            Ok(Ok((size, hash))) => Ok(Ok(Downloaded { size, hash, tag })),
            Ok(Err(e)) => Ok(Err(NotDownloaded::Store {
                path: dest.display().to_string(),
                error: e.to_string(),
            })),
            Err(e) => Err(format!("the task writing {} failed: {e}", dest.display())),
        }
    }
}

/// An object asked for with a size it may have at most.
enum Capped {
    Got(object_store::GetResult),
    Missing,
    /// Larger than that: its size.
    Over(u64),
}

/// A zip downloaded: its size, BLAKE3, and entity tag as the store gave
/// it with the bytes.
pub struct Downloaded {
    pub size: u64,
    pub hash: blake3::Hash,
    pub tag: Option<String>,
}

/// Why a listed seal does not hold. Such a seal carries no authority: it
/// never holds back the bundles after it (the next genuine seal names the
/// one sealed before it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealNotHeld {
    #[error("seal refused: it is gone")]
    Gone,
    #[error("seal refused: {0} bytes, over the {MAX_SEAL_BYTES} a seal may have")]
    Oversized(u64),
    #[error("seal refused: {0}")]
    Refused(seal::SealRefused),
}

impl SealNotHeld {
    /// Whether it stays so while the seal object is unchanged (a seal gone
    /// may be uploaded again).
    pub fn lasting(&self) -> bool {
        !matches!(self, SealNotHeld::Gone)
    }
}

/// Why a zip was not downloaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotDownloaded {
    #[error("its zip is not in the bucket")]
    Missing,
    #[error("the zip is {size} bytes or more, more than the {max} sealed")]
    TooLarge { size: u64, max: u64 },
    #[error("cannot store it in {path}: {error}")]
    Store { path: String, error: String },
}

impl NotDownloaded {
    /// Whether it stays so while the object is unchanged: only what the
    /// object itself is (a missing one may be uploaded, a full disk freed).
    pub fn lasting(&self) -> bool {
        matches!(self, NotDownloaded::TooLarge { .. })
    }
}
