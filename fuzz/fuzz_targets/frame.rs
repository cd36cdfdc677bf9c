//! Frames from a peer: `Frame::parse` over arbitrary bytes, read the way
//! a connection reads a stream (frame after frame until one is incomplete
//! or refused). Every frame it decodes must encode back to the bytes that
//! decode to the same frame, so what a peer can say is exactly what
//! shipper itself says.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shipper::proto::frame::Frame;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((frame, used))) = Frame::parse(&data[at..]) {
        assert!(used > 0 && used <= data.len() - at, "claimed {used} bytes");
        let bytes = frame.to_bytes();
        assert_eq!(
            Frame::parse(&bytes),
            Ok(Some((frame.clone(), bytes.len()))),
            "a {used}-byte frame does not encode back to itself"
        );
        at += used;
    }
});
