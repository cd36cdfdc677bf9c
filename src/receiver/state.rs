//! What a receiver keeps in its state_dir across restarts: the last
//! sequence applied per sender, the senders held by a rollback, where it
//! is in each sender's folder of a bucket, and the instance id (`receiver.json`,
//! written through [`crate::durable`]), and the lock that lets one process
//! at a time use the state_dir (`receiver.lock`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::durable;

/// What the receiver keeps across restarts: the last sequence applied per
/// sender by its key (see `identity::Sender::key`), and the instance this
/// state belongs to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReceiverState {
    pub applied: BTreeMap<String, u64>,
    /// Made when the state is first written; a wiped or rebuilt receiver
    /// has a new one, which tells senders to bring it the whole tree.
    #[serde(default)]
    pub instance: String,
    /// Senders whose bundles are refused: root was rolled back to one of
    /// their sequences (see `rollback.rs`), until `--release`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, Hold>,
    /// Senders released from a rollback to this sequence, not yet told:
    /// the next one to connect learns it and compares its source with
    /// root (`Frame::RolledBack`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rolled_back: BTreeMap<String, u64>,
    /// Where this receiver is in each sender's folder of a bucket: the
    /// chain's last bundle applied and the base being taken (see
    /// `bucket::follow`), saved with the bundle that moved it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub courses: BTreeMap<String, crate::bucket::follow::Course>,
    /// The course after each of the last bundles of each sender applied
    /// from a bucket: a rollback resumes the one it goes back to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub course_logs: BTreeMap<String, Vec<crate::bucket::follow::Course>>,
}

/// A sender held by a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Root is (or, while the rollback runs, is being put back) as right
    /// after this bundle of the sender.
    pub to: u64,
    /// When the rollback began (Unix seconds).
    pub since: u64,
    /// Under `publish = "tree"`, while the rollback runs: the snapshot it
    /// makes, which root points at once it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<u64>,
    /// The rollback is still running: a stop leaves it to be finished at
    /// the next start.
    #[serde(default)]
    pub rolling: bool,
}

impl ReceiverState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("receiver.json")
    }

    /// Load, giving the state an instance id (saved) if it has none yet.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let mut state = Self::load(state_dir)?;
        if instance_bytes(&state.instance).is_none() {
            let mut h = blake3::Hasher::new();
            h.update(
                format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
            );
            h.update(state_dir.as_os_str().as_encoded_bytes());
            state.instance = h.finalize().to_hex()[..32].to_string();
            state.save(state_dir)?;
        }
        Ok(state)
    }

    /// `seq` of the sender keyed `key` is applied: keep the highest.
    pub fn record_applied(&mut self, key: &str, seq: u64) {
        let e = self.applied.entry(key.to_owned()).or_default();
        *e = (*e).max(seq);
    }

    /// The instance id as sent in `Welcome`.
    pub fn instance(&self) -> [u8; 16] {
        instance_bytes(&self.instance).unwrap_or_default()
    }

    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{}: corrupt receiver state", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(state_dir);
        durable::write_atomic(&path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn instance_bytes(hex: &str) -> Option<[u8; 16]> {
    let bytes = data_encoding::HEXLOWER.decode(hex.as_bytes()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_keeps_its_instance_and_the_highest_sequence_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = ReceiverState::load_or_create(dir.path()).unwrap();
        assert_ne!(state.instance(), [0; 16]);
        state.record_applied("cms", 7);
        state.record_applied("cms", 3);
        assert_eq!(state.applied["cms"], 7);
        state.save(dir.path()).unwrap();
        let again = ReceiverState::load_or_create(dir.path()).unwrap();
        assert_eq!(again.instance, state.instance);
        assert_eq!(again.applied, state.applied);
    }
}
