//! Bundles: standard zip files carrying changed files and a manifest.
//!
//! - [`manifest`]: the manifest's format and its pure consistency checks.
//! - [`pack`]: the sender side, streaming files from the source tree into
//!   zips in the outbox, splitting large files into parts.
//! - The receiver side, used by the network path and by `shipper replay`
//!   alike: [`verify`] checks a received bundle before anything is written;
//!   [`apply`] stages its files and publishes them into root atomically;
//!   [`part_sets`] assembles a large file from parts arriving across
//!   bundles; `unpack` writes an entry's bytes out, counted and hashed;
//!   [`target`] is where a bundle goes (root, staging, part sets);
//!   [`error`] is what can be wrong with one and how the sender is told.
//! - [`zip_end`]: a zip's end records, read to check its entry count before
//!   the zip crate indexes its directory.
//!
//! Nothing here opens a socket.

pub mod apply;
pub mod error;
pub mod manifest;
pub mod pack;
pub mod part_sets;
pub mod target;
mod unpack;
pub mod verify;
pub mod zip_end;

pub use manifest::Manifest;

/// What a bundle carries, for logs and `shipper flush`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub files: u64,
    pub parts: u64,
    pub deletions: u64,
    /// Content bytes (before compression).
    pub bytes: u64,
}

impl Summary {
    pub fn add(&mut self, other: &Summary) {
        self.files += other.files;
        self.parts += other.parts;
        self.deletions += other.deletions;
        self.bytes += other.bytes;
    }
}

/// Hash a whole file with BLAKE3, in 8 MiB pieces hashed on every core.
/// (Not mmap: mapped pages would count against the process's RSS.)
pub fn hash_file(path: &std::path::Path) -> std::io::Result<blake3::Hash> {
    hash_reader(std::fs::File::open(path)?)
}

/// Hash everything `file` holds from where it stands, as [`hash_file`].
pub fn hash_reader(mut file: std::fs::File) -> std::io::Result<blake3::Hash> {
    use std::io::Read;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        hasher.update_rayon(&buf[..filled]);
        if filled < buf.len() {
            break;
        }
    }
    Ok(hasher.finalize())
}
