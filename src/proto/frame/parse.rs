//! Reading frames: a header's kind and length, then its payload, each
//! checked against what shipper sends (see [`super::Frame::encode`]).

use super::*;

/// Check a header and return the kind and payload length, refusing lengths
/// over the limit before the caller allocates.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
    let kind = h[0];
    if !(HELLO..=ABANDON).contains(&kind) {
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
        HELLO | INQUIRE | COMPARED => parse_hello(kind, p)?,
        RESTORED => parse_paths(p).map(|paths| Frame::Restored { paths }),
        WELCOME if p.len() == 56 || (p.len() == 65 && p[64] <= 1) => Some(Frame::Welcome {
            last_applied: u64_at(0).unwrap_or_default(),
            instance: p[8..24].try_into().expect("16 bytes"),
            accepts: Accepts {
                max_entries: u64_at(24).unwrap_or_default(),
                max_bundle_size: u64_at(32).unwrap_or_default(),
                max_file_size: u64_at(40).unwrap_or_default(),
                max_unpacked: u64_at(48).unwrap_or_default(),
            },
            rolled_back: u64_at(56).map(|to| Rolled {
                to,
                held: p[64] == 1,
            }),
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
        BEGIN if p.is_empty() => Some(Frame::Begin),
        ABANDON if p.is_empty() => Some(Frame::Abandon),
        CHUNK if p.len() == 5 && p[4] <= 1 => {
            let len = u32::from_be_bytes(p[..4].try_into().expect("4 bytes"));
            let paced = p[4] == 1;
            (1..=MAX_CHUNK)
                .contains(&len)
                .then_some(Frame::Chunk { len, paced })
        }
        SEALED if p.len() == 48 => Some(Frame::Sealed {
            seq: u64_at(0).unwrap_or_default(),
            size: u64_at(8).unwrap_or_default(),
            hash: p[16..48].try_into().expect("32 bytes"),
        }),
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

/// The payload of a `Hello`, an `Inquire` or a `Compared` (`kind`); `None` when it
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
        (Some(version), Some(s)) if kind == COMPARED => Some(Frame::Compared {
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

/// The payload of a `Restored`: paths, each after its length, to its end;
/// none longer than a valid path, in UTF-8.
fn parse_paths(mut p: &[u8]) -> Option<Vec<String>> {
    let mut paths = Vec::new();
    while !p.is_empty() {
        let len = usize::from(u16::from_be_bytes([*p.first()?, *p.get(1)?]));
        if len > crate::paths::MAX_PATH_BYTES {
            return None;
        }
        paths.push(std::str::from_utf8(p.get(2..2 + len)?).ok()?.to_owned());
        p = &p[2 + len..];
    }
    Some(paths)
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
        RESTORED => "restored",
        COMPARED => "compared",
        BEGIN => "begin",
        CHUNK => "chunk",
        SEALED => "sealed",
        ABANDON => "abandon",
        _ => "unknown",
    }
}
