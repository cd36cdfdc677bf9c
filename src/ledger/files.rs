//! What the receivers have of each path, kept compactly: a [`Meta`] is a
//! [`FileMeta`] without its allocation (the BLAKE3 hash as 32 bytes, not
//! 64 hex digits in a `String`), and [`Files`] maps every path to one. A
//! sender of a million-file tree keeps a million of them: each byte per
//! path is a megabyte of its memory (`bench/tree.py` measures it).
//!
//! In JSON a [`Meta`] is written and read as the [`FileMeta`] it stands
//! for, so the ledger's snapshot keeps its format. Pure.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::bundle::manifest::FileMeta;
use crate::stamp::{Kind, Stamp, Stat};

/// A [`FileMeta`], without allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FileMeta", into = "FileMeta")]
pub struct Meta {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
    /// BLAKE3 of the content (of a link: of its target), when `hashed`.
    hash: [u8; 32],
    /// A directory has no hash (`""` in a [`FileMeta`]).
    hashed: bool,
    pub racy: bool,
    pub kind: Kind,
}

impl Meta {
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

    /// The BLAKE3 hash of the content, if there is one.
    pub fn hash(&self) -> Option<&[u8; 32]> {
        self.hashed.then_some(&self.hash)
    }
}

impl From<&FileMeta> for Meta {
    /// A hash that is not 64 lowercase hex digits (shipper writes no other)
    /// is kept as none: what compares content then finds it changed and
    /// ships it again, rather than taking it as unchanged.
    fn from(m: &FileMeta) -> Self {
        let mut hash = [0u8; 32];
        let hashed = m.hash.len() == 64
            && data_encoding::HEXLOWER
                .decode_mut(m.hash.as_bytes(), &mut hash)
                .is_ok();
        Self {
            size: m.size,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
            mode: m.mode,
            hash: if hashed { hash } else { [0; 32] },
            hashed,
            racy: m.racy,
            kind: m.kind,
        }
    }
}

impl From<FileMeta> for Meta {
    fn from(m: FileMeta) -> Self {
        Self::from(&m)
    }
}

impl From<Meta> for FileMeta {
    fn from(m: Meta) -> Self {
        FileMeta {
            size: m.size,
            mtime: m.mtime,
            mtime_nsec: m.mtime_nsec,
            mode: m.mode,
            hash: if m.hashed {
                data_encoding::HEXLOWER.encode(&m.hash)
            } else {
                String::new()
            },
            racy: m.racy,
            kind: m.kind,
        }
    }
}

/// Every path the receivers have, in order, with what they have of it.
/// Written and read in JSON as a map of paths to [`FileMeta`]s.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Files(BTreeMap<String, Meta>);

impl<'de> Deserialize<'de> for Files {
    /// Read whole, then built at once: a B-tree filled one path at a time
    /// keeps its nodes about half full, one built from the sorted list
    /// fills them (a third less memory per path at a million paths).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Vec<(String, Meta)>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of paths to file metadata")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, Meta)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((path, meta)) = map.next_entry::<String, Meta>()? {
                    // As the compaction's merge reads it: a snapshot it
                    // would refuse is refused here, not at the first merge.
                    if entries.last().is_some_and(|(last, _)| *last >= path) {
                        return Err(serde::de::Error::custom(format!(
                            "path {path:?} out of order"
                        )));
                    }
                    entries.push((path, meta));
                }
                Ok(entries)
            }
        }
        // Sorted and unique (checked above): built at once.
        Ok(Self(d.deserialize_map(Entries)?.into_iter().collect()))
    }
}

impl Files {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }

    /// What the receivers have of `path`.
    pub fn meta(&self, path: &str) -> Option<&Meta> {
        self.0.get(path)
    }

    /// What the receivers have of `path`, as a [`FileMeta`].
    pub fn get(&self, path: &str) -> Option<FileMeta> {
        self.0.get(path).map(|m| FileMeta::from(*m))
    }

    /// Every path, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }

    /// Every path with what the receivers have of it, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Meta)> {
        self.0.iter()
    }

    /// The paths from `from` on, in order.
    pub fn from<'a>(&'a self, from: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.0
            .range::<str, _>((Bound::Included(from), Bound::Unbounded))
            .map(|(p, _)| p)
    }

    /// `path` now has `Some` this metadata, or `None`: it is gone.
    pub fn set(&mut self, path: &str, meta: Option<Meta>) {
        match meta {
            Some(m) => match self.0.get_mut(path) {
                Some(have) => *have = m,
                None => {
                    self.0.insert(path.to_owned(), m);
                }
            },
            None => {
                self.0.remove(path);
            }
        }
    }
}

impl FromIterator<(String, FileMeta)> for Files {
    fn from_iter<I: IntoIterator<Item = (String, FileMeta)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(p, m)| (p, Meta::from(m))).collect())
    }
}

impl FromIterator<(String, Meta)> for Files {
    fn from_iter<I: IntoIterator<Item = (String, Meta)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_meta(hash: &str, kind: Kind) -> FileMeta {
        FileMeta {
            size: 3,
            mtime: 4,
            mtime_nsec: 5,
            mode: 0o640,
            hash: hash.into(),
            racy: true,
            kind,
        }
    }

    #[test]
    fn a_meta_stands_for_its_file_meta_in_memory_and_in_json() {
        let hash = blake3::hash(b"x").to_hex().to_string();
        for m in [file_meta(&hash, Kind::File), file_meta("", Kind::Dir)] {
            let compact = Meta::from(&m);
            assert_eq!(FileMeta::from(compact), m);
            let json = serde_json::to_string(&compact).unwrap();
            assert_eq!(json, serde_json::to_string(&m).unwrap());
            assert_eq!(serde_json::from_str::<Meta>(&json).unwrap(), compact);
        }
    }

    #[test]
    fn a_hash_shipper_never_writes_is_kept_as_none() {
        for odd in ["abc", &"A".repeat(64), &"g".repeat(64)] {
            let m = FileMeta::from(Meta::from(&file_meta(odd, Kind::File)));
            assert_eq!(m.hash, "", "{odd}");
        }
    }

    #[test]
    fn files_read_and_write_the_json_of_a_map_of_file_metas() {
        let hash = blake3::hash(b"x").to_hex().to_string();
        let plain: BTreeMap<String, FileMeta> = [
            ("a/b".to_string(), file_meta(&hash, Kind::File)),
            ("a".to_string(), file_meta("", Kind::Dir)),
        ]
        .into();
        let json = serde_json::to_string(&plain).unwrap();
        let files: Files = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&files).unwrap(), json);
        assert_eq!(files.get("a/b"), plain.get("a/b").cloned());
        assert_eq!(files.from("a/").collect::<Vec<_>>(), ["a/b"]);
        // Twice, or out of order: refused, as the compaction's merge
        // would refuse it.
        for odd in [("a", "a"), ("b", "a")] {
            let json = format!(
                r#"{{"{}":{m},"{}":{n}}}"#,
                odd.0,
                odd.1,
                m = json_of(1),
                n = json_of(2)
            );
            let e = serde_json::from_str::<Files>(&json)
                .unwrap_err()
                .to_string();
            assert!(e.contains("out of order"), "{e}");
        }
    }

    fn json_of(size: u64) -> String {
        let mut m = file_meta("", Kind::Dir);
        m.size = size;
        serde_json::to_string(&m).unwrap()
    }
}
