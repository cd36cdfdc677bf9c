//! Deltas of large files, the pure part: a file of at least [`DELTA_MIN`]
//! bytes is cut into content-defined chunks (FastCDC, so an insertion
//! moves only the chunks around it), each named by its length and xxh3;
//! that list and the whole-file BLAKE3 hash are the file's [`Signature`].
//! When the file changes, its new chunks are looked up in the signature of
//! the version the receivers hold, and a [`Recipe`] says how to rebuild it:
//! runs copied from the old version, and the bytes that changed, which
//! alone travel. The receiver checks what it rebuilt against the whole-file
//! BLAKE3 hash, so a chunk name that collides, or an old version that is
//! not what the sender thinks, costs a re-send, never a wrong file.
//!
//! No I/O: the sender stores signatures (`sender/signatures.rs`) and packs
//! deltas (`delta_pack.rs`); the receiver rebuilds them (`rebuild.rs`).

use std::collections::HashMap;
use std::fmt;

/// Files from this size on are signed, and may travel as deltas.
pub const DELTA_MIN: u64 = 4 << 20;
/// Chunk sizes: FastCDC never cuts below the least or beyond the most.
/// About 40 KiB on average: a change of one region sends some 40-200 KiB
/// beyond it (the chunks it touches at either end), and a signature is
/// some 540 KB per GiB. (Averaging 80 KiB, 16-256 KiB, sent up to twice
/// that; measured on 128 MiB of noise with 1 MiB rewritten.)
const CHUNK_MIN: usize = 8 << 10;
const CHUNK_AVG: usize = 32 << 10;
const CHUNK_MAX: usize = 128 << 10;
/// The most pieces a recipe has: each is a few dozen bytes of manifest. A
/// change scattered wider turns its shortest copied runs into data.
pub const MAX_PIECES: usize = 64;

/// One chunk of a file: its length and its xxh3-128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunk {
    pub len: u32,
    pub hash: u128,
}

/// What the sender remembers of a version of a large file it shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub size: u64,
    /// BLAKE3 of the whole file.
    pub hash: [u8; 32],
    pub chunks: Vec<Chunk>,
}

/// Cuts a stream of bytes into chunks as it is fed, exactly where FastCDC
/// cuts the whole file: a cut is made only once [`CHUNK_MAX`] bytes past
/// the last one are known (FastCDC never looks further), or at the end.
#[derive(Debug, Default)]
pub struct Chunker {
    /// Bytes past the last cut, fewer than `CHUNK_MAX`.
    carry: Vec<u8>,
    chunks: Vec<Chunk>,
}

/// Where FastCDC cuts `data`: its end, if shorter than the least chunk.
fn cut(data: &[u8]) -> usize {
    let cdc = fastcdc::v2020::FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
    cdc.cut(0, data.len()).1.max(1).min(data.len())
}

impl Chunker {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.carry.is_empty() && data.len() >= CHUNK_MAX {
                let end = cut(&data[..CHUNK_MAX]);
                self.push(&data[..end]);
                data = &data[end..];
                continue;
            }
            let take = (CHUNK_MAX - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() == CHUNK_MAX {
                self.cut_carry();
            }
        }
    }

    /// Cut what the carry holds once (it holds `CHUNK_MAX` bytes, or the
    /// stream ended).
    fn cut_carry(&mut self) {
        let carry = std::mem::take(&mut self.carry);
        let end = cut(&carry);
        self.push(&carry[..end]);
        self.carry = carry;
        self.carry.drain(..end);
    }

    fn push(&mut self, chunk: &[u8]) {
        self.chunks.push(Chunk {
            len: chunk.len() as u32,
            hash: xxhash_rust::xxh3::xxh3_128(chunk),
        });
    }

    /// The stream ended: its chunks.
    pub fn finish(mut self) -> Vec<Chunk> {
        while !self.carry.is_empty() {
            self.cut_carry();
        }
        self.chunks
    }
}

/// One step of rebuilding a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes of the old version, from offset `from`.
    Copy { from: u64, len: u64 },
    /// The next `len` bytes of the data that travelled.
    Data { len: u64 },
}

impl Piece {
    /// The bytes it makes.
    pub fn bytes(&self) -> u64 {
        match *self {
            Piece::Copy { len, .. } | Piece::Data { len } => len,
        }
    }
}

/// How to rebuild a file from its old version and the bytes that changed:
/// pieces in order, each non-empty, no two data pieces in a row, at most
/// [`MAX_PIECES`]. Travels as text: `c<from>+<len>` and `d<len>`, joined
/// by commas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe(Vec<Piece>);

/// Why a recipe in a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error("delta recipe does not parse at piece {0}")]
    Parse(usize),
    #[error("delta recipe has {0} pieces, over {MAX_PIECES}")]
    TooLong(usize),
    #[error("delta recipe copies beyond the old version's {0} bytes")]
    OutsideBase(u64),
    #[error("delta recipe makes {made} bytes, not the file's {size}")]
    Size { made: u64, size: u64 },
}

impl Recipe {
    /// Rebuild a file whose chunks are `new` from the version `old`
    /// signed: each chunk found there is copied, the others travel.
    pub fn plan(old: &Signature, new: &[Chunk]) -> Recipe {
        let mut at: HashMap<Chunk, u64> = HashMap::with_capacity(old.chunks.len());
        let mut offset = 0;
        for c in &old.chunks {
            at.entry(*c).or_insert(offset);
            offset += u64::from(c.len);
        }
        let pieces = new.iter().map(|c| {
            let len = u64::from(c.len);
            match at.get(c) {
                Some(&from) => Piece::Copy { from, len },
                None => Piece::Data { len },
            }
        });
        let merged = merge(pieces);
        Recipe(within_max_pieces(merged))
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.0
    }

    /// Bytes of data that travel.
    pub fn data_len(&self) -> u64 {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Data { len } => *len,
                Piece::Copy { .. } => 0,
            })
            .sum()
    }

    /// Where, in the new file, each data piece lies: what travels, in order.
    pub fn data_ranges(&self) -> Vec<(u64, u64)> {
        let mut at = 0;
        let mut ranges = Vec::new();
        for p in &self.0 {
            if let Piece::Data { len } = *p {
                ranges.push((at, len));
            }
            at += p.bytes();
        }
        ranges
    }

    /// Parse a recipe as it travels, checking it makes `size` bytes from an
    /// old version of `base_size`, without overflow.
    pub fn parse(text: &str, base_size: u64, size: u64) -> Result<Recipe, RecipeError> {
        let mut pieces = Vec::new();
        for (i, s) in text.split(',').enumerate() {
            if i >= MAX_PIECES {
                return Err(RecipeError::TooLong(text.split(',').count()));
            }
            pieces.push(parse_piece(s).ok_or(RecipeError::Parse(i))?);
        }
        let mut made: u64 = 0;
        for p in &pieces {
            if let Piece::Copy { from, len } = *p
                && from.checked_add(len).is_none_or(|end| end > base_size)
            {
                return Err(RecipeError::OutsideBase(base_size));
            }
            made = made
                .checked_add(p.bytes())
                .ok_or(RecipeError::Size { made, size })?;
        }
        if made != size {
            return Err(RecipeError::Size { made, size });
        }
        Ok(Recipe(pieces))
    }
}

/// One piece as it travels; `None` if it is not one (or is empty).
fn parse_piece(s: &str) -> Option<Piece> {
    let number = |d: &str| {
        let digits = !d.is_empty() && d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| d.parse::<u64>().ok()).flatten()
    };
    let piece = if let Some(rest) = s.strip_prefix('c') {
        let (from, len) = rest.split_once('+')?;
        Piece::Copy {
            from: number(from)?,
            len: number(len)?,
        }
    } else {
        Piece::Data {
            len: number(s.strip_prefix('d')?)?,
        }
    };
    (piece.bytes() > 0).then_some(piece)
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match *p {
                Piece::Copy { from, len } => write!(f, "c{from}+{len}")?,
                Piece::Data { len } => write!(f, "d{len}")?,
            }
        }
        Ok(())
    }
}

/// Join pieces that continue each other: data after data, and a copy that
/// goes on where the one before it ended.
fn merge(pieces: impl IntoIterator<Item = Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    for p in pieces {
        match (out.last_mut(), p) {
            (Some(Piece::Data { len }), Piece::Data { len: more }) => *len += more,
            (
                Some(Piece::Copy { from, len }),
                Piece::Copy {
                    from: next,
                    len: more,
                },
            ) if *from + *len == next => {
                *len += more;
            }
            _ => out.push(p),
        }
    }
    out
}

/// `pieces`, with the copies shorter than `min` sent as data instead.
fn copies_from(pieces: &[Piece], min: u64) -> Vec<Piece> {
    merge(pieces.iter().map(|p| match *p {
        Piece::Copy { len, .. } if len < min => Piece::Data { len },
        p => p,
    }))
}

/// `pieces` within [`MAX_PIECES`]: the shortest copies become data, as few
/// as it takes (the least length that copies must reach, found by
/// bisection: fewer copies never make more pieces).
fn within_max_pieces(pieces: Vec<Piece>) -> Vec<Piece> {
    if pieces.len() <= MAX_PIECES {
        return pieces;
    }
    let mut lens: Vec<u64> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Copy { len, .. } => Some(*len + 1),
            Piece::Data { .. } => None,
        })
        .collect();
    lens.sort_unstable();
    lens.dedup();
    // Copies shorter than the largest length + 1: none is left, one piece.
    let fits = |min: u64| copies_from(&pieces, min).len() <= MAX_PIECES;
    let first = lens.partition_point(|&min| !fits(min));
    let min = lens.get(first).copied().unwrap_or(u64::MAX);
    copies_from(&pieces, min)
}

impl Signature {
    /// The signature of a file packed with `stamp`, content `hash`, cut by
    /// `chunker`.
    pub fn of(stamp: &crate::stamp::Stamp, hash: blake3::Hash, chunker: Chunker) -> Self {
        Signature {
            size: stamp.size,
            hash: *hash.as_bytes(),
            chunks: chunker.finish(),
        }
    }
}

/// A signature as the sender stores it, for `path` (checked when read
/// back, so a file stored for another path that shares its name is never
/// taken for this one's).
impl Signature {
    const MAGIC: &'static [u8; 8] = b"SHIPSIG1";

    pub fn encode(&self, path: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + path.len() + self.chunks.len() * 20);
        out.extend_from_slice(Self::MAGIC);
        out.extend_from_slice(&(path.len() as u64).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.len.to_le_bytes());
            out.extend_from_slice(&c.hash.to_le_bytes());
        }
        let check = blake3::hash(&out);
        out.extend_from_slice(check.as_bytes());
        out
    }

    /// The signature `bytes` hold for `path`; `None` if they are torn,
    /// another path's, or inconsistent.
    pub fn decode(bytes: &[u8], path: &str) -> Option<Signature> {
        let (body, check) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != check {
            return None;
        }
        let mut r = body.strip_prefix(Self::MAGIC)?;
        let mut take = |n: usize| {
            let (head, rest) = r.split_at_checked(n)?;
            r = rest;
            Some(head)
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let path_len = usize::try_from(u64_of(take(8)?)).ok()?;
        if take(path_len)? != path.as_bytes() {
            return None;
        }
        let size = u64_of(take(8)?);
        let hash: [u8; 32] = take(32)?.try_into().ok()?;
        let count = usize::try_from(u64_of(take(8)?)).ok()?;
        if count.checked_mul(20)? != r.len() {
            return None;
        }
        let chunks: Vec<Chunk> = r
            .chunks_exact(20)
            .map(|c| Chunk {
                len: u32::from_le_bytes(c[..4].try_into().expect("4 bytes")),
                hash: u128::from_le_bytes(c[4..].try_into().expect("16 bytes")),
            })
            .collect();
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        (total == size).then_some(Signature { size, hash, chunks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks_of(data: &[u8]) -> Vec<Chunk> {
        let mut c = Chunker::default();
        c.update(data);
        c.finish()
    }

    fn signature(data: &[u8]) -> Signature {
        Signature {
            size: data.len() as u64,
            hash: *blake3::hash(data).as_bytes(),
            chunks: chunks_of(data),
        }
    }

    /// What the receiver does: the recipe over the old version and data.
    fn rebuild(recipe: &Recipe, old: &[u8], data: &[u8]) -> Vec<u8> {
        let (mut out, mut at) = (Vec::new(), 0usize);
        for p in recipe.pieces() {
            match *p {
                Piece::Copy { from, len } => {
                    out.extend_from_slice(&old[from as usize..(from + len) as usize])
                }
                Piece::Data { len } => {
                    out.extend_from_slice(&data[at..at + len as usize]);
                    at += len as usize;
                }
            }
        }
        out
    }

    /// The data that travels for `new` under `recipe`.
    fn data_of(recipe: &Recipe, new: &[u8]) -> Vec<u8> {
        let ranges = recipe.data_ranges();
        let pick = |&(at, len): &(u64, u64)| &new[at as usize..(at + len) as usize];
        ranges.iter().flat_map(pick).copied().collect()
    }

    #[test]
    fn fed_in_any_pieces_the_chunks_are_fastcdcs_of_the_whole() {
        let data = noise(3 << 20, 7);
        let whole: Vec<Chunk> =
            fastcdc::v2020::FastCDC::new(&data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
                .map(|c| Chunk {
                    len: c.length as u32,
                    hash: xxhash_rust::xxh3::xxh3_128(&data[c.offset..c.offset + c.length]),
                })
                .collect();
        for step in [1usize, 4096, 100_000, CHUNK_MAX, 1 << 20, data.len()] {
            let mut c = Chunker::default();
            data.chunks(step).for_each(|s| c.update(s));
            assert_eq!(c.finish(), whole, "fed {step} bytes at a time");
        }
        assert!(whole.len() > 20, "{} chunks", whole.len());
    }

    #[test]
    fn a_region_changed_in_the_middle_sends_about_that_region() {
        let old = noise(8 << 20, 1);
        let mut new = old.clone();
        let mid = new.len() / 2;
        new[mid..mid + (1 << 20)].copy_from_slice(&noise(1 << 20, 2));
        let recipe = Recipe::plan(&signature(&old), &chunks_of(&new));
        let sent = recipe.data_len();
        assert!(
            (1 << 20..(1 << 20) + 2 * CHUNK_MAX as u64).contains(&sent),
            "{sent} bytes travel"
        );
        assert_eq!(recipe.pieces().len(), 3, "{recipe}");
        assert_eq!(rebuild(&recipe, &old, &data_of(&recipe, &new)), new);
    }

    #[test]
    fn an_insertion_moves_only_the_chunks_around_it() {
        let old = noise(8 << 20, 3);
        let mut new = old.clone();
        new.splice(1000..1000, noise(777, 4));
        let recipe = Recipe::plan(&signature(&old), &chunks_of(&new));
        assert!(recipe.data_len() < 2 * CHUNK_MAX as u64, "{recipe}");
        assert_eq!(rebuild(&recipe, &old, &data_of(&recipe, &new)), new);
    }

    #[test]
    fn a_change_scattered_wider_than_the_pieces_allow_sends_short_copies_as_data() {
        let old = noise(16 << 20, 5);
        let mut new = old.clone();
        for k in 0..200 {
            new[k * 80_000] ^= 1;
        }
        let recipe = Recipe::plan(&signature(&old), &chunks_of(&new));
        assert!(
            recipe.pieces().len() <= MAX_PIECES,
            "{}",
            recipe.pieces().len()
        );
        assert_eq!(rebuild(&recipe, &old, &data_of(&recipe, &new)), new);
        let text = recipe.to_string();
        let parsed = Recipe::parse(&text, old.len() as u64, new.len() as u64);
        assert_eq!(parsed, Ok(recipe));
    }

    #[test]
    fn hostile_recipes_are_refused() {
        let bad = [
            ("", RecipeError::Parse(0)),
            ("d0", RecipeError::Parse(0)),
            ("c1+0", RecipeError::Parse(0)),
            ("x5", RecipeError::Parse(0)),
            ("d5,,d5", RecipeError::Parse(1)),
            ("c-1+5", RecipeError::Parse(0)),
            ("d+5", RecipeError::Parse(0)),
            ("c99999999999999999999+1", RecipeError::Parse(0)),
            ("c18446744073709551615+1", RecipeError::OutsideBase(100)),
            ("c96+5", RecipeError::OutsideBase(100)),
            (
                "d18446744073709551615,d1",
                RecipeError::Size {
                    made: u64::MAX,
                    size: 10,
                },
            ),
            ("d5,c0+4", RecipeError::Size { made: 9, size: 10 }),
        ];
        for (text, why) in bad {
            assert_eq!(Recipe::parse(text, 100, 10), Err(why), "{text:?}");
        }
        let long = vec!["d1"; MAX_PIECES + 1].join(",");
        assert_eq!(
            Recipe::parse(&long, 0, MAX_PIECES as u64 + 1),
            Err(RecipeError::TooLong(MAX_PIECES + 1))
        );
        assert!(Recipe::parse("d5,c95+5", 100, 10).is_ok());
    }

    #[test]
    fn a_stored_signature_reads_back_for_its_path_only_and_never_torn() {
        let sig = signature(&noise(1 << 20, 9));
        let bytes = sig.encode("media/a.mp4");
        assert_eq!(Signature::decode(&bytes, "media/a.mp4"), Some(sig));
        assert_eq!(Signature::decode(&bytes, "media/b.mp4"), None);
        for cut in [0, 1, 8, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(Signature::decode(&bytes[..cut], "media/a.mp4"), None);
        }
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert_eq!(Signature::decode(&flipped, "media/a.mp4"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_edit_rebuilds_exactly(
            seed in 1u64..1000,
            edits in prop::collection::vec((0usize..(2 << 20), 0usize..5000, 0usize..5000), 0..6),
        ) {
            let old = noise(2 << 20, seed);
            let mut new = old.clone();
            for (at, cut, insert) in edits {
                let at = at.min(new.len());
                let end = (at + cut).min(new.len());
                new.splice(at..end, noise(insert, seed + at as u64));
            }
            let recipe = Recipe::plan(&signature(&old), &chunks_of(&new));
            prop_assert!(recipe.pieces().len() <= MAX_PIECES);
            prop_assert_eq!(recipe.pieces().iter().map(Piece::bytes).sum::<u64>(), new.len() as u64);
            let text = recipe.to_string();
            if !new.is_empty() {
                let parsed = Recipe::parse(&text, old.len() as u64, new.len() as u64).unwrap();
                prop_assert_eq!(&parsed, &recipe);
            }
            prop_assert_eq!(rebuild(&recipe, &old, &data_of(&recipe, &new)), new);
        }
    }
}
