//! Content a bundle does not carry because the receiver holds it: files it
//! keeps (the same content at the same path: only their metadata
//! travelled) and copies (content the receiver holds at another path).
//! Before root is touched, each kept file is checked against root's copy
//! and each copy is made in staging from root's file at its `from` (a
//! reflink where the filesystem makes one, else a plain copy: never a hard
//! link, which would make two paths of root one file) and checked as it is
//! made: a regular file (never through a symlink) of the size and
//! whole-file BLAKE3 hash the manifest gives. A copy whose `from` no
//! longer holds the content is made from root's file at its own path if
//! that holds it already (a bundle applied again after a crash). Any that root does not hold
//! as listed (edited or lost on the receiver, or an empty root) refuses the
//! bundle, naming every such path ([`BundleError::NotHeld`]), so the sender
//! sends them with their content; nothing of the bundle is applied. Reads
//! root, writes only in staging (publishing gives kept files their
//! metadata: `Publish::retime`, and renames copies into place).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::{BundleError, io_at};
use super::manifest::{CopyEntry, FileEntry, Manifest};
use super::stage_names::StagedKind;
use super::target::Target;
use super::unpack::{Failed, copy_exact, create_private, finish_file, make_stage_dirs};
use crate::beneath::Root;
use crate::hash::hash_reader;

/// At most the bytes read at a time while copying a file of root (hashed
/// as it is copied); a smaller file is copied through a buffer just larger.
const BUF_BYTES: usize = 256 << 10;

/// Check the files `m` keeps and stage the files it copies (the `i`th at
/// [`StagedKind::Copy`]'s path `i` in `stage`), on every core. Returns each copy's path in root
/// with its staged file; `Err(NotHeld)` names every kept file and copy
/// root does not hold as listed.
pub(super) fn check_and_copy(
    root: &Root,
    target: &Target,
    m: &Manifest,
    stage: &Path,
) -> Result<Vec<(String, PathBuf)>, BundleError> {
    use rayon::prelude::*;
    let kept: Vec<Option<String>> = m
        .kept
        .par_iter()
        .map(|k| why_not_held(root, k))
        .collect::<Result<_, _>>()?;
    make_stage_dirs(stage, StagedKind::Copy, m.copies.len())?;
    let dest = |i: usize| stage.join(StagedKind::Copy.path(i));
    let copies: Vec<Option<String>> = (0..m.copies.len())
        .into_par_iter()
        .map(|i| stage_copy_or_done(root, target, &m.copies[i], &dest(i)))
        .collect::<Result<_, _>>()?;
    let paths = m.kept.iter().map(|k| &k.path);
    let missing: Vec<(String, String)> = paths
        .chain(m.copies.iter().map(|c| &c.path))
        .zip(kept.into_iter().chain(copies))
        .filter_map(|(path, why)| why.map(|why| (path.clone(), why)))
        .collect();
    if !missing.is_empty() {
        return Err(BundleError::NotHeld { missing });
    }
    let copies = m.copies.iter().enumerate();
    Ok(copies.map(|(i, c)| (c.path.clone(), dest(i))).collect())
}

/// What root's own files tell about one listed: not held as listed
/// (missing, another size or content, or unreadable: the sender then sends
/// the content), whatever the reason, so a sender learns nothing of a root
/// file beyond that.
pub(super) const NOT_HELD: &str = "not held as listed (missing, changed or unreadable here)";

/// Why root does not hold `k` as listed, or `None` if it does. Root's file
/// failing to open or read is its not being held: the same bundle sent
/// again would fail the same way, and its content cures it.
fn why_not_held(root: &Root, k: &FileEntry) -> Result<Option<String>, BundleError> {
    let held = open(root, &k.path, k.size).and_then(|f| hash_reader(f, k.size).map_err(|_| ()));
    Ok(match held {
        Ok(hash) if hash.to_hex().as_str() == k.hash => None,
        _ => Some(NOT_HELD.into()),
    })
}

/// [`stage_copy`], or, when root's file at `c.from` does not hold the
/// content, a copy of root's file at `c.path` if that holds it already: the
/// bundle is being applied again after a crash published that copy (and
/// perhaps deleted `from`, as a rename does).
fn stage_copy_or_done(
    root: &Root,
    target: &Target,
    c: &CopyEntry,
    dest: &Path,
) -> Result<Option<String>, BundleError> {
    let why = stage_copy(root, target, c, dest)?;
    if why.is_none() || c.from == c.path {
        return Ok(why);
    }
    discard(dest)?;
    let done = CopyEntry {
        from: c.path.clone(),
        ..c.clone()
    };
    Ok(stage_copy(root, target, &done, dest)?.and(why))
}

/// Remove what a failed attempt left at `dest` in staging, if anything.
pub(super) fn discard(dest: &Path) -> Result<(), BundleError> {
    match std::fs::remove_file(dest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_at(dest)(e)),
        _ => Ok(()),
    }
}

/// Make the copy `c` at `dest` from root's file at `c.from`, check it and
/// give it its mode, group and mtime. `Some(why)` when root does not hold
/// that content there; an error writing the copy (a full disk) is the
/// `Err`.
pub(super) fn stage_copy(
    root: &Root,
    target: &Target,
    c: &CopyEntry,
    dest: &Path,
) -> Result<Option<String>, BundleError> {
    let lacks = || Ok(Some(format!("its content, from {:?}: {NOT_HELD}", c.from)));
    let Ok(mut src) = open(root, &c.from, c.size) else {
        return lacks();
    };
    let mut out = create_private(dest)?;
    let hash = if rustix::fs::ioctl_ficlone(&out, &src).is_ok() {
        // The clone shares root's blocks: what is checked is what it holds.
        let clone = File::open(dest).map_err(io_at(dest))?;
        hash_reader(clone, c.size).map_err(Failed::Read)
    } else {
        let mut hasher = blake3::Hasher::new();
        let mut buf = crate::hash::read_buffer([c.size], 1, BUF_BYTES);
        let to = &mut (&mut out, dest, &mut hasher);
        copy_exact(&mut src, c.size, to, &mut buf).map(|()| hasher.finalize())
    };
    let hash = match hash {
        Ok(hash) => hash,
        Err(Failed::Read(_)) => return lacks(),
        Err(Failed::Refused(e)) => return Err(e),
    };
    if hash.to_hex().as_str() != c.hash {
        return lacks();
    }
    let perms = (target.policy.file_mode(c.mode), target.policy.gid());
    finish_file(&out, dest, perms, c.mtime, c.mtime_nsec)?;
    Ok(None)
}

/// Root's regular file `rel`, if it is there with `size` bytes and can be
/// opened.
pub(super) fn open(root: &Root, rel: &str, size: u64) -> Result<File, ()> {
    let f = root.open_file(rel).ok().flatten().ok_or(())?;
    let len = f.metadata().map_err(|_| ())?.len();
    if len == size { Ok(f) } else { Err(()) }
}
