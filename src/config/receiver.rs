//! The `[receiver]` table: its raw form as written, the [`ReceiverConfig`]
//! the receiver runs on, and the validation between them, one step per
//! concern (listen address, directories, limits, part TTL, hook, keys,
//! metrics). Each
//! error names the key. Pure: paths are joined to the config's directory,
//! never touched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::bucket::RawBucket;
use super::values::{duration, fmt_dur, is_loopback, metrics_addr, size};
use crate::bucket::settings::BucketConfig;
use crate::bundle::apply::Limits;
use crate::hook::Hook;
use crate::perms::{DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, Group, ModeRule, Policy};
use crate::tls::Fingerprint;

/// Applied bundles kept in `receiver.archive_dir` unless configured.
pub const DEFAULT_ARCHIVE_KEEP: usize = 100;
/// How many of each sender's last bundles `shipper rollback` can undo.
pub const DEFAULT_ROLLBACK_KEEP: usize = 10;
/// How many snapshots of the tree `publish = "tree"` keeps.
pub const DEFAULT_TREE_KEEP: usize = 3;

/// `receiver.publish`: how a bundle's files become visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    /// Each file by its own rename into root.
    File,
    /// The whole bundle at once: root is a symlink to a snapshot of the
    /// tree, replaced by one to the next snapshot (see `receiver::trees`).
    Tree { keep: usize },
}

fn publish_mode(value: Option<&str>, keep: Option<usize>) -> Result<PublishMode, String> {
    let keep = keep.unwrap_or(DEFAULT_TREE_KEEP);
    match value {
        None | Some("file") => Ok(PublishMode::File),
        Some("tree") if keep >= 2 => Ok(PublishMode::Tree { keep }),
        Some("tree") => Err(format!(
            "receiver.tree_keep = {keep}: at least 2 (the snapshot root points at and the one before it, which readers may still be in)"
        )),
        Some(other) => Err(format!(
            "receiver.publish = {other:?}: must be \"file\" (the default: each file renamed into root) or \"tree\" (root a symlink to a snapshot, replaced after each bundle)"
        )),
    }
}
/// Entries a receiver accepts in one bundle unless configured.
pub use crate::bundle::apply::DEFAULT_MAX_ENTRIES as DEFAULT_RECEIVER_MAX_FILES;
/// What a receiver accepts unless configured: well above the sender's default.
pub const DEFAULT_RECEIVER_MAX_BUNDLE_SIZE: u64 = 4 << 30;
/// How long a receiver keeps a part set no part is added to.
pub const DEFAULT_PART_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shorter, and a large file's parts would be dropped between the bundles
/// of one slow or briefly interrupted transfer.
pub const MIN_PART_TTL: Duration = Duration::from_secs(3600);
/// How long the `on_apply` hook may run unless configured.
pub const DEFAULT_ON_APPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `on_apply_timeout`: the acknowledgement waits for the hook,
/// and the sender gives up on one after 120 s (its least ack limit), so a
/// hook can never make a sender drop the connection and re-send.
pub const MAX_ON_APPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    pub listen: String,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub staging_dir: Option<PathBuf>,
    pub archive_dir: PathBuf,
    pub archive_keep: Option<usize>,
    pub rollback_keep: Option<usize>,
    pub publish: Option<String>,
    pub tree_keep: Option<usize>,
    pub max_bundle_size: Option<String>,
    pub max_files_per_bundle: Option<usize>,
    pub max_file_size: Option<String>,
    pub max_unpacked_size: Option<String>,
    pub part_ttl: Option<String>,
    pub on_apply: Option<Vec<String>>,
    pub on_apply_timeout: Option<String>,
    pub key_dir: Option<PathBuf>,
    pub allowed_senders: Option<Vec<String>>,
    pub metrics: Option<String>,
    pub file_mode: Option<String>,
    pub dir_mode: Option<String>,
    pub group: Option<String>,
    pub bucket: Option<String>,
    pub bucket_endpoint: Option<String>,
    pub bucket_region: Option<String>,
    pub bucket_credentials: Option<PathBuf>,
    pub bucket_poll: Option<String>,
}

/// How often a receiver looks in its bucket unless configured.
pub const DEFAULT_BUCKET_POLL: Duration = Duration::from_secs(1);
/// The longest `bucket_poll`: a sender with a bucket keeps its own delays
/// this much inside the five minutes (see the sender's `bucket` check).
pub const MAX_BUCKET_POLL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub listen: String,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub staging_dir: Option<PathBuf>,
    pub archive_dir: PathBuf,
    pub archive_keep: usize,
    /// How many of each sender's last bundles keep what they replaced and
    /// deleted, for `shipper rollback` (0: none).
    pub rollback_keep: usize,
    /// How a bundle's files become visible in root.
    pub publish: PublishMode,
    pub max_bundle_size: u64,
    /// Caps on what one bundle may ask of this receiver.
    pub limits: Limits,
    /// A part set no part was added to for this long is removed.
    pub part_ttl: Duration,
    /// The command run after each applied bundle, program path joined to
    /// the config's directory (that it exists is checked at start).
    pub on_apply: Option<Hook>,
    /// Keys and the allowed senders; `None` only for plaintext on loopback.
    pub tls: Option<ReceiverTls>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// `receiver.file_mode` and `dir_mode`, parsed.
    pub file_mode: ModeRule,
    pub dir_mode: ModeRule,
    /// `receiver.group` as written: looked up by [`ReceiverConfig::policy`]
    /// when the receiver starts (NSS is I/O; validation is pure).
    pub group: Option<String>,
    /// Where bundles are also taken from, and how often it is looked at.
    pub bucket: Option<BucketConfig>,
    pub bucket_poll: Duration,
}

#[derive(Debug, Clone)]
pub struct ReceiverTls {
    pub key_dir: PathBuf,
    pub allowed: Vec<Fingerprint>,
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

    /// The permission policy, its group looked up and checked usable by
    /// this process. Blocking (NSS); the error names the key.
    pub fn policy(&self) -> Result<Policy, String> {
        let group = match &self.group {
            Some(name) => Some(Group::resolve("receiver.group", name)?),
            None => None,
        };
        Ok(Policy {
            file: self.file_mode,
            dir: self.dir_mode,
            group,
        })
    }
}

/// Turn the raw `[receiver]` table into a [`ReceiverConfig`]; paths are
/// joined to `base`. The steps check the keys in the order they always were, so
/// a config with several errors still reports the same one first.
pub(super) fn validate(r: RawReceiver, base: &Path) -> Result<ReceiverConfig, String> {
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
    let publish = publish_mode(r.publish.as_deref(), r.tree_keep)?;
    let dirs = dirs(&r, base)?;
    let limits = limits(&r)?;
    let part_ttl = part_ttl(r.part_ttl.as_deref())?;
    let (file_mode, dir_mode) = modes(&r)?;
    let group = group(r.group.as_deref())?;
    let keys = r.key_dir.is_some() && r.allowed_senders.is_some();
    let (bucket, bucket_poll) = bucket(&r, keys, base)?;
    let on_apply = on_apply(r.on_apply, r.on_apply_timeout.as_deref(), base)?;
    let tls = tls(r.key_dir, r.allowed_senders, &listen, &listen_addr, base)?;
    let metrics = metrics_addr("receiver.metrics", r.metrics.as_deref(), "127.0.0.1:9701")?;
    Ok(ReceiverConfig {
        bucket,
        bucket_poll,
        file_mode,
        dir_mode,
        group,
        tls,
        metrics,
        limits,
        part_ttl,
        on_apply,
        listen,
        root: dirs.root,
        state_dir: dirs.state_dir,
        staging_dir: dirs.staging_dir,
        archive_dir: dirs.archive_dir,
        archive_keep,
        rollback_keep: r.rollback_keep.unwrap_or(DEFAULT_ROLLBACK_KEEP),
        publish,
        max_bundle_size,
    })
}

/// The bucket bundles are also taken from, and how often it is looked
/// at. A bucket is not trusted: only with keys can a receiver tell a
/// sender's bundles from anyone else's there.
fn bucket(
    r: &RawReceiver,
    keys: bool,
    base: &Path,
) -> Result<(Option<BucketConfig>, Duration), String> {
    let raw = RawBucket {
        table: "receiver",
        bucket: r.bucket.as_deref(),
        endpoint: r.bucket_endpoint.as_deref(),
        region: r.bucket_region.as_deref(),
        credentials: r.bucket_credentials.as_deref(),
    };
    let b = super::bucket::validate(raw, base)?;
    let poll = duration(
        "receiver.bucket_poll",
        r.bucket_poll.as_deref(),
        DEFAULT_BUCKET_POLL,
    )?;
    if b.is_none() && r.bucket_poll.is_some() {
        return Err("receiver.bucket_poll is set but receiver.bucket is not".into());
    }
    if poll.is_zero() || poll > MAX_BUCKET_POLL {
        return Err(format!(
            "receiver.bucket_poll = {:?}: between 1ms and {} (a change must be visible within five minutes)",
            r.bucket_poll.as_deref().unwrap_or_default(),
            fmt_dur(MAX_BUCKET_POLL)
        ));
    }
    if b.is_some() && !keys {
        return Err("receiver.bucket needs receiver.key_dir and receiver.allowed_senders: anyone who can write the bucket could publish into root otherwise (each bundle there is sealed with its sender's key)".into());
    }
    Ok((b, poll))
}

/// The receiver's directories, joined to the config's directory.
#[derive(Debug)]
struct Dirs {
    root: PathBuf,
    state_dir: PathBuf,
    archive_dir: PathBuf,
    staging_dir: Option<PathBuf>,
}

/// The directories, none of shipper's own inside `receiver.root` as
/// written (where they really are is [`crate::places::check`]'s business).
fn dirs(r: &RawReceiver, base: &Path) -> Result<Dirs, String> {
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
    let staging_dir = r.staging_dir.as_ref().map(|p| base.join(p));
    if let Some(s) = &staging_dir
        && s.starts_with(&root)
    {
        return Err("receiver.staging_dir must not be inside receiver.root".into());
    }
    Ok(Dirs {
        root,
        state_dir,
        archive_dir,
        staging_dir,
    })
}

/// What one bundle may ask of this receiver, each cap defaulting to
/// [`Limits::default`].
fn limits(r: &RawReceiver) -> Result<Limits, String> {
    let defaults = Limits::default();
    Ok(Limits {
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
    })
}

/// `receiver.file_mode` and `receiver.dir_mode`, defaulting to a tree
/// any web server can read.
fn modes(r: &RawReceiver) -> Result<(ModeRule, ModeRule), String> {
    let rule = |key: &str, value: Option<&str>, default: u32| match value {
        Some(v) => ModeRule::parse(key, v),
        None => Ok(ModeRule::Fixed(default)),
    };
    Ok((
        rule(
            "receiver.file_mode",
            r.file_mode.as_deref(),
            DEFAULT_FILE_MODE,
        )?,
        rule("receiver.dir_mode", r.dir_mode.as_deref(), DEFAULT_DIR_MODE)?,
    ))
}

/// `receiver.group`: a name or a gid, not empty. Whether it exists and
/// shipper may use it is [`ReceiverConfig::policy`]'s to check.
fn group(value: Option<&str>) -> Result<Option<String>, String> {
    match value.map(str::trim) {
        Some("") => {
            Err("receiver.group is empty: name a group (e.g. \"www-data\") or leave it out".into())
        }
        v => Ok(v.map(str::to_owned)),
    }
}

fn part_ttl(value: Option<&str>) -> Result<Duration, String> {
    let part_ttl = duration("receiver.part_ttl", value, DEFAULT_PART_TTL)?;
    if part_ttl < MIN_PART_TTL {
        return Err(format!(
            "receiver.part_ttl = {}: at least {}, or the parts of a large file could be dropped between two of its bundles",
            fmt_dur(part_ttl),
            fmt_dur(MIN_PART_TTL)
        ));
    }
    Ok(part_ttl)
}

/// `receiver.on_apply` and its timeout: a program and its arguments, the
/// program's path joined to `base`; the timeout under
/// [`MAX_ON_APPLY_TIMEOUT`].
fn on_apply(
    argv: Option<Vec<String>>,
    timeout: Option<&str>,
    base: &Path,
) -> Result<Option<Hook>, String> {
    let Some(mut argv) = argv else {
        return match timeout {
            Some(_) => Err("receiver.on_apply_timeout is set but receiver.on_apply is not".into()),
            None => Ok(None),
        };
    };
    match argv.first() {
        Some(program) if !program.trim().is_empty() => {
            argv[0] = base.join(program).to_string_lossy().into_owned();
        }
        _ => {
            return Err("receiver.on_apply: give the program's path first, then its arguments, e.g. [\"/usr/local/bin/purge-cache\", \"--site\", \"www\"]".into());
        }
    }
    let timeout = duration(
        "receiver.on_apply_timeout",
        timeout,
        DEFAULT_ON_APPLY_TIMEOUT,
    )?;
    if timeout.is_zero() || timeout > MAX_ON_APPLY_TIMEOUT {
        return Err(format!(
            "receiver.on_apply_timeout = {}: more than 0s and at most {}, or a slow hook would keep senders from their acknowledgements",
            fmt_dur(timeout),
            fmt_dur(MAX_ON_APPLY_TIMEOUT)
        ));
    }
    Ok(Some(Hook { argv, timeout }))
}

/// `receiver.key_dir` and `receiver.allowed_senders`, both or neither;
/// neither only when listening on loopback.
fn tls(
    key_dir: Option<PathBuf>,
    allowed_senders: Option<Vec<String>>,
    listen: &str,
    listen_addr: &SocketAddr,
    base: &Path,
) -> Result<Option<ReceiverTls>, String> {
    match (key_dir, allowed_senders) {
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
            Ok(Some(ReceiverTls {
                key_dir: base.join(dir),
                allowed,
            }))
        }
        (Some(_), None) => {
            Err("receiver.key_dir is set but receiver.allowed_senders is not: list the senders' fingerprints".into())
        }
        (None, Some(_)) => {
            Err("receiver.allowed_senders is set but receiver.key_dir is not: make keys with `shipper keygen --out DIR`".into())
        }
        (None, None) if !is_loopback(listen_addr) => Err(format!(
            "receiver.listen = {listen:?} is not a loopback address, so keys are required: set receiver.key_dir (made by `shipper keygen`) and receiver.allowed_senders"
        )),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, validate};

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
        assert_eq!(ok.rollback_keep, DEFAULT_ROLLBACK_KEEP);
        assert_eq!(ok.publish, PublishMode::File);
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
        let e = validate(
            parse(&format!(
                "{base}listen = \"127.0.0.1:0\"\nmetrics = \"9701\"\n"
            ))
            .unwrap(),
            Path::new("/b"),
        )
        .unwrap_err();
        assert!(e.starts_with("receiver.metrics = \"9701\""), "{e}");
        let nested = "[receiver]\nroot = \"www\"\nstate_dir = \"www/st\"\narchive_dir = \"ar\"\nlisten = \"127.0.0.1:1\"\n";
        let e = validate(parse(nested).unwrap(), Path::new("/b")).unwrap_err();
        assert!(e.contains("receiver.state_dir"), "{e}");
    }

    fn raw(extra: &str) -> RawReceiver {
        let text = format!(
            "listen = \"127.0.0.1:1\"\nroot = \"www\"\nstate_dir = \"st\"\narchive_dir = \"ar\"\n{extra}"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn publish_is_file_or_tree_keeping_at_least_two_snapshots() {
        assert_eq!(publish_mode(None, None), Ok(PublishMode::File));
        assert_eq!(
            publish_mode(Some("tree"), None),
            Ok(PublishMode::Tree {
                keep: DEFAULT_TREE_KEEP
            })
        );
        assert_eq!(
            publish_mode(Some("tree"), Some(5)),
            Ok(PublishMode::Tree { keep: 5 })
        );
        let e = publish_mode(Some("tree"), Some(1)).unwrap_err();
        assert!(e.starts_with("receiver.tree_keep = 1: at least 2"), "{e}");
        let e = publish_mode(Some("atomic"), None).unwrap_err();
        assert!(e.starts_with("receiver.publish = \"atomic\""), "{e}");
    }

    #[test]
    fn none_of_shippers_directories_may_lie_inside_root_as_written() {
        let d = dirs(&raw(""), Path::new("/b")).unwrap();
        assert_eq!(d.root, Path::new("/b/www"));
        assert_eq!(d.staging_dir, None);
        let e = dirs(&raw("staging_dir = \"www/.stage\"\n"), Path::new("/b")).unwrap_err();
        assert!(e.starts_with("receiver.staging_dir"), "{e}");
        let r = RawReceiver {
            archive_dir: PathBuf::from("/b/www/old"),
            ..raw("")
        };
        let e = dirs(&r, Path::new("/b")).unwrap_err();
        assert!(e.starts_with("receiver.archive_dir"), "{e}");
    }

    #[test]
    fn the_hook_takes_a_program_path_and_a_bounded_timeout() {
        let base = Path::new("/etc/shipper");
        assert_eq!(on_apply(None, None, base), Ok(None));
        let argv = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        let h = on_apply(argv(&["purge.sh", "--site", "www"]), None, base)
            .unwrap()
            .unwrap();
        assert_eq!(h.argv, ["/etc/shipper/purge.sh", "--site", "www"]);
        assert_eq!(h.timeout, DEFAULT_ON_APPLY_TIMEOUT);
        let h = on_apply(argv(&["/usr/bin/purge"]), Some("5s"), base)
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.argv[0].as_str(), h.timeout),
            ("/usr/bin/purge", Duration::from_secs(5))
        );
        for bad in [argv(&[]), argv(&[" "])] {
            let e = on_apply(bad, None, base).unwrap_err();
            assert!(e.starts_with("receiver.on_apply:"), "{e}");
        }
        for t in ["0s", "61s", "5m", "soon"] {
            let e = on_apply(argv(&["/usr/bin/purge"]), Some(t), base).unwrap_err();
            assert!(e.starts_with("receiver.on_apply_timeout"), "{t}: {e}");
        }
        let e = on_apply(None, Some("5s"), base).unwrap_err();
        assert!(e.starts_with("receiver.on_apply_timeout"), "{e}");
    }

    #[test]
    fn limits_default_to_the_bundle_limits_and_name_their_key() {
        let d = Limits::default();
        let l = limits(&raw("")).unwrap();
        assert_eq!(
            (l.max_entries, l.max_file_size, l.max_unpacked),
            (d.max_entries, d.max_file_size, d.max_unpacked)
        );
        let l = limits(&raw("max_files_per_bundle = 5\nmax_file_size = \"1MiB\"\n")).unwrap();
        assert_eq!((l.max_entries, l.max_file_size), (5, 1 << 20));
        let e = limits(&raw("max_unpacked_size = \"lots\"\n")).unwrap_err();
        assert!(e.starts_with("receiver.max_unpacked_size"), "{e}");
    }

    #[test]
    fn modes_default_to_a_tree_the_web_server_reads_and_bad_ones_name_their_key() {
        assert_eq!(
            modes(&raw("")).unwrap(),
            (ModeRule::Fixed(0o644), ModeRule::Fixed(0o755))
        );
        let m = modes(&raw("file_mode = \"mirror\"\ndir_mode = \"0750\"\n")).unwrap();
        assert_eq!(m, (ModeRule::Mirror, ModeRule::Fixed(0o750)));
        let e = modes(&raw("dir_mode = \"4755\"\n")).unwrap_err();
        assert!(e.starts_with("receiver.dir_mode"), "{e}");
        let e = group(Some(" ")).unwrap_err();
        assert!(e.starts_with("receiver.group"), "{e}");
    }
}
