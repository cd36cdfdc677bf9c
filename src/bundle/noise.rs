//! Test-only: deterministic pseudo-random bytes, which no compressor
//! shrinks, so a bundle stores them as they are.
//!
//! One copy for both kinds of test: compiled into the library's unit tests
//! (`#[cfg(test)]`, re-exported as `bundle::noise`) and, by `#[path]`,
//! into the integration tests in `tests/it` (`util::noise`), which cannot
//! see the library's test-only items. So it names nothing of this crate.

/// `len` bytes from `seed`; different seeds give different bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
