//! BLAKE3 of a whole file or of what a reader holds, as bundles and their
//! files are named by it on both sides, and the one rule for when a hash
//! is worth spreading over the cores. Reads; writes nothing.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// How much of a file is read, and hashed, at most at a time.
const PIECE: usize = 8 << 20;

/// The smallest buffer a file is read through.
const MIN_READ: usize = 4 << 10;

/// Chunks at least this large are hashed on every core; smaller ones are
/// cheaper hashed on one.
const PARALLEL_HASH_BYTES: usize = 256 << 10;

/// Feed `bytes` to `hasher`, on every core when they are many.
pub fn update(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= PARALLEL_HASH_BYTES {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

/// Hash a whole file with BLAKE3, as [`hash_reader`]. (Not mmap: mapped
/// pages would count against the process's RSS.)
pub fn hash_file(path: &Path) -> io::Result<blake3::Hash> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    hash_reader(file, len)
}

/// Hash everything `file` holds from where it stands, in pieces of up to 8
/// MiB (hashed on every core once large, see [`update`]). `expected_len`,
/// what it should hold, only sizes the buffer: zeroing it is paid once a
/// file, so it is made no larger than the file (a buffer of 8 MiB for each
/// file cost the receiver 2 CPU s of memset on the 5,500 kept files of an
/// identical rewrite, bench.py row 6). A file holding more than expected
/// is still hashed whole, through a buffer that grows.
pub fn hash_reader(mut file: impl Read, expected_len: u64) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = read_buffer([expected_len], MIN_READ, PIECE);
    loop {
        let filled = fill(&mut file, &mut buf)?;
        update(&mut hasher, &buf[..filled]);
        if filled < buf.len() {
            return Ok(hasher.finalize());
        }
        if buf.len() < PIECE {
            buf.resize((buf.len() * 2).min(PIECE), 0);
        }
    }
}

/// Hash everything `file` holds from where it stands, read through `buf`
/// (a caller's, reused from file to file).
pub fn hash_through(mut file: impl Read, buf: &mut [u8]) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = read_once(&mut file, buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        update(&mut hasher, &buf[..n]);
    }
}

/// A zeroed buffer to read files or entries of these sizes through,
/// between `min` and `max` bytes: one byte more than the largest, so the
/// read that finds its end is the second, not a third. Zeroing a buffer is
/// paid each time one is made; reading through one larger than the bytes
/// gains nothing.
pub fn read_buffer(sizes: impl IntoIterator<Item = u64>, min: usize, max: usize) -> Vec<u8> {
    let largest = sizes.into_iter().max().unwrap_or(0);
    let len = usize::try_from(largest.saturating_add(1)).map_or(max, |n| n.clamp(min, max));
    vec![0u8; len]
}

/// Read into `buf` until it is full or `file` ends; how much was read.
fn fill(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_once(file, &mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// One read into `buf` (not empty: an empty one would read as the end),
/// tried again while interrupted.
fn read_once(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    debug_assert!(!buf.is_empty(), "an empty buffer reads as the end");
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_file_hashes_as_its_bytes_around_every_buffer_size() {
        let dir = tempfile::tempdir().unwrap();
        let lens = [
            0,
            1,
            MIN_READ - 1,
            MIN_READ,
            MIN_READ + 1,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            2 * PIECE + 3,
        ];
        for len in lens {
            let data = bytes(len);
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            assert_eq!(hash_file(&path).unwrap(), blake3::hash(&data), "{len}");
        }
    }

    #[test]
    fn a_file_holding_more_or_less_than_expected_is_hashed_whole() {
        let cases = [
            (10_000, 0),
            (MIN_READ, 0),
            (2 * MIN_READ, 0),
            (3 * PIECE + 5, 100),
            (100, 1 << 30),
        ];
        for (len, expected) in cases {
            let data = bytes(len);
            let hash = hash_reader(&data[..], expected).unwrap();
            assert_eq!(
                hash,
                blake3::hash(&data),
                "{len} bytes, {expected} expected"
            );
        }
    }

    #[test]
    fn the_first_buffer_is_no_larger_than_the_file() {
        // It was 8 MiB for every file, zeroed each time.
        let first_read = |len| read_buffer([len], MIN_READ, PIECE).len();
        assert_eq!(first_read(10_000), 10_001);
        assert_eq!(first_read(0), MIN_READ);
        assert_eq!(first_read(u64::MAX), PIECE);
        assert_eq!(first_read(PIECE as u64), PIECE);
    }

    /// Hands out at most `most` bytes a read, sometimes one, is sometimes
    /// interrupted, and fails after `fail_after` bytes if set.
    struct Trickle<'a> {
        data: &'a [u8],
        most: usize,
        reads: usize,
        fail_after: Option<usize>,
        given: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.fail_after.is_some_and(|f| self.given >= f) {
                return Err(io::Error::other("the disk went away"));
            }
            self.reads += 1;
            if self.reads.is_multiple_of(5) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let most = if self.reads.is_multiple_of(3) {
                1
            } else {
                self.most
            };
            let n = buf.len().min(most).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.given += n;
            Ok(n)
        }
    }

    #[test]
    fn short_and_interrupted_reads_hash_the_same_and_a_failed_read_is_an_error() {
        let data = bytes(300_000);
        let trickle = |fail_after| Trickle {
            data: &data,
            most: 1000,
            reads: 0,
            fail_after,
            given: 0,
        };
        assert_eq!(
            hash_reader(trickle(None), 300_000).unwrap(),
            blake3::hash(&data)
        );
        let mut buf = [0u8; 4096];
        assert_eq!(
            hash_through(trickle(None), &mut buf).unwrap(),
            blake3::hash(&data)
        );
        assert!(hash_reader(trickle(Some(150_000)), 300_000).is_err());
        assert!(hash_through(trickle(Some(150_000)), &mut buf).is_err());
    }

    #[test]
    fn a_reader_hashes_from_where_it_stands() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"headbody").unwrap();
        let mut file = File::open(&path).unwrap();
        file.seek(SeekFrom::Start(4)).unwrap();
        assert_eq!(hash_reader(file, 4).unwrap(), blake3::hash(b"body"));
    }
}
