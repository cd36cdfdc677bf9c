//! Bundles: standard zip files carrying changed files and a manifest.
//!
//! What both sides share:
//! - [`manifest`]: the manifest's format and its pure consistency checks.
//! - [`Summary`] (`summary.rs`): what a bundle carries, for logs and status.
//! - [`delta`]: a large file's content-defined chunks, its signature, and
//!   the recipe that rebuilds a new version from an old one (pure).
//!
//! The sender's side, behind [`pack`]:
//! - [`pack`]: the packer: which items are read now and how, small files
//!   read in parallel batches; the public types of the sender's side.
//! - `known.rs`: what the receivers hold of a file about to be packed
//!   (unchanged, kept, copied, a delta, or new).
//! - `delta_pack.rs`: a delta's changed bytes into a bundle; the signatures
//!   the sender keeps ([`pack::Signatures`]).
//! - `limits.rs`: how large bundles, parts and files may be, narrowed per
//!   receiver.
//! - `source_read.rs`: reading one source file, strictly or as a snapshot,
//!   into a zip entry while hashing it.
//! - `large.rs`: a file over `chunk_size` as parts spanning bundles.
//! - `cutter.rs`: cutting entries into bundles, finishing each into the
//!   outbox; the outbox's names; what a run did.
//! - `writer.rs`: one bundle being written: the zip's file sink, the
//!   manifest and tallies, sealing.
//! - `zip_entry.rs`: how a file is stored as an entry (deflate or store).
//!
//! The receiver's side, used by the network path and by `shipper replay`
//! alike:
//! - [`verify`]: checks a received bundle before anything is written.
//! - [`apply`]: stages its files and publishes them into root atomically.
//! - `kept.rs`: checks that root holds the files a bundle keeps (their
//!   metadata alone travelled), and makes in staging the files it copies
//!   from root's own, before anything is applied.
//! - `rebuild.rs`: makes in staging the files a bundle carries as deltas,
//!   from root's previous version, checked by hash before and after.
//! - [`part_sets`]: assembles a large file from parts arriving across
//!   bundles.
//! - `part_tree.rs`: a large file's BLAKE3 tree: how long parts are, each
//!   part's chaining value, the whole-file hash merged from them (both
//!   sides).
//! - `unpack.rs`: writes an entry's bytes out, counted and hashed.
//! - `positioned.rs`: a received bundle's file read by position, so one
//!   opened zip serves every unpacking thread.
//! - [`target`]: where a bundle goes (root, staging, part sets).
//! - `stage_names.rs`: where each file a bundle stages sits in its stage
//!   directory (a few to a directory), pure.
//! - [`error`]: what can be wrong with one and how the sender is told.
//! - [`zip_end`]: a zip's end records, read to check its entry count before
//!   the zip crate indexes its directory.
//! - `noise.rs` (tests only, shared with `tests/it`): bytes that do not
//!   compress, from a seed.
//!
//! The receiver's network path alone:
//! - [`arrival`]: what a bundle's bytes are used for while they arrive,
//!   unchecked: its local headers counted, to hand it to the disk early
//!   when its apply will sync the whole filesystem.
//!
//! Nothing here opens a socket.

pub mod apply;
pub mod arrival;
pub mod delta;
pub mod error;
mod kept;
pub mod manifest;
pub mod pack;
pub mod part_sets;
mod part_tree;
mod positioned;
mod rebuild;
mod stage_names;
pub mod target;
mod unpack;
pub mod verify;
pub mod zip_end;

mod cutter;
mod delta_pack;
pub mod growing;
mod known;
mod large;
mod limits;
mod source_read;
mod summary;
mod writer;
mod zip_entry;

#[cfg(test)]
mod noise;
#[cfg(test)]
pub(crate) use noise::noise;

pub use manifest::Manifest;
pub use summary::Summary;
