//! Configuration: TOML file -> raw structs (serde, unknown keys refused) ->
//! [`validate`] -> a [`Config`] the rest of shipper can trust.
//!
//! Reading the file ([`Config::load`]) is the only I/O here. Validation
//! refuses any setting that could keep a change from reaching the receiver
//! within five minutes ([`WINDOW`]); every error names the file and the key.
//! It touches no file and resolves no name, but reads the wall clock once:
//! a cron schedule's gaps are measured from now.
//!
//! - `sender`: the `[sender]` table, raw and validated.
//! - `receiver`: the `[receiver]` table, raw and validated.
//! - `bucket`: the bucket keys both tables take.
//! - `timing`: settle, max_delay, interval or schedule, peer timeout:
//!   the sender's keys bound by [`WINDOW`].
//! - `values`: durations, sizes and addresses as keys take them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

mod bucket;
mod receiver;
mod sender;
mod timing;
mod values;

pub use crate::bucket::settings::{BucketConfig, Credentials};
pub use bucket::DEFAULT_BUCKET_REGION;
pub use receiver::{
    DEFAULT_ARCHIVE_KEEP, DEFAULT_BUCKET_POLL, DEFAULT_PART_TTL, DEFAULT_RECEIVER_MAX_BUNDLE_SIZE,
    DEFAULT_RECEIVER_MAX_FILES, MAX_BUCKET_POLL, MIN_PART_TTL, PublishMode, RawReceiver,
    ReceiverConfig, ReceiverTls,
};
pub use sender::{
    Compress, DEFAULT_CHUNK_SIZE, DEFAULT_MASS_DELETE_MIN, DEFAULT_MASS_DELETE_SHARE,
    DEFAULT_MAX_BUNDLE_SIZE, DEFAULT_OUTBOX_MAX, DEFAULT_SENDER_MAX_FILES, MIN_CHUNK_SIZE,
    MIN_CHUNKS_PER_BUNDLE, MIN_SENDER_MAX_FILES, MassDelete, OneOrMany, RawSender, SenderConfig,
    SenderTls,
};
pub use timing::{DEFAULT_INTERVAL, DEFAULT_PEER_TIMEOUT, DEFAULT_SETTLE, MIN_INTERVAL, WINDOW};
pub use values::{fmt_dur, host_is_loopback, is_loopback};

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub sender: Option<RawSender>,
    pub receiver: Option<RawReceiver>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub sender: Option<SenderConfig>,
    pub receiver: Option<ReceiverConfig>,
}

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

/// Parse TOML text into the raw form. The message names the offending key.
pub fn parse(text: &str) -> Result<RawConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
}

/// Turn the raw form into a trusted [`Config`]. Paths are joined to `base`
/// but not touched; a cron schedule is checked from the current time.
pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, String> {
    if raw.sender.is_none() && raw.receiver.is_none() {
        return Err("neither a [sender] nor a [receiver] table: nothing to run".into());
    }
    let sender = raw.sender.map(|s| sender::validate(s, base)).transpose()?;
    let receiver = raw
        .receiver
        .map(|r| receiver::validate(r, base))
        .transpose()?;
    Ok(Config {
        file: PathBuf::new(),
        sender,
        receiver,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let sender =
            "[sender]\nsource = \"src\"\nreceiver = \"127.0.0.1:7700\"\nstate_dir = \"state\"\n";
        let e = parse(&format!("{sender}colour = \"blue\"\n")).unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse("[sendr]\n").unwrap_err();
        assert!(e.contains("sendr"), "{e}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let e = parse("[sender]\nsource = \"a\"\n").unwrap_err();
        assert!(e.contains("state_dir"), "{e}");
        // Neither a receiver nor a bucket: nowhere to ship to.
        let raw = parse("[sender]\nsource = \"a\"\nstate_dir = \"s\"\n").unwrap();
        let e = validate(raw, Path::new("/")).unwrap_err();
        assert!(
            e.contains("sender.receiver is missing") && e.contains("sender.bucket"),
            "{e}"
        );
    }

    #[test]
    fn bases_default_to_a_day_and_two_kept_and_need_a_bucket() {
        let local = "[sender]\nsource = \"s\"\nreceiver = \"127.0.0.1:7700\"\nstate_dir = \"st\"\n";
        let checked = |text: &str| validate(parse(text).unwrap(), Path::new("/"));
        let e = checked(&format!("{local}bucket_keep = 3\n")).unwrap_err();
        assert_eq!(e, "sender.bucket_keep is set but sender.bucket is not");
        let e = checked(&format!("{local}bucket_base_every = \"1h\"\n")).unwrap_err();
        assert_eq!(
            e,
            "sender.bucket_base_every is set but sender.bucket is not"
        );
        let bucket = format!(
            "{local}key_dir = \"k\"\nreceiver_fingerprint = \"{}\"\nbucket = \"s3://site/www\"\n",
            crate::tls::Fingerprint::of(b"x")
        );
        let c = checked(&bucket).unwrap().sender.unwrap();
        assert_eq!(c.bucket_bases, crate::bucket::settings::Bases::default());
        assert_eq!(
            (c.bucket_bases.every, c.bucket_bases.keep),
            (std::time::Duration::from_secs(86_400), 2)
        );
        let set = checked(&format!(
            "{bucket}bucket_base_every = \"6h\"\nbucket_keep = 3\n"
        ));
        let b = set.unwrap().sender.unwrap().bucket_bases;
        assert_eq!(
            (b.every, b.keep),
            (std::time::Duration::from_secs(6 * 3600), 3)
        );
        let e = checked(&format!("{bucket}bucket_keep = 1\n")).unwrap_err();
        assert!(e.starts_with("sender.bucket_keep = 1: at least 2"), "{e}");
        let e = checked(&format!("{bucket}bucket_base_every = \"10ms\"\n")).unwrap_err();
        assert!(e.starts_with("sender.bucket_base_every = \"10ms\""), "{e}");
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
    fn an_empty_config_is_refused() {
        let e = validate(parse("").unwrap(), Path::new("/")).unwrap_err();
        assert!(e.contains("nothing to run"), "{e}");
    }
}
