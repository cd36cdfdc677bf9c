//! Files a bundle carries as deltas (`delta.rs`), rebuilt in staging. Root's
//! file at the delta's own path is hashed first: only the version the
//! delta is made from (its `base_hash`) is rebuilt from, following the
//! recipe, with the bytes that changed read from the delta's zip entry, and
//! what is written is hashed as it is written and must match the
//! whole-file BLAKE3 hash the manifest gives. Root holding the new version
//! already (a bundle applied again after a crash published that file) is
//! copied instead. Anything else (missing, another size or content,
//! unreadable: edited here, or the bundle that made it never applied)
//! refuses the bundle like a copy root cannot make
//! ([`BundleError::NotHeld`]), so the sender sends the whole file; one
//! reason for every case, so a bundle learns nothing of a root file it
//! does not know whole already. Reads root and the zip, writes only in
//! staging; runs before anything of the bundle is stored.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::delta::Piece;
use super::error::{BundleError, entry_err};
use super::kept::{NOT_HELD, open, stage_copy};
use super::manifest::{CopyEntry, DeltaEntry, Manifest};
use super::stage_names::StagedKind;
use super::target::Target;
use super::unpack::{Failed, copy_exact, create_private, finish_file, make_stage_dirs};
use super::verify::OpenedZip;
use crate::beneath::Root;

/// Bytes copied at a time (reads of 256 KiB and more are hashed on every
/// core: [`crate::hash::update`]).
const BUF_BYTES: usize = 1 << 20;

/// Rebuild every delta of `m` in `stage` (the `i`th at
/// [`StagedKind::Delta`]'s path `i`). Returns
/// each one's path in root with its staged file; `Err(NotHeld)` names every
/// delta whose old version root does not hold.
pub(super) fn stage_deltas(
    root: &Root,
    target: &Target,
    zip: &mut OpenedZip,
    m: &Manifest,
    stage: &Path,
) -> Result<Vec<(String, PathBuf)>, BundleError> {
    // No larger than the largest delta's file needs: most bundles have none.
    let mut buf = crate::hash::read_buffer(m.deltas.iter().map(|d| d.size), 1, BUF_BYTES);
    make_stage_dirs(stage, StagedKind::Delta, m.deltas.len())?;
    let mut staged = Vec::with_capacity(m.deltas.len());
    let mut missing = Vec::new();
    for (i, d) in m.deltas.iter().enumerate() {
        let dest = stage.join(StagedKind::Delta.path(i));
        let held = match held_version(root, d) {
            Held::Base(base) => rebuild(base, (target, zip), d, &dest, &mut buf)?,
            Held::New => stage_copy(root, target, &as_copy(d), &dest)?.is_none(),
            Held::Neither => false,
        };
        if held {
            staged.push((d.path.clone(), dest));
        } else {
            let what = format!("its previous version ({} bytes)", d.base_size);
            let why = format!("{what}, from which it is rebuilt: {NOT_HELD}");
            missing.push((d.path.clone(), why));
        }
    }
    if !missing.is_empty() {
        return Err(BundleError::NotHeld { missing });
    }
    Ok(staged)
}

/// Which version of a delta's file root holds at its path.
enum Held {
    /// The one it is made from: rebuild from this.
    Base(File),
    /// The one it makes (already published).
    New,
    Neither,
}

/// Hash root's file at `d.path`, if it has either size `d` names.
fn held_version(root: &Root, d: &DeltaEntry) -> Held {
    let hash_of = |size| {
        let f = open(root, &d.path, size).ok()?;
        let hash = crate::hash::hash_reader(&f, size).ok()?;
        Some((f, hash.to_hex()))
    };
    let Some((mut f, hash)) = hash_of(d.base_size) else {
        let new =
            d.size != d.base_size && hash_of(d.size).is_some_and(|(_, h)| h.as_str() == d.hash);
        return if new { Held::New } else { Held::Neither };
    };
    if hash.as_str() == d.base_hash && f.seek(SeekFrom::Start(0)).is_ok() {
        Held::Base(f)
    } else if hash.as_str() == d.hash {
        Held::New
    } else {
        Held::Neither
    }
}

/// `d` as a copy of root's file at its own path, which already holds the
/// new version.
fn as_copy(d: &DeltaEntry) -> CopyEntry {
    CopyEntry {
        path: d.path.clone(),
        from: d.path.clone(),
        size: d.size,
        mtime: d.mtime,
        mtime_nsec: d.mtime_nsec,
        mode: d.mode,
        hash: d.hash.clone(),
    }
}

/// Rebuild `d` at `dest` from `base`, root's old version (checked to be
/// it). `false` when what it makes is not the new version (root's file
/// changed meanwhile, or the sender's recipe is wrong: either way the
/// sender sends the whole file); a damaged entry or an error writing (a
/// full disk) is the `Err`.
fn rebuild(
    mut base: File,
    (target, zip): (&Target, &mut OpenedZip),
    d: &DeltaEntry,
    dest: &Path,
    buf: &mut [u8],
) -> Result<bool, BundleError> {
    let recipe = d.recipe().map_err(|e| entry_err(&d.path, e.to_string()))?;
    let name = d.entry_name();
    let mut data = zip
        .by_name(&name)
        .map_err(|e| entry_err(&name, format!("cannot open: {e}")))?;
    let mut out = create_private(dest)?;
    let mut hasher = blake3::Hasher::new();
    let mut to = (&mut out, dest, &mut hasher);
    for piece in recipe.pieces() {
        let copied = match *piece {
            Piece::Copy { from, len } => {
                let seek = base.seek(SeekFrom::Start(from)).map_err(Failed::Read);
                seek.and_then(|_| copy_exact(&mut base, len, &mut to, buf))
            }
            Piece::Data { len } => copy_exact(&mut data, len, &mut to, buf).map_err(|f| match f {
                Failed::Read(e) => Failed::Refused(unpack_err(&name, e)),
                refused => refused,
            }),
        };
        match copied {
            Ok(()) => {}
            // Root's file changed since it was hashed.
            Err(Failed::Read(_)) => return Ok(false),
            Err(Failed::Refused(e)) => return Err(e),
        }
    }
    // Read to the end, where the zip checks the entry's CRC.
    match data.read(&mut buf[..1]) {
        Ok(0) => {}
        Ok(_) => return Err(entry_err(&name, "holds more than its recipe takes")),
        Err(e) => return Err(unpack_err(&name, e)),
    }
    if hasher.finalize().to_hex().as_str() != d.hash {
        return Ok(false);
    }
    let perms = (target.policy.file_mode(d.mode), target.policy.gid());
    finish_file(&out, dest, perms, d.mtime, d.mtime_nsec)?;
    Ok(true)
}

fn unpack_err(name: &str, e: std::io::Error) -> BundleError {
    entry_err(name, format!("cannot unpack: {e}"))
}
