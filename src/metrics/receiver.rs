//! The receiver's figures: per sender, the bundles applied (their count,
//! bytes and the time of the last) and refused (by kind and by a reason
//! from a small fixed set, never the refusal's text, so the series stay
//! few), and the hook's failures; and the space left under root, read at
//! each scrape. Counting is a few atomic adds on the paths that apply or
//! refuse a bundle; nothing here decides anything.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::bundle::error::BundleError;
use crate::bundle::manifest::ManifestError;
use crate::proto::refusal::{Refusal, RefusalKind};

/// Why a bundle was refused, as the `reason` label says it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusedFor {
    /// Over one of the receiver's limits (size, entries, unpacked bytes).
    Limit,
    /// A path the receiver will not write (outside root, reserved, through
    /// a symlink, named twice).
    Path,
    /// Bytes that do not match their hash: the trailer's, or a file's.
    Hash,
    /// No space (or quota) left where the receiver writes.
    DiskFull,
    /// Another I/O error on the receiver's side.
    Io,
    /// Not a bundle this receiver can read, or one that contradicts itself.
    Malformed,
    /// It keeps files root does not hold as it says (edited or lost here).
    NotHeld,
    /// Its sender is held: root was rolled back (`shipper rollback`).
    Held,
}

impl RefusedFor {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::Path => "path",
            Self::Hash => "hash",
            Self::DiskFull => "disk_full",
            Self::Io => "io",
            Self::Malformed => "malformed",
            Self::NotHeld => "not_held",
            Self::Held => "held",
        }
    }

    /// An I/O error's reason: a full disk, or another.
    pub fn of_io(e: &io::Error) -> Self {
        if crate::durable::is_disk_full(e) {
            Self::DiskFull
        } else {
            Self::Io
        }
    }

    /// A bundle error's reason, by its kind.
    pub fn of_bundle_error(e: &BundleError) -> Self {
        match e {
            BundleError::Io { source, .. } => Self::of_io(source),
            BundleError::OverLimit { .. } => Self::Limit,
            BundleError::Damaged { .. } => Self::Hash,
            BundleError::Symlink { .. }
            | BundleError::Manifest(ManifestError::Path { .. } | ManifestError::Duplicate { .. }) => {
                Self::Path
            }
            BundleError::Manifest(_)
            | BundleError::Zip(_)
            | BundleError::Entry { .. }
            | BundleError::Whole(_) => Self::Malformed,
            BundleError::NotHeld { .. } => Self::NotHeld,
        }
    }
}

impl EncodeLabelValue for RefusedFor {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Whether the same bundle may pass when sent again, as the `kind` label
/// says it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Kind {
    Retry,
    Permanent,
    NeedsContent,
}

impl From<RefusalKind> for Kind {
    fn from(k: RefusalKind) -> Self {
        match k {
            RefusalKind::Retry => Self::Retry,
            RefusalKind::Permanent => Self::Permanent,
            RefusalKind::NeedsContent => Self::NeedsContent,
        }
    }
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Retry => "retry",
            Self::Permanent => "permanent",
            Self::NeedsContent => "needs_content",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BySender {
    sender: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refused {
    sender: String,
    kind: Kind,
    reason: RefusedFor,
}

/// The receiver's figures, counted as bundles are applied or refused.
/// Senders are labelled by the id they send in `Hello`.
#[derive(Debug)]
pub struct ReceiverMetrics {
    registry: Registry,
    applied: Family<BySender, Counter>,
    bytes: Family<BySender, Counter>,
    last_apply: Family<BySender, Gauge>,
    refused: Family<Refused, Counter>,
    hook_failures: Family<BySender, Counter>,
}

impl ReceiverMetrics {
    /// Figures for a receiver publishing into `root`.
    pub fn new(root: &Path) -> Self {
        let mut registry = Registry::default();
        let (applied, bytes, last_apply, refused, hook_failures) = Default::default();
        registry.register(
            "shipper_bundles_applied",
            "Bundles applied since start, per sender",
            Family::clone(&applied),
        );
        registry.register(
            "shipper_bundle_bytes_applied",
            "Bytes of the bundles applied since start, per sender",
            Family::clone(&bytes),
        );
        registry.register(
            "shipper_last_apply_timestamp_seconds",
            "Unix time of the last bundle applied, per sender",
            Family::clone(&last_apply),
        );
        registry.register(
            "shipper_bundles_refused",
            "Bundles refused since start, per sender, by kind (retry: may pass when sent again; permanent; needs_content: to be sent with the content of files it kept) and reason (limit, path, hash, disk_full, io, malformed, not_held)",
            Family::clone(&refused),
        );
        registry.register(
            "shipper_hook_failures",
            "Runs of the on_apply hook that failed, per sender",
            Family::clone(&hook_failures),
        );
        registry.register_collector(Box::new(RootSpace {
            root: root.to_owned(),
        }));
        Self {
            registry,
            applied,
            bytes,
            last_apply,
            refused,
            hook_failures,
        }
    }

    /// `sender`'s bundle of `bytes` was applied at `at` (Unix seconds).
    pub fn applied(&self, sender: &str, bytes: u64, at: i64) {
        let who = by(sender);
        self.applied.get_or_create(&who).inc();
        self.bytes.get_or_create(&who).inc_by(bytes);
        self.last_apply.get_or_create(&who).set(at);
    }

    /// A bundle of `sender`'s was refused, `why`.
    pub fn refused(&self, sender: &str, refusal: &Refusal, why: RefusedFor) {
        let labels = Refused {
            sender: sender.to_owned(),
            kind: refusal.kind.into(),
            reason: why,
        };
        self.refused.get_or_create(&labels).inc();
    }

    /// The on_apply hook failed after a bundle of `sender`'s.
    pub fn hook_failed(&self, sender: &str) {
        self.hook_failures.get_or_create(&by(sender)).inc();
    }

    /// The figures as OpenMetrics text. Blocking: reads root's free space.
    pub fn scrape(&self) -> String {
        super::encode(&self.registry)
    }
}

fn by(sender: &str) -> BySender {
    BySender {
        sender: sender.to_owned(),
    }
}

/// The space left on root's filesystem, read (statvfs) at each scrape.
#[derive(Debug)]
struct RootSpace {
    root: PathBuf,
}

impl Collector for RootSpace {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stat = match rustix::fs::statvfs(&self.root) {
            Ok(s) => s,
            Err(e) => {
                // Left out rather than shown stale; root's absence is
                // reported loudly elsewhere (each apply fails).
                tracing::warn!(root = %self.root.display(), error = %e, "metrics: cannot read the free space under root");
                return Ok(());
            }
        };
        let figures = [
            (
                "shipper_root_free_bytes",
                "Bytes free to unprivileged writers on receiver.root's filesystem.",
                stat.f_bavail.saturating_mul(stat.f_frsize),
            ),
            (
                "shipper_root_free_inodes",
                "Inodes free to unprivileged writers on receiver.root's filesystem.",
                stat.f_favail,
            ),
        ];
        for (name, help, value) in figures {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, ConstGauge::<i64>::TYPE)?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_sender_and_reason_and_reads_roots_free_space() {
        let root = tempfile::tempdir().unwrap();
        let m = ReceiverMetrics::new(root.path());
        m.applied("cms", 100, 1_700_000_000);
        m.applied("cms", 50, 1_700_000_060);
        let full = Refusal::retry("receiver disk full");
        m.refused("cms", &full, RefusedFor::DiskFull);
        m.refused("cms", &full, RefusedFor::DiskFull);
        m.hook_failed("cms");
        let text = m.scrape();
        for line in [
            "shipper_bundles_applied_total{sender=\"cms\"} 2",
            "shipper_bundle_bytes_applied_total{sender=\"cms\"} 150",
            "shipper_last_apply_timestamp_seconds{sender=\"cms\"} 1700000060",
            "shipper_bundles_refused_total{sender=\"cms\",kind=\"retry\",reason=\"disk_full\"} 2",
            "shipper_hook_failures_total{sender=\"cms\"} 1",
            "# TYPE shipper_root_free_bytes gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let gone = ReceiverMetrics::new(&root.path().join("missing"));
        assert!(
            !gone.scrape().contains("shipper_root_free_bytes "),
            "no stale figure for a root that cannot be read"
        );
    }

    /// The reason each kind of bundle error counts under: opening or applying
    /// each hostile fixture must give the reason its name says.
    #[test]
    fn each_hostile_bundle_is_refused_for_the_reason_its_name_says() {
        use crate::bundle::apply::{self, Limits, Target};
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile");
        for (name, reason) in [
            ("dotdot", RefusedFor::Path),
            ("duplicate-name", RefusedFor::Path),
            ("hash-mismatch", RefusedFor::Hash),
            ("part-bad-whole-hash", RefusedFor::Hash),
            ("huge-declared-size", RefusedFor::Limit),
            ("not-a-zip", RefusedFor::Malformed),
            ("manifest-garbage", RefusedFor::Malformed),
        ] {
            let t = tempfile::tempdir().unwrap();
            let target = Target {
                root: t.path().join("www"),
                staging: t.path().join("staging"),
                parts: t.path().join("parts"),
                policy: Default::default(),
                keep: None,
                snapshot: false,
            };
            target.prepare().unwrap();
            let bundle = fixtures.join(format!("{name}.zip"));
            let e = apply::open(&bundle, &Limits::default())
                .and_then(|b| apply::apply(&target.for_sender("hostile"), b))
                .expect_err(name);
            assert_eq!(RefusedFor::of_bundle_error(&e), reason, "{name}: {e}");
        }
    }

    #[test]
    fn a_full_disk_is_told_from_other_io_errors() {
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(RefusedFor::of_io(&full), RefusedFor::DiskFull);
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(RefusedFor::of_io(&denied), RefusedFor::Io);
    }
}
