//! Frames: `[kind: u8][len: u32 BE][payload: len bytes]`.
//!
//! Pure encode and decode of byte slices (like mini-redis's frame.rs): the
//! decoder returns `Ok(None)` on incomplete input, and refuses a length over
//! [`MAX_PAYLOAD`] before anything is allocated.

use super::refusal::{Refusal, RefusalKind};

/// 2: `Ping` frames keep a quiet connection known to be alive; `Welcome`
/// names the receiver's instance and limits; `Refuse` says whether to retry.
pub const PROTOCOL_VERSION: u16 = 2;
/// `Hello` starts with this so a stray client is recognised at once.
pub const MAGIC: [u8; 4] = *b"SHPR";
/// Largest payload of any frame; bundle bodies are not frames.
pub const MAX_PAYLOAD: usize = 16 * 1024;
pub const HEADER_LEN: usize = 5;
/// Longest refusal reason sent (longer ones are cut) and taken (a longer
/// one makes the frame malformed).
const MAX_REASON: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u16,
        sender: String,
    },
    /// `instance` names this receiver's state: a new one (a rebuilt or
    /// wiped receiver) has a new instance. `accepts`: its limits, so the
    /// sender packs within them.
    Welcome {
        last_applied: u64,
        instance: [u8; 16],
        accepts: Accepts,
    },
    Bundle {
        seq: u64,
        size: u64,
    },
    Trailer {
        size: u64,
        hash: [u8; 32],
    },
    Ack {
        seq: u64,
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

impl Frame {
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
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(sender.as_bytes());
                HELLO
            }
            Frame::Welcome {
                last_applied,
                instance,
                accepts,
            } => {
                out.extend_from_slice(&last_applied.to_be_bytes());
                out.extend_from_slice(instance);
                for v in [
                    accepts.max_entries,
                    accepts.max_bundle_size,
                    accepts.max_file_size,
                    accepts.max_unpacked,
                ] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                WELCOME
            }
            Frame::Bundle { seq, size } => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                BUNDLE
            }
            Frame::Trailer { size, hash } => {
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(hash);
                TRAILER
            }
            Frame::Ack { seq } => {
                out.extend_from_slice(&seq.to_be_bytes());
                ACK
            }
            Frame::Refuse {
                seq,
                kind,
                path,
                reason,
            } => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(match kind {
                    RefusalKind::Retry => 0,
                    RefusalKind::Permanent => 1,
                });
                // A path longer than a valid one is dropped, not cut.
                let path = path
                    .as_deref()
                    .filter(|p| p.len() <= crate::paths::MAX_PATH_BYTES)
                    .unwrap_or("");
                out.extend_from_slice(&(path.len() as u16).to_be_bytes());
                out.extend_from_slice(path.as_bytes());
                let mut end = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&reason.as_bytes()[..end]);
                REFUSE
            }
            Frame::Ping => PING,
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

/// Check a header and return the kind and payload length, refusing lengths
/// over the limit before the caller allocates.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
    let kind = h[0];
    if !(HELLO..=PING).contains(&kind) {
        return Err(FrameError::UnknownKind(kind));
    }
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    Ok((kind, len))
}

pub fn parse_payload(kind: u8, p: &[u8]) -> Result<Frame, FrameError> {
    let u64_at =
        |i: usize| -> Option<u64> { Some(u64::from_be_bytes(p.get(i..i + 8)?.try_into().ok()?)) };
    let frame = match kind {
        HELLO => {
            if p.get(..4) != Some(&MAGIC[..]) {
                return Err(FrameError::BadMagic);
            }
            let version = p.get(4..6).map(|b| u16::from_be_bytes([b[0], b[1]]));
            let sender = p.get(6..).and_then(|b| std::str::from_utf8(b).ok());
            match (version, sender) {
                (Some(version), Some(s)) => Some(Frame::Hello {
                    version,
                    sender: s.to_owned(),
                }),
                _ => None,
            }
        }
        WELCOME if p.len() == 56 => Some(Frame::Welcome {
            last_applied: u64_at(0).unwrap_or_default(),
            instance: p[8..24].try_into().expect("16 bytes"),
            accepts: Accepts {
                max_entries: u64_at(24).unwrap_or_default(),
                max_bundle_size: u64_at(32).unwrap_or_default(),
                max_file_size: u64_at(40).unwrap_or_default(),
                max_unpacked: u64_at(48).unwrap_or_default(),
            },
        }),
        BUNDLE if p.len() == 16 => Some(Frame::Bundle {
            seq: u64_at(0).unwrap_or_default(),
            size: u64_at(8).unwrap_or_default(),
        }),
        TRAILER if p.len() == 40 => Some(Frame::Trailer {
            size: u64_at(0).unwrap_or_default(),
            hash: p[8..40].try_into().expect("32 bytes"),
        }),
        ACK if p.len() == 8 => u64_at(0).map(|seq| Frame::Ack { seq }),
        REFUSE if p.len() >= 11 => {
            let kind = match p[8] {
                0 => Some(RefusalKind::Retry),
                1 => Some(RefusalKind::Permanent),
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
                    seq: u64_at(0).unwrap_or_default(),
                    kind,
                    path: (!path.is_empty()).then(|| path.to_owned()),
                    reason: reason.to_owned(),
                }),
                _ => None,
            }
        }
        PING if p.is_empty() => Some(Frame::Ping),
        _ => None,
    };
    frame.ok_or(FrameError::Malformed {
        kind: kind_name(kind),
    })
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
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                sender: "app-1".into(),
            },
            Frame::Welcome {
                last_applied: 42,
                instance: [9; 16],
                accepts: Accepts {
                    max_entries: 1,
                    max_bundle_size: 2,
                    max_file_size: 3,
                    max_unpacked: u64::MAX,
                },
            },
            Frame::Bundle {
                seq: 7,
                size: 1 << 40,
            },
            Frame::Trailer {
                size: 99,
                hash: [7; 32],
            },
            Frame::Ack { seq: u64::MAX },
            Frame::Refuse {
                seq: 3,
                kind: RefusalKind::Retry,
                path: None,
                reason: "disk full: é".into(),
            },
            Frame::Refuse {
                seq: 4,
                kind: RefusalKind::Permanent,
                path: Some("a/é.html".into()),
                reason: "is a symlink inside root".into(),
            },
            Frame::Ping,
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in all() {
            let bytes = f.to_bytes();
            assert_eq!(Frame::parse(&bytes), Ok(Some((f.clone(), bytes.len()))));
        }
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        for f in all() {
            let bytes = f.to_bytes();
            for cut in 0..bytes.len() {
                assert_eq!(Frame::parse(&bytes[..cut]), Ok(None), "{f:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn frames_follow_each_other_in_a_buffer() {
        let mut buf = Vec::new();
        for f in all() {
            f.encode(&mut buf);
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((f, n)) = Frame::parse(&buf[at..]).unwrap() {
            got.push(f);
            at += n;
        }
        assert_eq!(got, all());
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let h = [ACK, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            Frame::parse(&h),
            Err(FrameError::TooLong(u32::MAX as usize))
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            Frame::parse(&[0, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(0))
        );
        assert_eq!(
            Frame::parse(&[ACK, 0, 0, 0, 3, 1, 2, 3]),
            Err(FrameError::Malformed { kind: "ack" })
        );
        assert_eq!(
            Frame::parse(&[PING, 0, 0, 0, 1, 0]),
            Err(FrameError::Malformed { kind: "ping" })
        );
        assert_eq!(
            Frame::parse(&[PING + 1, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(PING + 1))
        );
        let mut hello = Frame::Hello {
            version: 1,
            sender: "x".into(),
        }
        .to_bytes();
        hello[5] = b'X';
        assert_eq!(Frame::parse(&hello), Err(FrameError::BadMagic));
        // A HTTP client poking the port.
        assert!(Frame::parse(b"GET / HTTP/1.1\r\n").is_err());
    }

    /// What `encode` never writes, a peer may not send: a decoded frame
    /// always encodes back to itself (found by fuzz target `frame`).
    #[test]
    fn refusals_longer_than_shipper_sends_are_malformed() {
        let refuse = |path: usize, reason: usize| {
            let mut p = 1u64.to_be_bytes().to_vec();
            p.push(1);
            p.extend_from_slice(&(path as u16).to_be_bytes());
            p.extend(std::iter::repeat_n(b'p', path));
            p.extend(std::iter::repeat_n(b'r', reason));
            let mut f = vec![REFUSE];
            f.extend_from_slice(&(p.len() as u32).to_be_bytes());
            f.extend(p);
            Frame::parse(&f)
        };
        let max_path = crate::paths::MAX_PATH_BYTES;
        assert!(matches!(refuse(max_path, MAX_REASON), Ok(Some(_))));
        let malformed = Err(FrameError::Malformed { kind: "refuse" });
        assert_eq!(refuse(max_path + 1, 0), malformed);
        assert_eq!(refuse(0, MAX_REASON + 1), malformed);
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let f = Frame::Refuse {
            seq: 1,
            kind: RefusalKind::Retry,
            path: None,
            reason: "é".repeat(5000),
        };
        let (back, _) = Frame::parse(&f.to_bytes()).unwrap().unwrap();
        let Frame::Refuse { reason, .. } = back else {
            panic!()
        };
        assert!(reason.len() <= MAX_REASON);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u16>(), "[a-zA-Z0-9._-]{0,64}")
                .prop_map(|(version, sender)| Frame::Hello { version, sender }),
            (any::<u64>(), any::<[u8; 16]>(), any::<[u64; 4]>()).prop_map(
                |(last_applied, instance, [a, b, c, d])| Frame::Welcome {
                    last_applied,
                    instance,
                    accepts: Accepts {
                        max_entries: a,
                        max_bundle_size: b,
                        max_file_size: c,
                        max_unpacked: d,
                    },
                }
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(seq, size)| Frame::Bundle { seq, size }),
            (any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(size, hash)| Frame::Trailer { size, hash }),
            any::<u64>().prop_map(|seq| Frame::Ack { seq }),
            (any::<u64>(), any::<bool>(), "[a-z/]{0,20}", ".{0,100}").prop_map(
                |(seq, retry, path, reason)| Frame::Refuse {
                    seq,
                    kind: if retry {
                        RefusalKind::Retry
                    } else {
                        RefusalKind::Permanent
                    },
                    path: (!path.is_empty()).then_some(path),
                    reason,
                }
            ),
            Just(Frame::Ping),
        ]
    }

    proptest! {
        /// The decoder never panics on arbitrary bytes and never claims
        /// more bytes than it was given.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, used))) = Frame::parse(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }

        /// Valid frames with bytes flipped decode to something or an error, never a panic.
        #[test]
        fn corrupted_frames_never_panic(f in frame(), at in any::<prop::sample::Index>(), x in 1u8..) {
            let mut bytes = f.to_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= x;
            let _ = Frame::parse(&bytes);
        }

        #[test]
        fn every_frame_round_trips(f in frame()) {
            let bytes = f.to_bytes();
            prop_assert_eq!(Frame::parse(&bytes), Ok(Some((f, bytes.len()))));
        }
    }
}
