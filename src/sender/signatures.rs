//! Where the sender keeps the signature of each large file it packed
//! (`bundle/delta.rs`): one file per path in `state_dir/signatures/`,
//! named by a hash of the path, written the durable way. A signature is
//! only ever used for the content hash it records, once the ledger says
//! the receivers hold that content, and it is checked whole when read: a
//! signature lost, torn or stale costs one file sent whole, never a wrong
//! one. Failing to store one is logged and costs the same.

use std::path::{Path, PathBuf};

use tracing::debug;

use crate::bundle::delta::Signature;
use crate::bundle::pack::Signatures;
use crate::durable;

/// The largest signature file read: a 64 GiB file's, with room to spare.
const MAX_SIGNATURE_BYTES: u64 = 64 << 20;

/// Signatures in one directory.
#[derive(Debug, Clone)]
pub(super) struct SignatureStore {
    dir: PathBuf,
}

impl SignatureStore {
    /// The store in `dir` (created if missing), with what a crash left
    /// mid-write removed.
    pub(super) fn open(dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::places::remove_own(dir, durable::is_temp_name)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn file_of(&self, path: &str) -> PathBuf {
        let name = blake3::hash(path.as_bytes()).to_hex();
        self.dir.join(format!("{}.sig", &name[..32]))
    }
}

impl Signatures for SignatureStore {
    fn get(&self, path: &str) -> Option<Signature> {
        use std::io::Read;
        let file = std::fs::File::open(self.file_of(path)).ok()?;
        let mut bytes = Vec::new();
        let read = file.take(MAX_SIGNATURE_BYTES).read_to_end(&mut bytes);
        read.ok().and_then(|_| Signature::decode(&bytes, path))
    }

    fn put(&self, path: &str, sig: &Signature) {
        let file = self.file_of(path);
        if let Err(e) = durable::write_atomic(&file, &sig.encode(path)) {
            debug!(path, file = %file.display(), error = %e, "cannot store the signature; the next change of this file ships whole");
        }
    }

    fn forget(&self, path: &str) {
        let _ = std::fs::remove_file(self.file_of(path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::delta::Chunk;

    #[test]
    fn a_signature_is_kept_per_path_until_forgotten_and_a_torn_one_is_none() {
        let t = tempfile::tempdir().unwrap();
        let store = SignatureStore::open(&t.path().join("signatures")).unwrap();
        let sig = Signature {
            size: 5,
            hash: [7; 32],
            chunks: vec![Chunk { len: 5, hash: 9 }],
        };
        assert_eq!(store.get("a"), None);
        store.put("a", &sig);
        assert_eq!(store.get("a"), Some(sig.clone()));
        assert_eq!(store.get("b"), None);
        let file = store.file_of("a");
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(store.get("a"), None, "torn");
        store.put("a", &sig);
        store.forget("a");
        assert_eq!(store.get("a"), None);
        let left = std::fs::read_dir(t.path().join("signatures"))
            .unwrap()
            .count();
        assert_eq!(left, 0, "nothing left behind");
    }
}
