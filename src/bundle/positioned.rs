//! A received bundle's file read by position (`pread`): each clone keeps
//! its own place in the one open file, so clones of one opened zip
//! archive, which share the central directory it parsed once, unpack the
//! bundle on several threads at once. Reads only.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A file and a place in it; cloned, the place is the clone's own.
#[derive(Debug, Clone)]
pub struct PositionedFile {
    file: Arc<File>,
    len: u64,
    pos: u64,
}

impl PositionedFile {
    /// Read `file` from its start; its length is taken now (a received
    /// bundle no longer grows).
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file: Arc::new(file),
            len,
            pos: 0,
        })
    }
}

impl Read for PositionedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PositionedFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, by) = match to {
            SeekFrom::Start(at) => {
                self.pos = at;
                return Ok(at);
            }
            SeekFrom::End(by) => (self.len, by),
            SeekFrom::Current(by) => (self.pos, by),
        };
        self.pos = base.checked_add_signed(by).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        Ok(self.pos)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, PositionedFile) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(bytes).unwrap();
        let f = PositionedFile::new(File::open(t.path()).unwrap()).unwrap();
        (t, f)
    }

    #[test]
    fn clones_read_at_places_of_their_own() {
        let (_t, mut a) = file_with(b"0123456789");
        let mut b = a.clone();
        let mut buf = [0u8; 3];
        a.seek(SeekFrom::Start(2)).unwrap();
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"234");
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"012", "a clone moved with the original");
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"567");
    }

    #[test]
    fn seeks_from_the_end_and_from_here_and_never_before_the_start() {
        let (_t, mut f) = file_with(b"0123456789");
        assert_eq!(f.seek(SeekFrom::End(-4)).unwrap(), 6);
        assert_eq!(f.seek(SeekFrom::Current(-1)).unwrap(), 5);
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"56789");
        assert_eq!(f.stream_position().unwrap(), 10);
        let e = f.seek(SeekFrom::Current(-11)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(f.stream_position().unwrap(), 10, "a refused seek moved");
    }
}
