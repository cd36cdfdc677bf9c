//! A file over `chunk_size`: cut into parts, each its own zip entry, that
//! may span consecutive bundles. The parts of one shipping share a set id;
//! each part's hash is its chaining value in the file's BLAKE3 tree
//! (`part_tree.rs`), and the last carries the whole file's hash, merged
//! from them. A file torn after its first part leaves its set abandoned,
//! so the receiver drops what it holds of it.

use std::io;

use super::cutter::{Cutter, Report};
use super::delta_pack::Signing;
use super::manifest::{FileMeta, PartEntry, part_entry_name};
use super::part_tree::{PartHashes, file_hash, parse_cv, part_len};
use super::source_read::{Outcome, Source};
use super::writer::{need, with_path};
use crate::stamp::Stamp;

/// How many hex digits of a set id's hash are kept: unique enough for one
/// sender's sets in flight, short enough for entry names.
const SET_ID_LEN: usize = 24;

/// Pack the file `src` reads as parts, into the open bundle and as many
/// after it as it takes, signing it as `signing` says.
pub(super) fn pack_large(
    cut: &mut Cutter<'_>,
    report: &mut Report,
    mut src: Source<'_>,
    mut signing: Option<Signing<'_>>,
) -> io::Result<()> {
    let (rel, stamp) = (src.rel, src.stamp);
    let chunk = part_len(cut.limits.chunk_size);
    let Ok(count) = u32::try_from(stamp.size.div_ceil(chunk)) else {
        let e = io::Error::other("file needs more than 2^32 parts: raise chunk_size");
        report
            .failed
            .push((rel.to_owned(), with_path(e, src.abs).to_string()));
        return Ok(());
    };
    let set = set_id(cut.sender, rel, stamp);
    let options = src.entry_options();
    let mut cvs = Vec::with_capacity(count as usize);
    let mut overtaken = false;
    for index in 0..count {
        let offset = u64::from(index) * chunk;
        let size = chunk.min(stamp.size - offset);
        let name = part_entry_name(&set, index);
        let b = cut.room_for(report, need(&name, size), &name)?;
        let mut part = PartHashes::Tree.hasher(offset);
        let hasher = Some(&mut part);
        match src.write_entry(&mut b.zip, &name, options, &[(offset, size)], hasher)? {
            Outcome::Copied { overtaken: o } => overtaken |= o,
            Outcome::Lost(why) => {
                if index > 0 {
                    b.abandon_set(set);
                }
                report.lost(rel, why);
                return Ok(());
            }
        }
        let hash = PartHashes::Tree.finish(&part);
        cvs.extend(parse_cv(&hash));
        let last = index + 1 == count;
        let file_hash = last.then(|| file_hash(&cvs, chunk, stamp.size)).flatten();
        if last && file_hash.is_none() {
            // Cannot be: the parts above are cut on the tree.
            return Err(io::Error::other(format!(
                "{rel}: {count} parts of {chunk} bytes make no hash tree of {} bytes",
                stamp.size
            )));
        }
        b.add_part(PartEntry {
            path: rel.to_owned(),
            set: set.clone(),
            index,
            count,
            offset,
            size,
            hash,
            file_size: stamp.size,
            mtime: stamp.mtime,
            mtime_nsec: stamp.mtime_nsec,
            mode: stamp.mode,
            file_hash: file_hash.map(|h| h.to_hex().to_string()),
        });
        if let Some(hash) = file_hash {
            if overtaken {
                report.unsettled.push(rel.to_owned());
            }
            b.ship(rel, FileMeta::of(&stamp, hash.to_hex().to_string()));
            if let Some(signing) = signing.take() {
                signing.store(report, rel, (stamp, hash));
            }
        }
    }
    Ok(())
}

/// A set id for one shipping of one version of `rel`: its sender, path,
/// size, mtime and the time now, hashed.
fn set_id(sender: &str, rel: &str, stamp: Stamp) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut h = blake3::Hasher::new();
    h.update(sender.as_bytes());
    h.update(&[0]);
    h.update(rel.as_bytes());
    h.update(&stamp.size.to_le_bytes());
    h.update(&stamp.mtime.to_le_bytes());
    h.update(&now.to_le_bytes());
    h.finalize().to_hex()[..SET_ID_LEN].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_ids_are_valid_part_set_ids() {
        let stamp = Stamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: 4,
            mtime_nsec: 5,
            mode: 0o644,
            kind: crate::stamp::Kind::File,
        };
        let a = set_id("app1", "big.iso", stamp);
        assert_eq!(a.len(), SET_ID_LEN);
        assert!(crate::bundle::manifest::valid_set_id(&a), "{a}");
        assert_ne!(a, set_id("app1", "other.iso", stamp));
    }
}
