//! Reading sealed bundles from a bucket: the seals past a position, a
//! seal's bytes (never more than a seal may have), a zip downloaded into a
//! file and hashed as it comes, never held in memory. Used by a receiver's
//! polling and by `shipper replay --from-bucket`. The outer error: the
//! bucket could not be read (named, with refused credentials); the inner
//! one: this object is not taken.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;

use super::names::{seal_name, seal_seq, sender_dir};
use super::seal::MAX_SEAL_BYTES;
use super::store::Opened;
use super::url::BucketUrl;
use crate::tls::Fingerprint;

/// A seal as listed.
pub struct Listed {
    pub seq: u64,
    pub at: ObjectPath,
    /// Its entity tag, where the store gives one.
    pub tag: Option<String>,
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

    /// The seals in `sender`'s folder numbered above `from`, in order, at
    /// most `most` of them (the rest at the next call), each with its
    /// entity tag where the store gives one (it changes with the object).
    pub async fn seals_after(
        &self,
        sender: &Fingerprint,
        from: u64,
        most: usize,
    ) -> Result<Vec<Listed>, String> {
        let dir = self.object(&sender_dir(sender));
        // Listing starts after this key: every later seal sorts after it.
        let offset = self.object(&seal_name(sender, from));
        let prefix = self.url.key("");
        let mut listed = self.opened.store.list_with_offset(Some(&dir), &offset);
        let mut seals = Vec::new();
        // Streamed, and cut short: whoever can write the bucket can put
        // any number of keys there.
        while seals.len() < most
            && let Some(o) = listed
                .try_next()
                .await
                .map_err(|e| self.opened.explain(&e))?
        {
            let rel = o
                .location
                .as_ref()
                .strip_prefix(prefix.as_str())
                .unwrap_or_default();
            if let Some(seq) = seal_seq(sender, rel).filter(|s| *s > from) {
                seals.push(Listed {
                    seq,
                    at: o.location,
                    tag: o.e_tag,
                });
            }
        }
        seals.sort_by_key(|l| l.seq);
        Ok(seals)
    }

    /// A seal's bytes; the inner error when it is larger than any seal.
    pub async fn read_seal(&self, at: &ObjectPath) -> Result<Result<Vec<u8>, String>, String> {
        let explain = |e: object_store::Error| self.opened.explain(&e);
        let got = self.opened.store.get(at).await.map_err(explain)?;
        if got.meta.size > MAX_SEAL_BYTES as u64 {
            return Ok(Err(format!(
                "the seal is {} bytes, over the {MAX_SEAL_BYTES} a seal may have",
                got.meta.size
            )));
        }
        Ok(Ok(got.bytes().await.map_err(explain)?.to_vec()))
    }

    /// The entity tag of the object at `at`, where the store gives one.
    pub async fn tag(&self, at: &ObjectPath) -> Result<Option<String>, String> {
        let meta = self.opened.store.head(at).await;
        Ok(meta.map_err(|e| self.opened.explain(&e))?.e_tag)
    }

    /// Download the object `at` into `dest`, hashing it as it comes, taking
    /// at most `max` bytes; its size and BLAKE3. A blocking thread writes
    /// and hashes while this task reads the body. The inner error: the
    /// object is larger than `max`, or `dest` could not be written.
    pub async fn download(
        &self,
        at: &ObjectPath,
        dest: &std::path::Path,
        max: u64,
    ) -> Result<Result<(u64, blake3::Hash), String>, String> {
        let explain = |e: object_store::Error| self.opened.explain(&e);
        let got = self.opened.store.get(at).await.map_err(explain)?;
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
            let chunk = chunk.map_err(explain)?;
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
            Err(e) => Err(format!("the task writing {} failed: {e}", dest.display())),
        }
    }
}
