//! The manifest inside every bundle (`.shipper/manifest.json`): who sent
//! it, its sequence, each file with size, mtime, mode and BLAKE3 hash, the
//! parts of large files, and the deleted paths.
//!
//! Pure: parsing and [`Manifest::check`] never touch the filesystem; the
//! zip's entries are compared against [`Manifest::entry_names`] by the caller.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::paths;

pub const FORMAT: u32 = 1;
pub const MANIFEST_ENTRY: &str = ".shipper/manifest.json";
/// Manifests larger than this are refused before parsing, whatever the
/// receiver's entry limit.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// What one entry can take in a manifest the sender wrote: a path of
/// [`paths::MAX_PATH_BYTES`] with every byte escaped, and the other fields
/// of a part (the largest kind of entry), pretty-printed, with room for one
/// abandoned set id.
pub const MANIFEST_BYTES_PER_ENTRY: u64 = 2 * paths::MAX_PATH_BYTES as u64 + 2048;
/// Format, sender, sequence, creation time and the JSON around the lists.
const MANIFEST_HEAD_BYTES: u64 = 4096;

/// The largest manifest a bundle of at most `max_entries` entries needs:
/// anything larger is refused before it is parsed.
pub fn max_manifest_bytes(max_entries: usize) -> u64 {
    (max_entries as u64)
        .saturating_add(1)
        .saturating_mul(MANIFEST_BYTES_PER_ENTRY)
        .saturating_add(MANIFEST_HEAD_BYTES)
        .min(MAX_MANIFEST_BYTES)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub sender: String,
    pub seq: u64,
    /// Unix seconds when the bundle was cut.
    pub created: i64,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub parts: Vec<PartEntry>,
    #[serde(default)]
    pub deletions: Vec<String>,
    /// Part sets the sender gave up (the file changed mid-way); the receiver
    /// drops what it holds of them.
    #[serde(default)]
    pub abandoned: Vec<String>,
}

/// Metadata shipped for every file, and kept by the sender for what it shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMeta {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    /// BLAKE3 of the content, hex.
    pub hash: String,
    /// Packed so soon after its last write that a rewrite within the same
    /// tick of the filesystem clock would keep size and mtime: a later
    /// comparison must look at the content, not just the stat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub racy: bool,
}

/// A whole file stored as the zip entry named by its path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    pub hash: String,
}

/// Part `index` (0-based) of `count` of a large file, stored as the zip
/// entry [`PartEntry::entry_name`]. The last part carries the whole-file hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    pub path: String,
    /// Identifies one shipping of one version of the file.
    pub set: String,
    pub index: u32,
    pub count: u32,
    pub offset: u64,
    pub size: u64,
    pub hash: String,
    pub file_size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    pub file_hash: Option<String>,
}

impl FileEntry {
    pub fn meta(&self) -> FileMeta {
        FileMeta {
            size: self.size,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            mode: self.mode,
            hash: self.hash.clone(),
            racy: false,
        }
    }
}

impl PartEntry {
    pub fn entry_name(&self) -> String {
        part_entry_name(&self.set, self.index)
    }
}

pub fn part_entry_name(set: &str, index: u32) -> String {
    format!(".shipper/parts/{set}/{index}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest does not parse: {0}")]
    Parse(String),
    #[error("manifest format {0} is not supported (this shipper reads format {FORMAT})")]
    Format(u32),
    #[error("manifest sender id {0:?} is not valid")]
    Sender(String),
    #[error("manifest sequence {0} is not valid (sequences run from 1 to 2^64-2)")]
    Seq(u64),
    #[error("{path:?}: {reason}")]
    Path { path: String, reason: String },
    #[error("{path:?} appears more than once")]
    Duplicate { path: String },
    #[error("{path:?}: {reason}")]
    Part { path: String, reason: String },
}

fn is_hex_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A sequence with no successor: its sender could never ship again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sequence {0} is the last a u64 holds: no sequence can follow it")]
pub struct SeqExhausted(pub u64);

/// The sequence after `seq`. A sender numbers its bundles 1, 2, …; u64::MAX
/// is never used, so every sequence in use has a successor and nothing
/// that counts on from one wraps or overflows.
pub fn next_seq(seq: u64) -> Result<u64, SeqExhausted> {
    seq.checked_add(1).ok_or(SeqExhausted(seq))
}

pub fn valid_sender_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// How many items each list of a manifest holds, counted without building
/// them, so a receiver compares them with its limits before it allocates
/// or normalises anything per entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Counts {
    #[serde(default)]
    pub files: Count,
    #[serde(default)]
    pub parts: Count,
    #[serde(default)]
    pub deletions: Count,
    #[serde(default)]
    pub abandoned: Count,
}

/// The length of a JSON array, whose items are skipped unread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count(pub usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Counter;
        impl<'de> serde::de::Visitor<'de> for Counter {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(Counter)
    }
}

impl Counts {
    /// Count the lists of a manifest. Other fields are not looked at here:
    /// [`Manifest::parse`] refuses what is wrong with them.
    pub fn of(bytes: &[u8]) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))
    }

    /// Files, parts and deletions: what a receiver's entry limit counts.
    pub fn entries(&self) -> usize {
        self.files.0 + self.parts.0 + self.deletions.0
    }
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifest serializes")
    }

    /// Everything that can be checked without the zip: paths, duplicates,
    /// hashes, part arithmetic.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        if !valid_sender_id(&self.sender) {
            return Err(ManifestError::Sender(self.sender.clone()));
        }
        if self.seq == 0 || next_seq(self.seq).is_err() {
            return Err(ManifestError::Seq(self.seq));
        }
        let path_err = |path: &str, reason: String| ManifestError::Path {
            path: path.to_owned(),
            reason,
        };
        // Names equal after Unicode NFC normalisation are the same file on
        // filesystems that normalise (and confusing everywhere else).
        let mut normalised: HashSet<String> = HashSet::new();
        let mut nfc_dup = |p: &str| -> Result<(), ManifestError> {
            use unicode_normalization::UnicodeNormalization;
            if normalised.insert(p.nfc().collect()) {
                Ok(())
            } else {
                Err(ManifestError::Duplicate { path: p.to_owned() })
            }
        };
        let mut seen: HashSet<&str> = HashSet::new();
        for f in &self.files {
            paths::validate(&f.path).map_err(|e| path_err(&f.path, e.to_string()))?;
            if !is_hex_hash(&f.hash) {
                return Err(path_err(&f.path, "hash is not 64 hex digits".into()));
            }
            if !seen.insert(&f.path) {
                return Err(ManifestError::Duplicate {
                    path: f.path.clone(),
                });
            }
            nfc_dup(&f.path)?;
        }
        let mut part_keys: HashSet<(&str, u32)> = HashSet::new();
        let mut set_paths: std::collections::HashMap<&str, &str> = Default::default();
        for p in &self.parts {
            let perr = |reason: &str| ManifestError::Part {
                path: p.path.clone(),
                reason: reason.to_owned(),
            };
            paths::validate(&p.path).map_err(|e| path_err(&p.path, e.to_string()))?;
            if seen.contains(p.path.as_str()) {
                return Err(ManifestError::Duplicate {
                    path: p.path.clone(),
                });
            }
            if !valid_set_id(&p.set) {
                return Err(perr("part set id is not valid"));
            }
            match set_paths.entry(&p.set) {
                std::collections::hash_map::Entry::Occupied(e) if *e.get() != p.path => {
                    return Err(perr("part set shared by two paths"));
                }
                std::collections::hash_map::Entry::Occupied(_) => {}
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(&p.path);
                    nfc_dup(&p.path)?;
                }
            }
            if p.count < 2 || p.index >= p.count {
                return Err(perr("part index or count out of range"));
            }
            if !part_keys.insert((&p.set, p.index)) {
                return Err(perr("part appears twice"));
            }
            if p.size == 0
                || p.offset
                    .checked_add(p.size)
                    .is_none_or(|end| end > p.file_size)
            {
                return Err(perr("part lies outside the file"));
            }
            if !is_hex_hash(&p.hash) {
                return Err(perr("part hash is not 64 hex digits"));
            }
            let last = p.index + 1 == p.count;
            match (&p.file_hash, last) {
                (Some(h), true) if is_hex_hash(h) => {
                    if p.offset + p.size != p.file_size {
                        return Err(perr("last part does not end the file"));
                    }
                }
                (None, false) => {}
                _ => return Err(perr("whole-file hash must be on the last part only")),
            }
        }
        // Every path that becomes a file in root. None may also be a
        // directory of another: publishing that one would replace the file
        // with a directory, and a bundle acknowledged as applied would lack
        // a file it lists (found by fuzz target `bundle`).
        let shipped: Vec<&str> = self
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain(self.parts.iter().map(|p| p.path.as_str()))
            .collect();
        let shipped_set: HashSet<&str> = shipped.iter().copied().collect();
        for p in &shipped {
            for (slash, _) in p.match_indices('/') {
                let dir = &p[..slash];
                if shipped_set.contains(dir) {
                    return Err(path_err(
                        dir,
                        format!("shipped both as a file and as the directory of {p:?}"),
                    ));
                }
            }
        }
        // Deletions are applied before files are published, so deleting "d"
        // and shipping "d/x" in one bundle is a file replaced by a directory.
        for d in &self.deletions {
            paths::validate(d).map_err(|e| path_err(d, e.to_string()))?;
            if shipped_set.contains(d.as_str()) {
                return Err(ManifestError::Duplicate { path: d.clone() });
            }
            nfc_dup(d)?;
        }
        for a in &self.abandoned {
            if !valid_set_id(a) {
                return Err(ManifestError::Part {
                    path: a.clone(),
                    reason: "abandoned part set id is not valid".into(),
                });
            }
        }
        Ok(())
    }

    /// Names of the zip entries this manifest expects, besides itself.
    pub fn entry_names(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|f| f.path.clone())
            .chain(self.parts.iter().map(PartEntry::entry_name))
            .collect()
    }

    pub fn content_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum::<u64>()
            + self.parts.iter().map(|p| p.size).sum::<u64>()
    }
}

pub fn valid_set_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    fn file(path: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 1,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o644,
            hash: H.into(),
        }
    }

    fn part(index: u32, count: u32) -> PartEntry {
        PartEntry {
            path: "big".into(),
            set: "s1".into(),
            index,
            count,
            offset: u64::from(index) * 10,
            size: 10,
            hash: H.into(),
            file_size: u64::from(count) * 10,
            mtime: 0,
            mtime_nsec: 0,
            mode: 0o644,
            file_hash: (index + 1 == count).then(|| H.to_string()),
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            sender: "app1".into(),
            seq: 1,
            created: 0,
            files: vec![file("a/b.html")],
            parts: vec![part(0, 2), part(1, 2)],
            deletions: vec!["old".into()],
            abandoned: vec![],
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = manifest();
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        assert_eq!(
            m.entry_names(),
            ["a/b.html", ".shipper/parts/s1/0", ".shipper/parts/s1/1"]
        );
    }

    #[test]
    fn deleting_a_file_that_becomes_a_directory_is_consistent() {
        let mut m = manifest();
        m.deletions.push("a".into());
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn unknown_fields_and_garbage_are_refused() {
        assert!(matches!(
            Manifest::parse(b"{]"),
            Err(ManifestError::Parse(_))
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&manifest().to_json()).unwrap();
        v["extra"] = 1.into();
        assert!(matches!(
            Manifest::parse(&serde_json::to_vec(&v).unwrap()),
            Err(ManifestError::Parse(_))
        ));
    }

    #[test]
    fn refuses_inconsistent_manifests() {
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("format", Box::new(|m| m.format = 9)),
            ("seq", Box::new(|m| m.seq = 0)),
            ("last seq", Box::new(|m| m.seq = u64::MAX)),
            ("sender", Box::new(|m| m.sender = "a b".into())),
            ("path", Box::new(|m| m.files[0].path = "../x".into())),
            ("dup", Box::new(|m| m.files.push(file("a/b.html")))),
            ("hash", Box::new(|m| m.files[0].hash = "zz".into())),
            ("deletion", Box::new(|m| m.deletions.push("/etc".into()))),
            (
                "delete shipped",
                Box::new(|m| m.deletions.push("a/b.html".into())),
            ),
            (
                "delete part file",
                Box::new(|m| m.deletions.push("big".into())),
            ),
            ("dup part", Box::new(|m| m.parts.push(part(1, 2)))),
            ("count", Box::new(|m| m.parts[1].count = 1)),
            ("outside", Box::new(|m| m.parts[0].offset = 15)),
            (
                "file hash early",
                Box::new(|m| m.parts[0].file_hash = Some(H.into())),
            ),
            ("no file hash", Box::new(|m| m.parts[1].file_hash = None)),
            ("set id", Box::new(|m| m.parts[0].set = "../x".into())),
            (
                "nfc duplicate",
                Box::new(|m| {
                    m.files.push(file("caf\u{e9}"));
                    m.files.push(file("cafe\u{301}"));
                }),
            ),
            (
                "file below a file",
                Box::new(|m| m.files.push(file("a/b.html/c"))),
            ),
            (
                "file below a part file",
                Box::new(|m| m.files.push(file("big/c"))),
            ),
            ("file above a file", Box::new(|m| m.files.push(file("a")))),
            (
                "two sets, one path",
                Box::new(|m| {
                    let mut p = part(0, 2);
                    p.set = "s2".into();
                    m.parts.push(p);
                }),
            ),
        ];
        for (name, mutate) in cases {
            let mut m = manifest();
            mutate(&mut m);
            assert!(m.check().is_err(), "{name} accepted");
        }
    }

    #[test]
    fn counts_match_the_parsed_lists_and_ignore_other_fields() {
        let mut m = manifest();
        m.abandoned.push("s0".into());
        let c = Counts::of(&m.to_json()).unwrap();
        assert_eq!(
            (c.files.0, c.parts.0, c.deletions.0, c.abandoned.0),
            (m.files.len(), m.parts.len(), m.deletions.len(), 1)
        );
        assert_eq!(c.entries(), 4);
        let bare = br#"{"format": 1, "files": [1, "x", {"a": [2]}], "extra": true}"#;
        assert_eq!(Counts::of(bare).unwrap().entries(), 3);
        assert!(Counts::of(br#"{"files": {}}"#).is_err());
        assert!(Counts::of(b"[").is_err());
    }

    #[test]
    fn the_largest_honest_entry_fits_its_share_of_the_manifest_bound() {
        let path = "\"".repeat(paths::MAX_PATH_BYTES);
        let mut p = part(0, 2);
        p.path = path.clone();
        p.set = "s".repeat(64);
        (p.index, p.count) = (u32::MAX - 1, u32::MAX);
        (p.offset, p.size, p.file_size) = (u64::MAX, u64::MAX, u64::MAX);
        (p.mtime, p.mtime_nsec, p.mode) = (i64::MIN, u32::MAX, u32::MAX);
        p.file_hash = Some(H.into());
        let mut m = manifest();
        m.files.clear();
        m.deletions.clear();
        m.parts = vec![p.clone(), p];
        m.abandoned = vec!["a".repeat(64), "b".repeat(64)];
        let len = m.to_json().len() as u64;
        assert!(len <= max_manifest_bytes(2), "{len} bytes");
        assert_eq!(max_manifest_bytes(usize::MAX), MAX_MANIFEST_BYTES);
    }

    #[test]
    fn the_last_u64_has_no_next_sequence() {
        assert_eq!(next_seq(0), Ok(1));
        assert_eq!(next_seq(u64::MAX - 1), Ok(u64::MAX));
        assert_eq!(next_seq(u64::MAX), Err(SeqExhausted(u64::MAX)));
        let e = SeqExhausted(u64::MAX).to_string();
        assert!(e.contains("18446744073709551615"), "{e}");
        let mut m = manifest();
        m.seq = u64::MAX;
        assert_eq!(m.check(), Err(ManifestError::Seq(u64::MAX)));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes: parse never panics, and whatever it accepts names only
        /// valid paths.
        #[test]
        fn parse_never_accepts_an_invalid_path(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(m) = Manifest::parse(&bytes) {
                for p in m.files.iter().map(|f| &f.path).chain(m.deletions.iter()) {
                    prop_assert!(crate::paths::validate(p).is_ok());
                }
            }
        }

        /// JSON manifests with arbitrary paths: accepted only when every path is valid.
        #[test]
        fn arbitrary_paths_are_checked(paths in proptest::collection::vec("[a-z./\\\\\\x00-\\x1f é]{0,12}", 1..5)) {
            let files: Vec<serde_json::Value> = paths.iter().map(|p| serde_json::json!({
                "path": p, "size": 0, "mtime": 0, "mtime_nsec": 0, "mode": 420,
                "hash": "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
            })).collect();
            let m = serde_json::json!({"format": 1, "sender": "s", "seq": 1, "created": 0, "files": files});
            let accepted = Manifest::parse(&serde_json::to_vec(&m).unwrap()).is_ok();
            let all_valid = paths.iter().all(|p| crate::paths::validate(p).is_ok());
            prop_assert!(!accepted || all_valid);
        }
    }
}
