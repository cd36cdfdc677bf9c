//! The `[sender]` table: its raw form as written, the [`SenderConfig`] the
//! sender runs on, and the validation between them, one step per concern
//! (timing, sizes, excludes, receivers, mass deletion, keys, metrics). The
//! timing keys and `max_rate` are `timing`'s, checked against the
//! five-minute window. Each error names the key.
//!
//! No I/O; checking a cron schedule reads the wall clock once (its gaps are
//! measured from now).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;

use super::bucket::RawBucket;
use super::timing;
use super::values::{check_host_port, duration, host_is_loopback, metrics_addr, size};
use crate::bucket::settings::{Bases, BucketConfig};
use crate::paths::{DEFAULT_EXCLUDES, Excludes};
use crate::schedule::Schedule;
use crate::tls::Fingerprint;

/// Files larger than this travel as parts unless `sender.chunk_size` says
/// otherwise.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;
/// No bundle is larger unless `sender.max_bundle_size` says otherwise.
pub const DEFAULT_MAX_BUNDLE_SIZE: u64 = 256 << 20;
pub use crate::bundle::pack::MIN_CHUNK_SIZE;
/// `sender.max_bundle_size` is at least this many times `sender.chunk_size`,
/// as the packer keeps it when a receiver asks for smaller bundles.
pub const MIN_CHUNKS_PER_BUNDLE: u64 = 2;
/// Entries a sender puts in one bundle unless configured: well below what a
/// receiver accepts by default (`DEFAULT_RECEIVER_MAX_FILES`).
pub const DEFAULT_SENDER_MAX_FILES: usize = 10_000;
/// The lowest `sender.max_files_per_bundle` accepted.
pub const MIN_SENDER_MAX_FILES: usize = 2;
/// The outbox's budget unless configured (at most half the free space).
pub const DEFAULT_OUTBOX_MAX: u64 = 1 << 30;
/// The mass-deletion guard unless configured: a cut deleting over half of
/// what was shipped…
pub const DEFAULT_MASS_DELETE_SHARE: f64 = 0.5;
/// …and at least this many files is held.
pub const DEFAULT_MASS_DELETE_MIN: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSender {
    pub source: PathBuf,
    pub receiver: Option<OneOrMany>,
    pub state_dir: PathBuf,
    pub id: Option<String>,
    pub interval: Option<String>,
    pub schedule: Option<String>,
    pub settle: Option<String>,
    pub max_delay: Option<String>,
    pub exclude: Option<Vec<String>>,
    pub exclude_defaults: Option<bool>,
    pub chunk_size: Option<String>,
    pub max_bundle_size: Option<String>,
    pub max_files_per_bundle: Option<usize>,
    pub outbox_max: Option<String>,
    pub mass_delete_share: Option<f64>,
    pub mass_delete_min: Option<usize>,
    pub key_dir: Option<PathBuf>,
    pub receiver_fingerprint: Option<OneOrMany>,
    pub metrics: Option<String>,
    pub peer_timeout: Option<String>,
    pub max_rate: Option<String>,
    pub compress: Option<String>,
    pub bucket: Option<String>,
    pub bucket_endpoint: Option<String>,
    pub bucket_region: Option<String>,
    pub bucket_credentials: Option<PathBuf>,
    pub bucket_base_every: Option<String>,
    pub bucket_keep: Option<usize>,
}

/// A key that takes one value or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub source: PathBuf,
    /// Each receiver's "host:port" as written; resolved at each connect so
    /// DNS changes apply. Every bundle goes to each of them.
    pub receivers: Vec<String>,
    pub state_dir: PathBuf,
    pub id: Option<String>,
    pub schedule: Schedule,
    pub settle: Duration,
    pub max_delay: Duration,
    pub exclude: Excludes,
    pub chunk_size: u64,
    pub max_bundle_size: u64,
    /// Files, parts and deletions in one bundle.
    pub max_files_per_bundle: usize,
    /// Bytes the outbox may hold for a receiver that is away; `None`: the
    /// default, fitted to the free space at start.
    pub outbox_max: Option<u64>,
    pub mass_delete: MassDelete,
    /// Keys and the pinned receiver; `None` only for plaintext on loopback.
    pub tls: Option<SenderTls>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// A connection on which the receiver says nothing for this long is
    /// dropped and replaced; the idle connection is pinged every third of it.
    pub peer_timeout: Duration,
    /// Bytes per second each receiver's connection may carry; `None`: no
    /// limit.
    pub max_rate: Option<u64>,
    /// Whether entries worth deflating are deflated.
    pub compress: Compress,
    /// The bucket every bundle also goes to, for receivers that take
    /// them there; sealed with the key pair in `tls`.
    pub bucket: Option<BucketConfig>,
    /// How often the bucket gets a base, and how many it keeps.
    pub bucket_bases: Bases,
}

impl SenderConfig {
    /// Where every bundle goes, in the order their places are numbered in
    /// (the outbox, the links, `Packed::only`): each receiver, then the
    /// bucket, named by its URL.
    pub fn destinations(&self) -> Vec<String> {
        let mut d = self.receivers.clone();
        d.extend(self.bucket.as_ref().map(|b| b.url.to_string()));
        d
    }
}

/// `sender.compress`: whether files worth deflating (not already
/// compressed formats, not incompressible data) are deflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// Unless every receiver's link was measured fast enough that deflate
    /// would hold it up (see `sender::link_rate`).
    Auto,
    Always,
    Never,
}

fn compress(value: Option<&str>) -> Result<Compress, String> {
    match value {
        None | Some("auto") => Ok(Compress::Auto),
        Some("always") => Ok(Compress::Always),
        Some("never") => Ok(Compress::Never),
        Some(other) => Err(format!(
            "sender.compress = {other:?}: must be \"auto\" (the default: deflate unless every receiver's link is measured faster than deflate), \"always\" or \"never\""
        )),
    }
}

#[derive(Debug, Clone)]
pub struct SenderTls {
    pub key_dir: PathBuf,
    /// The pinned fingerprint of each receiver, in the order of `receivers`.
    pub receivers: Vec<Fingerprint>,
}

/// A bundle deleting at least `min` files and over `share` of what was
/// shipped is held until `shipper flush --allow-mass-delete`.
#[derive(Debug, Clone, Copy)]
pub struct MassDelete {
    pub share: f64,
    pub min: usize,
}

impl SenderConfig {
    /// The sender's directories, by key.
    pub fn dirs(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("sender.source", self.source.as_path()),
            ("sender.state_dir", self.state_dir.as_path()),
        ]
    }
}

/// Turn the raw `[sender]` table into a [`SenderConfig`]; paths are joined
/// to `base`. The steps check the keys in the order they always were, so a
/// config with several errors still reports the same one first.
pub(super) fn validate(s: RawSender, base: &Path) -> Result<SenderConfig, String> {
    let bucket = super::bucket::validate(
        RawBucket {
            table: "sender",
            bucket: s.bucket.as_deref(),
            endpoint: s.bucket_endpoint.as_deref(),
            region: s.bucket_region.as_deref(),
            credentials: s.bucket_credentials.as_deref(),
        },
        base,
    )?;
    // A bucket's receivers take a bundle up to a poll after it is there.
    let after = if bucket.is_some() {
        super::MAX_BUCKET_POLL
    } else {
        Duration::ZERO
    };
    let (settle, max_delay) =
        timing::settle_and_max_delay(s.settle.as_deref(), s.max_delay.as_deref(), after)?;
    let (schedule, gap) = timing::schedule(
        s.interval.as_deref(),
        s.schedule.as_deref(),
        max_delay,
        Utc::now(),
    )?;
    let sizes = sizes(&s)?;
    let bucket_bases = bases(&s, bucket.is_some())?;
    let max_rate = timing::max_rate(s.max_rate.as_deref(), sizes.max_bundle_size, max_delay, gap)?;
    let exclude = excludes(s.exclude_defaults, s.exclude)?;
    let receivers = receivers(s.receiver, bucket.is_some())?;
    let id = sender_id(s.id)?;
    let mass_delete = mass_delete(s.mass_delete_share, s.mass_delete_min)?;
    let tls = tls(s.key_dir, s.receiver_fingerprint, &receivers, base)?;
    if bucket.is_some() && tls.is_none() {
        return Err("sender.bucket needs sender.key_dir: each bundle put there is sealed with the sender's key, so no one else who can write the bucket can publish through it".into());
    }
    let metrics = metrics_addr("sender.metrics", s.metrics.as_deref(), "127.0.0.1:9700")?;
    let peer_timeout = timing::peer_timeout(s.peer_timeout.as_deref())?;
    let compress = compress(s.compress.as_deref())?;
    Ok(SenderConfig {
        bucket_bases,
        compress,
        max_rate,
        peer_timeout,
        metrics,
        tls,
        mass_delete,
        source: base.join(&s.source),
        receivers,
        state_dir: base.join(&s.state_dir),
        id,
        schedule,
        settle,
        max_delay,
        exclude,
        chunk_size: sizes.chunk_size,
        max_bundle_size: sizes.max_bundle_size,
        max_files_per_bundle: sizes.max_files_per_bundle,
        outbox_max: sizes.outbox_max,
        bucket,
    })
}

/// How often the bucket gets a base (`bucket_base_every`, at least a
/// second) and how many complete ones it keeps (`bucket_keep`, at least
/// two: with one, a receiver slower to take a base than the next one
/// comes could start over for ever); either set without a bucket is
/// refused.
fn bases(s: &RawSender, bucket: bool) -> Result<Bases, String> {
    let defaults = Bases::default();
    let set = [
        ("sender.bucket_base_every", s.bucket_base_every.is_some()),
        ("sender.bucket_keep", s.bucket_keep.is_some()),
    ];
    if !bucket && let Some((key, _)) = set.iter().find(|(_, set)| *set) {
        return Err(format!("{key} is set but sender.bucket is not"));
    }
    let every = duration(
        "sender.bucket_base_every",
        s.bucket_base_every.as_deref(),
        defaults.every,
    )?;
    if every < Duration::from_secs(1) {
        return Err(format!(
            "sender.bucket_base_every = {:?}: at least 1s (each base is a whole tree)",
            s.bucket_base_every.as_deref().unwrap_or_default()
        ));
    }
    let keep = s.bucket_keep.unwrap_or(defaults.keep);
    if keep < 2 {
        return Err(format!(
            "sender.bucket_keep = {keep}: at least 2 (a receiver taking the older base while a newer one is made must find it whole)"
        ));
    }
    Ok(Bases { every, keep })
}

/// How large the sender's parts, bundles and outbox may grow.
struct Sizes {
    chunk_size: u64,
    max_bundle_size: u64,
    outbox_max: Option<u64>,
    max_files_per_bundle: usize,
}

fn sizes(s: &RawSender) -> Result<Sizes, String> {
    let chunk_size = size(
        "sender.chunk_size",
        s.chunk_size.as_deref(),
        DEFAULT_CHUNK_SIZE,
    )?;
    let max_bundle_size = size(
        "sender.max_bundle_size",
        s.max_bundle_size.as_deref(),
        DEFAULT_MAX_BUNDLE_SIZE,
    )?;
    if chunk_size < MIN_CHUNK_SIZE {
        return Err(format!(
            "sender.chunk_size: at least {MIN_CHUNK_SIZE} bytes"
        ));
    }
    if max_bundle_size < MIN_CHUNKS_PER_BUNDLE * chunk_size {
        return Err(format!(
            "sender.max_bundle_size ({max_bundle_size} bytes) must be at least twice sender.chunk_size ({chunk_size} bytes)"
        ));
    }
    let outbox_max = s
        .outbox_max
        .as_deref()
        .map(|v| size("sender.outbox_max", Some(v), 0))
        .transpose()?;
    if let Some(m) = outbox_max
        && m < max_bundle_size
    {
        return Err(format!(
            "sender.outbox_max ({m} bytes) is below sender.max_bundle_size ({max_bundle_size} bytes): not even one bundle would fit"
        ));
    }
    let max_files_per_bundle = s.max_files_per_bundle.unwrap_or(DEFAULT_SENDER_MAX_FILES);
    if max_files_per_bundle < MIN_SENDER_MAX_FILES {
        return Err(format!(
            "sender.max_files_per_bundle = {max_files_per_bundle}: at least {MIN_SENDER_MAX_FILES}"
        ));
    }
    Ok(Sizes {
        chunk_size,
        max_bundle_size,
        outbox_max,
        max_files_per_bundle,
    })
}

/// `sender.exclude`, after [`DEFAULT_EXCLUDES`] unless `exclude_defaults`
/// is false.
fn excludes(defaults: Option<bool>, extra: Option<Vec<String>>) -> Result<Excludes, String> {
    let mut patterns: Vec<String> = if defaults.unwrap_or(true) {
        DEFAULT_EXCLUDES.iter().map(|p| p.to_string()).collect()
    } else {
        Vec::new()
    };
    patterns.extend(extra.unwrap_or_default());
    Excludes::new(&patterns).map_err(|e| format!("sender.exclude: bad pattern: {e}"))
}

/// `sender.receiver`: at least one "host:port", none twice.
fn receivers(listed: Option<OneOrMany>, bucket: bool) -> Result<Vec<String>, String> {
    let Some(listed) = listed else {
        return match bucket {
            true => Ok(Vec::new()),
            false => Err("sender.receiver is missing: name at least one receiver (\"host:port\"), or a sender.bucket".into()),
        };
    };
    let receivers: Vec<String> = listed
        .into_vec()
        .iter()
        .map(|r| r.trim().to_owned())
        .collect();
    if receivers.is_empty() {
        return Err("sender.receiver is an empty list: name at least one receiver".into());
    }
    for r in &receivers {
        check_host_port("sender.receiver", r)?;
    }
    if let Some(dup) = receivers
        .iter()
        .enumerate()
        .find(|(i, r)| receivers[..*i].contains(r))
    {
        return Err(format!("sender.receiver lists {:?} twice", dup.1));
    }
    Ok(receivers)
}

fn sender_id(id: Option<String>) -> Result<Option<String>, String> {
    if let Some(id) = &id
        && !crate::bundle::manifest::valid_sender_id(id)
    {
        return Err(format!(
            "sender.id = {id:?}: use 1-64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(id)
}

fn mass_delete(share: Option<f64>, min: Option<usize>) -> Result<MassDelete, String> {
    let share = share.unwrap_or(DEFAULT_MASS_DELETE_SHARE);
    if !(share > 0.0 && share <= 1.0) {
        return Err(format!(
            "sender.mass_delete_share = {share}: must be above 0 and at most 1"
        ));
    }
    Ok(MassDelete {
        share,
        min: min.unwrap_or(DEFAULT_MASS_DELETE_MIN),
    })
}

/// `sender.key_dir` and `sender.receiver_fingerprint`, both or neither;
/// neither only when every receiver is on loopback.
fn tls(
    key_dir: Option<PathBuf>,
    fingerprints: Option<OneOrMany>,
    receivers: &[String],
    base: &Path,
) -> Result<Option<SenderTls>, String> {
    match (key_dir, fingerprints) {
        (Some(dir), Some(fps)) => Ok(Some(SenderTls {
            key_dir: base.join(dir),
            receivers: pins(fps, receivers.len())?,
        })),
        // A sender with a bucket alone pins no receiver.
        (Some(dir), None) if receivers.is_empty() => Ok(Some(SenderTls {
            key_dir: base.join(dir),
            receivers: Vec::new(),
        })),
        (Some(_), None) => {
            Err("sender.key_dir is set but sender.receiver_fingerprint is not: pin the receiver's fingerprint (printed by `shipper keygen` on the receiver)".into())
        }
        (None, Some(_)) => {
            Err("sender.receiver_fingerprint is set but sender.key_dir is not: make keys with `shipper keygen --out DIR`".into())
        }
        (None, None) if let Some(remote) = receivers.iter().find(|r| !host_is_loopback(r)) => {
            Err(format!(
                "sender.receiver = {remote:?} is not a loopback address, so keys are required: set sender.key_dir (made by `shipper keygen`) and sender.receiver_fingerprint"
            ))
        }
        (None, None) => Ok(None),
    }
}

/// The pinned fingerprint of each of `receivers` receivers.
fn pins(fingerprints: OneOrMany, receivers: usize) -> Result<Vec<Fingerprint>, String> {
    let fps = fingerprints.into_vec();
    let fps: Vec<String> = match fps.len() {
        // One fingerprint pins every receiver (they share a key pair).
        1 => vec![fps[0].clone(); receivers],
        n if n == receivers => fps,
        n => {
            return Err(format!(
                "sender.receiver_fingerprint lists {n} fingerprints for {receivers} receivers: give one, or one per receiver in the same order"
            ));
        }
    };
    fps.iter()
        .map(|fp| {
            fp.parse()
                .map_err(|e| format!("sender.receiver_fingerprint = {fp:?}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Config, DEFAULT_INTERVAL, DEFAULT_PEER_TIMEOUT, DEFAULT_SETTLE, WINDOW, parse, validate,
    };

    const SENDER: &str = r#"
[sender]
source = "src"
receiver = "127.0.0.1:7700"
state_dir = "state"
"#;

    fn check(extra: &str) -> Result<Config, String> {
        let text = format!("{SENDER}{extra}");
        validate(parse(&text)?, Path::new("/base"))
    }

    fn err(extra: &str) -> String {
        check(extra).expect_err("config accepted")
    }

    #[test]
    fn defaults_fill_the_sender() {
        let c = check("").unwrap();
        let s = c.sender.unwrap();
        assert_eq!(s.source, Path::new("/base/src"));
        assert_eq!(s.settle, DEFAULT_SETTLE);
        assert_eq!(s.max_delay, WINDOW);
        assert!(matches!(s.schedule, Schedule::Every(d) if d == DEFAULT_INTERVAL));
        assert_eq!(s.chunk_size, 64 << 20);
        assert_eq!(s.peer_timeout, DEFAULT_PEER_TIMEOUT);
        assert_eq!(s.compress, Compress::Auto);
        assert!(s.exclude.is_excluded("a/.b.swp"));
    }

    #[test]
    fn each_window_breaking_setting_is_refused_by_key() {
        for (extra, key) in [
            ("interval = \"6m\"\n", "sender.interval"),
            ("interval = \"500ms\"\n", "sender.interval"),
            ("interval = \"ten\"\n", "sender.interval"),
            ("settle = \"5m\"\n", "sender.settle"),
            ("max_delay = \"10m\"\n", "sender.max_delay"),
            (
                "max_delay = \"30s\"\ninterval = \"1m\"\n",
                "sender.interval",
            ),
            ("schedule = \"0 0-29 * * * *\"\n", "sender.schedule"),
            ("schedule = \"not cron\"\n", "sender.schedule"),
            (
                "schedule = \"*/5 * * * * *\"\ninterval = \"5s\"\n",
                "sender.interval",
            ),
            ("chunk_size = \"1KiB\"\n", "sender.chunk_size"),
            ("chunk_size = \"big\"\n", "sender.chunk_size"),
            (
                "chunk_size = \"64MiB\"\nmax_bundle_size = \"100MiB\"\n",
                "sender.max_bundle_size",
            ),
            ("exclude = [\"a[\"]\n", "sender.exclude"),
            ("id = \"has space\"\n", "sender.id"),
            ("mass_delete_share = 1.5\n", "sender.mass_delete_share"),
            ("peer_timeout = \"5m\"\n", "sender.peer_timeout"),
            ("peer_timeout = \"500ms\"\n", "sender.peer_timeout"),
            ("peer_timeout = \"soon\"\n", "sender.peer_timeout"),
            ("max_rate = \"100KiB\"\n", "sender.max_rate"),
            ("compress = \"fast\"\n", "sender.compress"),
        ] {
            let e = err(extra);
            assert!(e.contains(key), "{extra:?}: {e}");
        }
    }

    #[test]
    fn a_dense_cron_schedule_is_accepted() {
        let c = check("schedule = \"*/5 * * * * *\"\n").unwrap();
        assert!(matches!(c.sender.unwrap().schedule, Schedule::Cron(_)));
    }

    #[test]
    fn receiver_takes_a_list_with_one_or_matching_fingerprints() {
        let fp = crate::tls::Fingerprint::of(b"x").to_string();
        let two = "[sender]\nsource = \"s\"\nstate_dir = \"st\"\nreceiver = [\"10.0.0.2:7700\", \"10.0.0.3:7700\"]\nkey_dir = \"k\"\n";
        let one_pin = format!("{two}receiver_fingerprint = \"{fp}\"\n");
        let c = validate(parse(&one_pin).unwrap(), Path::new("/"))
            .unwrap()
            .sender
            .unwrap();
        assert_eq!(c.receivers.len(), 2);
        assert_eq!(c.tls.unwrap().receivers.len(), 2);
        let three = format!("{two}receiver_fingerprint = [\"{fp}\", \"{fp}\", \"{fp}\"]\n");
        let e = validate(parse(&three).unwrap(), Path::new("/")).unwrap_err();
        assert!(e.contains("3 fingerprints for 2 receivers"), "{e}");
        let dup = "[sender]\nsource = \"s\"\nstate_dir = \"st\"\nreceiver = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n";
        assert!(
            validate(parse(dup).unwrap(), Path::new("/"))
                .unwrap_err()
                .contains("twice")
        );
    }
}
