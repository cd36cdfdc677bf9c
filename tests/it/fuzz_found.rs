//! Inputs the fuzz targets (`fuzz/`) found shipper mishandling, minimised
//! and kept in `fixtures/fuzz/TARGET/`, each checked here so the bug stays
//! fixed without a fuzzer.

use std::path::{Path, PathBuf};

use shipper::bundle::apply::{self, BundleError, Limits};
use shipper::bundle::manifest::ManifestError;
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

/// A bundle shipping "dir" and "dir/\u{fffd}" as files was applied and
/// acknowledged, but publishing the second replaced the file "dir" with a
/// directory: a file the bundle listed was not in root (fuzz target
/// `bundle`; its twin in fixtures/hostile is `file-and-directory`).
#[test]
fn a_file_that_is_also_a_directory_in_one_bundle_is_refused() {
    let bundle = found("bundle", "file-and-directory.zip");
    match apply::open(&bundle, &Limits::default()) {
        Err(BundleError::Manifest(ManifestError::Path { path, reason })) => {
            assert_eq!(path, "dir", "{reason}");
            assert!(
                reason.contains("as a file and as the directory"),
                "{reason}"
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(b) => panic!("opened, listing {:?}", b.manifest.entry_names()),
    }
}
