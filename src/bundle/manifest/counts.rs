//! [`Counts`]: how many items each list of a manifest holds, counted
//! before the manifest is parsed, so a receiver compares them with its
//! limits before it allocates anything per entry. Pure.

use serde::Deserialize;

use super::check::ManifestError;

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
    #[serde(default)]
    pub dirs: Count,
    #[serde(default)]
    pub links: Count,
    #[serde(default)]
    pub kept: Count,
    #[serde(default)]
    pub copies: Count,
    #[serde(default)]
    pub deltas: Count,
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
    /// [`Manifest::parse`](super::Manifest::parse) refuses what is wrong with them.
    pub fn of(bytes: &[u8]) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))
    }

    /// Files, parts, deletions, directories, links, kept files, copies and
    /// deltas: what a receiver's entry limit counts.
    pub fn entries(&self) -> usize {
        let tree = self.dirs.0 + self.links.0 + self.kept.0 + self.copies.0 + self.deltas.0;
        self.files.0 + self.parts.0 + self.deletions.0 + tree
    }
}

#[cfg(test)]
mod tests {
    use super::super::samples::manifest;
    use super::*;

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
        let tree = br#"{"dirs": [1, 2], "links": [3]}"#;
        assert_eq!(Counts::of(tree).unwrap().entries(), 3);
        let bare = br#"{"format": 1, "files": [1, "x", {"a": [2]}], "extra": true}"#;
        assert_eq!(Counts::of(bare).unwrap().entries(), 3);
        assert!(Counts::of(br#"{"files": {}}"#).is_err());
        assert!(Counts::of(b"[").is_err());
    }
}
