//! The manifest inside every bundle (`.shipper/manifest.json`): who sent
//! it, its sequence, each file with size, mtime, mode and BLAKE3 hash, the
//! parts of large files, and the deleted paths.
//!
//! - `format.rs`: the manifest's types, its JSON, the entries it expects
//!   and how large it may be.
//! - `check.rs`: [`Manifest::parse`] and [`Manifest::check`]: every
//!   consistency check that needs no zip.
//! - `counts.rs`: [`Counts`]: its lists' lengths, counted before it is parsed.
//! - `ids.rs`: sender ids, sequences, part set ids and hashes: what makes
//!   each valid.
//!
//! Pure: nothing here touches the filesystem; the zip's entries are
//! compared against [`Manifest::entry_names`] by the caller.

mod check;
mod counts;
mod format;
mod ids;
#[cfg(test)]
mod samples;

pub use check::ManifestError;
pub use counts::{Count, Counts};
pub use format::{
    CopyEntry, DeltaEntry, DirEntry, FORMAT, FileEntry, FileMeta, LinkEntry,
    MANIFEST_BYTES_PER_ENTRY, MANIFEST_ENTRY, MAX_MANIFEST_BYTES, Manifest, PartEntry,
    delta_entry_name, max_manifest_bytes, part_entry_name,
};
pub use ids::{SeqExhausted, next_seq, valid_sender_id, valid_set_id};
