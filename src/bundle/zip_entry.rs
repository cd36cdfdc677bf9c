//! How one file is stored as a zip entry: deflated or stored (and whether
//! deflate is worth the CPU), its mode, its DOS mtime, zip64 when it could
//! pass 4 GiB. Reads at most a sample of the file; writes nothing.

use std::fs::File;
use std::io::Write;

use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

use crate::stamp::Stamp;

/// Files this small gain nothing from deflate.
const STORE_BELOW: u64 = 64;
/// Files at least this large are sampled before deflating.
const SAMPLE_ABOVE: u64 = 256 << 10;
/// How much of a large file's start the sample deflates.
const SAMPLE_LEN: usize = 64 << 10;
/// A sample must deflate to less than this share of itself to be worth it.
const WORTH_RATIO: f64 = 0.9;
/// Deflate level: most of the gain of higher levels at a fraction of the CPU.
const DEFLATE_LEVEL: i64 = 3;
/// Entries this large get zip64 records: they could pass 4 GiB (with the
/// little deflate may add).
const ZIP64_FROM: u64 = u32::MAX as u64 - (1 << 20);

/// Options for the entry of a file with `stamp`, deflated or stored.
pub(super) fn entry_options(deflate: bool, stamp: Stamp) -> SimpleFileOptions {
    let method = if deflate {
        CompressionMethod::Deflated
    } else {
        CompressionMethod::Stored
    };
    SimpleFileOptions::default()
        .compression_method(method)
        .compression_level(if method == CompressionMethod::Deflated {
            Some(DEFLATE_LEVEL)
        } else {
            None
        })
        .unix_permissions(stamp.mode)
        .last_modified_time(dos_time(stamp.mtime))
        // Zip64 records once an entry could pass 4 GiB.
        .large_file(stamp.size >= ZIP64_FROM)
}

/// Whether deflating `file` is worth the CPU: not for tiny files, not for
/// formats known to be compressed, and not for larger files whose first
/// 64 KiB do not shrink by a tenth (random data, unknown archives).
pub(super) fn worth_deflating(rel: &str, file: &File, size: u64) -> bool {
    if size < STORE_BELOW || is_precompressed(rel) {
        return false;
    }
    if size < SAMPLE_ABOVE {
        return true;
    }
    use std::os::unix::fs::FileExt;
    let mut sample = vec![0u8; SAMPLE_LEN];
    let Ok(n) = file.read_at(&mut sample, 0) else {
        return true;
    };
    let mut enc =
        flate2::write::DeflateEncoder::new(Vec::with_capacity(n), flate2::Compression::fast());
    if enc.write_all(&sample[..n]).is_err() {
        return true;
    }
    enc.finish()
        .is_ok_and(|out| (out.len() as f64) < WORTH_RATIO * n as f64)
}

/// Formats that are already compressed: deflate would spend CPU for nothing.
pub fn is_precompressed(rel: &str) -> bool {
    const EXT: &[&str] = &[
        "jpg", "jpeg", "png", "gif", "webp", "avif", "heic", "ico", "mp4", "m4v", "mov", "webm",
        "mkv", "mp3", "m4a", "ogg", "oga", "opus", "flac", "zip", "gz", "tgz", "bz2", "xz", "zst",
        "br", "7z", "rar", "woff", "woff2", "pdf", "jar", "apk", "docx", "xlsx", "pptx", "odt",
    ];
    match rel.rsplit_once('.') {
        Some((_, ext)) if !ext.contains('/') => EXT.iter().any(|e| e.eq_ignore_ascii_case(ext)),
        _ => false,
    }
}

/// A Unix time as a zip (DOS) time; outside the zip range, the zip default.
fn dos_time(unix: i64) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    chrono::DateTime::from_timestamp(unix, 0)
        .and_then(|t| {
            zip::DateTime::from_date_and_time(
                u16::try_from(t.year()).ok()?,
                t.month() as u8,
                t.day() as u8,
                t.hour() as u8,
                t.minute() as u8,
                t.second() as u8,
            )
            .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precompressed_types_are_stored() {
        assert!(is_precompressed("a/photo.JPG"));
        assert!(is_precompressed("font.woff2"));
        assert!(!is_precompressed("index.html"));
        assert!(!is_precompressed("dir.png/file"));
        assert!(!is_precompressed("noext"));
    }

    #[test]
    fn random_data_is_stored_and_text_deflated() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, data: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            File::open(p).unwrap()
        };
        let mut x: u64 = 1;
        let random: Vec<u8> = (0..300_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let text = "<p>hello</p>".repeat(30_000);
        assert!(!worth_deflating(
            "a.bin",
            &write("a.bin", &random),
            random.len() as u64
        ));
        assert!(worth_deflating(
            "b.html",
            &write("b.html", text.as_bytes()),
            text.len() as u64
        ));
        assert!(!worth_deflating(
            "c.png",
            &write("c.png", text.as_bytes()),
            text.len() as u64
        ));
    }

    #[test]
    fn dos_time_clamps_to_the_zip_range() {
        assert_eq!(dos_time(0), zip::DateTime::default());
        let t = dos_time(1_764_000_000);
        assert_eq!(t.year(), 2025);
    }
}
