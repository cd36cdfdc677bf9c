//! Files a bundle carries as deltas (`delta.rs`): each is rebuilt in
//! staging from root's file at its own path (the version the sender
//! believes the receiver holds) and the bytes that changed, read from the
//! delta's zip entry, following its recipe. What is written is hashed as
//! it is written and must match the whole-file BLAKE3 hash the manifest
//! gives; an old version that is missing, of another size, unreadable or
//! not what the sender thought (edited here, or the bundle that made it
//! never applied) refuses the bundle like a copy root cannot make
//! ([`BundleError::NotHeld`]), so the sender sends the whole file, unless
//! root holds the new version already (a bundle applied again after a
//! crash published that file): then that is copied. Reads
//! root and the zip, writes only in staging; runs before anything of the
//! bundle is stored.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use super::delta::{Piece, Recipe};
use super::error::{BundleError, entry_err, io_at};
use super::kept::{NOT_HELD, discard, open, stage_copy};
use super::manifest::{CopyEntry, DeltaEntry, Manifest};
use super::target::Target;
use super::unpack::{create_private, finish_file};
use crate::beneath::Root;

/// Bytes copied at a time; hashed on every core.
const BUF_BYTES: usize = 1 << 20;

/// Rebuild every delta of `m` in `stage` (the `i`th as `d{i}`). Returns
/// each one's path in root with its staged file; `Err(NotHeld)` names every
/// delta whose old version root does not hold.
pub(super) fn stage_deltas(
    root: &Root,
    target: &Target,
    zip: &mut ZipArchive<File>,
    m: &Manifest,
    stage: &Path,
) -> Result<Vec<(String, PathBuf)>, BundleError> {
    let mut buf = vec![0u8; BUF_BYTES];
    let mut staged = Vec::with_capacity(m.deltas.len());
    let mut missing = Vec::new();
    for (i, d) in m.deltas.iter().enumerate() {
        let dest = stage.join(format!("d{i}"));
        let why = match rebuild(root, target, zip, d, &dest, &mut buf)? {
            None => None,
            // Root may hold the new version already: a crash after this
            // file was published, and the bundle applied again at start.
            Some(why) => {
                discard(&dest)?;
                stage_copy(root, target, &as_copy(d), &dest)?.map(|_| why)
            }
        };
        match why {
            None => staged.push((d.path.clone(), dest)),
            Some(why) => missing.push((d.path.clone(), why)),
        }
    }
    if !missing.is_empty() {
        return Err(BundleError::NotHeld { missing });
    }
    Ok(staged)
}

/// `d` as a copy of root's file at its own path, if that already holds
/// the new version.
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

/// What failed while copying a piece.
enum Failed {
    /// Reading its source: root's old version, or the delta's entry.
    Read(std::io::Error),
    /// Writing the staged file (a full disk).
    Write(BundleError),
}

/// Rebuild `d` at `dest`. `Some(why)` when root does not hold its old
/// version; a damaged entry or an error writing (a full disk) is the `Err`.
fn rebuild(
    root: &Root,
    target: &Target,
    zip: &mut ZipArchive<File>,
    d: &DeltaEntry,
    dest: &Path,
    buf: &mut [u8],
) -> Result<Option<String>, BundleError> {
    let lacks = || {
        let what = format!("its previous version ({} bytes)", d.base_size);
        Ok(Some(format!(
            "{what}, from which it is rebuilt: {NOT_HELD}"
        )))
    };
    let recipe = Recipe::parse(&d.recipe, d.base_size, d.size)
        .map_err(|e| entry_err(&d.path, e.to_string()))?;
    let Ok(mut base) = open(root, &d.path, d.base_size) else {
        return lacks();
    };
    let name = d.entry_name();
    let mut data = zip.by_name(&name)?;
    let mut out = create_private(dest)?;
    let mut hasher = blake3::Hasher::new();
    let mut to = (&mut out, dest, &mut hasher);
    for piece in recipe.pieces() {
        match *piece {
            Piece::Copy { from, len } => {
                let seek = base.seek(SeekFrom::Start(from)).map_err(Failed::Read);
                match seek.and_then(|_| copy_exact(&mut base, len, &mut to, buf)) {
                    Ok(()) => {}
                    Err(Failed::Read(_)) => return lacks(),
                    Err(Failed::Write(e)) => return Err(e),
                }
            }
            Piece::Data { len } => match copy_exact(&mut data, len, &mut to, buf) {
                Ok(()) => {}
                Err(Failed::Read(e)) => return Err(unpack_err(&name, e)),
                Err(Failed::Write(e)) => return Err(e),
            },
        }
    }
    // Read to the end, where the zip checks the entry's CRC.
    match data.read(&mut buf[..1]) {
        Ok(0) => {}
        Ok(_) => return Err(entry_err(&name, "holds more than its recipe takes")),
        Err(e) => return Err(unpack_err(&name, e)),
    }
    if hasher.finalize().to_hex().as_str() != d.hash {
        return lacks();
    }
    let perms = (target.policy.file_mode(d.mode), target.policy.gid());
    finish_file(&out, dest, perms, d.mtime, d.mtime_nsec)?;
    Ok(None)
}

fn unpack_err(name: &str, e: std::io::Error) -> BundleError {
    entry_err(name, format!("cannot unpack: {e}"))
}

/// Copy exactly `len` bytes of `from` to the staged file at `dest` and its
/// hasher; a read that fails or ends early is [`Failed::Read`].
fn copy_exact(
    from: &mut impl Read,
    mut len: u64,
    (out, dest, hasher): &mut (&mut File, &Path, &mut blake3::Hasher),
    buf: &mut [u8],
) -> Result<(), Failed> {
    while len > 0 {
        let want = buf.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => return Err(Failed::Read(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) => return Err(Failed::Read(e)),
        };
        hasher.update_rayon(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Failed::Write(io_at(dest)(e)))?;
        len -= n as u64;
    }
    Ok(())
}
