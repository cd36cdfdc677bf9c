//! The wire protocol between sender and receiver.
//!
//! - [`frame`]: frames as bytes, encode and decode; pure, no socket.
//! - [`connection`]: a [`connection::Connection`] owns a stream, reads and
//!   writes frames and streams bundle bodies.
//!
//! A session: sender `Hello`, receiver `Welcome` (the last sequence it
//! applied from that sender, its state's instance id and the limits it
//! accepts), then per bundle `Bundle{seq,size}`, `size` raw bytes,
//! `Trailer{size,hash}`; the receiver answers `Ack{seq}` once the bundle is
//! applied (or was already), or `Refuse{seq,kind,path,reason}`, where
//! `kind` says whether sending it again can help and `path` names the entry
//! at fault.

pub mod connection;
pub mod frame;

pub use connection::Connection;
pub use frame::{Frame, FrameError};
