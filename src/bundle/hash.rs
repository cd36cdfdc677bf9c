//! BLAKE3 of a whole file, as bundles and their files are named by it on
//! both sides. Reads the file; writes nothing.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// How much of a file is read, and hashed on every core, at most at a time.
const PIECE: usize = 8 << 20;

/// The buffer a file is first read through. It grows (up to [`PIECE`])
/// only while reads fill it, so zeroing it costs about what the file holds:
/// a buffer of [`PIECE`] for each file cost the receiver 2 CPU s of memset
/// for the 5,500 files of an identical rewrite (bench.py row 6).
const FIRST_READ: usize = 64 << 10;

/// Chunks at least this large are hashed on every core; smaller ones are
/// cheaper hashed on one.
const PARALLEL_HASH_BYTES: usize = 256 << 10;

/// Feed `bytes` to `hasher`, on every core when they are many.
pub(crate) fn update(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= PARALLEL_HASH_BYTES {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

/// Hash a whole file with BLAKE3, in pieces of up to 8 MiB hashed on every
/// core. (Not mmap: mapped pages would count against the process's RSS.)
pub fn hash_file(path: &Path) -> io::Result<blake3::Hash> {
    hash_reader(File::open(path)?)
}

/// Hash everything `file` holds from where it stands, as [`hash_file`].
pub fn hash_reader(file: impl Read) -> io::Result<blake3::Hash> {
    hash_through(file, &mut Vec::new())
}

/// [`hash_reader`] through `buf`, grown as it needs (see [`FIRST_READ`]).
fn hash_through(mut file: impl Read, buf: &mut Vec<u8>) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    if buf.is_empty() {
        buf.resize(FIRST_READ, 0);
    }
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        update(&mut hasher, &buf[..filled]);
        if filled < buf.len() {
            return Ok(hasher.finalize());
        }
        if buf.len() < PIECE {
            buf.resize((buf.len() * 4).min(PIECE), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hashes_as_its_bytes_at_every_piece_boundary() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            FIRST_READ - 1,
            FIRST_READ,
            FIRST_READ + 1,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            2 * PIECE,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            assert_eq!(
                hash_file(&path).unwrap(),
                blake3::hash(&data),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn a_reader_hashes_from_where_it_stands() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"headbody").unwrap();
        let mut file = File::open(&path).unwrap();
        file.seek(SeekFrom::Start(4)).unwrap();
        assert_eq!(hash_reader(file).unwrap(), blake3::hash(b"body"));
    }

    #[test]
    fn a_small_file_is_read_through_a_small_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (10_000, FIRST_READ),
            (FIRST_READ + 1, 4 * FIRST_READ),
            (3 * PIECE, PIECE),
        ];
        for (len, grown_to) in cases {
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, vec![7u8; len]).unwrap();
            let mut buf = Vec::new();
            let hash = hash_through(File::open(&path).unwrap(), &mut buf).unwrap();
            assert_eq!(hash, blake3::hash(&vec![7u8; len]), "{len} bytes");
            assert_eq!(buf.len(), grown_to, "{len} bytes");
        }
    }
}
