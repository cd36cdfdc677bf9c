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

/// One chunk of a file: its length and its xxh3-128 (as bytes: 20 bytes
/// a chunk, where a `u128` would align it to 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunk {
    pub len: u32,
    pub hash: [u8; 16],
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
/// cuts the whole file: a cut is made only once `CHUNK_MAX` bytes past
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
    /// Cut what `data` completes. Bytes are cut where they lie; only those
    /// past the last cut that cannot be cut yet (fewer than `CHUNK_MAX`)
    /// are carried to the next call.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.carry.is_empty() && data.len() >= CHUNK_MAX {
                let end = cut(&data[..CHUNK_MAX]);
                self.push(&data[..end]);
                data = &data[end..];
                continue;
            }
            let carried = self.carry.len();
            let take = (CHUNK_MAX - carried).min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            if self.carry.len() < CHUNK_MAX {
                return;
            }
            let end = cut(&self.carry);
            let carry = std::mem::take(&mut self.carry);
            self.push(&carry[..end]);
            self.carry = carry;
            if end >= carried {
                // The cut lies in `data`: go on from there, carrying nothing.
                self.carry.clear();
                data = &data[end - carried..];
            } else {
                self.carry.drain(..end);
                data = &data[take..];
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
            hash: xxhash_rust::xxh3::xxh3_128(chunk).to_le_bytes(),
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
            out.extend_from_slice(&c.hash);
        }
        let check = blake3::hash(&out);
        out.extend_from_slice(check.as_bytes());
        out
    }

    /// The path a stored signature is for, read from the start of `r`
    /// (the rest is not read nor checked).
    pub fn path_in(mut r: impl std::io::Read) -> Option<String> {
        let mut head = [0u8; 16];
        r.read_exact(&mut head).ok()?;
        if &head[..8] != Self::MAGIC {
            return None;
        }
        let len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= crate::paths::MAX_PATH_BYTES)?;
        let mut path = vec![0u8; len];
        r.read_exact(&mut path).ok()?;
        String::from_utf8(path).ok()
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
                hash: c[4..].try_into().expect("16 bytes"),
            })
            .collect();
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        (total == size).then_some(Signature { size, hash, chunks })
    }
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
