//! The wire protocol between sender and receiver.
//!
//! - [`frame`]: frames as bytes, encode and decode; pure, no socket.
//! - [`chunked`]: a body's running size and the link's time to bring it,
//!   as the receiver counts them; pure, time injected.
//! - [`refusal`]: why a bundle was not applied, and whether re-sending helps.
//! - [`hook_outcome`]: what became of the receiver's `on_apply` hook.
//! - [`connection`]: a [`connection::Connection`] owns a stream, reads and
//!   writes frames and streams bundle bodies.
//!
//! A session: sender `Hello`, receiver `Welcome` (the last sequence it
//! applied from that sender, its state's instance id and the limits it
//! accepts), then per bundle either `Bundle{seq,size}`, `size` raw bytes,
//! `Trailer{size,hash}` (a bundle sealed before it is sent), or, from
//! senders of protocol 8, a bundle sent while it is packed: `Begin`, its
//! body in `Chunk{len,paced}`s (each followed by `len` raw bytes; `Ping`s
//! may come between them), and `Sealed{seq,size,hash}`, or `Abandon` for
//! a body that will not be sealed there; the receiver answers `Ack{seq,hook}` once the
//! bundle is applied (or was already) and its `on_apply` hook has run,
//! `hook` saying whether it ran and why it failed, or
//! `Refuse{seq,kind,path,reason}`, where `kind` says whether sending it
//! again can help and `path` names the entry at fault. A sender need not
//! wait for an answer to send the next bundle: up to two are on their way
//! at once, and the receiver takes in the next while it applies one. Answers
//! come in order; after a refusal to retry the receiver ends the session,
//! so the bundles behind that one are sent again after it. A peer of another
//! protocol version is refused at `Hello`, in a `Refuse` frame naming both
//! versions.
//!
//! An inquiry (`shipper verify`) is a connection of its own, no session:
//! sender `Inquire` (a `Hello` by another name, so the sender's session is
//! not replaced), receiver `Listing{entries}` frames (path and BLAKE3 of
//! each regular file in root, in path order, each frame within the frame
//! limit), pinging while it hashes, then `Listed{files,hashed,other_senders}`, or a
//! `Refuse` saying why root cannot be listed.
//!
//! # Liveness
//! A network can drop a connection without a FIN or RST (a host that lost
//! power, a NAT that forgot the flow), and TCP then reports nothing for
//! many minutes. So neither side waits on the other without a bound, and
//! both keep a quiet connection audible with `Ping`:
//! - between bundles, and while it waits for answers, the sender pings every
//!   third of its `peer_timeout`, and the receiver answers each ping with
//!   one (in turn, after the answers before it);
//! - while it verifies and applies a bundle the receiver pings every
//!   [`APPLY_PING`], so a long apply never looks like a dead peer;
//! - the sender drops a connection it hears nothing on for `peer_timeout`
//!   (between [`MIN_PEER_TIMEOUT`] and [`MAX_PEER_TIMEOUT`]); the receiver
//!   drops a session it hears nothing on for [`SESSION_IDLE`].

use std::time::Duration;

pub mod chunked;
pub mod connection;
pub mod frame;
pub mod hook_outcome;
pub mod refusal;

pub use connection::Connection;
pub use frame::{Frame, FrameError};

/// How often a receiver pings while it applies a bundle.
pub const APPLY_PING: Duration = Duration::from_millis(500);
/// The shortest `peer_timeout` a sender may use: four apply pings, so one
/// late ping on a busy host is not taken for a dead receiver.
pub const MIN_PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `peer_timeout` a sender may use: noticing a dead connection
/// and re-sending must leave most of the five-minute window.
pub const MAX_PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// A receiver ends a session it hears nothing from for this long. A live
/// sender pings at least every third of [`MAX_PEER_TIMEOUT`], so this only
/// ends sessions whose sender or network is gone.
pub const SESSION_IDLE: Duration = Duration::from_secs(120);
