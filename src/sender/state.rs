//! What the sender keeps of itself across restarts: its id and the next
//! sequence number (`state_dir/sender.json`, written durably before a
//! number is used), and whether it is paused (`state_dir/paused`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::durable;

/// What the sender keeps across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SenderState {
    pub(super) id: String,
    pub(super) next_seq: u64,
}

impl SenderState {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("sender.json")
    }

    /// Load, or create with a fresh id. Returns whether it was created.
    pub(super) fn load_or_create(
        state_dir: &Path,
        id: Option<&str>,
    ) -> anyhow::Result<(Self, bool)> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut s: SenderState = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: corrupt sender state", path.display()))?;
                if let Some(id) = id {
                    s.id = id.to_owned();
                }
                Ok((s, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = id.map(str::to_owned).unwrap_or_else(generated_id);
                let s = SenderState { id, next_seq: 1 };
                s.save(state_dir)?;
                Ok((s, true))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub(super) fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(state_dir);
        durable::write_atomic(&path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Marks a paused sender, so a pause outlives a restart.
const PAUSED_FILE: &str = "paused";

/// Whether the sender in `state_dir` was paused.
pub(super) fn is_paused(state_dir: &Path) -> bool {
    state_dir.join(PAUSED_FILE).exists()
}

/// Mark the sender in `state_dir` paused, or not, durably. Blocking (fsync).
pub(super) fn mark_paused(state_dir: &Path, pause: bool) -> anyhow::Result<()> {
    let marker = state_dir.join(PAUSED_FILE);
    if pause {
        durable::write_atomic(&marker, b"paused by `shipper pause`\n")
            .with_context(|| format!("writing {}", marker.display()))?;
    } else {
        match std::fs::remove_file(&marker) {
            Ok(()) => durable::sync_dir(state_dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing {}", marker.display()));
            }
        }
    }
    Ok(())
}

fn generated_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let mut h = blake3::Hasher::new();
    h.update(format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes());
    let tag = &h.finalize().to_hex()[..8];
    if host.is_empty() {
        format!("sender-{tag}")
    } else {
        format!("{host}-{tag}")
    }
}
