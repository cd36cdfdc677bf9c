//! Frame codec tests: every frame round-trips, every prefix is
//! incomplete, and what shipper never sends is refused.

use super::*;

/// A `Welcome` with limits 1, 2, 3 and `max_unpacked`.
fn welcome(max_unpacked: u64, rolled_back: Option<Rolled>) -> Frame {
    Frame::Welcome {
        last_applied: 42,
        instance: [9; 16],
        accepts: Accepts {
            max_entries: 1,
            max_bundle_size: 2,
            max_file_size: 3,
            max_unpacked,
        },
        rolled_back,
    }
}

fn all() -> Vec<Frame> {
    vec![
        Frame::Hello {
            version: 1,
            sender: "app-1".into(),
        },
        welcome(u64::MAX, None),
        welcome(4, Some(Rolled { to: 40, held: true })),
        Frame::Bundle {
            seq: 7,
            size: 1 << 40,
        },
        Frame::Restored {
            paths: vec!["a.html".into(), "img/b".into()],
        },
        Frame::Compared {
            version: 7,
            sender: "app-1".into(),
        },
        Frame::Trailer {
            size: 99,
            hash: [7; 32],
        },
        Frame::Ack {
            seq: u64::MAX,
            hook: HookOutcome::NotRun,
        },
        Frame::Received {
            seq: 9,
            bytes: 1 << 30,
            micros: u64::MAX,
        },
        Frame::Ack {
            seq: 1,
            hook: HookOutcome::Ran,
        },
        Frame::Ack {
            seq: 2,
            hook: HookOutcome::Failed("on_apply hook /bin/purge: exit status: 1: é".into()),
        },
        Frame::Ack {
            seq: 3,
            hook: HookOutcome::Failed(String::new()),
        },
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
        Frame::Refuse {
            seq: 5,
            kind: RefusalKind::NeedsContent,
            path: Some("a.html".into()),
            reason: "kept files root does not hold: \"a.html\" (missing)".into(),
        },
        Frame::Ping,
        Frame::Begin,
        Frame::Chunk {
            len: MAX_CHUNK,
            paced: true,
        },
        Frame::Chunk {
            len: 1,
            paced: false,
        },
        Frame::Sealed {
            seq: 8,
            size: 1 << 33,
            hash: [3; 32],
        },
        Frame::Abandon,
        Frame::Inquire {
            version: 6,
            sender: "app-1".into(),
        },
        Frame::Listing { entries: vec![] },
        Frame::Listing {
            entries: vec![("a/é.html".into(), [1; 32]), ("b".into(), [2; 32])],
        },
        Frame::Listed {
            files: 1_000_000,
            hashed: 3,
            other_senders: 1,
        },
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
    // A version-2 Ack (no hook outcome), an unknown outcome, and text
    // after an outcome that has none.
    let ack = |tail: &[u8]| {
        let mut f = vec![ACK, 0, 0, 0, (8 + tail.len()) as u8];
        f.extend_from_slice(&7u64.to_be_bytes());
        f.extend_from_slice(tail);
        Frame::parse(&f)
    };
    let malformed = Err(FrameError::Malformed { kind: "ack" });
    assert_eq!(ack(&[]), malformed);
    assert_eq!(ack(&[3]), malformed);
    assert_eq!(ack(&[1, b'x']), malformed);
    assert_eq!(ack(&[2, 0xff]), malformed);
    assert_eq!(
        Frame::parse(&[PING, 0, 0, 0, 1, 0]),
        Err(FrameError::Malformed { kind: "ping" })
    );
    assert_eq!(
        Frame::parse(&[RECEIVED, 0, 0, 0, 1, 0]),
        Err(FrameError::Malformed { kind: "received" })
    );
    assert_eq!(
        Frame::parse(&[ABANDON + 1, 0, 0, 0, 0]),
        Err(FrameError::UnknownKind(ABANDON + 1))
    );
    // A Welcome whose rollback is neither held nor released.
    let mut bytes = welcome(1, Some(Rolled { to: 1, held: true })).to_bytes();
    *bytes.last_mut().unwrap() = 2;
    assert_eq!(
        Frame::parse(&bytes),
        Err(FrameError::Malformed { kind: "welcome" })
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

/// A chunk carries at least one byte and at most [`MAX_CHUNK`], and says
/// plainly whether it was paced; a stream's other frames have exactly
/// their fields.
#[test]
fn chunks_out_of_bounds_and_stream_frames_of_the_wrong_length_are_malformed() {
    let chunk = |len: u32, paced: u8| {
        let mut p = len.to_be_bytes().to_vec();
        p.push(paced);
        parse_payload(CHUNK, &p)
    };
    let malformed = Err(FrameError::Malformed { kind: "chunk" });
    assert_eq!(chunk(0, 1), malformed);
    assert_eq!(chunk(MAX_CHUNK + 1, 1), malformed);
    assert_eq!(chunk(u32::MAX, 0), malformed);
    assert_eq!(chunk(5, 2), malformed);
    assert_eq!(
        chunk(5, 0),
        Ok(Frame::Chunk {
            len: 5,
            paced: false
        })
    );
    assert_eq!(parse_payload(CHUNK, &[0, 0, 0, 5]), malformed);
    assert_eq!(
        parse_payload(BEGIN, &[0]),
        Err(FrameError::Malformed { kind: "begin" })
    );
    assert_eq!(
        parse_payload(ABANDON, &[0]),
        Err(FrameError::Malformed { kind: "abandon" })
    );
    assert_eq!(
        parse_payload(SEALED, &[0; 47]),
        Err(FrameError::Malformed { kind: "sealed" })
    );
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
fn long_hook_failures_are_cut_on_a_char_boundary() {
    let f = Frame::Ack {
        seq: 1,
        hook: HookOutcome::Failed("é".repeat(5000)),
    };
    let (back, _) = Frame::parse(&f.to_bytes()).unwrap().unwrap();
    let Frame::Ack {
        hook: HookOutcome::Failed(why),
        ..
    } = back
    else {
        panic!("{back:?}")
    };
    assert!(why.len() <= MAX_REASON && why.len() > MAX_REASON - 2);
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

/// A listing entry's path is never longer than a valid path, and an entry
/// cut short is malformed (not read as a shorter listing).
#[test]
fn listings_with_bad_entries_are_malformed() {
    let long = "a".repeat(crate::paths::MAX_PATH_BYTES + 1);
    let mut payload = (long.len() as u16).to_be_bytes().to_vec();
    payload.extend_from_slice(long.as_bytes());
    payload.extend_from_slice(&[0; 32]);
    assert!(parse_payload(LISTING, &payload).is_err());
    let whole = Frame::Listing {
        entries: vec![("a".into(), [1; 32])],
    }
    .to_bytes();
    assert!(parse_payload(LISTING, &whole[HEADER_LEN..whole.len() - 1]).is_err());
    assert_eq!(Frame::listed_len("a"), whole.len() - HEADER_LEN);
}
