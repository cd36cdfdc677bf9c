//! Accepting a manifest: [`Manifest::parse`], and [`Manifest::check`],
//! every consistency check that needs no zip (paths, duplicates, hashes,
//! part arithmetic), each a named step run in a fixed order so a manifest
//! with several faults is always refused for the same one. Pure.

use std::collections::HashSet;
use std::collections::hash_map::{Entry, HashMap};

use super::format::{FORMAT, Manifest, OLDEST_FORMAT, PartEntry};
use super::ids::{is_hex_hash, next_seq, valid_sender_id, valid_set_id};
use crate::bundle::part_tree::{PartHashes, part_len_of};
use crate::paths;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest does not parse: {0}")]
    Parse(String),
    #[error(
        "manifest format {0} is not supported (this shipper reads formats {OLDEST_FORMAT} to {FORMAT})"
    )]
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

impl ManifestError {
    fn path(path: &str, reason: String) -> Self {
        Self::Path {
            path: path.to_owned(),
            reason,
        }
    }

    fn part(path: &str, reason: &str) -> Self {
        Self::Part {
            path: path.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// A path that must be valid: else refused, naming it.
fn valid_path(path: &str) -> Result<(), ManifestError> {
    paths::validate(path).map_err(|e| ManifestError::path(path, e.to_string()))
}

/// The names the manifest claimed so far, after Unicode NFC normalisation:
/// names equal after it are the same file on filesystems that normalise
/// (and confusing everywhere else).
#[derive(Default)]
struct Normalised(HashSet<String>);

impl Normalised {
    fn claim(&mut self, path: &str) -> Result<(), ManifestError> {
        use unicode_normalization::UnicodeNormalization;
        if self.0.insert(path.nfc().collect()) {
            Ok(())
        } else {
            Err(ManifestError::Duplicate {
                path: path.to_owned(),
            })
        }
    }
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// Everything that can be checked without the zip: paths, duplicates,
    /// hashes, part arithmetic.
    pub fn check(&self) -> Result<(), ManifestError> {
        self.check_header()?;
        let mut normalised = Normalised::default();
        let files = self.check_files(&mut normalised)?;
        self.check_parts(&files, &mut normalised)?;
        let shipped = self.check_no_file_is_a_directory()?;
        self.check_deletions(&shipped, &mut normalised)?;
        self.check_dirs_and_links(&mut normalised)?;
        self.check_copies()?;
        self.check_deltas()?;
        self.check_abandoned()
    }

    /// Copies: each one's `from` a valid path and its hash 64 hex digits
    /// (its path is checked with the files').
    fn check_copies(&self) -> Result<(), ManifestError> {
        for c in &self.copies {
            valid_path(&c.from)?;
            if !is_hex_hash(&c.hash) {
                let why = "hash is not 64 hex digits".into();
                return Err(ManifestError::path(&c.path, why));
            }
        }
        Ok(())
    }

    /// Deltas: both hashes 64 hex digits and a recipe that makes the
    /// file's size from its old version's, with no copy outside it (its
    /// path is checked with the files').
    fn check_deltas(&self) -> Result<(), ManifestError> {
        for d in &self.deltas {
            if !is_hex_hash(&d.hash) || !is_hex_hash(&d.base_hash) {
                let why = "hash is not 64 hex digits".into();
                return Err(ManifestError::path(&d.path, why));
            }
            d.recipe()
                .map_err(|e| ManifestError::path(&d.path, e.to_string()))?;
        }
        Ok(())
    }

    fn check_header(&self) -> Result<(), ManifestError> {
        if !(OLDEST_FORMAT..=FORMAT).contains(&self.format) {
            return Err(ManifestError::Format(self.format));
        }
        if !valid_sender_id(&self.sender) {
            return Err(ManifestError::Sender(self.sender.clone()));
        }
        if self.seq == 0 || next_seq(self.seq).is_err() {
            return Err(ManifestError::Seq(self.seq));
        }
        Ok(())
    }

    /// Whole files, kept files and copies: valid paths and hashes, each
    /// path once. Returns the paths.
    fn check_files(&self, normalised: &mut Normalised) -> Result<HashSet<&str>, ManifestError> {
        let mut seen: HashSet<&str> = HashSet::new();
        for f in self.files.iter().chain(&self.kept) {
            valid_path(&f.path)?;
            if !is_hex_hash(&f.hash) {
                return Err(ManifestError::path(
                    &f.path,
                    "hash is not 64 hex digits".into(),
                ));
            }
        }
        for path in self.file_paths() {
            valid_path(path)?;
            if !seen.insert(path) {
                return Err(ManifestError::Duplicate {
                    path: path.to_owned(),
                });
            }
            normalised.claim(path)?;
        }
        Ok(seen)
    }

    /// The paths that become whole files in root: shipped, kept, copied,
    /// rebuilt from deltas.
    fn file_paths(&self) -> impl Iterator<Item = &str> {
        let files = self.files.iter().chain(&self.kept).map(|f| f.path.as_str());
        let copies = self.copies.iter().map(|c| c.path.as_str());
        files
            .chain(copies)
            .chain(self.deltas.iter().map(|d| d.path.as_str()))
    }

    /// Parts: valid paths not also shipped whole, one path per set, each
    /// part of a set once and within its file.
    fn check_parts(
        &self,
        files: &HashSet<&str>,
        normalised: &mut Normalised,
    ) -> Result<(), ManifestError> {
        let mut part_keys: HashSet<(&str, u32)> = HashSet::new();
        let mut set_paths: HashMap<&str, &str> = HashMap::new();
        for p in &self.parts {
            let perr = |reason: &str| ManifestError::part(&p.path, reason);
            valid_path(&p.path)?;
            if files.contains(p.path.as_str()) {
                return Err(ManifestError::Duplicate {
                    path: p.path.clone(),
                });
            }
            if !valid_set_id(&p.set) {
                return Err(perr("part set id is not valid"));
            }
            match set_paths.entry(&p.set) {
                Entry::Occupied(e) if *e.get() != p.path => {
                    return Err(perr("part set shared by two paths"));
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(e) => {
                    e.insert(&p.path);
                    normalised.claim(&p.path)?;
                }
            }
            if p.count < 2 || p.index >= p.count {
                return Err(perr("part index or count out of range"));
            }
            if !part_keys.insert((&p.set, p.index)) {
                return Err(perr("part appears twice"));
            }
            p.check_extent().map_err(perr)?;
            if PartHashes::of_format(self.format) == PartHashes::Tree
                && part_len_of(p.index, p.count, p.offset, p.size).is_none()
            {
                return Err(perr("part does not lie on its file's hash tree"));
            }
        }
        Ok(())
    }

    /// Every path that becomes a file in root. None may also be a
    /// directory of another: publishing that one would replace the file
    /// with a directory, and a bundle acknowledged as applied would lack
    /// a file it lists (found by fuzz target `bundle`). Returns the paths.
    fn check_no_file_is_a_directory(&self) -> Result<HashSet<&str>, ManifestError> {
        let shipped: Vec<&str> = self
            .file_paths()
            .chain(self.parts.iter().map(|p| p.path.as_str()))
            .collect();
        let shipped_set: HashSet<&str> = shipped.iter().copied().collect();
        for p in &shipped {
            for (slash, _) in p.match_indices('/') {
                let dir = &p[..slash];
                if shipped_set.contains(dir) {
                    return Err(ManifestError::path(
                        dir,
                        format!("shipped both as a file and as the directory of {p:?}"),
                    ));
                }
            }
        }
        Ok(shipped_set)
    }

    /// Deletions are applied before files are published, so deleting "d"
    /// and shipping "d/x" in one bundle is a file replaced by a directory.
    fn check_deletions(
        &self,
        shipped: &HashSet<&str>,
        normalised: &mut Normalised,
    ) -> Result<(), ManifestError> {
        for d in &self.deletions {
            valid_path(d)?;
            if shipped.contains(d.as_str()) {
                return Err(ManifestError::Duplicate { path: d.clone() });
            }
            normalised.claim(d)?;
        }
        Ok(())
    }

    /// Directories and links: valid paths, each once and not also a file,
    /// part or deletion; a link's target resolving inside the tree; and
    /// nothing shipped below a file or a link of the same bundle (writing
    /// through a link is what a link must never allow).
    fn check_dirs_and_links(&self, normalised: &mut Normalised) -> Result<(), ManifestError> {
        let dirs = self.dirs.iter().map(|d| d.path.as_str());
        let links = self.links.iter().map(|l| l.path.as_str());
        for p in dirs.clone().chain(links.clone()) {
            valid_path(p)?;
            normalised.claim(p)?;
        }
        for l in &self.links {
            if let Some(why) = paths::unsafe_link(&l.path, &l.target) {
                return Err(ManifestError::path(
                    &l.path,
                    format!("symlink refused: {why}"),
                ));
            }
        }
        let not_dirs: HashSet<&str> = self
            .file_paths()
            .chain(self.parts.iter().map(|p| p.path.as_str()))
            .chain(links.clone())
            .collect();
        let all = not_dirs.iter().copied().chain(dirs);
        for p in all {
            for (slash, _) in p.match_indices('/') {
                if not_dirs.contains(&p[..slash]) {
                    return Err(ManifestError::path(
                        &p[..slash],
                        format!("shipped as a file or link and as the directory of {p:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_abandoned(&self) -> Result<(), ManifestError> {
        for a in &self.abandoned {
            if !valid_set_id(a) {
                return Err(ManifestError::part(a, "abandoned part set id is not valid"));
            }
        }
        Ok(())
    }
}

impl PartEntry {
    /// Where the part lies in its file, its hash, and the whole-file hash
    /// on the last part only. The reason, if not.
    fn check_extent(&self) -> Result<(), &'static str> {
        if self.size == 0
            || self
                .offset
                .checked_add(self.size)
                .is_none_or(|end| end > self.file_size)
        {
            return Err("part lies outside the file");
        }
        if !is_hex_hash(&self.hash) {
            return Err("part hash is not 64 hex digits");
        }
        let last = self.index + 1 == self.count;
        match (&self.file_hash, last) {
            (Some(h), true) if is_hex_hash(h) => {
                if self.offset + self.size != self.file_size {
                    return Err("last part does not end the file");
                }
                Ok(())
            }
            (None, false) => Ok(()),
            _ => Err("whole-file hash must be on the last part only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ids::SeqExhausted;
    use super::super::samples::{H, file, manifest, part};
    use super::*;

    use super::super::format::{DirEntry, LinkEntry};

    fn with_tree(dirs: &[&str], links: &[(&str, &str)]) -> Manifest {
        let mut m = manifest();
        m.dirs = dirs
            .iter()
            .map(|d| DirEntry {
                path: d.to_string(),
                mode: 0o755,
            })
            .collect();
        m.links = links
            .iter()
            .map(|(p, t)| LinkEntry {
                path: p.to_string(),
                target: t.to_string(),
            })
            .collect();
        m
    }

    #[test]
    fn a_part_off_its_files_hash_tree_is_refused_from_format_2() {
        let mut m = manifest();
        for p in &mut m.parts {
            p.file_size = 2024;
        }
        m.parts[0].size = 1000;
        m.parts[1].offset = 1000;
        let e = m.check().unwrap_err().to_string();
        assert!(e.contains("hash tree"), "{e}");
        m.format = OLDEST_FORMAT;
        assert_eq!(m.check(), Ok(()), "format 1 parts are plain hashes");
    }

    #[test]
    fn directories_and_safe_links_travel_and_an_old_manifest_is_unchanged() {
        let m = with_tree(
            &["empty", "a"],
            &[("current", "a"), ("a/up", "../a/b.html")],
        );
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        let json = String::from_utf8(manifest().to_json()).unwrap();
        assert!(!json.contains("dirs") && !json.contains("links"), "{json}");
    }

    #[test]
    fn escaping_links_and_paths_claimed_twice_or_below_a_link_are_refused() {
        for (m, what) in [
            (with_tree(&[], &[("l", "/etc/passwd")]), "absolute"),
            (with_tree(&[], &[("l", "../outside")]), "leaves the tree"),
            (with_tree(&[], &[("l", "")]), "empty"),
            (with_tree(&["old"], &[]), "more than once"),
            (with_tree(&["a/b.html"], &[]), "more than once"),
            (with_tree(&[], &[("a", "x")]), "directory of \"a/b.html\""),
            (with_tree(&["l/d"], &[("l", "x")]), "directory of \"l/d\""),
            (with_tree(&["../x"], &[]), "\"../x\""),
        ] {
            let e = m.check().unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    fn delta(path: &str, recipe: &str) -> super::super::format::DeltaEntry {
        let f = file(path);
        super::super::format::DeltaEntry {
            path: f.path,
            base_size: 100,
            base_hash: f.hash.clone(),
            recipe: recipe.into(),
            size: 10,
            mtime: f.mtime,
            mtime_nsec: f.mtime_nsec,
            mode: f.mode,
            hash: f.hash,
        }
    }

    #[test]
    fn a_delta_names_its_changed_bytes_entry_and_a_bad_recipe_is_refused_naming_the_file() {
        let mut m = manifest();
        m.deltas.push(delta("v.mp4", "c0+5,d5"));
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        assert!(m.entry_names().contains(&m.deltas[0].entry_name()));
        m.deltas[0].recipe = "c96+5,d5".into();
        let e = m.check().unwrap_err().to_string();
        assert!(
            e.contains("\"v.mp4\"") && e.contains("beyond the old version"),
            "{e}"
        );
        let json = String::from_utf8(manifest().to_json()).unwrap();
        assert!(!json.contains("deltas"), "{json}");
    }

    #[test]
    fn kept_files_travel_without_zip_entries_and_an_old_manifest_is_unchanged() {
        let mut m = manifest();
        m.kept.push(file("same.html"));
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        assert!(!m.entry_names().contains(&"same.html".to_string()));
        let json = String::from_utf8(manifest().to_json()).unwrap();
        assert!(!json.contains("kept"), "{json}");
    }

    fn copy(path: &str, from: &str) -> super::super::format::CopyEntry {
        let f = file(path);
        super::super::format::CopyEntry {
            path: f.path,
            from: from.into(),
            size: f.size,
            mtime: f.mtime,
            mtime_nsec: f.mtime_nsec,
            mode: f.mode,
            hash: f.hash,
        }
    }

    #[test]
    fn a_copy_may_come_from_a_path_the_bundle_deletes() {
        let mut m = manifest();
        m.deletions.push("old/x.jpg".into());
        m.copies.push(copy("new/x.jpg", "old/x.jpg"));
        assert_eq!(Manifest::parse(&m.to_json()).unwrap(), m);
        assert!(!m.entry_names().contains(&"new/x.jpg".to_string()));
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
        let cases = inconsistent_cases();
        for (name, mutate) in cases {
            let mut m = manifest();
            mutate(&mut m);
            assert!(m.check().is_err(), "{name} accepted");
        }
    }

    /// Manifests each broken in one way, by name.
    type Mutation = Box<dyn Fn(&mut Manifest)>;

    fn inconsistent_cases() -> Vec<(&'static str, Mutation)> {
        let cases: Vec<(&'static str, Mutation)> = vec![
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
        ];
        cases
            .into_iter()
            .chain(inconsistent_parts_and_names())
            .chain(inconsistent_deltas())
            .collect()
    }

    /// Deltas: a path taken twice, a bad hash, a recipe of the wrong size.
    fn inconsistent_deltas() -> Vec<(&'static str, Mutation)> {
        vec![
            (
                "delta and shipped",
                Box::new(|m| m.deltas.push(delta("a/b.html", "d10"))),
            ),
            (
                "delta above a file",
                Box::new(|m| m.deltas.push(delta("a", "d10"))),
            ),
            (
                "delta base hash",
                Box::new(|m| {
                    m.deltas.push(delta("v", "d10"));
                    m.deltas[0].base_hash = "zz".into();
                }),
            ),
            (
                "delta of the wrong size",
                Box::new(|m| m.deltas.push(delta("v", "d9"))),
            ),
        ]
    }

    /// Parts, names that clash, files below files.
    fn inconsistent_parts_and_names() -> Vec<(&'static str, Mutation)> {
        vec![
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
                "kept and shipped",
                Box::new(|m| m.kept.push(file("a/b.html"))),
            ),
            ("kept above a file", Box::new(|m| m.kept.push(file("a")))),
            (
                "copy and shipped",
                Box::new(|m| m.copies.push(copy("a/b.html", "x"))),
            ),
            (
                "copy from ..",
                Box::new(|m| m.copies.push(copy("c", "../x"))),
            ),
            (
                "copy above a file",
                Box::new(|m| m.copies.push(copy("a", "x"))),
            ),
            (
                "copy hash",
                Box::new(|m| {
                    m.copies.push(copy("c", "x"));
                    m.copies[0].hash = "zz".into();
                }),
            ),
            (
                "kept and deleted",
                Box::new(|m| {
                    m.kept.push(file("k"));
                    m.deletions.push("k".into());
                }),
            ),
            (
                "kept hash",
                Box::new(|m| {
                    m.kept.push(file("k"));
                    m.kept[0].hash = "zz".into();
                }),
            ),
            (
                "two sets, one path",
                Box::new(|m| {
                    let mut p = part(0, 2);
                    p.set = "s2".into();
                    m.parts.push(p);
                }),
            ),
        ]
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
