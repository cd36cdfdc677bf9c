//! The ledger's snapshot file, `acked.snapshot`: one JSON object,
//! `{"acked_seq":N,"files":{"<path>":<FileMeta>,…},"in_doubt":{"<path>":seq}}`
//! with the paths in order. It is read as a stream, and compacted by
//! merging the old file with what was acknowledged since into a new one,
//! entry by entry: neither its text nor its whole content is ever held in
//! memory beside the sender's own per-path state. A million-path snapshot
//! is some 150 MB.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::iter::Peekable;
use std::path::Path;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::files::{Files, Meta};
use crate::bundle::manifest::FileMeta;
use crate::durable;

/// What the snapshot holds: every record up to `acked_seq` folded in.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Snapshot {
    /// Every record up to this sequence is folded in.
    pub(super) acked_seq: u64,
    pub(super) files: Files,
    /// Paths carried by a bundle whose acknowledgement is not recorded,
    /// with the latest such bundle.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) in_doubt: BTreeMap<String, u64>,
}

/// Read buffer: large enough that parsing, not reading, sets the pace.
const READ_BUF: usize = 1 << 20;

/// The snapshot at `path` and its length in bytes; `None` if there is none.
pub(super) fn read(path: &Path) -> io::Result<Option<(Snapshot, u64)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let snapshot = serde_json::from_reader(BufReader::with_capacity(READ_BUF, file))
        .map_err(|e| corrupt(path, e))?;
    Ok(Some((snapshot, len)))
}

fn corrupt(path: &Path, e: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: corrupt snapshot: {e}", path.display()),
    )
}

/// What a compaction wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Written {
    pub(super) bytes: u64,
    pub(super) files: u64,
}

/// Replace the snapshot at `path` (durably) with its files changed by
/// `since` (`None`: deleted), `acked_seq` and `in_doubt`. The old file is
/// read as the new one is written; its paths must be in order.
pub(super) fn rewrite(
    path: &Path,
    acked_seq: u64,
    since: &BTreeMap<String, Option<Meta>>,
    in_doubt: &BTreeMap<String, u64>,
) -> io::Result<Written> {
    let old = match File::open(path) {
        Ok(f) => Some(BufReader::with_capacity(READ_BUF, f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut counted = Counter::default();
    durable::write_atomic_with(path, |w| {
        let mut out = Counting {
            inner: w,
            count: &mut counted,
        };
        write!(out, "{{\"acked_seq\":{acked_seq},\"files\":{{")?;
        let mut merge = Merge {
            out: &mut out,
            since: since.iter().peekable(),
            wrote: 0,
            last: None,
            failed: None,
        };
        if let Some(old) = old {
            let mut de = serde_json::Deserializer::from_reader(old);
            let merged = TopLevel(&mut merge).deserialize(&mut de);
            if let Some(e) = merge.failed.take() {
                return Err(e);
            }
            merged.map_err(|e| corrupt(path, e))?;
        }
        merge.rest()?;
        let files = merge.wrote;
        out.count.files = files;
        out.write_all(b"}")?;
        if !in_doubt.is_empty() {
            out.write_all(b",\"in_doubt\":")?;
            serde_json::to_writer(&mut out, in_doubt)?;
        }
        out.write_all(b"}")
    })?;
    Ok(Written {
        bytes: counted.bytes,
        files: counted.files,
    })
}

#[derive(Default)]
struct Counter {
    bytes: u64,
    files: u64,
}

/// A writer that counts the bytes through it.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    count: &'a mut Counter,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the merged `files` entries: the old file's, in order, with the
/// changes `since` taking their place or slotting in between.
struct Merge<'a, 'o, I: Iterator> {
    out: &'o mut Counting<'a>,
    since: Peekable<I>,
    wrote: u64,
    /// The old file's last path, to check the order.
    last: Option<String>,
    /// A write failed (kept whole: the caller tells a full disk by it).
    failed: Option<io::Error>,
}

impl<'s, I: Iterator<Item = (&'s String, &'s Option<Meta>)>> Merge<'_, '_, I> {
    fn entry(&mut self, path: &str, meta: &FileMeta) -> io::Result<()> {
        if self.wrote > 0 {
            self.out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *self.out, path)?;
        self.out.write_all(b":")?;
        serde_json::to_writer(&mut *self.out, meta)?;
        self.wrote += 1;
        Ok(())
    }

    /// The changes before `path` (all of them: `None`), written in order.
    fn changes_before(&mut self, path: Option<&str>) -> io::Result<()> {
        while let Some((p, m)) = self
            .since
            .next_if(|(p, _)| path.is_none_or(|b| p.as_str() < b))
        {
            if let Some(m) = m {
                self.entry(p, &FileMeta::from(*m))?;
            }
        }
        Ok(())
    }

    /// The old file's entry for `path`: written as it was, unless changed.
    fn old(&mut self, path: String, meta: FileMeta) -> io::Result<()> {
        self.changes_before(Some(&path))?;
        match self.since.next_if(|(p, _)| **p == path) {
            Some((p, Some(m))) => self.entry(p, &FileMeta::from(*m))?,
            Some((_, None)) => {} // deleted since
            None => self.entry(&path, &meta)?,
        }
        self.last = Some(path);
        Ok(())
    }

    /// The changes after the old file's last path.
    fn rest(&mut self) -> io::Result<()> {
        self.changes_before(None)
    }
}

/// The snapshot's top-level object: only `files` is read.
struct TopLevel<'m, 'a, 'o, I: Iterator>(&'m mut Merge<'a, 'o, I>);

impl<'de, 's, I: Iterator<Item = (&'s String, &'s Option<Meta>)>> DeserializeSeed<'de>
    for TopLevel<'_, '_, '_, I>
{
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 's, I: Iterator<Item = (&'s String, &'s Option<Meta>)>> Visitor<'de>
    for TopLevel<'_, '_, '_, I>
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a ledger snapshot")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "files" {
                map.next_value_seed(FilesSeed(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The old file's `files`, entry by entry into the merge.
struct FilesSeed<'m, 'a, 'o, I: Iterator>(&'m mut Merge<'a, 'o, I>);

impl<'de, 's, I: Iterator<Item = (&'s String, &'s Option<Meta>)>> DeserializeSeed<'de>
    for FilesSeed<'_, '_, '_, I>
{
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 's, I: Iterator<Item = (&'s String, &'s Option<Meta>)>> Visitor<'de>
    for FilesSeed<'_, '_, '_, I>
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of paths to file metadata")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let merge = self.0;
        while let Some((path, meta)) = map.next_entry::<String, FileMeta>()? {
            if merge
                .last
                .as_deref()
                .is_some_and(|last| last >= path.as_str())
            {
                return Err(de::Error::custom(format!("path {path:?} out of order")));
            }
            if let Err(e) = merge.old(path, meta) {
                let msg = e.to_string();
                merge.failed = Some(e);
                return Err(de::Error::custom(msg));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::Kind;

    fn meta(size: u64) -> FileMeta {
        FileMeta {
            size,
            mtime: 1,
            mtime_nsec: 2,
            mode: 0o644,
            hash: "00".repeat(32),
            racy: false,
            kind: Kind::File,
        }
    }

    fn files(entries: &[(&str, u64)]) -> Files {
        entries
            .iter()
            .map(|(p, s)| (p.to_string(), meta(*s)))
            .collect()
    }

    #[test]
    fn a_compaction_merges_the_old_file_with_what_changed_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acked.snapshot");
        let old = Snapshot {
            acked_seq: 3,
            files: files(&[("b", 1), ("d", 1), ("f", 1)]),
            in_doubt: BTreeMap::new(),
        };
        durable::write_atomic(&path, &serde_json::to_vec(&old).unwrap()).unwrap();
        let since: BTreeMap<String, Option<Meta>> = [
            ("a", Some(2)),
            ("d", None),
            ("e", Some(2)),
            ("f", Some(2)),
            ("g", None),
            ("h", Some(2)),
        ]
        .into_iter()
        .map(|(p, s)| (p.to_string(), s.map(|s| Meta::from(meta(s)))))
        .collect();
        let in_doubt: BTreeMap<String, u64> = [("x".to_string(), 9)].into();
        let written = rewrite(&path, 8, &since, &in_doubt).unwrap();
        let (new, len) = read(&path).unwrap().unwrap();
        let want = Snapshot {
            acked_seq: 8,
            files: files(&[("a", 2), ("b", 1), ("e", 2), ("f", 2), ("h", 2)]),
            in_doubt,
        };
        assert_eq!(new, want);
        assert_eq!(
            written,
            Written {
                bytes: len,
                files: 5
            }
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            serde_json::to_vec(&want).unwrap(),
            "written as serde writes it"
        );
    }

    #[test]
    fn a_first_compaction_writes_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acked.snapshot");
        let since: BTreeMap<String, Option<Meta>> =
            [("a".to_string(), Some(Meta::from(meta(1))))].into();
        rewrite(&path, 1, &since, &BTreeMap::new()).unwrap();
        let (new, _) = read(&path).unwrap().unwrap();
        assert_eq!(new.files, files(&[("a", 1)]));
        assert!(read(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn a_snapshot_with_paths_out_of_order_is_refused_not_merged_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acked.snapshot");
        let m = serde_json::to_string(&meta(1)).unwrap();
        let text = format!(r#"{{"acked_seq":1,"files":{{"b":{m},"a":{m}}}}}"#);
        std::fs::write(&path, &text).unwrap();
        let e = rewrite(&path, 2, &BTreeMap::new(), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("out of order"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "kept");
    }
}
