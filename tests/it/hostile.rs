//! Hostile bundles (fixtures/hostile, made by make.py there) are refused
//! whole by both paths, replay and network, with root untouched and
//! nothing written outside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shipper::proto::Frame;

use shipper::proto::refusal::RefusalKind;

use crate::util::*;

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hostile")
}

fn cases() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(hostile_dir().join("EXPECT")).expect("fixtures/hostile/EXPECT");
    let v: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert!(v.len() >= 30, "hostile fixtures missing");
    v
}

/// Every file below `dir` with its content, leaving out shipper's own
/// (empty) staging directories beside root.
fn everything(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(dir)
        .into_iter()
        .filter(|(k, _)| !k.contains(".shipper-"))
        .collect()
}

fn hostile_env() -> Env {
    let env = Env::new();
    std::fs::write(env.root().join("existing.html"), "served before").unwrap();
    std::fs::create_dir_all(env.path().join("outside")).unwrap();
    std::fs::write(env.path().join("outside/victim"), "must survive").unwrap();
    env
}

/// Send the hostile bundle `name` to the receiver at `addr`, as sender
/// "hostile" sequence 1, and return its answer.
pub async fn send_hostile(addr: std::net::SocketAddr, name: &str) -> Frame {
    let bundle = hostile_dir().join(format!("{name}.zip"));
    let size = std::fs::metadata(&bundle).unwrap().len();
    let hash = *shipper::hash::hash_file(&bundle).unwrap().as_bytes();
    let (mut c, _) = crate::bundles::session_as(addr, "hostile").await;
    crate::bundles::send_file(&mut c, 1, &bundle, size, hash).await
}

#[test]
fn replay_refuses_every_hostile_bundle_and_touches_nothing() {
    for (name, expect) in cases() {
        let env = hostile_env();
        let before = everything(env.path());
        let bundle = hostile_dir().join(format!("{name}.zip"));
        let out = shipper(&[
            "replay",
            "--root",
            env.root().to_str().unwrap(),
            bundle.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{name}: accepted");
        let t = text(&out);
        assert!(
            t.contains(&expect),
            "{name}: refusal does not mention {expect:?}: {t}"
        );
        assert!(
            t.contains(&format!("{name}.zip")),
            "{name}: refusal does not name the bundle: {t}"
        );
        assert_eq!(
            everything(env.path()),
            before,
            "{name}: something was written"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_path_refuses_every_hostile_bundle_and_touches_nothing() {
    let env = hostile_env();
    let r = env.start_receiver("").await;
    let before = everything(env.path());
    for (name, expect) in cases() {
        match send_hostile(r.addr, &name).await {
            Frame::Refuse {
                seq: 1,
                kind,
                reason,
                ..
            } => {
                assert!(
                    reason.contains(&expect),
                    "{name}: refusal {reason:?} does not mention {expect:?}"
                );
                // Sending a hostile bundle again cannot make it acceptable;
                // only a part set the receiver dropped may be taken again
                // (without the dropped set).
                if !reason.contains(".shipper/parts/") {
                    assert_eq!(kind, RefusalKind::Permanent, "{name}: {reason}");
                }
            }
            f => panic!("{name}: expected a refusal, got {f:?}"),
        }
    }
    // A refused bundle's incoming file is removed off the runtime, just
    // after the refusal is answered: give it the usual deadline.
    let end = std::time::Instant::now() + DEADLINE;
    while everything(env.path()) != before && std::time::Instant::now() < end {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        everything(env.path()),
        before,
        "a hostile bundle wrote something"
    );
    r.stop().await;
}

#[test]
fn a_symlink_planted_in_root_cannot_redirect_writes_or_deletions() {
    let env = hostile_env();
    // Someone plants root/link -> ../outside.
    std::os::unix::fs::symlink(env.path().join("outside"), env.root().join("link")).unwrap();
    env.write("link/victim", "overwritten");
    let write = crate::bundles::pack(&env.src(), &env.path().join("out1"), 1, &[]);
    std::fs::remove_dir_all(env.src().join("link")).unwrap();
    env.write("other.html", "x");
    let delete = crate::bundles::pack(&env.src(), &env.path().join("out2"), 2, &["link/victim"]);
    let before = everything(env.path());
    for b in [&write.path, &delete.path] {
        let out = shipper(&[
            "replay",
            "--root",
            env.root().to_str().unwrap(),
            b.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "accepted {}", b.display());
        assert!(text(&out).contains("symlink"), "{}", text(&out));
    }
    assert_eq!(
        std::fs::read(env.path().join("outside/victim")).unwrap(),
        b"must survive"
    );
    // Refused whole: the other file of the deleting bundle was not published.
    assert_eq!(everything(env.path()), before);
}

#[test]
fn bundles_over_the_receivers_limits_are_refused() {
    let env = hostile_env();
    for i in 0..3 {
        env.write(&format!("f{i}.html"), "x");
    }
    let b = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
    let cfg = env.config_file(
        "limits.toml",
        &env.receiver_toml("127.0.0.1:0", "max_files_per_bundle = 2\n"),
    );
    let out = shipper(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        b.path.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("over the limit of 2"), "{}", text(&out));
    assert_eq!(tree(&env.root()).len(), 1, "root changed");
}

/// A copy of `bundle` at `out` whose manifest is `f` of the original.
fn with_manifest(bundle: &Path, out: &Path, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    use std::io::{Read, Write};
    let mut zin = zip::ZipArchive::new(std::fs::File::open(bundle).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(out).unwrap());
    let mut manifest = Vec::new();
    for i in 0..zin.len() {
        let name = zin.by_index_raw(i).unwrap().name().unwrap().into_owned();
        if name == ".shipper/manifest.json" {
            zin.by_index(i).unwrap().read_to_end(&mut manifest).unwrap();
        } else {
            zout.raw_copy_file(zin.by_index_raw(i).unwrap()).unwrap();
        }
    }
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zout.start_file(".shipper/manifest.json", options).unwrap();
    zout.write_all(&f(manifest)).unwrap();
    zout.finish().unwrap();
}

/// Replay `bundle` through a receiver config allowing `max_files` entries.
fn replay_with_limit(env: &Env, bundle: &Path, max_files: usize) -> std::process::Output {
    let cfg = env.config_file(
        "limits.toml",
        &env.receiver_toml(
            "127.0.0.1:0",
            &format!("max_files_per_bundle = {max_files}\n"),
        ),
    );
    shipper(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ])
}

/// A manifest padded with 2 MiB of whitespace was read and parsed whole
/// (anything up to 256 MiB was), whatever the receiver's entry limit.
#[test]
fn a_manifest_larger_than_the_entry_limit_needs_is_refused_unparsed() {
    let env = hostile_env();
    env.write("a.html", "A");
    let b = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
    let padded = env.path().join("padded.zip");
    with_manifest(&b.path, &padded, |mut m| {
        m.resize(m.len() + (2 << 20), b' ');
        m
    });
    let out = replay_with_limit(&env, &padded, 10);
    assert!(!out.status.success(), "accepted: {}", text(&out));
    assert!(
        text(&out).contains("manifest of 2") && text(&out).contains("entries need at most"),
        "{}",
        text(&out)
    );
    assert_eq!(tree(&env.root()).len(), 1, "root changed");
    // The same bundle within a limit whose manifests may be that large.
    let out = replay_with_limit(&env, &padded, 1000);
    assert!(out.status.success(), "{}", text(&out));
}

/// Files are unpacked on every core, each worker taking every other file:
/// one damaged file deep in a bundle of many (here the 37th of 48) still
/// refuses the whole bundle, naming it, with root untouched.
#[test]
fn one_damaged_file_among_many_unpacked_in_parallel_refuses_the_bundle() {
    let env = hostile_env();
    for i in 0..48 {
        env.write(&format!("p/{i:02}.html"), format!("page {i} ").repeat(40));
    }
    let b = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
    let damaged = env.path().join("damaged.zip");
    with_manifest(&b.path, &damaged, |m| {
        let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        let files = v["files"].as_array_mut().unwrap();
        let f = files.iter_mut().find(|f| f["path"] == "p/36.html").unwrap();
        f["hash"] = blake3::hash(b"not this").to_hex().to_string().into();
        serde_json::to_vec(&v).unwrap()
    });
    let before = tree(&env.root());
    let out = replay_with_limit(&env, &damaged, 1000);
    assert!(!out.status.success(), "accepted: {}", text(&out));
    assert!(
        text(&out).contains("p/36.html") && text(&out).contains("does not match its hash"),
        "{}",
        text(&out)
    );
    assert!(tree(&env.root()) == before, "root changed");
    // The undamaged bundle applies every file.
    let out = replay_with_limit(&env, &b.path, 1000);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&env.root()).len(), 49);
}

/// A manifest listing more entries than the limit was parsed into
/// structures and every path checked and NFC-normalised before its count
/// was compared with the limit: here the bad path was found first.
#[test]
fn a_manifest_over_the_entry_limit_is_refused_before_its_paths_are_checked() {
    let env = hostile_env();
    env.write("a.html", "A");
    let b = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
    let many = env.path().join("many.zip");
    with_manifest(&b.path, &many, |m| {
        let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        let mut deletions: Vec<String> = (0..50).map(|i| format!("gone/{i}")).collect();
        deletions.push("../outside/victim".into());
        v["deletions"] = deletions.into();
        serde_json::to_vec(&v).unwrap()
    });
    let out = replay_with_limit(&env, &many, 10);
    assert!(!out.status.success(), "accepted: {}", text(&out));
    assert!(
        text(&out).contains("52 entries, over the limit of 10"),
        "{}",
        text(&out)
    );
    assert_eq!(tree(&env.root()).len(), 1, "root changed");
}

/// The end of `bundle` rewritten as Zip64 whose directory claims `entries`.
fn claiming_entries(bundle: &[u8], entries: u64) -> Vec<u8> {
    let end = bundle.len() - 22;
    assert_eq!(
        &bundle[end..end + 4],
        b"PK\x05\x06",
        "plain zip end expected"
    );
    let le32 = |at: usize| u32::from_le_bytes(bundle[at..at + 4].try_into().unwrap());
    let (cd_size, cd_start) = (u64::from(le32(end + 12)), u64::from(le32(end + 16)));
    let mut out = bundle[..end].to_vec();
    let record = out.len() as u64;
    out.extend_from_slice(b"PK\x06\x06");
    out.extend_from_slice(&44u64.to_le_bytes());
    out.extend_from_slice(&[45, 0, 45, 0]); // versions
    out.extend_from_slice(&[0; 8]); // disk numbers
    out.extend_from_slice(&entries.to_le_bytes());
    out.extend_from_slice(&entries.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_start.to_le_bytes());
    out.extend_from_slice(b"PK\x06\x07");
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&record.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&[0xff; 4]);
    out.extend_from_slice(&[0xff; 8]);
    out.extend_from_slice(&[0; 2]);
    out
}

/// A zip's directory was indexed whole (one allocation per entry it
/// claims, up to the size of the bundle) before its entry count was
/// compared with the limit; a claim of millions was not even refused for
/// its count.
#[test]
fn a_zip_claiming_millions_of_entries_is_refused_before_its_directory_is_read() {
    let env = hostile_env();
    env.write("a.html", "A");
    let b = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
    let bytes = std::fs::read(&b.path).unwrap();
    let claims = env.path().join("claims.zip");
    std::fs::write(&claims, claiming_entries(&bytes, 5_000_000)).unwrap();
    let out = shipper(&[
        "replay",
        "--root",
        env.root().to_str().unwrap(),
        claims.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "accepted: {}", text(&out));
    assert!(
        text(&out).contains("5000000 zip entries, over the limit of 100000"),
        "{}",
        text(&out)
    );
    // Rewritten honestly, the same end is read like any Zip64 bundle.
    let honest = env.path().join("honest.zip");
    std::fs::write(&honest, claiming_entries(&bytes, 2)).unwrap();
    let out = shipper(&[
        "replay",
        "--root",
        env.root().to_str().unwrap(),
        honest.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(env.root().join("a.html")).unwrap(), b"A");
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use shipper::bundle::apply::{self, Target};

    fn valid_bundle() -> Vec<u8> {
        let env = Env::new();
        env.write("index.html", "<h1>hello</h1>".repeat(50));
        env.write("img/a.png", noise(3000, 1));
        env.write("dir/sub/b.txt", "bee");
        std::fs::read(
            crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &["old.html"]).path,
        )
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Damaged bundles (bytes flipped, or cut short) never panic the
        /// validator, and either apply exactly what their manifest lists
        /// or leave root exactly as it was. Nothing appears outside root.
        #[test]
        fn damaged_bundles_apply_whole_or_not_at_all(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = valid_bundle();
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            if let Some(c) = cut {
                bytes.truncate(c.index(bytes.len()));
            }
            let env = hostile_env();
            let b = env.path().join("damaged.zip");
            std::fs::write(&b, &bytes).unwrap();
            let before = everything(env.path());
            let staging = apply::sibling_staging(&env.root());
            let target = Target { parts: staging.with_extension("parts"), root: env.root(), staging, policy: Default::default(), keep: None, snapshot: false };
            target.prepare().unwrap();
            match apply::open(&b, &Default::default()).and_then(|o| {
                let m = o.manifest.clone();
                apply::apply(&target, o).map(|_| m)
            }) {
                Err(_) => prop_assert_eq!(everything(env.path()), before),
                Ok(m) => {
                    let mut expected: BTreeMap<String, Vec<u8>> = before;
                    let root_tree = tree(&env.root());
                    for f in &m.files {
                        prop_assert!(root_tree.contains_key(&f.path));
                        expected.insert(format!("www/{}", f.path), root_tree[&f.path].clone());
                    }
                    expected.insert("damaged.zip".into(), bytes.clone());
                    prop_assert_eq!(everything(env.path()), expected);
                }
            }
        }
    }
}
