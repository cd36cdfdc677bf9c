//! shipper keeps a directory on one host in step with a directory on another
//! by shipping its changes in periodic zip bundles over TCP.
//!
//! # Layout
//! - [`cli`]: the command line (clap).
//! - [`config`]: TOML -> raw structs -> validated [`config::Config`].
//! - [`paths`]: shipped path form, path validation, exclude rules.
//! - [`stamp`]: the stat fields that say a file changed.
//! - [`source_dir`]: reading below the source, never through a symlink.
//! - [`watch`]: notify events -> [`watch::WatchMsg`]; tree walks; the
//!   [`watch::Sentinel`] that follows the source by its path.
//! - [`changes`]: the change set: coalescing, settle, max_delay. Pure.
//! - [`schedule`]: interval or cron ticks. Pure.
//! - [`beneath`]: writes and deletions below root that never follow symlinks.
//! - [`bundle`]: manifest (pure), packing, verifying and applying zips.
//! - [`proto`]: frames (pure) and the connection that carries them.
//! - [`sender`]: the sender's loop and transport.
//! - [`receiver`]: accept, verify, apply, archive, acknowledge.
//! - [`status`]: what `shipper status` reports (shared by sender, control, metrics).
//! - [`control`]: the local control socket (flush, status, pause, resume).
//! - [`metrics`]: the optional Prometheus endpoint.
//! - [`commands`]: what each subcommand does.
//! - [`ledger`]: what the receiver acknowledged, per path, durably (sender).
//! - [`peers`]: what the sender knows of each receiver; who needs the whole tree.
//! - [`tls`]: key pairs, fingerprints, mutual TLS with pinned peers.
//! - [`durable`]: crash-safe writes.
//! - [`places`]: configured directories kept apart; clean-up of shipper's own names.

pub mod beneath;
pub mod bundle;
pub mod changes;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod durable;
pub mod ledger;
pub mod metrics;
pub mod paths;
pub mod peers;
pub mod places;
pub mod proto;
pub mod receiver;
pub mod schedule;
pub mod sender;
pub mod source_dir;
pub mod stamp;
pub mod status;
pub mod tls;
pub mod watch;
