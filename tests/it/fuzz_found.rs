//! Inputs the fuzz targets (`fuzz/`) found shipper mishandling, minimised
//! and kept in `fixtures/fuzz/TARGET/`, each checked here so the bug stays
//! fixed without a fuzzer.

use std::path::{Path, PathBuf};

use shipper::proto::frame::{Frame, FrameError};

fn found(target: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fuzz")
        .join(target)
        .join(name)
}

/// A `Refuse` frame with an 8 KiB reason decoded, and encoded back with the
/// reason cut to 4 KiB: a peer could say what shipper itself never says,
/// and the frame did not survive a round trip (fuzz target `frame`).
#[test]
fn a_refusal_longer_than_shipper_sends_is_malformed() {
    let bytes = std::fs::read(found("frame", "refuse-long-reason")).unwrap();
    assert_eq!(
        Frame::parse(&bytes),
        Err(FrameError::Malformed { kind: "refuse" })
    );
}
