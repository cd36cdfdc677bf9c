//! Whole bundles: the bytes are written to a file, opened and checked with
//! `apply::open` and, when they open, applied to a fresh root. Whatever the
//! bytes, nothing outside the target's directories may change (half of the
//! runs plant symlinks in root that lead to a canary directory beside it), a
//! refused bundle leaves root as it was, staging is left empty, and an
//! applied bundle leaves every file it lists in root with its declared hash.
//!
//! Mutating a zip's bytes almost never gets past its CRCs, so a custom
//! mutator also edits bundles the way a hostile sender would write them:
//! it unpacks the zip, changes the manifest, an entry's content (keeping
//! the manifest's size and hash true), a path, adds or drops an entry, and
//! packs it again. The other third of the mutations are libFuzzer's own, on
//! the raw bytes, for the zip reader.

#![no_main]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use serde_json::Value;
use shipper::beneath::{Restore, Root, undo_kept};
use shipper::bundle::apply::{self, KeepAs, Limits, Target};
use shipper::bundle::manifest::{MANIFEST_ENTRY, Manifest, part_entry_name};

/// Small, so a legitimate but large bundle costs the fuzzer little.
const LIMITS: Limits = Limits {
    max_entries: 64,
    max_file_size: 1 << 20,
    max_unpacked: 4 << 20,
};

/// Symlinks planted in root, named like paths in the fixtures, each leading
/// to the canary directory or the file in it.
const PLANTED: [(&str, &str); 4] = [
    ("img", "../canary"),
    ("2026", "../canary"),
    ("gone.txt", "../canary/victim"),
    ("index.html", "../canary/victim"),
];
const VICTIM: &[u8] = b"must survive";

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in(scratch()).expect("scratch directory");
    let base = dir.path();
    let bundle = base.join("bundle.zip");
    fs::write(&bundle, data).expect("writing the bundle");
    let Ok(opened) = apply::open(&bundle, &LIMITS) else {
        return;
    };
    let manifest = opened.manifest.clone();
    let target = Target {
        root: base.join("root"),
        staging: base.join("staging"),
        parts: base.join("parts"),
        policy: Default::default(),
        // Half the inputs also keep what they replace, as for rollback.
        keep: (data.len() % 4 < 2).then(|| KeepAs {
            record: base.join("record"),
            with: Vec::new(),
        }),
        snapshot: false,
    };
    target.prepare().expect("preparing the target");
    fs::create_dir(base.join("canary")).unwrap();
    fs::write(base.join("canary/victim"), VICTIM).unwrap();
    if data.len().is_multiple_of(2) {
        for (name, to) in PLANTED {
            std::os::unix::fs::symlink(to, target.root.join(name)).unwrap();
        }
    }
    let before = snapshot(&target.root);

    let result = apply::apply(&target, opened);

    assert_eq!(
        snapshot(&base.join("canary")),
        BTreeMap::from([("victim".to_string(), Node::File(VICTIM.to_vec()))]),
        "written outside root: {result:?}"
    );
    let mut names: Vec<_> = fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let kept = target.keep.is_some() && result.is_ok();
    let mut want = vec!["bundle.zip", "canary", "parts", "root", "staging"];
    if kept {
        want.insert(3, "record");
    }
    assert_eq!(names, want, "{result:?}");
    assert!(
        snapshot(&target.staging).is_empty(),
        "staging left behind: {result:?}"
    );
    match result {
        Err(e) => assert_eq!(
            snapshot(&target.root),
            before,
            "refused ({e}) but root changed"
        ),
        Ok(_) => {
            assert_published(&target.root, &manifest);
            if kept {
                // What it kept undoes it exactly.
                let root = Root::open(&target.root).unwrap();
                let left = undo_kept(&root, &base.join("record"), Restore::Move).unwrap();
                assert!(left.is_empty(), "undo left {left:?}");
                assert_eq!(snapshot(&target.root), before, "undone, root is not as before");
            }
        }
    }
});

/// Every file the manifest lists, and every file whose parts all came in
/// this bundle, is in root as a regular file with its hash; every path it
/// deletes is gone, unless the bundle ships it or something below it.
fn assert_published(root: &Path, m: &Manifest) {
    let shipped: Vec<&str> = m
        .files
        .iter()
        .map(|f| f.path.as_str())
        .chain(m.parts.iter().map(|p| p.path.as_str()))
        .collect();
    for d in &m.deletions {
        let kept = shipped.iter().any(|s| {
            s == d
                || s.strip_prefix(d.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        });
        let meta = fs::symlink_metadata(root.join(d));
        assert!(
            kept || meta.is_err(),
            "{d:?} deleted but still in root: {meta:?}"
        );
    }
    let files = m.files.iter().map(|f| (&f.path, &f.hash));
    let assembled = m
        .parts
        .iter()
        .filter(|p| (0..p.count).all(|i| m.parts.iter().any(|q| q.set == p.set && q.index == i)))
        .filter_map(|p| Some((&p.path, p.file_hash.as_ref()?)));
    for (path, hash) in files.chain(assembled) {
        let at = root.join(path);
        let meta = fs::symlink_metadata(&at);
        assert!(
            meta.as_ref().is_ok_and(|m| m.is_file()),
            "{path:?} applied but not a file in root: {meta:?}"
        );
        let got = blake3::hash(&fs::read(&at).unwrap());
        assert_eq!(
            got.to_hex().as_str(),
            hash,
            "{path:?} applied with other content"
        );
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File(Vec<u8>),
    Dir,
    Link(PathBuf),
}

/// What lies below `dir`, without following symlinks.
fn snapshot(dir: &Path) -> BTreeMap<String, Node> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            let path = e.path();
            let ty = e.file_type().unwrap();
            if ty.is_symlink() {
                out.insert(name, Node::Link(fs::read_link(&path).unwrap()));
            } else if ty.is_dir() {
                walk(&path, &format!("{name}/"), out);
                out.insert(name, Node::Dir);
            } else {
                out.insert(name, Node::File(fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out);
    out
}

/// Memory-backed when there is one: every run makes and removes a tree.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

// ------------------------------------------------------------- the mutator

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let mut rng = Rng(u64::from(seed) | 1 << 32);
    if rng.below(3) == 0 {
        return fuzzer_mutate(data, size, max_size);
    }
    match mutate_bundle(&data[..size], max_size, &mut rng) {
        Some(new) if new.len() <= max_size => {
            data[..new.len()].copy_from_slice(&new);
            new.len()
        }
        _ => fuzzer_mutate(data, size, max_size),
    }
});

/// xorshift: the mutator must be a function of its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

struct Entry {
    name: String,
    data: Vec<u8>,
    mode: Option<u32>,
}

/// libFuzzer's byte mutations on `bytes`, allowed to grow a little.
fn mutate_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut buf = bytes.to_vec();
    buf.resize(bytes.len() * 2 + 16, 0);
    let n = fuzzer_mutate(&mut buf, bytes.len(), bytes.len() * 2 + 16);
    buf.truncate(n);
    buf
}

fn mutate_path(path: &str) -> String {
    String::from_utf8_lossy(&mutate_bytes(path.as_bytes())).into_owned()
}

/// One structural edit of a bundle; `None` when `bytes` is not a zip this
/// mutator can read.
fn mutate_bundle(bytes: &[u8], max_size: usize, rng: &mut Rng) -> Option<Vec<u8>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).ok()?;
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let e = zip.by_index(i).ok()?;
        let name = e.name().ok()?.into_owned();
        let mode = e.unix_mode();
        let mut data = Vec::new();
        e.take(max_size as u64).read_to_end(&mut data).ok()?;
        entries.push(Entry { name, data, mode });
    }
    let mi = entries.iter().position(|e| e.name == MANIFEST_ENTRY)?;
    let mut m: Value = serde_json::from_slice(&entries[mi].data).ok()?;
    let file_paths: Vec<String> = m["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["path"].as_str().map(str::to_owned))
        .collect();
    let pick = |rng: &mut Rng| file_paths.get(rng.below(file_paths.len())).cloned();
    match rng.below(6) {
        // The manifest's text itself.
        0 => {
            entries[mi].data = mutate_bytes(&entries[mi].data);
            return pack(&entries);
        }
        // An entry's content, with the manifest kept true to it.
        1 => {
            let i = rng.below(entries.len());
            if i == mi {
                return None;
            }
            entries[i].data = mutate_bytes(&entries[i].data);
            let (len, hash) = (entries[i].data.len(), blake3::hash(&entries[i].data));
            let name = entries[i].name.clone();
            for list in ["files", "parts"] {
                for f in m[list].as_array_mut().into_iter().flatten() {
                    let entry_name = match (f["set"].as_str(), f["index"].as_u64()) {
                        (Some(set), Some(index)) => part_entry_name(set, index as u32),
                        _ => f["path"].as_str().unwrap_or_default().to_owned(),
                    };
                    if entry_name == name {
                        f["size"] = len.into();
                        f["hash"] = hash.to_hex().as_str().into();
                    }
                }
            }
        }
        // A file moved to another path, in the zip and the manifest.
        2 => {
            let from = pick(rng)?;
            let to = mutate_path(&from);
            rename(&mut m, &mut entries, &from, &to);
        }
        // A file added beside, below or above another one.
        3 => {
            let near = pick(rng)?;
            let path = match rng.below(3) {
                0 => format!("{near}/{}", mutate_path("x")),
                1 => near.rsplit_once('/').map(|(dir, _)| dir.to_owned())?,
                _ => mutate_path(&near),
            };
            let data = mutate_bytes(b"added");
            let hash = blake3::hash(&data).to_hex().to_string();
            m["files"].as_array_mut()?.push(serde_json::json!({
                "path": path, "size": data.len(), "mtime": 0, "mtime_nsec": 0,
                "mode": 420, "hash": hash,
            }));
            entries.push(Entry {
                name: path,
                data,
                mode: Some(0o100644),
            });
        }
        // A deletion of a shipped path, its directory, or near it.
        4 => {
            let near = pick(rng).unwrap_or_else(|| "x".into());
            let path = match rng.below(3) {
                0 => near,
                1 => near.rsplit_once('/').map(|(dir, _)| dir.to_owned())?,
                _ => mutate_path(&near),
            };
            if !m["deletions"].is_array() {
                m["deletions"] = Value::Array(Vec::new());
            }
            m["deletions"].as_array_mut()?.push(path.into());
        }
        // A file dropped from the zip and the manifest.
        _ => {
            let gone = pick(rng)?;
            entries.retain(|e| e.name != gone);
            m["files"]
                .as_array_mut()?
                .retain(|f| f["path"] != gone.as_str());
        }
    }
    let mi = entries.iter().position(|e| e.name == MANIFEST_ENTRY)?;
    entries[mi].data = serde_json::to_vec(&m).ok()?;
    pack(&entries)
}

fn rename(m: &mut Value, entries: &mut [Entry], from: &str, to: &str) {
    for f in m["files"].as_array_mut().into_iter().flatten() {
        if f["path"] == from {
            f["path"] = to.into();
        }
    }
    for e in entries.iter_mut().filter(|e| e.name == from) {
        e.name = to.to_owned();
    }
}

/// A zip of `entries`, stored, in order, with their unix modes.
fn pack(entries: &[Entry]) -> Option<Vec<u8>> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for e in entries {
        let mut opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        if let Some(mode) = e.mode {
            opts = opts.unix_permissions(mode);
        }
        w.start_file(e.name.as_str(), opts).ok()?;
        w.write_all(&e.data).ok()?;
    }
    Some(w.finish().ok()?.into_inner())
}
