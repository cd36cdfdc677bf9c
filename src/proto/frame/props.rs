//! Property tests of the frame codec: arbitrary and corrupted bytes never
//! panic, and every frame round-trips.

use super::*;
use proptest::prelude::*;

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), "[a-zA-Z0-9._-]{0,64}")
            .prop_map(|(version, sender)| Frame::Hello { version, sender }),
        (
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<[u64; 4]>(),
            any::<Option<(u64, bool)>>()
        )
            .prop_map(|(last_applied, instance, [a, b, c, d], rolled)| {
                Frame::Welcome {
                    last_applied,
                    instance,
                    accepts: Accepts {
                        max_entries: a,
                        max_bundle_size: b,
                        max_file_size: c,
                        max_unpacked: d,
                    },
                    rolled_back: rolled.map(|(to, held)| Rolled { to, held }),
                }
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(seq, size)| Frame::Bundle { seq, size }),
        (any::<u64>(), any::<[u8; 32]>()).prop_map(|(size, hash)| Frame::Trailer { size, hash }),
        (any::<u64>(), 0u8..3, ".{0,100}").prop_map(|(seq, outcome, why)| Frame::Ack {
            seq,
            hook: match outcome {
                0 => HookOutcome::NotRun,
                1 => HookOutcome::Ran,
                _ => HookOutcome::Failed(why),
            },
        }),
        (any::<u64>(), 0..3u8, "[a-z/]{0,20}", ".{0,100}").prop_map(|(seq, kind, path, reason)| {
            Frame::Refuse {
                seq,
                kind: match kind {
                    0 => RefusalKind::Retry,
                    1 => RefusalKind::Permanent,
                    _ => RefusalKind::NeedsContent,
                },
                path: (!path.is_empty()).then_some(path),
                reason,
            }
        }),
        Just(Frame::Ping),
        Just(Frame::Begin),
        Just(Frame::Abandon),
        (1..=MAX_CHUNK, any::<bool>()).prop_map(|(len, paced)| Frame::Chunk { len, paced }),
        (any::<u64>(), any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(seq, size, hash)| Frame::Sealed { seq, size, hash }),
        any::<[u64; 3]>().prop_map(|[seq, bytes, micros]| Frame::Received { seq, bytes, micros }),
        (any::<u16>(), "[a-zA-Z0-9._-]{0,64}")
            .prop_map(|(version, sender)| Frame::Inquire { version, sender }),
        proptest::collection::vec(("[a-zé/.]{1,40}", any::<[u8; 32]>()), 0..20)
            .prop_map(|entries| Frame::Listing { entries }),
        any::<[u64; 3]>().prop_map(|[files, hashed, other_senders]| Frame::Listed {
            files,
            hashed,
            other_senders
        }),
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
