//! What a received bundle must satisfy before anything is written.
//!
//! [`open`] reads a bundle's zip and manifest and checks, within the
//! receiver's [`Limits`], that the zip's end is one shipper accepts, that
//! its entries neither overlap nor repeat a name, that the manifest parses
//! and is consistent, and that the zip holds exactly the entries the
//! manifest names, each a regular file of the declared size. Limits are
//! checked on what the bundle claims before anything is built from it, so a
//! hostile bundle cannot make the receiver allocate for its claims. Reads
//! the bundle file; writes nothing. The bytes themselves are counted and
//! hashed later, as they are unpacked (`super::unpack`).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use super::error::{BundleError, entry_err, io_at, over_limit};
use super::manifest::{Counts, DeltaEntry, MANIFEST_ENTRY, Manifest, max_manifest_bytes};
use super::positioned::PositionedFile;
use super::zip_end::{self, ZipEndError};

/// Files, parts and deletions a receiver accepts in one bundle by default.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Largest single file a receiver accepts by default.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 << 30;

/// Bytes one bundle may unpack to by default.
pub const DEFAULT_MAX_UNPACKED: u64 = 16 << 30;

/// Caps on what one bundle may ask of the receiver, whatever it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files, parts and deletions together.
    pub max_entries: usize,
    /// Largest single file (whole files and files assembled from parts).
    pub max_file_size: u64,
    /// Bytes all entries of one bundle may unpack to.
    pub max_unpacked: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_unpacked: DEFAULT_MAX_UNPACKED,
        }
    }
}

/// A received bundle's zip, its central directory parsed once: clones
/// share it and read the file at places of their own.
pub(super) type OpenedZip = ZipArchive<PositionedFile>;

/// A bundle whose zip structure and manifest have been checked.
pub struct Opened {
    pub(super) zip: OpenedZip,
    pub manifest: Manifest,
    pub path: PathBuf,
    /// Whether `path`'s directory entry is the receiver's write-ahead
    /// record of this bundle's publish (it lies in `state_dir/publishing`):
    /// the apply syncs that directory once the staged files are durable,
    /// before root changes. `false` (as opened): applied without one
    /// (`shipper replay`).
    pub write_ahead: bool,
}

/// Longest central directory header an entry of a bundle needs: the fixed
/// part, a name of at most [`crate::paths::MAX_PATH_BYTES`], and extra
/// fields (Zip64 sizes, timestamps) well under 1 KiB.
const MAX_CENTRAL_HEADER_BYTES: u64 =
    zip_end::HEADER_FIXED + crate::paths::MAX_PATH_BYTES as u64 + 1024;

/// Open `path`, read its manifest and check that the zip holds exactly the
/// entries the manifest names, each a regular file of the declared size,
/// within `limits`. Nothing is written.
pub fn open(path: &Path, limits: &Limits) -> Result<Opened, BundleError> {
    let file = File::open(path).map_err(io_at(path))?;
    let mut zip = index_zip(file, path, limits)?;
    let manifest = read_manifest(&mut zip, limits)?;
    check_limits(&manifest, limits)?;
    // After the manifest, whose own check names a duplicated path.
    if zip.has_duplicate_names() {
        return Err(BundleError::Whole(
            "the zip holds two entries under one name".into(),
        ));
    }
    check_zip_holds_manifest(&mut zip, &manifest)?;
    Ok(Opened {
        zip,
        manifest,
        path: path.to_owned(),
        write_ahead: false,
    })
}

/// Index the zip's central directory once its end records show it within
/// `limits`, and refuse entries that overlap.
fn index_zip(mut file: File, path: &Path, limits: &Limits) -> Result<OpenedZip, BundleError> {
    // The zip crate indexes the whole central directory it is pointed at:
    // its count and size are checked first, from the end records alone.
    let most = limits.max_entries.saturating_add(1) as u64;
    let dir = match zip_end::read(&mut file, most) {
        Ok(dir) => dir,
        Err(ZipEndError::Io(e)) => return Err(io_at(path)(e)),
        Err(ZipEndError::TooMany { claimed }) => {
            return Err(over_limit(
                None,
                format!(
                    "{claimed} zip entries, over the limit of {}",
                    limits.max_entries
                ),
            ));
        }
        Err(ZipEndError::Layout(m)) => {
            return Err(BundleError::Zip(zip::result::ZipError::InvalidArchive(
                m.into(),
            )));
        }
    };
    if dir.size > most.saturating_mul(MAX_CENTRAL_HEADER_BYTES) {
        return Err(over_limit(
            None,
            format!(
                "a central directory of {} bytes, over the {} bytes that {} entries need at most",
                dir.size,
                most.saturating_mul(MAX_CENTRAL_HEADER_BYTES),
                limits.max_entries
            ),
        ));
    }
    let mut zip = ZipArchive::new(PositionedFile::new(file).map_err(io_at(path))?)?;
    if zip.len() > limits.max_entries.saturating_add(1) {
        return Err(over_limit(
            None,
            format!(
                "{} zip entries, over the limit of {}",
                zip.len(),
                limits.max_entries
            ),
        ));
    }
    if zip.has_overlapping_entries()? {
        return Err(entry_err(
            "",
            "zip entries overlap (the same bytes under two names)",
        ));
    }
    Ok(zip)
}

/// Read and parse the manifest entry, its size bounded by what the entry
/// limit lets it need and its counts checked before it is parsed.
fn read_manifest(zip: &mut OpenedZip, limits: &Limits) -> Result<Manifest, BundleError> {
    let entry = zip
        .by_name(MANIFEST_ENTRY)
        .map_err(|_| entry_err(MANIFEST_ENTRY, "missing: not a shipper bundle"))?;
    // What the entry limit lets a manifest need, not what it claims:
    // its header may lie, so reading stops one byte past the bound.
    let bound = max_manifest_bytes(limits.max_entries);
    let too_large = |size: u64| {
        entry_err(
            MANIFEST_ENTRY,
            format!(
                "manifest of {size} bytes, over the {bound} bytes that {} entries need at most",
                limits.max_entries
            ),
        )
    };
    if entry.size() > bound {
        return Err(too_large(entry.size()));
    }
    let mut bytes = Vec::new();
    entry
        .take(bound + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| entry_err(MANIFEST_ENTRY, e.to_string()))?;
    if bytes.len() as u64 > bound {
        return Err(too_large(bytes.len() as u64));
    }
    // Counted before anything is built or normalised per entry.
    check_counts(&Counts::of(&bytes)?, limits)?;
    Ok(Manifest::parse(&bytes)?)
}

/// The zip holds exactly the entries `manifest` names, each a regular file
/// of the size the manifest gives it.
fn check_zip_holds_manifest(zip: &mut OpenedZip, manifest: &Manifest) -> Result<(), BundleError> {
    // A delta's entry holds the bytes that changed.
    let delta = |d: &DeltaEntry| (d.entry_name(), d.data_len());
    let mut expected: HashMap<String, u64> = manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), f.size))
        .chain(manifest.parts.iter().map(|p| (p.entry_name(), p.size)))
        .chain(manifest.deltas.iter().map(delta))
        .collect();
    let entries = manifest.files.len() + manifest.parts.len() + manifest.deltas.len();
    if expected.len() != entries {
        return Err(BundleError::Whole("manifest names an entry twice".into()));
    }
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i)?;
        let name = entry.name()?.into_owned();
        if name == MANIFEST_ENTRY {
            continue;
        }
        let Some(size) = expected.remove(&name) else {
            return Err(entry_err(&name, "in the zip but not in the manifest"));
        };
        // Only regular files: no directories, symlinks, devices, fifos or
        // other special types, whatever the name says.
        let special = entry
            .unix_mode()
            .is_some_and(|m| m & 0o170000 != 0 && m & 0o170000 != 0o100000);
        if !entry.is_file() || entry.is_symlink() || special {
            return Err(entry_err(&name, "not a regular file entry"));
        }
        if entry.size() != size {
            return Err(entry_err(
                &name,
                format!("zip says {} bytes, manifest says {size}", entry.size()),
            ));
        }
    }
    if let Some(name) = expected.keys().next() {
        return Err(entry_err(name, "in the manifest but not in the zip"));
    }
    Ok(())
}

fn check_counts(c: &Counts, limits: &Limits) -> Result<(), BundleError> {
    check_entries(c.entries(), limits)?;
    // An abandoned set is one a file of this bundle's sender gave up; they
    // cost little, but no more of them than entries.
    if c.abandoned.0 > limits.max_entries {
        return Err(over_limit(
            Some(MANIFEST_ENTRY),
            format!(
                "{} abandoned part sets, over the limit of {}",
                c.abandoned.0, limits.max_entries
            ),
        ));
    }
    Ok(())
}

fn check_entries(entries: usize, limits: &Limits) -> Result<(), BundleError> {
    if entries > limits.max_entries {
        return Err(over_limit(
            Some(MANIFEST_ENTRY),
            format!(
                "{entries} entries, over the limit of {}",
                limits.max_entries
            ),
        ));
    }
    Ok(())
}

/// The manifest's entries, the size of each file it makes, and what it
/// unpacks to, within `limits`. Files the receiver copies from its own
/// (or rebuilds from a delta) count as the files they make: 100,000 copies of one large file would
/// fill its disk as surely as their content would.
fn check_limits(m: &Manifest, limits: &Limits) -> Result<(), BundleError> {
    let listed = m.files.len() + m.parts.len() + m.deletions.len();
    let made = m.kept.len() + m.copies.len() + m.deltas.len();
    check_entries(listed + made, limits)?;
    let mut total: u64 = 0;
    for (path, size) in m
        .files
        .iter()
        .map(|f| (&f.path, f.size))
        .chain(m.parts.iter().map(|p| (&p.path, p.file_size)))
        .chain(m.copies.iter().map(|c| (&c.path, c.size)))
        .chain(m.deltas.iter().map(|d| (&d.path, d.size)))
    {
        if size > limits.max_file_size {
            return Err(over_limit(
                Some(path),
                format!("{size} bytes, over the limit of {}", limits.max_file_size),
            ));
        }
    }
    for size in m
        .files
        .iter()
        .map(|f| f.size)
        .chain(m.parts.iter().map(|p| p.size))
        .chain(m.copies.iter().map(|c| c.size))
        .chain(m.deltas.iter().map(|d| d.size))
    {
        total = total.saturating_add(size);
    }
    if total > limits.max_unpacked {
        return Err(over_limit(
            Some(MANIFEST_ENTRY),
            format!(
                "unpacks to {total} bytes, over the limit of {}",
                limits.max_unpacked
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::manifest::{FileEntry, PartEntry};

    const LIMITS: Limits = Limits {
        max_entries: 3,
        max_file_size: 100,
        max_unpacked: 150,
    };

    fn file(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o644,
            hash: String::new(),
        }
    }

    /// Part 0 of `size` bytes of a file of `file_size` bytes.
    fn part(path: &str, size: u64, file_size: u64) -> PartEntry {
        PartEntry {
            path: path.into(),
            set: "s1".into(),
            index: 0,
            count: 2,
            offset: 0,
            size,
            hash: String::new(),
            file_size,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o644,
            file_hash: None,
        }
    }

    fn manifest(files: Vec<FileEntry>, parts: Vec<PartEntry>, deletions: &[&str]) -> Manifest {
        Manifest {
            format: 1,
            sender: "app1".into(),
            seq: 1,
            created: 0,
            files,
            parts,
            deletions: deletions.iter().map(|d| d.to_string()).collect(),
            abandoned: vec![],
            dirs: vec![],
            links: vec![],
            kept: vec![],
            copies: vec![],
            deltas: vec![],
        }
    }

    /// The entry a limit check refused.
    fn refused_entry(r: Result<(), BundleError>) -> String {
        match r {
            Err(BundleError::OverLimit {
                entry: Some(entry), ..
            }) => entry,
            other => panic!("not refused as an entry over a limit: {other:?}"),
        }
    }

    #[test]
    fn a_bundle_within_every_limit_passes() {
        let m = manifest(vec![file("a", 100)], vec![part("big", 50, 100)], &["x"]);
        check_limits(&m, &LIMITS).unwrap();
    }

    #[test]
    fn files_parts_and_deletions_count_together_against_the_entry_limit() {
        let m = manifest(
            vec![file("a", 1), file("b", 1)],
            vec![part("big", 1, 2)],
            &["x"],
        );
        assert_eq!(refused_entry(check_limits(&m, &LIMITS)), MANIFEST_ENTRY);
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_by_its_path_even_when_sent_in_parts() {
        let m = manifest(vec![file("a", 101)], vec![], &[]);
        assert_eq!(refused_entry(check_limits(&m, &LIMITS)), "a");
        let m = manifest(vec![], vec![part("big", 1, 101)], &[]);
        assert_eq!(refused_entry(check_limits(&m, &LIMITS)), "big");
    }

    #[test]
    fn copies_count_as_the_files_they_make_and_kept_files_as_entries() {
        // Broke once: copies escaped every byte limit, so three entries
        // could make the receiver write 30 GiB.
        let copy = |p: &str, size| crate::bundle::manifest::CopyEntry {
            path: p.into(),
            from: "big".into(),
            size,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o644,
            hash: String::new(),
        };
        let mut m = manifest(vec![], vec![], &[]);
        m.copies = vec![copy("a", 101)];
        assert_eq!(refused_entry(check_limits(&m, &LIMITS)), "a");
        m.copies = vec![copy("a", 100), copy("b", 51)];
        assert_eq!(refused_entry(check_limits(&m, &LIMITS)), MANIFEST_ENTRY);
        m.copies = vec![copy("a", 1)];
        m.kept = vec![file("k1", 1), file("k2", 1), file("k3", 1)];
        assert_eq!(refused_entry(check_limits(&m, &LIMITS)), MANIFEST_ENTRY);
    }

    #[test]
    fn what_a_bundle_unpacks_to_is_capped_without_overflowing() {
        let m = manifest(vec![file("a", 100)], vec![part("big", 51, 100)], &[]);
        assert_eq!(refused_entry(check_limits(&m, &LIMITS)), MANIFEST_ENTRY);
        let huge = Limits {
            max_file_size: u64::MAX,
            ..LIMITS
        };
        let m = manifest(vec![file("a", u64::MAX), file("b", u64::MAX)], vec![], &[]);
        assert_eq!(refused_entry(check_limits(&m, &huge)), MANIFEST_ENTRY);
    }

    #[test]
    fn counts_are_checked_from_the_lists_alone() {
        let counts = |json: &str| Counts::of(json.as_bytes()).unwrap();
        check_counts(&counts(r#"{"files":[1,2],"deletions":[3]}"#), &LIMITS).unwrap();
        let over = counts(r#"{"files":[1,2],"parts":[3],"deletions":[4]}"#);
        assert_eq!(refused_entry(check_counts(&over, &LIMITS)), MANIFEST_ENTRY);
        let abandoned = counts(r#"{"abandoned":["a","b","c","d"]}"#);
        let e = check_counts(&abandoned, &LIMITS).unwrap_err().to_string();
        assert!(e.contains("4 abandoned part sets"), "{e}");
    }
}
