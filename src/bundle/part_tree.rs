//! A large file's BLAKE3 tree, as its parts travel: each part is one
//! subtree of the file's tree, so its hash is the subtree's chaining value,
//! and the whole-file hash is merged from the parts' chaining values with
//! no second pass over the file on either side. Owns how long a part is,
//! where a part may lie, how one is hashed and how the parts' values merge.
//! Pure: no I/O.
//!
//! BLAKE3 splits an input of more than one 1 KiB chunk into a left subtree
//! of the largest power of two chunks that leaves something on the right,
//! and a right subtree of the rest, recursively. A part of 2^k KiB that
//! starts at a multiple of its length is therefore a subtree of any file
//! it is cut from, and so is a shorter last part after it.
//!
//! Manifests of format 1 carried each part's plain BLAKE3 instead
//! ([`PartHashes::Bytes`]); an archived bundle of that format is still
//! applied the old way: each part hashed alone, the file read back whole.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, max_subtree_len, merge_subtrees_non_root,
    merge_subtrees_root,
};

/// The manifest format from which part hashes are chaining values.
pub const TREE_FORMAT: u32 = 2;

/// What a manifest's part hashes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartHashes {
    /// Format 1: the plain BLAKE3 of the part's bytes; the whole file is
    /// hashed again once assembled.
    Bytes,
    /// The chaining value of the part as a subtree of its file's tree.
    Tree,
}

impl PartHashes {
    /// What the part hashes of a manifest of `format` are.
    pub fn of_format(format: u32) -> Self {
        if format >= TREE_FORMAT {
            PartHashes::Tree
        } else {
            PartHashes::Bytes
        }
    }

    /// A hasher for a part that starts at `offset` of its file. For
    /// [`PartHashes::Tree`], `offset` must be one [`part_len_of`] accepted.
    pub fn hasher(self, offset: u64) -> blake3::Hasher {
        let mut h = blake3::Hasher::new();
        if self == PartHashes::Tree {
            h.set_input_offset(offset);
        }
        h
    }

    /// The part's hash, as the manifest writes it, from its hasher.
    pub fn finish(self, hasher: &blake3::Hasher) -> String {
        match self {
            PartHashes::Bytes => hasher.finalize().to_hex().to_string(),
            PartHashes::Tree => blake3::Hash::from(hasher.finalize_non_root())
                .to_hex()
                .to_string(),
        }
    }
}

/// How long the parts of a file are, for `chunk_size`: the largest power
/// of two of BLAKE3 chunks (1 KiB) not over it.
pub fn part_len(chunk_size: u64) -> u64 {
    let chunk = blake3::CHUNK_LEN as u64;
    if chunk_size <= chunk {
        return chunk;
    }
    1 << (63 - chunk_size.leading_zeros())
}

/// The part length of the set that part `index` of `count`, `size` bytes
/// at `offset`, belongs to, if the part lies on its file's tree: every
/// part but the last is a power of two of chunks long and starts at
/// `index` times that; the last starts the same way and is no longer.
pub fn part_len_of(index: u32, count: u32, offset: u64, size: u64) -> Option<u64> {
    let chunk = blake3::CHUNK_LEN as u64;
    let len = if u64::from(index) + 1 < u64::from(count) {
        size
    } else if index > 0 {
        offset / u64::from(index)
    } else {
        return None;
    };
    let fits = len >= chunk
        && len.is_power_of_two()
        && size <= len
        && size > 0
        && u64::from(index).checked_mul(len) == Some(offset)
        && max_subtree_len(offset).is_none_or(|max| size <= max);
    fits.then_some(len)
}

/// The whole file's BLAKE3 from its parts' chaining values, in order, each
/// `part_len` long but the last, `file_size` in all. `None` when the
/// values cannot make that tree (too few or too many of them).
pub fn file_hash(cvs: &[ChainingValue], part_len: u64, file_size: u64) -> Option<blake3::Hash> {
    let chunk = blake3::CHUNK_LEN as u64;
    if part_len < chunk
        || !part_len.is_power_of_two()
        || file_size <= part_len
        // BLAKE3's split adds one to the length.
        || file_size == u64::MAX
        || file_size.div_ceil(part_len) != cvs.len() as u64
    {
        return None;
    }
    let left = left_subtree_len(file_size);
    let split = (left / part_len) as usize;
    let l = subtree(&cvs[..split], part_len, left);
    let r = subtree(&cvs[split..], part_len, file_size - left);
    Some(merge_subtrees_root(&l, &r, Mode::Hash))
}

/// The chaining value of `len` bytes made of the parts `cvs`, starting on
/// a part boundary; `cvs` holds exactly the parts that cover them.
fn subtree(cvs: &[ChainingValue], part_len: u64, len: u64) -> ChainingValue {
    if len <= part_len {
        return cvs[0];
    }
    // Over one part: the left subtree is a power of two of at least one
    // part, so the split falls on a part boundary.
    let left = left_subtree_len(len);
    let split = (left / part_len) as usize;
    let l = subtree(&cvs[..split], part_len, left);
    let r = subtree(&cvs[split..], part_len, len - left);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

/// A chaining value from the hex the manifest and the part journal carry.
pub fn parse_cv(hex: &str) -> Option<ChainingValue> {
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| {
                (i as u8)
                    .wrapping_mul(31)
                    .wrapping_add(seed ^ (i >> 10) as u8)
            })
            .collect()
    }

    /// The parts' chaining values, hashed as the sender and receiver do.
    fn cvs(bytes: &[u8], part: u64) -> Vec<ChainingValue> {
        bytes
            .chunks(part as usize)
            .enumerate()
            .map(|(i, c)| {
                let offset = i as u64 * part;
                let count = bytes.len().div_ceil(part as usize) as u32;
                assert_eq!(
                    part_len_of(i as u32, count, offset, c.len() as u64),
                    Some(part)
                );
                let mut h = PartHashes::Tree.hasher(offset);
                h.update(c);
                parse_cv(&PartHashes::Tree.finish(&h)).unwrap()
            })
            .collect()
    }

    #[test]
    fn parts_are_the_largest_power_of_two_of_chunks_within_chunk_size() {
        assert_eq!(part_len(64 << 20), 64 << 20);
        assert_eq!(part_len((64 << 20) + 1), 64 << 20);
        assert_eq!(part_len(100 << 20), 64 << 20);
        assert_eq!(part_len(3000), 2048);
        assert_eq!(part_len(1), 1024);
    }

    #[test]
    fn the_merged_hash_is_the_files_blake3_at_every_shape() {
        for part in [1024u64, 4096] {
            for parts in 2..=9u64 {
                for tail in [1, part / 2, part - 1, part] {
                    let len = (parts - 1) * part + tail;
                    let bytes = data(len as usize, parts as u8);
                    let got = file_hash(&cvs(&bytes, part), part, len);
                    assert_eq!(
                        got,
                        Some(blake3::hash(&bytes)),
                        "{parts} parts of {part}, tail {tail}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_plain_part_hash_is_the_blake3_of_its_bytes() {
        let mut h = PartHashes::Bytes.hasher(4096);
        h.update(b"part");
        assert_eq!(
            PartHashes::Bytes.finish(&h),
            blake3::hash(b"part").to_hex().to_string()
        );
        assert_eq!(PartHashes::of_format(1), PartHashes::Bytes);
        assert_eq!(PartHashes::of_format(TREE_FORMAT), PartHashes::Tree);
    }

    #[test]
    fn a_part_off_the_tree_is_refused() {
        // Not a power of two, not at index times its length, longer than
        // the subtree at its offset, empty, or a lone part.
        assert_eq!(part_len_of(0, 3, 0, 3000), None);
        assert_eq!(part_len_of(1, 3, 1000, 1024), None);
        assert_eq!(part_len_of(2, 3, 2048, 2048), None);
        assert_eq!(part_len_of(2, 3, 2048, 0), None);
        assert_eq!(part_len_of(0, 1, 0, 1024), None);
        assert_eq!(part_len_of(1, 3, 1024, 1024), Some(1024));
        assert_eq!(part_len_of(2, 3, 2048, 5), Some(1024));
    }

    #[test]
    fn too_few_or_too_many_values_make_no_hash() {
        let bytes = data(5000, 1);
        let v = cvs(&bytes, 1024);
        assert_eq!(file_hash(&v[..4], 1024, 5000), None);
        assert_eq!(file_hash(&v, 1024, 4096), None);
        assert_eq!(file_hash(&v, 1000, 5000), None);
        assert_eq!(file_hash(&v[..1], 1024, 1000), None);
        assert_eq!(file_hash(&[[0u8; 32]; 2], 1 << 63, u64::MAX), None);
    }

    proptest! {
        /// Whatever the numbers a hostile manifest gives, a part accepted
        /// by `part_len_of` hashes without the hasher's asserts firing,
        /// and any values merge without a panic.
        #[test]
        fn hostile_numbers_never_panic(index in 0u32..8, count in 0u32..9, offset in 0u64..1 << 20,
                                       size in 0u64..1 << 14, file_size in 0u64..1 << 20, n in 0usize..12) {
            if let Some(len) = part_len_of(index, count, offset, size) {
                let mut h = PartHashes::Tree.hasher(offset);
                h.update(&vec![7u8; size as usize]);
                let _ = PartHashes::Tree.finish(&h);
                let _ = file_hash(&vec![[0u8; 32]; n], len, file_size);
            }
            let _ = file_hash(&vec![[0u8; 32]; n], 1 << (10 + index % 4), file_size);
        }
    }
}
