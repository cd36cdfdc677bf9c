//! What `shipper status` reports: the figures the sender fills in and the
//! control socket, the metrics endpoint and the command line show. Plain
//! data shared by them, so none of them depends on another for it, and the
//! clock its timestamps are read from.

use serde::{Deserialize, Serialize};

/// Seconds since the Unix epoch, as status timestamps are written.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What `shipper status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub sender_id: String,
    pub paused: bool,
    pub pending_paths: u64,
    pub pending_bytes: u64,
    /// Age of the oldest pending change, against `window_secs`.
    pub oldest_pending_secs: Option<f64>,
    pub window_secs: u64,
    pub held_deletions: u64,
    /// Paths that cannot be shipped now (unreadable, a name that cannot
    /// travel), how many…
    pub failing_paths: u64,
    /// …and the first of them, with why.
    pub failing: Vec<FailingPath>,
    /// Paths last shipped as a snapshot while still being written (they
    /// reached `max_delay`); each ships again once it settles.
    pub unsettled: Vec<String>,
    /// Symlinks not shipped (absolute, or pointing outside the tree).
    #[serde(default)]
    pub skipped_links: Vec<SkippedLinkStatus>,
    /// Why the last packing run failed as a whole (its changes stay pending).
    pub pack_error: Option<String>,
    /// Bytes of bundles in the outbox, against `sender.outbox_max`.
    #[serde(default)]
    pub outbox_bytes: u64,
    #[serde(default)]
    pub outbox_max: u64,
    /// `sender.max_rate`: bytes per second on each receiver's connection;
    /// `None`: no limit.
    #[serde(default)]
    pub max_rate: Option<u64>,

    /// Set while no directory is at the source path (nothing ships).
    #[serde(default)]
    pub source_missing: Option<SourceMissing>,
    pub receivers: Vec<LinkStatus>,
}

/// Why the source is held, and since when (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMissing {
    pub reason: String,
    pub since: i64,
}

/// A path the sender cannot ship now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailingPath {
    pub path: String,
    /// The error, naming the path.
    pub error: String,
    /// Unix seconds of the first failure.
    pub since: i64,
    pub attempts: u32,
}

/// A symlink the sender does not ship, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedLinkStatus {
    pub path: String,
    pub target: String,
    pub why: String,
}

/// The link to the receiver as the transport last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub receiver: String,
    pub connected: bool,
    /// Unix seconds since when it has been connected (or not).
    pub since: Option<i64>,
    pub last_ack_seq: Option<u64>,
    pub last_ack_at: Option<i64>,
    pub bundles_shipped: u64,
    pub bytes_shipped: u64,
    /// Of the bundles shipped, those sent while they were packed.
    #[serde(default)]
    pub bundles_streamed: u64,
    /// The latest failure, naming the peer or sequence it concerns.
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// It is new, rebuilt or restored and is being sent the whole tree.
    #[serde(default)]
    pub whole_tree_pending: bool,
    /// Paths deleted in its backlog when that was dropped, until it
    /// acknowledges the whole tree that deletes them there (but those
    /// shipped again since).
    #[serde(default)]
    pub missed_deletions: u64,
    /// The receiver's `on_apply` hook failed on the sequence named (the
    /// bundle is applied); cleared when a later run succeeds.
    #[serde(default)]
    pub hook_failure: Option<String>,
    #[serde(default)]
    pub hook_failure_at: Option<i64>,
}
