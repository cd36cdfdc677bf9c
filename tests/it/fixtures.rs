//! Bundles kept in fixtures/: every manifest format written by an earlier
//! build must stay readable. Write the current format's (only when the
//! format changes on purpose) with
//! `cargo test --test it -- --ignored regenerate_current_format_fixtures`.

use std::path::{Path, PathBuf};

use shipper::bundle::pack::{Limits, PackItem};

use crate::util::*;

/// Format 1 (plain part hashes) and 2 (part hashes on the file's BLAKE3
/// tree).
const FORMATS: [u32; 2] = [1, 2];

fn fixture_dir(format: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/format{format}"))
}

/// The tree after both fixture bundles: what replay must produce.
fn expected() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("index.html", b"<h1>v2</h1>".to_vec()),
        (
            "2026/11/page one.html",
            "<p>été</p>".repeat(100).into_bytes(),
        ),
        ("img/pixel.png", noise(3000, 11)),
        ("big.bin", noise(20_000, 5)),
    ]
}

#[test]
#[ignore = "writes fixtures/; run on purpose only"]
fn regenerate_current_format_fixtures() {
    let env = Env::new();
    let dir = fixture_dir(shipper::bundle::manifest::FORMAT);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    env.write("index.html", "<h1>v1</h1>");
    env.write("gone.txt", "deleted by bundle 2");
    env.write("2026/11/page one.html", "<p>été</p>".repeat(100));
    env.write("img/pixel.png", noise(3000, 11));
    env.write("big.bin", noise(20_000, 5));
    // Small parts so the fixture holds a multi-part file.
    let limits = Limits::new(8192, 1 << 20, 100_000);
    let mut bundles = pack_items(&env.src(), &dir, "fixture", 1, limits, upserts(&env.src()));
    std::fs::remove_file(env.src().join("gone.txt")).unwrap();
    env.write("index.html", "<h1>v2</h1>");
    let items = vec![PackItem::upsert("index.html"), PackItem::delete("gone.txt")];
    let next = bundles.len() as u64 + 1;
    bundles.extend(pack_items(&env.src(), &dir, "fixture", next, limits, items));
    assert_eq!(bundles.len(), 2);
}

#[test]
fn every_formats_fixtures_replay_to_the_expected_tree() {
    assert!(FORMATS.contains(&shipper::bundle::manifest::FORMAT));
    for format in FORMATS {
        replay_fixtures(format);
    }
}

/// Replay the fixtures of `format`, newest first, into an empty root.
fn replay_fixtures(format: u32) {
    let env = Env::new();
    let mut bundles: Vec<PathBuf> = std::fs::read_dir(fixture_dir(format))
        .expect("the fixtures of every format exist")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "zip"))
        .collect();
    bundles.sort();
    assert_eq!(bundles.len(), 2);
    let restored = env.path().join("restored");
    let mut args = vec![
        "replay".to_string(),
        "--root".into(),
        restored.to_string_lossy().into_owned(),
    ];
    args.extend(
        bundles
            .iter()
            .rev()
            .map(|b| b.to_string_lossy().into_owned()),
    );
    let out = shipper(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));
    let got = tree(&restored);
    let want: std::collections::BTreeMap<String, Vec<u8>> = expected()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(got, want, "format {format}");
}
