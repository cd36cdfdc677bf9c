//! The manifest's format: its types as they travel in JSON, the zip
//! entries it expects, and how large it may honestly be. Pure, except
//! [`FileMeta::of`], which reads the clock to tell a racy file.

use serde::{Deserialize, Serialize};

use crate::bundle::delta::{Recipe, RecipeError};
use crate::paths;
use crate::stamp::{Kind, RACY_WINDOW, Stamp, Stat};

/// The format this shipper writes: 2, where a part's hash is its chaining
/// value in its file's BLAKE3 tree (`bundle/part_tree.rs`).
pub const FORMAT: u32 = 2;
/// The oldest format still read: 1, with plain part hashes, so bundles
/// archived before an upgrade can be replayed.
pub const OLDEST_FORMAT: u32 = 1;
pub const MANIFEST_ENTRY: &str = ".shipper/manifest.json";
/// Manifests larger than this are refused before parsing, whatever the
/// receiver's entry limit.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// What one entry can take in a manifest the sender wrote: a path of
/// [`paths::MAX_PATH_BYTES`] with every byte escaped, and the other fields
/// of a delta of the most pieces (the largest kind of entry, some 3 KiB),
/// pretty-printed, with room for one abandoned set id.
pub const MANIFEST_BYTES_PER_ENTRY: u64 = 2 * paths::MAX_PATH_BYTES as u64 + 4096;
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
    /// Directories, made (or given their mode) before files are published.
    /// Absent when empty, so a bundle without any is byte for byte what it
    /// was before directories travelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirEntry>,
    /// Symlinks, each pointing inside the tree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkEntry>,
    /// Files the receivers already hold at the same path with this size
    /// and hash: no entry in the zip. The receiver checks its copy and
    /// gives it this mtime and mode, without rewriting it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<FileEntry>,
    /// Files whose content the receivers hold at another path: no entry in
    /// the zip. The receiver copies its own file at `from` into staging,
    /// checks it against this size and hash, and publishes it like the
    /// others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyEntry>,
    /// Large files rebuilt from the version the receivers hold at the same
    /// path and the bytes that changed, which travel as the zip entry
    /// [`DeltaEntry::entry_name`] (see `bundle/delta.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<DeltaEntry>,
}

/// A file rebuilt from its old version at the same path, which the
/// receiver checks is `base_size` bytes with BLAKE3 `base_hash`, by
/// `recipe` (`bundle/delta.rs`); what it makes is checked against this
/// size and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaEntry {
    pub path: String,
    pub base_size: u64,
    pub base_hash: String,
    pub recipe: String,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    pub hash: String,
}

impl DeltaEntry {
    /// The zip entry holding the bytes that changed: named by a hash of
    /// the path, so no path can collide with another's or a part's.
    pub fn entry_name(&self) -> String {
        delta_entry_name(&self.path)
    }

    /// Its recipe, checked to make `size` bytes from the old version's.
    pub fn recipe(&self) -> Result<Recipe, RecipeError> {
        Recipe::parse(&self.recipe, self.base_size, self.size)
    }

    /// Bytes its zip entry holds: what changed. (0 for a recipe that does
    /// not parse, which [`Manifest::check`] refuses.)
    pub fn data_len(&self) -> u64 {
        self.recipe().map_or(0, |r| r.data_len())
    }
}

pub fn delta_entry_name(path: &str) -> String {
    let hash = blake3::hash(path.as_bytes()).to_hex();
    format!(".shipper/deltas/{}", &hash[..32])
}

/// A file made from the receiver's own copy of the same content at `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyEntry {
    pub path: String,
    pub from: String,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    pub hash: String,
}

/// A directory, with the mode it has in the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    pub path: String,
    pub mode: u32,
}

/// A symlink and its target, as written (relative, resolving inside the
/// tree: see `check.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEntry {
    pub path: String,
    pub target: String,
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
    /// A file unless said otherwise (so ledgers written before directories
    /// and links travelled still load). A link's `hash` is its target's.
    #[serde(default, skip_serializing_if = "Kind::is_file")]
    pub kind: Kind,
}

impl FileMeta {
    /// What the receiver is told of a file with `stamp` and content `hash`.
    pub fn of(stamp: &Stamp, hash: String) -> Self {
        Self {
            size: stamp.size,
            mtime: stamp.mtime,
            mtime_nsec: stamp.mtime_nsec,
            mode: stamp.mode,
            hash,
            // A directory's content is its entries, each compared itself.
            racy: stamp.kind != Kind::Dir && stamp.modified_within(RACY_WINDOW),
            kind: stamp.kind,
        }
    }

    /// What was shipped of the file's stat.
    pub fn stat(&self) -> Stat {
        Stat {
            kind: self.kind,
            size: self.size,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            mode: self.mode,
        }
    }

    /// Whether a file with `stamp` has the kind, size, mtime and mode
    /// shipped (see [`Stat::matches`]).
    pub fn matches(&self, stamp: &Stamp) -> bool {
        self.stat().matches(stamp)
    }
}

/// A whole file stored as the zip entry named by its path (in `files`), or
/// one the receiver already holds (in `kept`).
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
            kind: Kind::File,
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

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifest serializes")
    }

    /// Names of the zip entries this manifest expects, besides itself.
    pub fn entry_names(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|f| f.path.clone())
            .chain(self.parts.iter().map(PartEntry::entry_name))
            .chain(self.deltas.iter().map(DeltaEntry::entry_name))
            .collect()
    }

    /// Whether the bundle carries nothing at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.parts.is_empty()
            && self.deletions.is_empty()
            && self.abandoned.is_empty()
            && self.dirs.is_empty()
            && self.links.is_empty()
            && self.kept.is_empty()
            && self.copies.is_empty()
            && self.deltas.is_empty()
    }

    /// Bytes of content the zip carries: whole files, parts, and the
    /// bytes that changed of files rebuilt from deltas.
    pub fn content_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum::<u64>()
            + self.parts.iter().map(|p| p.size).sum::<u64>()
            + self.deltas.iter().map(DeltaEntry::data_len).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::super::samples::{H, manifest, part};
    use super::*;

    #[test]
    fn what_was_shipped_before_kinds_existed_loads_as_a_file() {
        let old = br#"{"size":1,"mtime":2,"mtime_nsec":3,"mode":420,"hash":""}"#;
        let m: FileMeta = serde_json::from_slice(old).unwrap();
        assert_eq!(m.kind, Kind::File);
        assert_eq!(serde_json::to_vec(&m).unwrap(), old.to_vec());
        let dir = FileMeta {
            kind: Kind::Dir,
            ..m
        };
        let json = serde_json::to_string(&dir).unwrap();
        assert!(json.ends_with(r#""kind":"dir"}"#), "{json}");
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
        // A delta of the most pieces, each of the longest numbers.
        let piece = format!("c{}+{}", u64::MAX / 2, u64::MAX / 2);
        let d = DeltaEntry {
            path: path.clone(),
            base_size: u64::MAX,
            base_hash: H.into(),
            recipe: vec![piece; crate::bundle::delta::MAX_PIECES].join(","),
            size: u64::MAX,
            mtime: i64::MIN,
            mtime_nsec: u32::MAX,
            mode: u32::MAX,
            hash: H.into(),
        };
        let mut m = manifest();
        m.files.clear();
        m.deletions.clear();
        m.deltas = vec![d; 100];
        let len = m.to_json().len() as u64;
        assert!(len <= max_manifest_bytes(100), "{len} bytes");
        assert_eq!(max_manifest_bytes(usize::MAX), MAX_MANIFEST_BYTES);
    }
}
