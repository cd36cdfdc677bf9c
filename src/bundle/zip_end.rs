//! The end of a zip, read before the zip crate indexes its central
//! directory.
//!
//! `ZipArchive::new` reads every central directory header the end of a zip
//! claims into memory, one allocation per entry, before anyone can ask how
//! many there are. A receiver must compare that count with its limit
//! first. This reads only the end records (the end-of-central-directory
//! record and, for Zip64, its locator and the Zip64 record) and accepts
//! only the layout every writer shipper meets produces (its own packer,
//! Python's zipfile, `zip`): the end record last, with no comment; a
//! Zip64 record without extensible data right before its locator; and the
//! central directory right before them, at the offset they state. From such
//! an end the zip crate reads the same numbers and never falls back to
//! another record found further in, so the count checked here is the count
//! it indexes. Never reads the directory itself; parsing is pure, only
//! [`read`] touches the file.

use std::io::{self, Read, Seek, SeekFrom};

/// Where the central directory lies and how many entries it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryEnd {
    pub entries: u64,
    /// Offset of the first central directory header.
    pub start: u64,
    /// Bytes of all central directory headers.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ZipEndError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Not the layout described in the module header.
    #[error("{0}")]
    Layout(&'static str),
    /// More entries than the caller allows; nothing else was checked.
    #[error("{claimed} zip entries")]
    TooMany { claimed: u64 },
}

const END: usize = 22;
const LOCATOR: usize = 20;
/// A Zip64 end record without extensible data, signature included.
const END64: usize = 56;
/// The fixed part of one central directory header.
pub const HEADER_FIXED: u64 = 46;

/// The end-of-central-directory record: the last [`END`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct End {
    disk: u16,
    disk_with_directory: u16,
    entries_on_disk: u16,
    entries: u16,
    size: u32,
    start: u32,
    comment_len: u16,
}

/// The little-endian `u16` at `at` in a zip record `b` (every number in a
/// zip is little-endian); panics past `b`'s end, as do the two below.
pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn parse_end(b: &[u8; END]) -> Result<End, ZipEndError> {
    if b[..4] != *b"PK\x05\x06" {
        return Err(ZipEndError::Layout(
            "no end-of-central-directory record at its end (a shipper bundle carries no zip comment and nothing after it)",
        ));
    }
    Ok(End {
        disk: u16_at(b, 4),
        disk_with_directory: u16_at(b, 6),
        entries_on_disk: u16_at(b, 8),
        entries: u16_at(b, 10),
        size: u32_at(b, 12),
        start: u32_at(b, 16),
        comment_len: u16_at(b, 20),
    })
}

impl End {
    /// Any field at its maximum defers to the Zip64 record, as for the zip crate.
    fn defers_to_zip64(&self) -> bool {
        self.entries == u16::MAX || self.size == u32::MAX || self.start == u32::MAX
    }
}

/// The Zip64 locator: where the Zip64 end record starts.
fn parse_locator(b: &[u8; LOCATOR]) -> Result<u64, ZipEndError> {
    if b[..4] != *b"PK\x06\x07" {
        return Err(ZipEndError::Layout(
            "the end record defers to a Zip64 record but no Zip64 locator precedes it",
        ));
    }
    if u32_at(b, 4) != 0 || u32_at(b, 16) > 1 {
        return Err(ZipEndError::Layout("multi-disk zips are not supported"));
    }
    Ok(u64_at(b, 8))
}

fn parse_end64(b: &[u8; END64]) -> Result<DirectoryEnd, ZipEndError> {
    if b[..4] != *b"PK\x06\x06" {
        return Err(ZipEndError::Layout(
            "no Zip64 end record where its locator points",
        ));
    }
    if u64_at(b, 4) != (END64 - 12) as u64 {
        return Err(ZipEndError::Layout(
            "the Zip64 end record carries extensible data",
        ));
    }
    let (disk, disk_with_directory) = (u32_at(b, 16), u32_at(b, 20));
    let (entries_on_disk, entries) = (u64_at(b, 24), u64_at(b, 32));
    if disk != 0 || disk_with_directory != 0 || entries_on_disk != entries {
        return Err(ZipEndError::Layout("multi-disk zips are not supported"));
    }
    Ok(DirectoryEnd {
        entries,
        size: u64_at(b, 40),
        start: u64_at(b, 48),
    })
}

/// Read the end of the zip in `r` and refuse it, before anything else is
/// checked, when it claims more than `max_entries` entries.
pub fn read(r: &mut (impl Read + Seek), max_entries: u64) -> Result<DirectoryEnd, ZipEndError> {
    let len = r.seek(SeekFrom::End(0))?;
    let Some(end_at) = len.checked_sub(END as u64) else {
        return Err(ZipEndError::Layout("too short to be a zip"));
    };
    let mut b = [0u8; END];
    read_at(r, end_at, &mut b)?;
    let end = parse_end(&b)?;
    if end.comment_len != 0 {
        return Err(ZipEndError::Layout(
            "the zip has a comment (a shipper bundle carries none)",
        ));
    }
    let (dir, records_at) = if end.defers_to_zip64() {
        let Some(locator_at) = end_at.checked_sub(LOCATOR as u64) else {
            return Err(ZipEndError::Layout("too short for its Zip64 end records"));
        };
        let mut l = [0u8; LOCATOR];
        read_at(r, locator_at, &mut l)?;
        let end64_at = parse_locator(&l)?;
        if end64_at.checked_add(END64 as u64) != Some(locator_at) {
            return Err(ZipEndError::Layout(
                "the Zip64 end record is not right before its locator",
            ));
        }
        let mut e = [0u8; END64];
        read_at(r, end64_at, &mut e)?;
        (parse_end64(&e)?, end64_at)
    } else {
        if end.disk != 0 || end.disk_with_directory != 0 || end.entries_on_disk != end.entries {
            return Err(ZipEndError::Layout("multi-disk zips are not supported"));
        }
        let dir = DirectoryEnd {
            entries: end.entries.into(),
            size: end.size.into(),
            start: end.start.into(),
        };
        (dir, end_at)
    };
    if dir.entries > max_entries {
        return Err(ZipEndError::TooMany {
            claimed: dir.entries,
        });
    }
    check_directory(&dir, records_at)?;
    if dir.entries > 0 {
        let mut sig = [0u8; 4];
        read_at(r, dir.start, &mut sig)?;
        if sig != *b"PK\x01\x02" {
            return Err(ZipEndError::Layout(
                "no central directory header where the end record says the directory starts",
            ));
        }
    }
    Ok(dir)
}

/// The directory must end where the end records start (nothing before the
/// zip, nothing between) and have room for the headers it claims.
fn check_directory(dir: &DirectoryEnd, records_at: u64) -> Result<(), ZipEndError> {
    if dir.start.checked_add(dir.size) != Some(records_at) {
        return Err(ZipEndError::Layout(
            "the central directory does not end where the end records start",
        ));
    }
    if dir.entries.saturating_mul(HEADER_FIXED) > dir.size {
        return Err(ZipEndError::Layout(
            "the central directory is too small for the entries it claims",
        ));
    }
    Ok(())
}

fn read_at(r: &mut (impl Read + Seek), at: u64, buf: &mut [u8]) -> Result<(), ZipEndError> {
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ZipEndError::Layout("an end record lies past the end"),
        _ => ZipEndError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// A real zip of `n` small entries, as the zip crate writes it.
    fn zip_of(n: usize) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for i in 0..n {
            w.start_file(format!("f{i}"), zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(b"x").unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn end_of(bytes: &[u8], max: u64) -> Result<DirectoryEnd, ZipEndError> {
        read(&mut Cursor::new(bytes), max)
    }

    fn layout(r: Result<DirectoryEnd, ZipEndError>) -> &'static str {
        match r {
            Err(ZipEndError::Layout(m)) => m,
            other => panic!("expected a layout refusal, got {other:?}"),
        }
    }

    #[test]
    fn reads_what_the_zip_crate_reads() {
        for n in [0, 1, 3] {
            let bytes = zip_of(n);
            let end = end_of(&bytes, 10).unwrap();
            let z = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
            assert_eq!(end.entries, z.len() as u64);
            assert_eq!(end.start, z.central_directory_start());
        }
    }

    #[test]
    fn zip64_ends_are_read_from_the_zip64_record() {
        // Over 65,535 entries the writer must use the Zip64 end records.
        let bytes = zip_of(70_000);
        let end = end_of(&bytes, 100_000).unwrap();
        assert_eq!(end.entries, 70_000);
        assert!(matches!(
            end_of(&bytes, 69_999),
            Err(ZipEndError::TooMany { claimed: 70_000 })
        ));
    }

    #[test]
    fn the_count_is_refused_before_anything_else_is_checked() {
        let mut bytes = zip_of(2);
        let at = bytes.len() - END;
        // Claims 9 entries in a directory that holds 2.
        bytes[at + 8..at + 12].copy_from_slice(&[9, 0, 9, 0]);
        assert!(matches!(
            end_of(&bytes, 5),
            Err(ZipEndError::TooMany { claimed: 9 })
        ));
        assert!(layout(end_of(&bytes, 10)).contains("too small"));
    }

    #[test]
    fn any_other_layout_is_refused() {
        let good = zip_of(2);
        let at = good.len() - END;
        let mut comment = good.clone();
        comment[at + 20] = 3;
        comment.extend_from_slice(b"abc");
        assert!(layout(end_of(&comment, 10)).contains("no end-of-central"));
        comment.truncate(good.len());
        assert!(layout(end_of(&comment, 10)).contains("comment"));

        let mut trailing = good.clone();
        trailing.push(0);
        assert!(layout(end_of(&trailing, 10)).contains("no end-of-central"));

        let mut prefixed = b"#!/bin/sh\n".to_vec();
        prefixed.extend_from_slice(&good);
        assert!(layout(end_of(&prefixed, 10)).contains("does not end where"));

        let mut moved = good.clone();
        let start = u32_at(&moved, at + 16);
        moved[at + 16..at + 20].copy_from_slice(&(start + 1).to_le_bytes());
        assert!(layout(end_of(&moved, 10)).contains("does not end where"));

        let mut zip64_without_locator = good.clone();
        zip64_without_locator[at + 10..at + 12].copy_from_slice(&[0xff, 0xff]);
        zip64_without_locator[at + 8..at + 10].copy_from_slice(&[0xff, 0xff]);
        assert!(layout(end_of(&zip64_without_locator, 10)).contains("locator"));

        assert!(layout(end_of(b"PK\x05\x06", 10)).contains("too short"));
        assert!(layout(end_of(&[0u8; 100], 10)).contains("no end-of-central"));
    }

    #[test]
    fn every_cut_of_a_zip_is_refused_without_a_panic() {
        let good = zip_of(3);
        for cut in 0..good.len() {
            assert!(end_of(&good[..cut], 10).is_err(), "cut at {cut}");
        }
    }
}
