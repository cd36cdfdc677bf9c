//! Who sent a session's bundles, and the key all per-sender state is kept
//! under.
//!
//! With keys a sender *is* its certificate fingerprint: its applied
//! sequence, part sets and bundle file names are keyed by it, and the id it
//! sends in Hello is a label (which its manifests must repeat). Two senders
//! configured with one id are still two senders. Without keys (loopback
//! only) the id is all there is and keys that state.

use crate::tls::Fingerprint;

/// Who sent a session's bundles.
#[derive(Debug, Clone)]
pub(super) struct Sender {
    /// The id from Hello.
    pub(super) id: String,
    fingerprint: Option<Fingerprint>,
    /// Keys all per-sender state: the fingerprint with keys, the id without.
    pub(super) key: String,
}

impl Sender {
    pub(super) fn new(id: String, fingerprint: Option<Fingerprint>) -> Self {
        let key = fingerprint.map_or_else(|| id.clone(), |f| f.to_string());
        Self {
            id,
            fingerprint,
            key,
        }
    }
}

impl std::fmt::Display for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fingerprint {
            Some(fp) => write!(f, "{} (fingerprint {fp})", self.id),
            None => f.write_str(&self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_keys_a_sender_is_its_fingerprint_whatever_its_id() {
        let (fa, fb) = (Fingerprint::of(b"cert a"), Fingerprint::of(b"cert b"));
        let (a, b) = (
            Sender::new("cms".into(), Some(fa)),
            Sender::new("cms".into(), Some(fb)),
        );
        assert_ne!(a.key, b.key);
        assert_eq!(a.key, fa.to_string());
        assert_eq!(a.to_string(), format!("cms (fingerprint {fa})"));
        // Without keys the id is all there is, as receiver.json always had it.
        let plain = Sender::new("cms".into(), None);
        assert_eq!(
            (plain.key.as_str(), plain.to_string()),
            ("cms", "cms".into())
        );
    }
}
