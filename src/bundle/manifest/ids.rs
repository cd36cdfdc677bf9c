//! The identifiers a manifest carries, and what makes each valid: a
//! sender id, a sequence (and the one after it), a part set id, a BLAKE3
//! hash in hex. Pure.

/// A sequence with no successor: its sender could never ship again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sequence {0} is the last a u64 holds: no sequence can follow it")]
pub struct SeqExhausted(pub u64);

/// The sequence after `seq`. A sender numbers its bundles 1, 2, …; u64::MAX
/// is never used, so every sequence in use has a successor and nothing
/// that counts on from one wraps or overflows.
pub fn next_seq(seq: u64) -> Result<u64, SeqExhausted> {
    seq.checked_add(1).ok_or(SeqExhausted(seq))
}

pub fn valid_sender_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

pub fn valid_set_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// BLAKE3 as the manifest writes it: 64 lowercase hex digits.
pub(super) fn is_hex_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_ids_are_short_and_plain() {
        for ok in ["app1", "a-b_c.d", &"x".repeat(64)] {
            assert!(valid_sender_id(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(!valid_sender_id(bad), "{bad}");
        }
    }

    #[test]
    fn set_ids_are_short_and_alphanumeric() {
        assert!(valid_set_id("s1"));
        assert!(valid_set_id(&"a".repeat(64)));
        for bad in ["", "../x", "a-b", &"a".repeat(65)] {
            assert!(!valid_set_id(bad), "{bad}");
        }
    }

    #[test]
    fn hashes_are_64_lowercase_hex_digits() {
        let h = blake3::hash(b"x").to_hex().to_string();
        assert!(is_hex_hash(&h));
        assert!(!is_hex_hash(&h.to_uppercase()));
        assert!(!is_hex_hash(&h[1..]));
        assert!(!is_hex_hash(&"g".repeat(64)));
    }
}
