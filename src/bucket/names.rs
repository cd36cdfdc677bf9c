//! The names of shipper's objects under a bucket's prefix. Pure.
//!
//! Each sender has a folder of its own, named by its fingerprint: two
//! senders sharing a prefix never write the same key, and a receiver
//! lists each allowed sender's folder from its own position there. A
//! bundle is two objects: `b/FINGERPRINT/SEQ.zip`, the bundle as the
//! network carries it, then `b/FINGERPRINT/SEQ.seal`, its seal
//! ([`super::seal`]), written once the zip is whole. Receivers list seals
//! only, so a zip still being uploaded is never taken. SEQ has 20 digits:
//! the store lists keys in byte order, which is then sequence order.

use crate::tls::Fingerprint;

/// The folder of bundles under the prefix.
pub const BUNDLES: &str = "b";

/// The folder of `sender`'s bundles, relative to the prefix.
pub fn sender_dir(sender: &Fingerprint) -> String {
    format!("{BUNDLES}/{sender}")
}

/// The zip of `sender`'s bundle `seq`, relative to the prefix.
pub fn zip_name(sender: &Fingerprint, seq: u64) -> String {
    format!("{}/{seq:020}.zip", sender_dir(sender))
}

/// The seal of `sender`'s bundle `seq`, relative to the prefix.
pub fn seal_name(sender: &Fingerprint, seq: u64) -> String {
    format!("{}/{seq:020}.seal", sender_dir(sender))
}

/// The sequence a seal's name (relative to the prefix) in `sender`'s
/// folder gives; `None` for any other name (a zip, another folder, a
/// stranger's object).
pub fn seal_seq(sender: &Fingerprint, rel: &str) -> Option<u64> {
    let digits = rel
        .strip_prefix(&sender_dir(sender))?
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
    fn names_list_in_sequence_order_and_read_back_in_their_senders_folder() {
        let (a, b) = (Fingerprint::of(b"a"), Fingerprint::of(b"b"));
        let names: Vec<String> = [10, 9, 100, u64::MAX].map(|s| seal_name(&a, s)).into();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, [9, 10, 100, u64::MAX].map(|s| seal_name(&a, s)));
        for seq in [0, 1, 42, u64::MAX] {
            assert_eq!(seal_seq(&a, &seal_name(&a, seq)), Some(seq));
            assert_eq!(seal_seq(&a, &zip_name(&a, seq)), None);
            assert_eq!(seal_seq(&b, &seal_name(&a, seq)), None, "another sender's");
        }
        let dir = sender_dir(&a);
        for other in [
            format!("{dir}/1.seal"),
            format!("{dir}/0000000000000000000x.seal"),
            format!("{dir}/99999999999999999999.seal"),
            format!("{dir}x/00000000000000000001.seal"),
            "b/00000000000000000001.seal".to_owned(),
        ] {
            assert_eq!(seal_seq(&a, &other), None, "{other}");
        }
    }
}
