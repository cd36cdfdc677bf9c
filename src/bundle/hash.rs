//! BLAKE3 of a whole file, as bundles and their files are named by it on
//! both sides. Reads the file; writes nothing.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// How much of a file is read, and hashed on every core, at a time.
const PIECE: usize = 8 << 20;

/// Hash a whole file with BLAKE3, in 8 MiB pieces hashed on every core.
/// (Not mmap: mapped pages would count against the process's RSS.)
pub fn hash_file(path: &Path) -> io::Result<blake3::Hash> {
    hash_reader(File::open(path)?)
}

/// Hash everything `file` holds from where it stands, as [`hash_file`].
pub fn hash_reader(mut file: impl Read) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; PIECE];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hashes_as_its_bytes_at_every_piece_boundary() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, PIECE - 1, PIECE, PIECE + 1, 2 * PIECE] {
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
}
