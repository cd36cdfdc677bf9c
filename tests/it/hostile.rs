//! Hostile bundles (fixtures/hostile, made by make.py there) are refused
//! whole by both paths, replay and network, with root untouched and
//! nothing written outside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shipper::proto::{Connection, Frame};
use tokio::net::TcpStream;

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
        let bundle = hostile_dir().join(format!("{name}.zip"));
        let size = std::fs::metadata(&bundle).unwrap().len();
        let hash = *shipper::bundle::hash_file(&bundle).unwrap().as_bytes();
        let mut c = Connection::new(TcpStream::connect(r.addr).await.unwrap());
        c.write_frame(&Frame::Hello {
            version: shipper::proto::frame::PROTOCOL_VERSION,
            sender: "hostile".into(),
        })
        .await
        .unwrap();
        assert!(matches!(
            c.expect_frame().await.unwrap(),
            Frame::Welcome { .. }
        ));
        c.write_frame(&Frame::Bundle { seq: 1, size })
            .await
            .unwrap();
        c.send_body(&bundle, size).await.unwrap();
        c.write_frame(&Frame::Trailer { size, hash }).await.unwrap();
        match c.expect_frame().await.unwrap() {
            Frame::Refuse { seq: 1, reason } => {
                assert!(
                    reason.contains(&expect),
                    "{name}: refusal {reason:?} does not mention {expect:?}"
                )
            }
            f => panic!("{name}: expected a refusal, got {f:?}"),
        }
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
            let target = Target { parts: staging.with_extension("parts"), root: env.root(), staging };
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
