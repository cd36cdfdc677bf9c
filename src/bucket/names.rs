//! The names of shipper's objects under a bucket's prefix. Pure.
//!
//! A bundle is two objects: `b/SEQ.zip`, the bundle as the network carries
//! it, then `b/SEQ.seal`, its seal ([`super::seal`]), written once the zip
//! is whole. Receivers list seals only, so a zip still being uploaded is
//! never taken. SEQ has 20 digits: the store lists keys in byte order,
//! which is then sequence order.

/// The folder of bundles under the prefix.
pub const BUNDLES: &str = "b";

/// The zip of bundle `seq`, relative to the prefix.
pub fn zip_name(seq: u64) -> String {
    format!("{BUNDLES}/{seq:020}.zip")
}

/// The seal of bundle `seq`, relative to the prefix.
pub fn seal_name(seq: u64) -> String {
    format!("{BUNDLES}/{seq:020}.seal")
}

/// The sequence a seal's name (relative to the prefix) gives; `None` for
/// any other name (a zip, a stranger's object).
pub fn seal_seq(rel: &str) -> Option<u64> {
    let digits = rel
        .strip_prefix(BUNDLES)?
        .strip_prefix('/')?
        .strip_suffix(".seal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_list_in_sequence_order_and_read_back() {
        let names: Vec<String> = [10, 9, 100, u64::MAX].map(seal_name).into();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, [9, 10, 100, u64::MAX].map(seal_name));
        for seq in [0, 1, 42, u64::MAX] {
            assert_eq!(seal_seq(&seal_name(seq)), Some(seq));
            assert_eq!(seal_seq(&zip_name(seq)), None);
        }
        for other in [
            "b/1.seal",
            "b/0000000000000000000x.seal",
            "c/00000000000000000001.seal",
            "b/99999999999999999999.seal",
        ] {
            assert_eq!(seal_seq(other), None, "{other}");
        }
    }
}
