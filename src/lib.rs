//! shipper keeps a directory on one host in step with a directory on another
//! by shipping its changes in periodic zip bundles over TCP.
//!
//! # Layout
//! In the order data flows, from a file event to an applied bundle:
//! - [`watch`]: notify events -> [`watch::WatchMsg`]; tree walks; the
//!   [`watch::Sentinel`] that follows the source by its path.
//! - [`stamp`]: the stat fields that say a file changed.
//! - [`changes`]: the change set: coalescing, settle, max_delay. Pure.
//! - [`schedule`]: interval or cron ticks. Pure.
//! - [`source_dir`]: reading below the source, never through a symlink.
//! - [`hash`]: BLAKE3 of a file or a reader, through a buffer sized to it;
//!   when a hash is spread over the cores (both sides).
//! - [`bundle`]: manifest (pure), packing, verifying and applying zips.
//! - [`sender`]: the sender's loop, its outbox and one transport per receiver.
//! - [`ledger`]: what the receivers acknowledged, per path, durably (sender).
//! - [`peers`]: what the sender knows of each receiver; who needs the whole tree.
//! - [`proto`]: frames (pure) and the connection that carries them.
//! - [`rate`]: the bytes-per-second limit of each connection (token bucket). Pure.
//! - [`tls`]: key pairs, fingerprints, mutual TLS with pinned peers.
//! - [`receiver`]: accept, verify, apply, archive, acknowledge.
//! - [`bucket`]: the S3-compatible relay: its objects' names and seals (pure).
//! - [`perms`]: the modes and group the receiver gives what it writes.
//! - [`hook`]: the command run after each applied bundle (`on_apply`).
//! - [`beneath`]: writes and deletions below root that never follow symlinks,
//!   all or nothing per bundle.
//!
//! Around the path:
//! - [`paths`]: shipped path form, path validation, exclude rules.
//! - [`durable`]: crash-safe writes and checksummed journals.
//! - [`places`]: configured directories kept apart; clean-up of shipper's own names.
//! - [`state_lock`]: one process at a time per state_dir (a sender's or a receiver's).
//! - [`config`]: TOML -> raw structs -> validated [`config::Config`].
//! - [`drift`]: where a root disagrees with the source (`shipper verify`). Pure.
//! - [`status`]: what `shipper status` reports (shared by sender, control, metrics).
//! - [`control`]: the local control socket (flush, status, pause, resume, verify).
//! - [`metrics`]: the optional Prometheus endpoints of both roles.
//! - [`cli`]: the command line (clap).
//! - [`commands`]: what each subcommand does.

pub mod beneath;
pub mod bucket;
pub mod bundle;
pub mod changes;
pub mod hash;
pub mod hook;
pub mod ledger;
pub mod peers;
pub mod perms;
pub mod proto;
pub mod rate;
pub mod receiver;
pub mod schedule;
pub mod sender;
pub mod source_dir;
pub mod stamp;
pub mod tls;
pub mod watch;

pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod drift;
pub mod durable;
pub mod metrics;
pub mod paths;
pub mod places;
pub mod state_lock;
pub mod status;
