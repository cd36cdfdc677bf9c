//! Frames: `[kind: u8][len: u32 BE][payload: len bytes]`.
//!
//! Pure encode and decode of byte slices (like mini-redis's frame.rs): the
//! decoder returns `Ok(None)` on incomplete input, and refuses a length over
//! [`MAX_PAYLOAD`] before anything is allocated.

use super::hook_outcome::HookOutcome;
use super::refusal::{Refusal, RefusalKind};

/// 7: `Welcome` says when root was rolled back to one of the sender's
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
/// retry.)))
pub const PROTOCOL_VERSION: u16 = 7;
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
    /// sender packs within them. `rolled_back_to`: root was rolled back to
    /// this sequence of the sender and released since (only to senders of
    /// [`TOLD_ROLLED_BACK_FROM`] on).
    Welcome {
        last_applied: u64,
        instance: [u8; 16],
        accepts: Accepts,
        rolled_back_to: Option<u64>,
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
    /// The receiver took the last `bytes` of bundle `seq`'s body in
    /// `micros`, counted from the first read that waited for them (what the
    /// socket buffers held came before): the link's rate as the receiver
    /// saw it, which no TCP-terminating proxy on the sender's side can
    /// inflate. Sent before the bundle is applied, to senders of protocol
    /// [`TOLD_RECEIVED_FROM`] and later.
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

/// Senders of this protocol version and later are told how fast their
/// bundles came ([`Frame::Received`]).
pub const TOLD_RECEIVED_FROM: u16 = 6;
/// Senders of this protocol version and later are told in `Welcome` that
/// root was rolled back ([`Frame::Welcome`]'s `rolled_back_to`).
pub const TOLD_ROLLED_BACK_FROM: u16 = 7;
const INQUIRE: u8 = 9;
const LISTING: u8 = 10;
const LISTED: u8 = 11;

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
            Frame::Hello { version, sender } => {
                encode_hello(out, *version, sender);
                HELLO
            }
            Frame::Inquire { version, sender } => {
                encode_hello(out, *version, sender);
                INQUIRE
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
                out.extend_from_slice(&files.to_be_bytes());
                out.extend_from_slice(&hashed.to_be_bytes());
                out.extend_from_slice(&other_senders.to_be_bytes());
                LISTED
            }
            Frame::Welcome {
                last_applied,
                instance,
                accepts,
                rolled_back_to,
            } => {
                out.extend_from_slice(&last_applied.to_be_bytes());
                out.extend_from_slice(instance);
                put_u64s(out, &accepts.in_order());
                if let Some(to) = rolled_back_to {
                    out.extend_from_slice(&to.to_be_bytes());
                }
                WELCOME
            }
            Frame::Bundle { seq, size } => {
                put_u64s(out, &[*seq, *size]);
                BUNDLE
            }
            Frame::Trailer { size, hash } => {
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(hash);
                TRAILER
            }
            Frame::Ack { seq, hook } => {
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
fn encode_hello(out: &mut Vec<u8>, version: u16, sender: &str) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(sender.as_bytes());
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
        out.extend_from_slice(&(path.len() as u16).to_be_bytes());
        out.extend_from_slice(path.as_bytes());
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

/// Check a header and return the kind and payload length, refusing lengths
/// over the limit before the caller allocates.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
    let kind = h[0];
    if !(HELLO..=LISTED).contains(&kind) {
        return Err(FrameError::UnknownKind(kind));
    }
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    Ok((kind, len))
}

pub fn parse_payload(kind: u8, p: &[u8]) -> Result<Frame, FrameError> {
    let u64_at = |i: usize| be_u64(p, i);
    let frame = match kind {
        HELLO | INQUIRE => parse_hello(kind, p)?,
        WELCOME if p.len() == 56 || p.len() == 64 => Some(Frame::Welcome {
            last_applied: u64_at(0).unwrap_or_default(),
            instance: p[8..24].try_into().expect("16 bytes"),
            accepts: Accepts {
                max_entries: u64_at(24).unwrap_or_default(),
                max_bundle_size: u64_at(32).unwrap_or_default(),
                max_file_size: u64_at(40).unwrap_or_default(),
                max_unpacked: u64_at(48).unwrap_or_default(),
            },
            rolled_back_to: u64_at(56),
        }),
        BUNDLE if p.len() == 16 => Some(Frame::Bundle {
            seq: u64_at(0).unwrap_or_default(),
            size: u64_at(8).unwrap_or_default(),
        }),
        TRAILER if p.len() == 40 => Some(Frame::Trailer {
            size: u64_at(0).unwrap_or_default(),
            hash: p[8..40].try_into().expect("32 bytes"),
        }),
        ACK if p.len() >= 9 => parse_ack(p),
        REFUSE if p.len() >= 11 => parse_refuse(p),
        PING if p.is_empty() => Some(Frame::Ping),
        RECEIVED if p.len() == 24 => Some(Frame::Received {
            seq: u64_at(0).unwrap_or_default(),
            bytes: u64_at(8).unwrap_or_default(),
            micros: u64_at(16).unwrap_or_default(),
        }),
        LISTING => parse_listing(p),
        LISTED if p.len() == 24 => Some(Frame::Listed {
            files: u64_at(0).unwrap_or_default(),
            hashed: u64_at(8).unwrap_or_default(),
            other_senders: u64_at(16).unwrap_or_default(),
        }),
        _ => None,
    };
    frame.ok_or(FrameError::Malformed {
        kind: kind_name(kind),
    })
}

/// The payload of a `Hello` or an `Inquire` (`kind`); `None` when it
/// does not parse, an error when it is no shipper peer's.
fn parse_hello(kind: u8, p: &[u8]) -> Result<Option<Frame>, FrameError> {
    if p.get(..4) != Some(&MAGIC[..]) {
        return Err(FrameError::BadMagic);
    }
    let version = p.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let sender = p.get(6..).and_then(|b| std::str::from_utf8(b).ok());
    Ok(match (version, sender) {
        (Some(version), Some(s)) if kind == HELLO => Some(Frame::Hello {
            version,
            sender: s.to_owned(),
        }),
        (Some(version), Some(s)) => Some(Frame::Inquire {
            version,
            sender: s.to_owned(),
        }),
        _ => None,
    })
}

/// The payload of a `Listing`: entries of path length, path, hash, to its
/// end. A path no longer than a valid one, in UTF-8.
fn parse_listing(mut p: &[u8]) -> Option<Frame> {
    let mut entries = Vec::new();
    while !p.is_empty() {
        let len = usize::from(u16::from_be_bytes([*p.first()?, *p.get(1)?]));
        if len > crate::paths::MAX_PATH_BYTES {
            return None;
        }
        let path = std::str::from_utf8(p.get(2..2 + len)?).ok()?;
        let hash: [u8; 32] = p.get(2 + len..2 + len + 32)?.try_into().ok()?;
        entries.push((path.to_owned(), hash));
        p = &p[2 + len + 32..];
    }
    Some(Frame::Listing { entries })
}

/// The big-endian u64 at `i` in `p`, if `p` holds one there.
fn be_u64(p: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(i..i + 8)?.try_into().ok()?))
}

/// The payload of an `Ack` (at least 9 bytes): its sequence and the hook's
/// outcome.
fn parse_ack(p: &[u8]) -> Option<Frame> {
    let hook = match (p[8], &p[9..]) {
        (0, []) => Some(HookOutcome::NotRun),
        (1, []) => Some(HookOutcome::Ran),
        // No longer than `encode` writes it (as in `parse_refuse`).
        (2, why) if why.len() <= MAX_REASON => std::str::from_utf8(why)
            .ok()
            .map(|w| HookOutcome::Failed(w.to_owned())),
        _ => None,
    };
    Some(Frame::Ack {
        seq: be_u64(p, 0)?,
        hook: hook?,
    })
}

/// The payload of a `Refuse` (at least 11 bytes).
fn parse_refuse(p: &[u8]) -> Option<Frame> {
    let kind = match p[8] {
        0 => Some(RefusalKind::Retry),
        1 => Some(RefusalKind::Permanent),
        2 => Some(RefusalKind::NeedsContent),
        _ => None,
    };
    // No longer than `encode` writes them: a peer says nothing
    // shipper itself would not, and a decoded frame encodes back
    // to the same frame.
    let path_len = usize::from(u16::from_be_bytes([p[9], p[10]]));
    let path = p
        .get(11..11 + path_len)
        .filter(|b| b.len() <= crate::paths::MAX_PATH_BYTES)
        .and_then(|b| std::str::from_utf8(b).ok());
    let reason = p
        .get(11 + path_len..)
        .filter(|b| b.len() <= MAX_REASON)
        .and_then(|b| std::str::from_utf8(b).ok());
    match (kind, path, reason) {
        (Some(kind), Some(path), Some(reason)) => Some(Frame::Refuse {
            seq: be_u64(p, 0)?,
            kind,
            path: (!path.is_empty()).then(|| path.to_owned()),
            reason: reason.to_owned(),
        }),
        _ => None,
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        HELLO => "hello",
        WELCOME => "welcome",
        BUNDLE => "bundle",
        TRAILER => "trailer",
        ACK => "ack",
        REFUSE => "refuse",
        PING => "ping",
        RECEIVED => "received",
        INQUIRE => "inquire",
        LISTING => "listing",
        LISTED => "listed",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
