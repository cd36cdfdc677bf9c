//! The sender's side of deltas (`delta.rs`): a large file that changed,
//! whose old version the receivers hold and the sender signed, is read
//! once to sign it again and hash it; if few of its chunks are new, only
//! those travel, as one zip entry beside a recipe. Reads the source through
//! [`SourceDir`]; writes zip entries; stores signatures through
//! [`Signatures`].

use std::io;

use super::cutter::{Cutter, Report, Unsigned};
use super::delta::{Chunk, Chunker, DELTA_MIN, Recipe, Signature};
use super::manifest::{FileMeta, delta_entry_name};
use super::source_read::{Outcome, Source};
use super::writer::need;
use crate::source_dir::SourceDir;
use crate::stamp::{Kind, Stamp};

/// What the sender remembers of the large files it shipped: one signature
/// per path, of the version it last packed (see `sender/signatures.rs`).
pub trait Signatures: Sync {
    /// The signature stored for `path`, if any and intact.
    fn get(&self, path: &str) -> Option<Signature>;
    /// `path` was packed with this content.
    fn put(&self, path: &str, sig: &Signature);
    /// `path` is gone: its signature goes.
    fn forget(&self, path: &str);
}

/// How a file packed with its bytes is signed for later deltas: later,
/// off the packing path (chunking a first ship of large files inline cost
/// it half a second per GiB on two cores: bench workload 5), or now, from
/// the read that found its delta would not pay.
pub(super) enum Signing<'a> {
    Later,
    Done(&'a dyn Signatures, Signed),
}

impl Signing<'_> {
    /// The file was packed with `stamp` and content `hash`: store its
    /// signature, or note it in `report` to be signed. (One made by a read
    /// that found other content is not stored.)
    pub(super) fn store(
        self,
        report: &mut Report,
        rel: &str,
        (stamp, hash): (Stamp, blake3::Hash),
    ) {
        match self {
            Signing::Later => report.unsigned.push(Unsigned {
                path: rel.to_owned(),
                stamp,
                hash,
            }),
            Signing::Done(signs, signed) if signed.hash == hash => {
                signs.put(rel, &signed.signature(stamp.size));
            }
            Signing::Done(..) => {}
        }
    }
}

/// A file signed: its content hash and chunks.
#[derive(Debug, PartialEq, Eq)]
pub struct Signed {
    pub hash: blake3::Hash,
    pub chunks: Vec<Chunk>,
}

impl Signed {
    /// Its signature, for a file of `size` bytes.
    pub fn signature(self, size: u64) -> Signature {
        let hash = *self.hash.as_bytes();
        Signature {
            size,
            hash,
            chunks: self.chunks,
        }
    }
}

/// A delta worth sending: the old version it is rebuilt from, how, and
/// what the new version is.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Planned {
    pub(super) base: Signature,
    pub(super) recipe: Recipe,
    pub(super) new: Signed,
}

/// The signature of the version of `rel` the receivers hold (`previous`),
/// if the file is large enough for a delta and one is stored for exactly
/// that content.
pub(super) fn base_of(
    signs: &dyn Signatures,
    rel: &str,
    previous: Option<&FileMeta>,
    stamp: &Stamp,
) -> Option<Signature> {
    let p = previous.filter(|p| p.kind == Kind::File && p.size >= DELTA_MIN)?;
    // (A file found small may be one being rewritten: its signature stays
    // until it is deleted, or replaced when it ships large again.)
    if stamp.size < DELTA_MIN {
        return None;
    }
    let sig = signs.get(rel)?;
    let same = sig.size == p.size && blake3::Hash::from_bytes(sig.hash).to_hex().as_str() == p.hash;
    same.then_some(sig)
}

/// Read `rel` (found with `stamp`) whole: its BLAKE3 hash and its chunks,
/// on two cores (`quiet`: on this thread alone). `None` if it cannot be
/// read or changed meanwhile: it is then packed as usual, which says why.
pub fn sign(
    dir: &SourceDir,
    (rel, stamp): (&str, Stamp),
    buf: &mut [u8],
    quiet: bool,
) -> Option<Signed> {
    use std::io::Read;
    let mut f = dir.open_file(rel).ok()?;
    let mut hasher = blake3::Hasher::new();
    let mut chunker = Chunker::default();
    loop {
        let n = f.read(buf).ok()?;
        if n == 0 {
            break;
        }
        let bytes = &buf[..n];
        if quiet {
            hasher.update(bytes);
            chunker.update(bytes);
        } else {
            rayon::join(|| hasher.update(bytes), || chunker.update(bytes));
        }
    }
    let still = dir
        .stat_afresh(rel)
        .is_ok_and(|st| Stamp::of_stat(&st) == stamp);
    still.then(|| Signed {
        hash: hasher.finalize(),
        chunks: chunker.finish(),
    })
}

/// The delta from `base` to `new`, if it is worth sending: at most half
/// the file travels, within one part (so within one bundle).
pub(super) fn plan(base: Signature, new: Signed, chunk_size: u64) -> Result<Planned, Signed> {
    let size: u64 = new.chunks.iter().map(|c| u64::from(c.len)).sum();
    let recipe = Recipe::plan(&base, &new.chunks);
    if recipe.data_len() > chunk_size.min(size / 2) {
        return Err(new);
    }
    Ok(Planned { base, recipe, new })
}

/// Pack `src` as the delta `planned`: the bytes that changed as one entry
/// of the open bundle (or the next), the recipe in the manifest. A file
/// that changed since it was signed stays pending.
pub(super) fn pack_delta(
    cut: &mut Cutter<'_>,
    report: &mut Report,
    mut src: Source<'_>,
    planned: Planned,
    signs: &dyn Signatures,
) -> io::Result<()> {
    let (rel, stamp) = (src.rel, src.stamp);
    let name = delta_entry_name(rel);
    let data = planned.recipe.data_len();
    // The receiver writes the whole file: it counts toward what the bundle
    // unpacks to.
    let b = cut.room_for_writing(report, (need(&name, data), stamp.size), &name)?;
    let options = src.entry_options();
    let ranges = planned.recipe.data_ranges();
    match src.write_entry(&mut b.zip, &name, options, &ranges, None)? {
        Outcome::Lost(why) => report.lost(rel, why),
        Outcome::Copied { .. } => {
            b.add_delta(
                (rel, stamp, planned.new.hash),
                &planned.base,
                &planned.recipe,
            );
            signs.put(rel, &planned.new.signature(stamp.size));
        }
    }
    Ok(())
}
