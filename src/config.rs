//! Configuration: TOML file -> raw structs (serde, unknown keys refused) ->
//! [`validate`] -> a [`Config`] the rest of shipper can trust.
//!
//! Reading the file is the only I/O here. Validation is pure and refuses any
//! setting that could keep a change from reaching the receiver within five
//! minutes; every error names the file and the key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::paths::{DEFAULT_EXCLUDES, Excludes};
use crate::schedule::Schedule;
use crate::tls::Fingerprint;

/// The promise shipper makes: every change is on the receiver within this.
pub const WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

// ---------------------------------------------------------------- raw form

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub sender: Option<RawSender>,
    pub receiver: Option<RawReceiver>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSender {
    pub source: PathBuf,
    pub receiver: OneOrMany,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    pub listen: String,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub staging_dir: Option<PathBuf>,
    pub archive_dir: PathBuf,
    pub archive_keep: Option<usize>,
    pub max_bundle_size: Option<String>,
    pub max_files_per_bundle: Option<usize>,
    pub max_file_size: Option<String>,
    pub max_unpacked_size: Option<String>,
    pub part_ttl: Option<String>,
    pub key_dir: Option<PathBuf>,
    pub allowed_senders: Option<Vec<String>>,
}

// ---------------------------------------------------------- validated form

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub sender: Option<SenderConfig>,
    pub receiver: Option<ReceiverConfig>,
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
}

#[derive(Debug, Clone)]
pub struct SenderTls {
    pub key_dir: PathBuf,
    /// The pinned fingerprint of each receiver, in the order of `receivers`.
    pub receivers: Vec<Fingerprint>,
}

#[derive(Debug, Clone)]
pub struct ReceiverTls {
    pub key_dir: PathBuf,
    pub allowed: Vec<Fingerprint>,
}

/// A bundle deleting at least `min` files and over `share` of what was
/// shipped is held until `shipper flush --allow-mass-delete`.
#[derive(Debug, Clone, Copy)]
pub struct MassDelete {
    pub share: f64,
    pub min: usize,
}

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub listen: String,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub staging_dir: Option<PathBuf>,
    pub archive_dir: PathBuf,
    pub archive_keep: usize,
    pub max_bundle_size: u64,
    /// Caps on what one bundle may ask of this receiver.
    pub limits: crate::bundle::apply::Limits,
    /// A part set no part was added to for this long is removed.
    pub part_ttl: Duration,
    /// Keys and the allowed senders; `None` only for plaintext on loopback.
    pub tls: Option<ReceiverTls>,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;
pub const DEFAULT_MAX_BUNDLE_SIZE: u64 = 256 << 20;
pub use crate::bundle::pack::MIN_CHUNK_SIZE;
pub const DEFAULT_ARCHIVE_KEEP: usize = 100;
/// Entries a sender puts in one bundle unless configured: well below what a
/// receiver accepts by default (`DEFAULT_RECEIVER_MAX_FILES`).
pub const DEFAULT_SENDER_MAX_FILES: usize = 10_000;
/// The outbox's budget unless configured (at most half the free space).
pub const DEFAULT_OUTBOX_MAX: u64 = 1 << 30;
/// Entries a receiver accepts in one bundle unless configured.
pub use crate::bundle::apply::DEFAULT_MAX_ENTRIES as DEFAULT_RECEIVER_MAX_FILES;
/// Long enough for TCP to ride out a few lost packets (its retransmissions
/// back off from 200 ms: five tries fit in 30 s), short enough that a dead
/// connection costs half a minute of the five-minute window.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// What a receiver accepts unless configured: well above the sender's default.
pub const DEFAULT_RECEIVER_MAX_BUNDLE_SIZE: u64 = 4 << 30;
/// How long a receiver keeps a part set no part is added to.
pub const DEFAULT_PART_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shorter, and a large file's parts would be dropped between the bundles
/// of one slow or briefly interrupted transfer.
pub const MIN_PART_TTL: Duration = Duration::from_secs(3600);

impl Config {
    /// Read and validate `file`. Relative paths in it are taken relative to
    /// the directory holding the file.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        let raw = parse(&text).map_err(|message| ConfigError {
            file: file.to_owned(),
            message,
        })?;
        let base = crate::durable::parent_of(file);
        validate(raw, base)
            .map_err(|message| ConfigError {
                file: file.to_owned(),
                message,
            })
            .map(|mut c| {
                c.file = file.to_owned();
                c
            })
    }
}

impl Config {
    /// Every directory of every role in this config, by key: with both
    /// roles in one config, a root inside the source would ship itself
    /// forever, so [`crate::places::check`] compares them all.
    pub fn dirs(&self) -> Vec<(&'static str, &Path)> {
        let mut dirs = Vec::new();
        if let Some(s) = &self.sender {
            dirs.extend(s.dirs());
        }
        if let Some(r) = &self.receiver {
            dirs.extend(r.dirs(r.staging_dir.as_deref()));
        }
        dirs
    }
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

impl ReceiverConfig {
    /// The receiver's directories, by key, with `staging` where it will be.
    pub fn dirs<'a>(&'a self, staging: Option<&'a Path>) -> Vec<(&'static str, &'a Path)> {
        let mut dirs = vec![
            ("receiver.root", self.root.as_path()),
            ("receiver.state_dir", self.state_dir.as_path()),
            ("receiver.archive_dir", self.archive_dir.as_path()),
        ];
        dirs.extend(staging.map(|s| ("receiver.staging_dir", s)));
        dirs
    }
}

/// Parse TOML text into the raw form. The message names the offending key.
pub fn parse(text: &str) -> Result<RawConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
}

/// Turn the raw form into a trusted [`Config`]. Pure: paths are joined to
/// `base` but not touched.
pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, String> {
    if raw.sender.is_none() && raw.receiver.is_none() {
        return Err("neither a [sender] nor a [receiver] table: nothing to run".into());
    }
    let sender = raw.sender.map(|s| validate_sender(s, base)).transpose()?;
    let receiver = raw
        .receiver
        .map(|r| validate_receiver(r, base))
        .transpose()?;
    Ok(Config {
        file: PathBuf::new(),
        sender,
        receiver,
    })
}

fn validate_sender(s: RawSender, base: &Path) -> Result<SenderConfig, String> {
    let settle = duration("sender.settle", s.settle.as_deref(), DEFAULT_SETTLE)?;
    let max_delay = duration("sender.max_delay", s.max_delay.as_deref(), WINDOW)?;
    if max_delay > WINDOW {
        return Err(format!(
            "sender.max_delay = {}: over the five-minute window ({})",
            fmt_dur(max_delay),
            fmt_dur(WINDOW)
        ));
    }
    if settle >= max_delay {
        return Err(format!(
            "sender.settle = {} is not below sender.max_delay = {}: a busy file could wait past the window",
            fmt_dur(settle),
            fmt_dur(max_delay)
        ));
    }
    let schedule = match (&s.interval, &s.schedule) {
        (Some(_), Some(_)) => {
            return Err("sender.interval and sender.schedule are both set: choose one".into());
        }
        (_, Some(expr)) => {
            let sched = Schedule::cron(expr).map_err(|e| {
                format!("sender.schedule = {expr:?}: not a cron expression with seconds: {e}")
            })?;
            let gap = sched
                .longest_gap(chrono::Utc::now(), Duration::from_secs(8 * 86400), 200_000)
                .ok_or_else(|| format!("sender.schedule = {expr:?}: never ticks"))?;
            if gap > max_delay {
                return Err(format!(
                    "sender.schedule = {expr:?}: ticks up to {} apart, over sender.max_delay = {}",
                    fmt_dur(gap),
                    fmt_dur(max_delay)
                ));
            }
            sched
        }
        (interval, None) => {
            let d = duration("sender.interval", interval.as_deref(), DEFAULT_INTERVAL)?;
            if d < MIN_INTERVAL || d > WINDOW {
                return Err(format!(
                    "sender.interval = {}: must be between 1s and 5m",
                    fmt_dur(d)
                ));
            }
            if d > max_delay {
                return Err(format!(
                    "sender.interval = {} is over sender.max_delay = {}",
                    fmt_dur(d),
                    fmt_dur(max_delay)
                ));
            }
            Schedule::Every(d)
        }
    };
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
    if max_bundle_size < 2 * chunk_size {
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
    if max_files_per_bundle < 2 {
        return Err(format!(
            "sender.max_files_per_bundle = {max_files_per_bundle}: at least 2"
        ));
    }
    let mut patterns: Vec<String> = if s.exclude_defaults.unwrap_or(true) {
        DEFAULT_EXCLUDES.iter().map(|p| p.to_string()).collect()
    } else {
        Vec::new()
    };
    patterns.extend(s.exclude.unwrap_or_default());
    let exclude =
        Excludes::new(&patterns).map_err(|e| format!("sender.exclude: bad pattern: {e}"))?;
    let receivers: Vec<String> = s
        .receiver
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
    if let Some(id) = &s.id
        && !crate::bundle::manifest::valid_sender_id(id)
    {
        return Err(format!(
            "sender.id = {id:?}: use 1-64 letters, digits, '-', '_' or '.'"
        ));
    }
    let share = s.mass_delete_share.unwrap_or(0.5);
    if !(share > 0.0 && share <= 1.0) {
        return Err(format!(
            "sender.mass_delete_share = {share}: must be above 0 and at most 1"
        ));
    }
    let mass_delete = MassDelete {
        share,
        min: s.mass_delete_min.unwrap_or(100),
    };
    let tls = match (s.key_dir, s.receiver_fingerprint) {
        (Some(dir), Some(fps)) => {
            let fps = fps.into_vec();
            let fps: Vec<String> = match fps.len() {
                // One fingerprint pins every receiver (they share a key pair).
                1 => vec![fps[0].clone(); receivers.len()],
                n if n == receivers.len() => fps,
                n => {
                    return Err(format!(
                        "sender.receiver_fingerprint lists {n} fingerprints for {} receivers: give one, or one per receiver in the same order",
                        receivers.len()
                    ));
                }
            };
            let pins = fps
                .iter()
                .map(|fp| {
                    fp.parse()
                        .map_err(|e| format!("sender.receiver_fingerprint = {fp:?}: {e}"))
                })
                .collect::<Result<Vec<Fingerprint>, String>>()?;
            Some(SenderTls {
                key_dir: base.join(dir),
                receivers: pins,
            })
        }
        (Some(_), None) => {
            return Err("sender.key_dir is set but sender.receiver_fingerprint is not: pin the receiver's fingerprint (printed by `shipper keygen` on the receiver)".into());
        }
        (None, Some(_)) => {
            return Err("sender.receiver_fingerprint is set but sender.key_dir is not: make keys with `shipper keygen --out DIR`".into());
        }
        (None, None) if let Some(remote) = receivers.iter().find(|r| !host_is_loopback(r)) => {
            return Err(format!(
                "sender.receiver = {remote:?} is not a loopback address, so keys are required: set sender.key_dir (made by `shipper keygen`) and sender.receiver_fingerprint"
            ));
        }
        (None, None) => None,
    };
    let metrics = s
        .metrics
        .as_deref()
        .map(|m| {
            m.trim().parse::<SocketAddr>().map_err(|_| {
                format!("sender.metrics = {m:?}: expected an address and port such as \"127.0.0.1:9700\"")
            })
        })
        .transpose()?;
    let peer_timeout = duration(
        "sender.peer_timeout",
        s.peer_timeout.as_deref(),
        DEFAULT_PEER_TIMEOUT,
    )?;
    let (min, max) = (
        crate::proto::MIN_PEER_TIMEOUT,
        crate::proto::MAX_PEER_TIMEOUT,
    );
    if peer_timeout < min || peer_timeout > max {
        return Err(format!(
            "sender.peer_timeout = {}: must be between {} (a receiver pings every {} while it applies) and {} (noticing a dead connection and re-sending must fit the five-minute window)",
            fmt_dur(peer_timeout),
            fmt_dur(min),
            fmt_dur(crate::proto::APPLY_PING),
            fmt_dur(max)
        ));
    }
    Ok(SenderConfig {
        peer_timeout,
        metrics,
        tls,
        mass_delete,
        source: base.join(&s.source),
        receivers,
        state_dir: base.join(&s.state_dir),
        id: s.id,
        schedule,
        settle,
        max_delay,
        exclude,
        chunk_size,
        max_bundle_size,
        max_files_per_bundle,
        outbox_max,
    })
}

fn validate_receiver(r: RawReceiver, base: &Path) -> Result<ReceiverConfig, String> {
    let listen = r.listen.trim().to_owned();
    let listen_addr = listen.parse::<SocketAddr>().map_err(|_| {
        format!(
            "receiver.listen = {listen:?}: expected an address and port such as \"0.0.0.0:7700\""
        )
    })?;
    let archive_keep = r.archive_keep.unwrap_or(DEFAULT_ARCHIVE_KEEP);
    let max_bundle_size = size(
        "receiver.max_bundle_size",
        r.max_bundle_size.as_deref(),
        DEFAULT_RECEIVER_MAX_BUNDLE_SIZE,
    )?;
    let root = base.join(&r.root);
    let state_dir = base.join(&r.state_dir);
    if state_dir.starts_with(&root) {
        return Err(
            "receiver.state_dir must not be inside receiver.root: readers of root would see it"
                .into(),
        );
    }
    let archive_dir = base.join(&r.archive_dir);
    if archive_dir.starts_with(&root) {
        return Err("receiver.archive_dir must not be inside receiver.root".into());
    }
    let staging_dir = r.staging_dir.map(|p| base.join(p));
    if let Some(s) = &staging_dir
        && s.starts_with(&root)
    {
        return Err("receiver.staging_dir must not be inside receiver.root".into());
    }
    let defaults = crate::bundle::apply::Limits::default();
    let limits = crate::bundle::apply::Limits {
        max_entries: r.max_files_per_bundle.unwrap_or(defaults.max_entries),
        max_file_size: size(
            "receiver.max_file_size",
            r.max_file_size.as_deref(),
            defaults.max_file_size,
        )?,
        max_unpacked: size(
            "receiver.max_unpacked_size",
            r.max_unpacked_size.as_deref(),
            defaults.max_unpacked,
        )?,
    };
    let part_ttl = duration("receiver.part_ttl", r.part_ttl.as_deref(), DEFAULT_PART_TTL)?;
    if part_ttl < MIN_PART_TTL {
        return Err(format!(
            "receiver.part_ttl = {}: at least {}, or the parts of a large file could be dropped between two of its bundles",
            fmt_dur(part_ttl),
            fmt_dur(MIN_PART_TTL)
        ));
    }
    let tls = match (r.key_dir, r.allowed_senders) {
        (Some(dir), Some(list)) => {
            if list.is_empty() {
                return Err("receiver.allowed_senders is empty: no sender could connect".into());
            }
            let allowed = list
                .iter()
                .map(|fp| {
                    fp.parse::<Fingerprint>()
                        .map_err(|e| format!("receiver.allowed_senders: {fp:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(ReceiverTls {
                key_dir: base.join(dir),
                allowed,
            })
        }
        (Some(_), None) => {
            return Err("receiver.key_dir is set but receiver.allowed_senders is not: list the senders' fingerprints".into());
        }
        (None, Some(_)) => {
            return Err("receiver.allowed_senders is set but receiver.key_dir is not: make keys with `shipper keygen --out DIR`".into());
        }
        (None, None) if !is_loopback(&listen_addr) => {
            return Err(format!(
                "receiver.listen = {listen:?} is not a loopback address, so keys are required: set receiver.key_dir (made by `shipper keygen`) and receiver.allowed_senders"
            ));
        }
        (None, None) => None,
    };
    Ok(ReceiverConfig {
        tls,
        limits,
        part_ttl,
        listen,
        root,
        state_dir,
        staging_dir,
        archive_dir,
        archive_keep,
        max_bundle_size,
    })
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v.trim())
            .map_err(|e| format!("{key} = {v:?}: not a duration such as \"10s\" or \"2m\": {e}")),
    }
}

fn size(key: &str, value: Option<&str>, default: u64) -> Result<u64, String> {
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| format!("{key} = {v:?}: not a size such as \"64MiB\": {e}")),
    }
}

fn check_host_port(key: &str, value: &str) -> Result<(), String> {
    let ok = match value.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{key} = {value:?}: expected \"host:port\""))
    }
}

/// True when the host of "host:port" is a loopback address or `localhost`.
/// Any other name may resolve anywhere, so it counts as remote.
pub fn host_is_loopback(host_port: &str) -> bool {
    let Some((host, _)) = host_port.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// True when every address `value` names is a loopback address.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback(),
    }
}

pub fn fmt_dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(s.exclude.is_excluded("a/.b.swp"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("colour = \"blue\"\n");
        assert!(e.contains("colour"), "{e}");
        let e = parse("[sendr]\n").unwrap_err();
        assert!(e.contains("sendr"), "{e}");
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
    fn missing_required_key_is_named() {
        let e = parse("[sender]\nsource = \"a\"\n").unwrap_err();
        assert!(e.contains("receiver"), "{e}");
    }

    #[test]
    fn receiver_checks_listen_and_nesting() {
        let base = "[receiver]\nroot = \"www\"\nstate_dir = \"st\"\narchive_dir = \"ar\"\n";
        let ok = validate(
            parse(&format!("{base}listen = \"127.0.0.1:0\"\n")).unwrap(),
            Path::new("/b"),
        )
        .unwrap();
        let ok = ok.receiver.unwrap();
        assert_eq!(ok.archive_keep, DEFAULT_ARCHIVE_KEEP);
        assert_eq!(ok.part_ttl, DEFAULT_PART_TTL);
        let e = validate(
            parse(&format!(
                "{base}listen = \"127.0.0.1:0\"\npart_ttl = \"10m\"\n"
            ))
            .unwrap(),
            Path::new("/b"),
        )
        .unwrap_err();
        assert!(e.contains("receiver.part_ttl"), "{e}");
        let e = validate(
            parse(&format!("{base}listen = \"nowhere\"\n")).unwrap(),
            Path::new("/b"),
        )
        .unwrap_err();
        assert!(e.contains("receiver.listen"), "{e}");
        let nested = "[receiver]\nroot = \"www\"\nstate_dir = \"www/st\"\narchive_dir = \"ar\"\nlisten = \"127.0.0.1:1\"\n";
        let e = validate(parse(nested).unwrap(), Path::new("/b")).unwrap_err();
        assert!(e.contains("receiver.state_dir"), "{e}");
    }

    #[test]
    fn remote_addresses_require_keys_and_keys_come_in_pairs() {
        let remote = "[sender]\nsource = \"s\"\nreceiver = \"10.1.2.3:7700\"\nstate_dir = \"st\"\n";
        let e = validate(parse(remote).unwrap(), Path::new("/")).unwrap_err();
        assert!(
            e.contains("sender.key_dir") && e.contains("not a loopback"),
            "{e}"
        );
        let named = remote.replace("10.1.2.3", "web1.example");
        assert!(validate(parse(&named).unwrap(), Path::new("/")).is_err());
        let local = remote.replace("10.1.2.3", "localhost");
        assert!(validate(parse(&local).unwrap(), Path::new("/")).is_ok());
        let half = format!("{remote}key_dir = \"k\"\n");
        let e = validate(parse(&half).unwrap(), Path::new("/")).unwrap_err();
        assert!(e.contains("sender.receiver_fingerprint"), "{e}");
        let fp = crate::tls::Fingerprint::of(b"x").to_string();
        let full = format!("{half}receiver_fingerprint = \"{fp}\"\n");
        let c = validate(parse(&full).unwrap(), Path::new("/")).unwrap();
        assert_eq!(c.sender.unwrap().tls.unwrap().receivers[0].to_string(), fp);
        let typo = full.replace(&fp[..3], "AAA");
        let e = validate(parse(&typo).unwrap(), Path::new("/")).unwrap_err();
        assert!(e.contains("sender.receiver_fingerprint"), "{e}");

        let recv = "[receiver]\nlisten = \"0.0.0.0:7700\"\nroot = \"w\"\nstate_dir = \"st\"\narchive_dir = \"a\"\n";
        let e = validate(parse(recv).unwrap(), Path::new("/")).unwrap_err();
        assert!(
            e.contains("receiver.key_dir") && e.contains("not a loopback"),
            "{e}"
        );
        let e = validate(
            parse(&format!("{recv}key_dir = \"k\"\nallowed_senders = []\n")).unwrap(),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.contains("receiver.allowed_senders"), "{e}");
    }

    /// The keys a table accepts, as serde lists them for an unknown key.
    fn accepted_keys(table: &str) -> std::collections::BTreeSet<String> {
        let e = parse(&format!("[{table}]\nzz_not_a_key = 1\n")).unwrap_err();
        let list = e
            .split("expected one of")
            .nth(1)
            .unwrap_or_else(|| panic!("{e}"));
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// The keys the README's reference documents under `### \`[table]\``.
    fn documented_keys(table: &str) -> std::collections::BTreeSet<String> {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let heading = format!("### `[{table}]`");
        let section = readme.split(&heading).nth(1).expect("section in README");
        let section = section.split("\n#").next().unwrap_or_default();
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_readme_config_reference_matches_the_config_types() {
        for table in ["sender", "receiver"] {
            assert!(
                accepted_keys(table).len() >= 6,
                "{:?}",
                accepted_keys(table)
            );
            assert_eq!(
                documented_keys(table),
                accepted_keys(table),
                "README's [{table}] reference and the config type disagree"
            );
        }
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

    #[test]
    fn an_empty_config_is_refused() {
        let e = validate(parse("").unwrap(), Path::new("/")).unwrap_err();
        assert!(e.contains("nothing to run"), "{e}");
    }
}
