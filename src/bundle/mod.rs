//! Bundles: standard zip files carrying changed files and a manifest.
//!
//! - [`manifest`]: the manifest's format and its pure consistency checks.
//! - [`pack`]: the sender side, streaming files from the source tree into
//!   zips in the outbox, splitting large files into parts.
//! - [`apply`]: the receiver side, verifying a bundle, staging its files and
//!   publishing them into root atomically. Used by the network path and by
//!   `shipper replay` alike.
//!
//! Nothing here opens a socket.

pub mod apply;
pub mod manifest;
pub mod pack;

pub use manifest::Manifest;

/// Hash a whole file with BLAKE3, streaming.
pub fn hash_file(path: &std::path::Path) -> std::io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize())
}
