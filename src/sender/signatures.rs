//! Where the sender keeps the signature of each large file it packed
//! (`bundle/delta.rs`): one file per path in `state_dir/signatures/`,
//! named by a hash of the path. A cache, not state: a signature is only
//! ever used for the content hash it records, once the ledger says the
//! receivers hold that content, and it is checked whole when read (its
//! own BLAKE3 closes it), so one lost, torn or stale costs one file sent
//! whole, never a wrong one. It is therefore written to a temporary name
//! and renamed without an fsync (two per large file packed, on a first ship
//! of thousands, would cost more than they save). Failing to store one is
//! logged once, and costs the same. At start, signatures of paths the
//! sender no longer ships are removed.
//!
//! A large file packed with its bytes is signed here too, off the packing
//! path ([`Signer`]): a thread of the lowest priority (`SCHED_IDLE`) reads
//! it again once the packer has noted it, and stores its signature if the
//! file still holds the content packed. Chunking it inline cost a first
//! ship half a second per GiB on two cores; idle, it costs nothing the
//! ship waits for, and a change that comes before it is done ships whole.

use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use crate::bundle::delta::Signature;
use crate::bundle::pack::{Signatures, Unsigned, sign};
use crate::durable;
use crate::source_dir::SourceDir;

/// The largest signature file read: a file of some 500 GiB has one this
/// large (20 bytes per chunk of about 40 KiB).
const MAX_SIGNATURE_BYTES: u64 = 256 << 20;

/// Signatures in one directory.
#[derive(Debug)]
pub(super) struct SignatureStore {
    dir: PathBuf,
    /// A signature could not be stored, and the log said so.
    warned: AtomicBool,
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
            warned: AtomicBool::new(false),
        })
    }

    /// Remove the signatures of paths `ships` says no longer ship (deleted
    /// while the sender was down, or in a run that failed). Returns how
    /// many went.
    pub(super) fn prune(&self, ships: impl Fn(&str) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let keep = std::fs::File::open(&path)
                .ok()
                .and_then(Signature::path_in)
                .is_some_and(|p| ships(&p));
            if !keep && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
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
        if let Err(e) = write_renamed(&file, &sig.encode(path))
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            warn!(path, file = %file.display(), error = %e, "cannot store a large file's signature: its next change ships whole, not as a delta (said once)");
        }
    }

    fn forget(&self, path: &str) {
        let _ = std::fs::remove_file(self.file_of(path));
    }
}

/// Signs large files in the background (see the module's head): what the
/// packer noted as unsigned goes to [`Signer::sign`].
pub(super) struct Signer {
    queue: std::sync::Mutex<std::sync::mpsc::Sender<Unsigned>>,
}

impl Signer {
    /// Start the signing thread for files of `source`, storing into `store`.
    pub(super) fn spawn(store: Arc<SignatureStore>, source: PathBuf) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Unsigned>();
        std::thread::Builder::new()
            .name("shipper-signer".into())
            .spawn(move || {
                run_idle();
                let mut buf = vec![0u8; 1 << 20];
                for u in rx {
                    sign_one(&store, &source, &u, &mut buf);
                }
            })?;
        Ok(Self {
            queue: std::sync::Mutex::new(tx),
        })
    }

    /// Sign `files` when nothing else wants the CPU.
    pub(super) fn sign(&self, files: Vec<Unsigned>) {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for u in files {
            // The thread only ends with the process.
            let _ = queue.send(u);
        }
    }
}

/// Sign `u` if the file still holds the content packed (its stamp
/// unchanged, its hash the one packed).
fn sign_one(store: &SignatureStore, source: &Path, u: &Unsigned, buf: &mut [u8]) {
    let Ok(dir) = SourceDir::open(source) else {
        return;
    };
    if let Some(signed) = sign(&dir, (&u.path, u.stamp), buf, true)
        && signed.hash == u.hash
    {
        store.put(&u.path, &signed.signature(u.stamp.size));
    }
}

/// Give this thread the lowest CPU priority there is: it runs only when
/// no other thread wants the core (`SCHED_IDLE`, else nice 19).
fn run_idle() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain calls on the calling thread (pid 0) with a valid,
        // initialised parameter; failure is reported, not undefined.
        let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
        // SAFETY: as above: the calling thread's own nice value.
        if !idle && unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
            tracing::debug!("cannot lower the signing thread's priority");
        }
    }
}

/// Write `bytes` to a temporary name beside `file` and rename it over
/// `file`: a reader finds the old signature or the new, or (after a crash)
/// one its checksum refuses.
fn write_renamed(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(durable::TEMP_PREFIX)
        .tempfile_in(durable::parent_of(file))?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(file).map(drop).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::delta::Chunk;

    #[test]
    fn a_signature_is_kept_per_path_until_forgotten_or_pruned_and_a_torn_one_is_none() {
        let t = tempfile::tempdir().unwrap();
        let store = SignatureStore::open(&t.path().join("signatures")).unwrap();
        let sig = Signature {
            size: 5,
            hash: [7; 32],
            chunks: vec![Chunk {
                len: 5,
                hash: [9; 16],
            }],
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
        store.put("kept", &sig);
        store.put("gone", &sig);
        assert_eq!(store.prune(|p| p == "kept"), 1);
        assert_eq!(store.get("kept"), Some(sig.clone()));
        assert_eq!(store.get("gone"), None);
        store.forget("kept");
        let left = std::fs::read_dir(t.path().join("signatures"))
            .unwrap()
            .count();
        assert_eq!(left, 0, "nothing left behind");
    }

    /// A file packed unsigned is signed in the background if it still
    /// holds what was packed; one that changed meanwhile is not.
    #[test]
    fn the_signer_signs_what_still_holds_its_packed_content() {
        use crate::stamp::Stamp;
        let t = tempfile::tempdir().unwrap();
        let source = t.path().join("src");
        std::fs::create_dir_all(&source).unwrap();
        let body = vec![3u8; 300_000];
        std::fs::write(source.join("same"), &body).unwrap();
        std::fs::write(source.join("moved"), &body).unwrap();
        let dir = SourceDir::open(&source).unwrap();
        let unsigned = |path: &str| Unsigned {
            path: path.into(),
            stamp: Stamp::of_stat(&dir.stat(path).unwrap()),
            hash: blake3::hash(&body),
        };
        let (same, moved) = (unsigned("same"), unsigned("moved"));
        std::fs::write(source.join("moved"), b"other").unwrap();
        let store = Arc::new(SignatureStore::open(&t.path().join("signatures")).unwrap());
        let signer = Signer::spawn(store.clone(), source.clone()).unwrap();
        signer.sign(vec![moved, same]);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.get("same").is_none() {
            assert!(std::time::Instant::now() < end, "never signed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let sig = store.get("same").unwrap();
        assert_eq!(
            (sig.size, sig.hash),
            (300_000, *blake3::hash(&body).as_bytes())
        );
        assert_eq!(store.get("moved"), None, "signed after it changed");
    }
}
