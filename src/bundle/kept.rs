//! Files a bundle keeps: the sender found their content unchanged from
//! what the receivers hold, so the bundle carries only their metadata.
//! Before root is touched, every one is checked against root's copy: a
//! regular file (never through a symlink) of the size and whole-file
//! BLAKE3 hash the manifest gives. One that is missing or differs (edited
//! or lost on the receiver) refuses the bundle, naming every such path
//! ([`BundleError::NotHeld`]), so the sender sends them with their
//! content; nothing of the bundle is applied. Reads root; writes nothing
//! (publishing gives the files their metadata: `Publish::retime`).

use std::io::Read;

use super::error::BundleError;
use super::manifest::FileEntry;
use crate::beneath::Root;

/// Check every kept file in `kept` against root's copy, hashing on every
/// core. `Err(NotHeld)` names each one root does not hold as listed.
pub(super) fn check_held(root: &Root, kept: &[FileEntry]) -> Result<(), BundleError> {
    use rayon::prelude::*;
    let verdicts: Vec<Option<&'static str>> = kept
        .par_iter()
        .map(|k| why_not_held(root, k))
        .collect::<Result<_, _>>()?;
    let missing: Vec<(String, &'static str)> = kept
        .iter()
        .zip(verdicts)
        .filter_map(|(k, why)| why.map(|why| (k.path.clone(), why)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BundleError::NotHeld { missing })
    }
}

/// Why root does not hold `k` as listed, or `None` if it does. An error
/// reading a file that is there is an I/O error, not a difference.
fn why_not_held(root: &Root, k: &FileEntry) -> Result<Option<&'static str>, BundleError> {
    let at = |e: std::io::Error| BundleError::Io {
        path: k.path.clone().into(),
        source: e,
    };
    let Some(mut f) = root.open_file(&k.path).map_err(super::error::beneath_err)? else {
        return Ok(Some("missing"));
    };
    if f.metadata().map_err(at)?.len() != k.size {
        return Ok(Some("size differs"));
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(at)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().to_hex().as_str() != k.hash).then_some("content differs"))
}
