//! What the receiver does with a bundle's bytes while they arrive, before
//! any of them is trusted: it reads the zip's local headers as they stream
//! past to count the whole files announced ([`LocalHeaders`], pure), and
//! once that many files are sure to be made durable by one `syncfs` of
//! root's filesystem ([`WriteBackOnceSynced`]), which writes the received
//! bundle too where it is received on that filesystem (the receiver arms
//! it only there), hands the bundle's bytes to the disk as they come
//! instead of leaving that sync to write them all after the unpacking.
//! Network bundles only: a bundle replayed or fetched from a bucket is
//! handed to the disk by its apply.
//!
//! A hint only: the headers are not checked here (`verify.rs` does that
//! once the trailer matched), and whatever they say, the bundle's bytes
//! are kept as they came. A header that cannot be read, or an entry whose
//! size it does not give, ends the counting: the bundle is then written
//! back by the apply ([`super::apply`]), as before.

use std::fs::File;

use super::zip_end::{u16_at, u32_at, u64_at};
use crate::durable::{Writeback, start_writeback};
use crate::proto::connection::Tap;

/// A zip local file header's signature, "PK\x03\x04".
const LOCAL_SIGNATURE: [u8; 4] = *b"PK\x03\x04";
/// A local header's fixed part: signature to the extra field's length.
const LOCAL_FIXED: usize = 30;
/// General-purpose flag bit 3: sizes follow the data, not in the header.
const DATA_DESCRIPTOR: u16 = 1 << 3;
/// The Zip64 extended information extra field.
const ZIP64_EXTRA: u16 = 0x0001;
/// Entries under this prefix are the manifest, parts and deltas: only the
/// others are whole files staged one for one.
const SHIPPER_PREFIX: &str = ".shipper/";

/// Where a walk through a zip's local headers stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Collecting an entry's local header.
    Header,
    /// Passing over this many more bytes of an entry's data.
    Data(u64),
    /// Past the last local header (the central directory began), or at
    /// one that cannot be walked past.
    Done,
}

/// Counts the whole files a zip's local headers announce, fed its bytes in
/// order in pieces of any size.
#[derive(Debug)]
pub struct LocalHeaders {
    walk: Walk,
    /// The header being collected.
    header: Vec<u8>,
    whole_files: usize,
}

impl Default for LocalHeaders {
    fn default() -> Self {
        Self {
            walk: Walk::Header,
            header: Vec::with_capacity(LOCAL_FIXED),
            whole_files: 0,
        }
    }
}

impl LocalHeaders {
    /// Whole files announced so far: entries outside `.shipper/`.
    pub fn whole_files(&self) -> usize {
        self.whole_files
    }

    /// The next bytes of the zip.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.walk {
                Walk::Done => return,
                Walk::Data(left) => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    self.walk = match left - n {
                        0 => Walk::Header,
                        more => Walk::Data(more),
                    };
                }
                Walk::Header => {
                    let want = self.header_len().saturating_sub(self.header.len());
                    let n = want.min(bytes.len());
                    self.header.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.header.len() == LOCAL_FIXED && self.header[..4] != LOCAL_SIGNATURE[..] {
                        self.walk = Walk::Done;
                    } else if self.header.len() == self.header_len() {
                        self.walk = self.entry_read();
                        self.header.clear();
                    }
                }
            }
        }
    }

    /// How long the header being collected is: its fixed part until that
    /// is in, then with its name and extra field.
    fn header_len(&self) -> usize {
        if self.header.len() < LOCAL_FIXED {
            return LOCAL_FIXED;
        }
        LOCAL_FIXED + usize::from(self.u16_at(26)) + usize::from(self.u16_at(28))
    }

    /// The header collected is whole: count its entry, and pass over its
    /// data.
    fn entry_read(&mut self) -> Walk {
        if self.u16_at(6) & DATA_DESCRIPTOR != 0 {
            return Walk::Done;
        }
        let name_len = usize::from(self.u16_at(26));
        let name = &self.header[LOCAL_FIXED..LOCAL_FIXED + name_len];
        let Some(size) = self.compressed_size() else {
            return Walk::Done;
        };
        if !name.starts_with(SHIPPER_PREFIX.as_bytes()) && !name.ends_with(b"/") {
            self.whole_files += 1;
        }
        match size {
            0 => Walk::Header,
            n => Walk::Data(n),
        }
    }

    /// The entry's compressed size: from its Zip64 extra field when the
    /// header's own says so.
    fn compressed_size(&self) -> Option<u64> {
        let small = u32_at(&self.header, 18);
        if small != u32::MAX {
            return Some(u64::from(small));
        }
        // A local header's Zip64 field holds both sizes, the original
        // first (APPNOTE 4.5.3).
        let at = 8;
        let name_len = usize::from(self.u16_at(26));
        let mut extra = &self.header[LOCAL_FIXED + name_len..];
        while extra.len() >= 4 {
            let (id, len) = (u16_at(extra, 0), usize::from(u16_at(extra, 2)));
            let data = extra.get(4..4 + len)?;
            if id == ZIP64_EXTRA {
                return (data.len() >= at + 8).then(|| u64_at(data, at));
            }
            extra = &extra[4 + len..];
        }
        None
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16_at(&self.header, at)
    }
}

/// Watches a bundle arrive and, once its local headers announce enough
/// whole files that applying it will `syncfs` root's filesystem (see
/// `super::apply::syncs_filesystem`), hands what came so far to the disk,
/// then every stride after ([`Writeback`]): that sync would write the
/// bundle too (where the bundle is received on its filesystem: the
/// receiver uses this only there), and the disk, idle while the bundle
/// comes and is unpacked, then writes it alone. A bundle of parts or of a
/// few files is left to the page cache: it is synced file by file, never
/// as a whole, and is often archived and pruned before it would be
/// written at all.
#[derive(Debug, Default)]
pub struct WriteBackOnceSynced {
    headers: LocalHeaders,
    writeback: Option<Writeback>,
}

impl Tap for WriteBackOnceSynced {
    fn wrote(&mut self, file: &mut File, chunk: &[u8]) {
        if let Some(w) = &mut self.writeback {
            // A hint: a failure to find the file's position writes nothing early.
            let _ = w.wrote(file, chunk.len() as u64);
            return;
        }
        self.headers.feed(chunk);
        if super::apply::syncs_filesystem(self.headers.whole_files()) {
            start_writeback(file, 0, 0);
            self.writeback = Some(Writeback::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use zip::write::SimpleFileOptions;

    /// A zip of `names` (each holding `body` bytes), deflated or stored.
    fn zip_of(names: &[&str], body: &[u8], deflated: bool) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let method = match deflated {
            true => zip::CompressionMethod::Deflated,
            false => zip::CompressionMethod::Stored,
        };
        for name in names {
            zip.start_file(
                *name,
                SimpleFileOptions::default().compression_method(method),
            )
            .unwrap();
            zip.write_all(body).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn counted(bytes: &[u8], piece: usize) -> usize {
        let mut h = LocalHeaders::default();
        for p in bytes.chunks(piece) {
            h.feed(p);
        }
        h.whole_files()
    }

    #[test]
    fn whole_files_are_counted_however_the_bytes_are_cut() {
        let names = [
            "index.html",
            ".shipper/parts/s1/0",
            "img/a.png",
            ".shipper/deltas/ab",
            "c.css",
            ".shipper/manifest.json",
        ];
        for deflated in [false, true] {
            let zip = zip_of(&names, &[7u8; 3000], deflated);
            for piece in [1, 7, 29, 30, 31, 4096, zip.len()] {
                assert_eq!(
                    counted(&zip, piece),
                    3,
                    "piece {piece}, deflated {deflated}"
                );
            }
        }
    }

    #[test]
    fn the_count_stops_at_the_central_directory_and_at_garbage() {
        let zip = zip_of(&["a", "b"], b"x", false);
        let mut twice = zip.clone();
        // A second zip after the first's central directory is not walked.
        twice.extend_from_slice(&zip);
        assert_eq!(counted(&twice, 5), 2);
        assert_eq!(
            counted(b"not a zip at all, but long enough to be one", 3),
            0
        );
        assert_eq!(counted(&[], 1), 0);
    }

    #[test]
    fn an_entry_with_its_sizes_after_its_data_ends_the_count() {
        let mut zip = zip_of(&["a", "b", "c"], b"xyz", false);
        // Flag bit 3 on the first entry: its size is not in its header.
        zip[6] |= 1 << 3;
        assert_eq!(counted(&zip, 4), 0);
    }

    #[test]
    fn a_zip64_size_is_read_from_the_extra_field() {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let big = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        for name in ["a", "b"] {
            zip.start_file(name, big).unwrap();
            zip.write_all(&[1u8; 100]).unwrap();
        }
        let bytes = zip.finish().unwrap().into_inner();
        assert_eq!(&bytes[18..22], &[0xff; 4], "the header defers to Zip64");
        assert_eq!(counted(&bytes, 3), 2);
    }

    #[test]
    fn hostile_headers_end_the_count_and_never_panic() {
        // Any bytes may come before the trailer is checked: headers that
        // lie about their lengths, cut anywhere.
        let zip = zip_of(&["a", "b", "c"], b"xyz", false);
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..2000 {
            let mut bytes = zip.clone();
            for _ in 0..1 + round % 8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % bytes.len() as u64) as usize;
                bytes[at] = (x >> 32) as u8;
            }
            assert!(counted(&bytes, 1 + round % 50) <= 3 + bytes.len() / 30);
        }
    }

    #[test]
    fn a_bundle_the_packer_wrote_is_counted_past_its_parts() {
        // Three parts, four pages, then the manifest.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/format2/00000000000000000001.zip"
        );
        let bundle = std::fs::read(path).unwrap();
        assert_eq!(counted(&bundle, 1000), 4);
    }

    #[test]
    fn the_bundle_is_written_back_only_once_a_syncfs_is_sure() {
        let t = tempfile::tempdir().unwrap();
        let mut file = File::create(t.path().join("b.zip")).unwrap();
        let few: Vec<String> = (0..crate::beneath::SYNC_EACH_MAX)
            .map(|i| format!("f{i}"))
            .collect();
        let few: Vec<&str> = few.iter().map(String::as_str).collect();
        let mut tap = WriteBackOnceSynced::default();
        let zip = zip_of(&few, b"page", false);
        tap.wrote(&mut file, &zip);
        assert!(
            tap.writeback.is_none(),
            "{} files are fsynced one by one",
            few.len()
        );
        let mut more = few.clone();
        more.push("one-more");
        let mut tap = WriteBackOnceSynced::default();
        tap.wrote(&mut file, &zip_of(&more, b"page", false));
        assert!(
            tap.writeback.is_some(),
            "{} files take a syncfs",
            more.len()
        );
    }
}
