//! Frames: `[kind: u8][len: u32 BE][payload: len bytes]`.
//!
//! Pure encode and decode of byte slices (like mini-redis's frame.rs): the
//! decoder returns `Ok(None)` on incomplete input, and refuses a length over
//! [`MAX_PAYLOAD`] before anything is allocated. Encoding is here, decoding
//! in `parse.rs`.

use super::hook_outcome::HookOutcome;
use super::refusal::{Refusal, RefusalKind};

/// 8: a bundle may come as a stream of chunks whose size is known only at
/// its end (`Begin`, `Chunk`, `Sealed`, `Abandon`), so a sender can send
/// a bundle while it is packed; a receiver of 7 would end the session at
/// the first `Begin`. (7: `Welcome` says when root was rolled back to one of the sender's
/// sequences (`shipper rollback`, then `--release`), so the sender
/// compares its source with root and ships the difference; a sender of 6
/// cannot read that longer `Welcome` and is never sent one. (6: a manifest may carry deltas (a large file rebuilt from the version
/// the receiver holds and the bytes that changed), which a receiver of 5
/// would refuse as an unknown field, bundle after bundle; and a sender may
/// ask for root's listing (`Inquire`, answered by `Listing` and `Listed`). (5: a bundle's
/// manifest is of format 2, whose part hashes are chaining
/// values of the file's BLAKE3 tree, which a receiver of protocol 4 would
/// refuse bundle after bundle. (4: a sender may send the next bundles
/// before the first is answered (up to its pipeline), and a receiver ends
/// the session after a refusal to retry, so no bundle behind it is applied
/// first. 3: `Ack` says what became of the receiver's `on_apply` hook.
/// 2: `Ping` frames keep a quiet connection known to be alive; `Welcome`
/// names the receiver's instance and limits; `Refuse` says whether to
/// retry.))))
pub const PROTOCOL_VERSION: u16 = 8;
/// The senders a receiver takes: 4 and 5 as well as 6, since a receiver
/// reads the manifests of format 1 that a sender of 4 writes, and never
/// asks one for content it holds (only format 2 bundles name any; only
/// senders of 6 send deltas). Receivers can be
/// upgraded first, one by one, and their senders after.
pub const SENDERS_SPOKEN: std::ops::RangeInclusive<u16> = 4..=PROTOCOL_VERSION;
/// `Hello` starts with this so a stray client is recognised at once.
pub const MAGIC: [u8; 4] = *b"SHPR";
/// Largest payload of any frame; bundle bodies are not frames.
pub const MAX_PAYLOAD: usize = 16 * 1024;
pub const HEADER_LEN: usize = 5;
/// Longest refusal reason or hook failure sent (longer ones are cut) and
/// taken (a longer one makes the frame malformed).
const MAX_REASON: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
        sender: String,
    },
    /// `instance` names this receiver's state: a new one (a rebuilt or
    /// wiped receiver) has a new instance. `accepts`: its limits, so the
    /// sender packs within them. `rolled_back`: root was rolled back to one
    /// of the sender's sequences (only to senders of
    /// [`TOLD_ROLLED_BACK_FROM`] on).
    Welcome {
        last_applied: u64,
        instance: [u8; 16],
        accepts: Accepts,
        rolled_back: Option<Rolled>,
    },
    Bundle {
        seq: u64,
        size: u64,
    },
    Trailer {
        size: u64,
        hash: [u8; 32],
    },
    /// Bundle `seq` is applied (now or before); `hook` says what became of
    /// the receiver's `on_apply` hook for it.
    Ack {
        seq: u64,
        hook: HookOutcome,
    },
    /// Bundle `seq` was not applied. `kind` says whether sending it again
    /// can help; `path` names the entry at fault, when one is.
    Refuse {
        seq: u64,
        kind: RefusalKind,
        path: Option<String>,
        reason: String,
    },
    /// Keeps a quiet connection known to be alive.
    Ping,
    /// A bundle's body begins, its size and sequence still unknown: it
    /// comes in `Chunk`s, and ends with `Sealed` (its trailer) or
    /// `Abandon` (it will not be sent). `Ping`s may come between chunks.
    /// From senders of [`STREAMED_FROM`] on.
    Begin,
    /// The next `len` bytes of the body begun (raw bytes after this frame,
    /// as a `Bundle`'s body follows it). `paced`: the sender had them
    /// before it finished writing the chunk before, so the time between
    /// the two is the link's; not paced, that time was the sender's, packing
    /// them, and a receiver timing the link leaves it out.
    Chunk {
        len: u32,
        paced: bool,
    },
    /// The body begun is whole: bundle `seq`, of `size` bytes in all,
    /// whose BLAKE3 is `hash` (what a `Trailer` vouches for a `Bundle`).
    Sealed {
        seq: u64,
        size: u64,
        hash: [u8; 32],
    },
    /// The body begun will not be sealed here (its packing failed, it
    /// turned out empty, or it was sealed behind a bundle this receiver
    /// is still to get, and comes later whole): the receiver drops what
    /// came of it, and the session goes on.
    Abandon,
    /// The receiver took `bytes` of bundle `seq`'s body in `micros`,
    /// counted from the first read that waited for them (what the socket
    /// buffers held came before); for a streamed body, the sum of such
    /// runs, leaving out each wait before a chunk that was not paced
    /// (`proto::chunked::PaceClock`): the link's rate as the receiver saw
    /// it, which no TCP-terminating proxy on the sender's side can
    /// inflate. Sent before the bundle is applied, to senders of protocol
    /// [`TOLD_RECEIVED_FROM`] and later; `bytes` and `micros` 0 when no
    /// read waited (the body came faster than it could be timed), which
    /// a sender takes as this receiver having spoken of the bundle.
    Received {
        seq: u64,
        bytes: u64,
        micros: u64,
    },
    /// A `Hello` for a connection that only asks for root's listing
    /// (`shipper verify`): it starts no session, so the sender's session
    /// carrying bundles goes on undisturbed.
    Inquire {
        version: u16,
        sender: String,
    },
    /// Part of root's listing: regular files and their BLAKE3, as many as
    /// fit one frame (see [`Frame::listed_len`]).
    Listing {
        entries: Vec<(String, [u8; 32])>,
    },
    /// Paths a rollback brought back in root, sent with a listing (before
    /// `Listed`) to the sender it rolled back: of the extras, only these
    /// (or what lies below them) are the sender's to delete.
    Restored {
        paths: Vec<String>,
    },
    /// A `Hello` for a connection that only says the sender compared its
    /// source with root after a rollback and shipped the difference: the
    /// receiver forgets the rollback, answering `Ack` of the sequence it
    /// was rolled back to.
    Compared {
        version: u16,
        sender: String,
    },
    /// The listing is complete: `files` in all, of which `hashed` were read
    /// (the others' hashes were cached: unchanged size, mtime and inode);
    /// `other_senders` have applied bundles to this root too (their files
    /// are no extras to delete).
    Listed {
        files: u64,
        hashed: u64,
        other_senders: u64,
    },
}

/// A rollback of root, as `Welcome` tells it to the sender rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rolled {
    /// Root was rolled back to right after this sequence of the sender.
    pub to: u64,
    /// Its bundles are held (until `shipper rollback --release`): it sends
    /// none. Released, it compares its source with root.
    pub held: bool,
}

/// What a receiver accepts in one bundle, announced in `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepts {
    /// Files, parts and deletions.
    pub max_entries: u64,
    pub max_bundle_size: u64,
    pub max_file_size: u64,
    /// Bytes all entries may unpack to.
    pub max_unpacked: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLong(usize),
    #[error("malformed {kind} frame")]
    Malformed { kind: &'static str },
    #[error("not a shipper peer (bad magic)")]
    BadMagic,
}

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const BUNDLE: u8 = 3;
const TRAILER: u8 = 4;
const ACK: u8 = 5;
const REFUSE: u8 = 6;
/// "Still here", no payload: either side sends it so the other can tell a
/// quiet connection from a dead one.
const PING: u8 = 7;
const RECEIVED: u8 = 8;
const BEGIN: u8 = 14;
const CHUNK: u8 = 15;
const SEALED: u8 = 16;
const ABANDON: u8 = 17;
/// The most body bytes one `Chunk` carries: a longer one is malformed.
pub const MAX_CHUNK: u32 = 16 << 20;

/// Senders of this protocol version and later are told how fast their
/// bundles came ([`Frame::Received`]).
pub const TOLD_RECEIVED_FROM: u16 = 6;
/// Senders of this protocol version and later are told in `Welcome` that
/// root was rolled back ([`Frame::Welcome`]'s `rolled_back`).
pub const TOLD_ROLLED_BACK_FROM: u16 = 7;
/// Senders of this protocol version and later may send a bundle as a
/// stream of chunks ([`Frame::Begin`]).
pub const STREAMED_FROM: u16 = 8;
const INQUIRE: u8 = 9;
const LISTING: u8 = 10;
const LISTED: u8 = 11;
const RESTORED: u8 = 12;
const COMPARED: u8 = 13;

impl Frame {
    /// The bytes `path` takes in a `Listing`'s payload: a listing is cut
    /// into frames of at most [`MAX_PAYLOAD`] by adding these up.
    pub fn listed_len(path: &str) -> usize {
        2 + path.len() + 32
    }

    /// The frame refusing bundle `seq` for `refusal`.
    pub fn refuse(seq: u64, refusal: Refusal) -> Frame {
        Frame::Refuse {
            seq,
            kind: refusal.kind,
            path: refusal.path,
            reason: refusal.reason,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        let kind = match self {
            Frame::Hello { version, sender } => encode_hello(out, (HELLO, *version), sender),
            Frame::Inquire { version, sender } => encode_hello(out, (INQUIRE, *version), sender),
            Frame::Compared { version, sender } => encode_hello(out, (COMPARED, *version), sender),
            Frame::Restored { paths } => {
                paths.iter().for_each(|p| put_path(out, p));
                RESTORED
            }
            Frame::Listing { entries } => {
                encode_listing(out, entries);
                LISTING
            }
            Frame::Listed {
                files,
                hashed,
                other_senders,
            } => {
                put_u64s(out, &[*files, *hashed, *other_senders]);
                LISTED
            }
            Frame::Welcome {
                last_applied,
                instance,
                accepts,
                rolled_back,
            } => encode_welcome(out, (*last_applied, instance), accepts, rolled_back),
            Frame::Bundle { seq, size } => {
                put_u64s(out, &[*seq, *size]);
                BUNDLE
            }
            Frame::Trailer { size, hash } => {
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(hash);
                TRAILER
            }
            Frame::Ack { seq, hook } => encode_ack(out, *seq, hook),
            Frame::Refuse {
                seq,
                kind,
                path,
                reason,
            } => {
                encode_refuse(out, *seq, *kind, path.as_deref(), reason);
                REFUSE
            }
            Frame::Ping => PING,
            Frame::Begin => BEGIN,
            Frame::Abandon => ABANDON,
            Frame::Chunk { len, paced } => {
                out.extend_from_slice(&len.to_be_bytes());
                out.push(u8::from(*paced));
                CHUNK
            }
            Frame::Sealed { seq, size, hash } => {
                put_u64s(out, &[*seq, *size]);
                out.extend_from_slice(hash);
                SEALED
            }
            Frame::Received { seq, bytes, micros } => {
                put_u64s(out, &[*seq, *bytes, *micros]);
                RECEIVED
            }
        };
        let len = (out.len() - start - HEADER_LEN) as u32;
        out[start] = kind;
        out[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decode one frame from the front of `buf`: `Ok(None)` when more bytes
    /// are needed, else the frame and how many bytes it used.
    pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let (kind, len) = parse_header(header.try_into().expect("header length"))?;
        let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        Ok(Some((parse_payload(kind, payload)?, HEADER_LEN + len)))
    }
}

impl Accepts {
    /// Its limits in the order a `Welcome` carries them.
    fn in_order(&self) -> [u64; 4] {
        [
            self.max_entries,
            self.max_bundle_size,
            self.max_file_size,
            self.max_unpacked,
        ]
    }
}

/// Each of `values`, big-endian, on to `out`.
fn put_u64s(out: &mut Vec<u8>, values: &[u64]) {
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A `Hello`'s payload (an `Inquire`'s too): magic, version, sender id.
fn encode_hello(out: &mut Vec<u8>, (kind, version): (u8, u16), sender: &str) -> u8 {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(sender.as_bytes());
    kind
}

fn encode_welcome(
    out: &mut Vec<u8>,
    (last_applied, instance): (u64, &[u8; 16]),
    accepts: &Accepts,
    rolled_back: &Option<Rolled>,
) -> u8 {
    out.extend_from_slice(&last_applied.to_be_bytes());
    out.extend_from_slice(instance);
    put_u64s(out, &accepts.in_order());
    if let Some(r) = rolled_back {
        out.extend_from_slice(&r.to.to_be_bytes());
        out.push(u8::from(r.held));
    }
    WELCOME
}

fn encode_ack(out: &mut Vec<u8>, seq: u64, hook: &HookOutcome) -> u8 {
    out.extend_from_slice(&seq.to_be_bytes());
    match hook {
        HookOutcome::NotRun => out.push(0),
        HookOutcome::Ran => out.push(1),
        HookOutcome::Failed(why) => {
            out.push(2);
            out.extend_from_slice(cut(why).as_bytes());
        }
    }
    ACK
}

/// A path as `Restored` and `Listing` carry it: its length, then it.
fn put_path(out: &mut Vec<u8>, path: &str) {
    out.extend_from_slice(&(path.len() as u16).to_be_bytes());
    out.extend_from_slice(path.as_bytes());
}

/// A `Refuse`'s payload.
fn encode_refuse(out: &mut Vec<u8>, seq: u64, kind: RefusalKind, path: Option<&str>, reason: &str) {
    out.extend_from_slice(&seq.to_be_bytes());
    out.push(match kind {
        RefusalKind::Retry => 0,
        RefusalKind::Permanent => 1,
        RefusalKind::NeedsContent => 2,
    });
    // A path longer than a valid one is dropped, not cut.
    let path = path
        .filter(|p| p.len() <= crate::paths::MAX_PATH_BYTES)
        .unwrap_or("");
    out.extend_from_slice(&(path.len() as u16).to_be_bytes());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(cut(reason).as_bytes());
}

/// A `Listing`'s payload: each entry's path length, path and hash.
fn encode_listing(out: &mut Vec<u8>, entries: &[(String, [u8; 32])]) {
    for (path, hash) in entries {
        put_path(out, path);
        out.extend_from_slice(hash);
    }
}

/// `text` cut to [`MAX_REASON`] bytes on a char boundary.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(MAX_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

mod parse;
pub use parse::{parse_header, parse_payload};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
