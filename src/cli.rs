//! The command line: one binary, subcommands for each role and tool.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "shipper",
    version,
    about = "Keep a directory in step with another host by shipping zip bundles over TCP"
)]
pub struct Cli {
    /// Log lines as human text (coloured on a terminal) or as JSON objects.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in the config: `[sender]`, `[receiver]`, or both.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Make the running sender cut a bundle now and wait for its acknowledgement.
    Flush {
        #[arg(short, long)]
        config: PathBuf,
        /// How long to wait for the receiver's acknowledgement.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Also ship deletions held back by the mass-deletion guard.
        #[arg(long)]
        allow_mass_delete: bool,
    },
    /// Apply archived bundles to a root, in sequence order.
    Replay {
        #[command(flatten)]
        target: ReplayTarget,
        /// Run the config's receiver.on_apply after each bundle, as the
        /// receiver does (not run otherwise).
        #[arg(long)]
        hooks: bool,
        /// Take the bundles from the config's receiver.bucket instead of
        /// files: each sealed by one of its allowed_senders and checked
        /// against its seal.
        #[arg(long, requires = "config", conflicts_with = "bundles")]
        from_bucket: bool,
        /// With --from-bucket: the first sequence to take (default: the
        /// first there).
        #[arg(long, requires = "from_bucket")]
        first: Option<u64>,
        /// With --from-bucket: the last sequence to take (default: the
        /// newest there).
        #[arg(long, requires = "from_bucket")]
        last: Option<u64>,
        /// Bundle files, in any order.
        #[arg(required_unless_present = "from_bucket")]
        bundles: Vec<PathBuf>,
    },
    /// Show the running sender's state and each receiver's health.
    Status {
        #[arg(short, long)]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Compare the source with each receiver's root by content hash; exit 0
    /// when every root is in step, 1 when one drifts, 2 on error.
    Verify {
        #[arg(short, long)]
        config: PathBuf,
        /// Ship again what is missing or different in a root, and wait for
        /// its acknowledgement.
        #[arg(long)]
        repair: bool,
        /// With --repair (implied): also delete the extras, files in root
        /// that the source does not have (and does not exclude).
        #[arg(long)]
        delete_extra: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop cutting bundles; changes keep accumulating (survives restarts).
    Pause {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Cut bundles again after `shipper pause`.
    Resume {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// On a receiver: put root back to right after an earlier bundle of a
    /// sender and hold that sender's bundles, or take them again.
    Rollback {
        #[arg(short, long)]
        config: PathBuf,
        /// The sequence to go back to (see the receiver's log or `shipper
        /// inspect` of its archive); refused beyond `rollback_keep`.
        #[arg(long, required_unless_present = "release", conflicts_with = "release")]
        to: Option<u64>,
        /// Take the held sender's bundles again; it then compares its
        /// source with root and ships the difference.
        #[arg(long)]
        release: bool,
        /// The sender (its fingerprint, or its id without keys), when
        /// several ship to this receiver.
        #[arg(long)]
        sender: Option<String>,
    },
    /// Print a bundle's manifest.
    Inspect { bundle: PathBuf },
    /// Print the man page (roff) to standard output.
    Man,
    /// Print shell completions to standard output.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Make a key pair for mutual TLS in DIR and print its fingerprint.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct ReplayTarget {
    /// Use the `[receiver]` table of this config (root, staging, state,
    /// limits); refused while a receiver runs with its state_dir.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// Apply into this directory instead (with --config, under that
    /// config's limits, its root and state untouched).
    #[arg(long)]
    pub root: Option<PathBuf>,
}
