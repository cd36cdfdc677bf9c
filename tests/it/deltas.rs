//! A large file that changed in one region sends only that region: the
//! receiver rebuilds it from the version it holds, checks the whole-file
//! hash, and a receiver whose copy is not that version gets the file whole.

use shipper::bundle::Manifest;

use crate::util::*;

const BIG: usize = 12 << 20;

/// Bytes of content a delta carries.
fn carried(m: &Manifest) -> u64 {
    m.deltas[0].data_len()
}

/// `body` with `len` bytes from `at` replaced by noise of seed `seed`.
fn changed(body: &[u8], at: usize, len: usize, seed: u64) -> Vec<u8> {
    let mut out = body.to_vec();
    out[at..at + len].copy_from_slice(&noise(len, seed));
    out
}

/// Wait until the sender holds `n` signatures: it signs large files it
/// packed whole in the background, when nothing else wants the CPU.
async fn signed(env: &Env, n: usize) {
    let dir = env.path().join("state-s/signatures");
    wait_until("the large files signed", || {
        std::fs::read_dir(&dir).is_ok_and(|d| d.count() == n)
    })
    .await;
}

/// Wait until root's `rel` is `body`.
async fn arrived(env: &Env, rel: &str, body: &[u8]) {
    wait_until("the new version in root", || {
        std::fs::read(env.root().join(rel)).is_ok_and(|b| b == body)
    })
    .await;
}

/// What each archived bundle carried: its sequence, files whole, deltas.
fn carried_by(env: &Env) -> Vec<(u64, Vec<String>, Vec<String>)> {
    let paths = |v: Vec<String>| v;
    manifests(env)
        .into_iter()
        .map(|m| {
            let files = m.files.into_iter().map(|f| f.path).collect();
            let parts = m
                .parts
                .into_iter()
                .map(|p| format!("{} part {}", p.path, p.index));
            let deltas = m.deltas.into_iter().map(|d| d.path).collect();
            (
                m.seq,
                paths(files).into_iter().chain(parts).collect(),
                deltas,
            )
        })
        .collect()
}

/// The first archived bundle with a delta, after `seq`; what every bundle
/// carried if none comes.
async fn delta_after(env: &Env, seq: u64) -> Manifest {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let found = manifests(env)
            .into_iter()
            .find(|m| m.seq > seq && !m.deltas.is_empty());
        if let Some(m) = found {
            return m;
        }
        assert!(
            std::time::Instant::now() < end,
            "no delta after bundle {seq}: {:?}",
            carried_by(env)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Ship a 12 MiB file (whole with `extra`'s limits, or in parts), then
/// change it in the middle, then insert near its start, then restart the
/// sender and change it again: each change sends about the region changed.
async fn each_change_sends_about_its_region(extra: &str) {
    let env = Env::new();
    let v1 = noise(BIG, 1);
    env.write("media/video.mp4", &v1);
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, extra);
    wait_in_sync(&env).await;
    wait_until("the first ship archived", || !env.archived().is_empty()).await;
    signed(&env, 1).await;

    let v2 = changed(&v1, BIG / 2, 512 << 10, 2);
    env.write("media/video.mp4", &v2);
    arrived(&env, "media/video.mp4", &v2).await;
    let m = delta_after(&env, 0).await;
    assert!(m.files.is_empty() && m.parts.is_empty(), "{m:?}");
    let sent = carried(&m);
    assert!((512 << 10..1 << 20).contains(&sent), "{sent} bytes carried");

    let mut v3 = v2.clone();
    v3.splice(1000..1000, noise(3333, 3));
    env.write("media/video.mp4", &v3);
    arrived(&env, "media/video.mp4", &v3).await;
    let m = delta_after(&env, m.seq).await;
    assert!(carried(&m) < 1 << 20, "{} bytes carried", carried(&m));
    assert_eq!(m.deltas[0].size, v3.len() as u64);

    // Signatures outlive the sender: changed while it is down, the file
    // goes as a delta from the restart's catch-up. (Stopped once its last
    // bundle is acknowledged: else that bundle's paths are in doubt, and
    // ship whole.)
    let config = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), extra));
    let acked = |v: &serde_json::Value| v["receivers"][0]["last_ack_seq"].as_u64() >= Some(m.seq);
    wait_status(&config, "the last delta acknowledged", acked).await;
    s.stop().await;
    let v4 = changed(&v3, BIG - 300_000, 100_000, 4);
    env.write("media/video.mp4", &v4);
    let s = env.start_sender(r.addr, extra);
    arrived(&env, "media/video.mp4", &v4).await;
    let m = delta_after(&env, m.seq).await;
    assert!(carried(&m) < 1 << 20, "{} bytes carried", carried(&m));
    assert_eq!(tree(&env.root()), tree(&env.src()));
    s.stop().await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_changed_in_one_region_sends_about_that_region() {
    each_change_sends_about_its_region("").await;
}

/// The same for a file shipped first as parts spanning bundles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_first_shipped_in_parts_changes_by_delta_too() {
    each_change_sends_about_its_region("chunk_size = \"2MiB\"\nmax_bundle_size = \"8MiB\"\n").await;
}

/// A receiver whose copy is not the version the delta is made from (edited
/// there) refuses it naming the file, which then travels whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_the_receiver_cannot_rebuild_is_sent_whole() {
    let env = Env::new();
    let v1 = noise(BIG, 5);
    env.write("big.bin", &v1);
    let metrics = free_addr();
    let r = env
        .start_receiver(&format!("metrics = \"{metrics}\"\n"))
        .await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    wait_until("the first ship archived", || !env.archived().is_empty()).await;
    signed(&env, 1).await;
    std::fs::write(env.root().join("big.bin"), changed(&v1, 10, 10, 6)).unwrap();

    let v2 = changed(&v1, BIG / 3, 200_000, 7);
    env.write("big.bin", &v2);
    arrived(&env, "big.bin", &v2).await;
    let whole = |m: &Manifest| m.files.iter().any(|f| f.path == "big.bin");
    archived_where(&env, |m| m.seq > 1 && whole(m)).await;
    assert!(
        manifests(&env).iter().all(|m| m.deltas.is_empty()),
        "a delta was applied to a root that lacked its base"
    );
    let text = scrape(metrics).await;
    let refused = text
        .lines()
        .find(|l| l.starts_with("shipper_bundles_refused_total") && l.contains("needs_content"));
    assert!(
        refused.is_some_and(|l| l.ends_with(" 1")),
        "one refusal for the delta: {refused:?}"
    );
    s.stop().await;
    r.stop().await;
}

/// A delta bundle replayed on an empty root names the file and the
/// version it needs, and applies nothing; replayed on a root that holds
/// the new version already (applied again after a crash), it applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_delta_names_what_it_needs_or_finds_it_done() {
    let env = Env::new();
    let v1 = noise(BIG, 8);
    env.write("big.bin", &v1);
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    wait_until("the first ship archived", || !env.archived().is_empty()).await;
    signed(&env, 1).await;
    let v2 = changed(&v1, 4096, 4096, 9);
    env.write("big.bin", &v2);
    arrived(&env, "big.bin", &v2).await;
    let m = delta_after(&env, 0).await;
    s.stop().await;
    r.stop().await;
    let bundle = env
        .archived()
        .into_iter()
        .find(|b| b.to_string_lossy().contains(&format!("{:020}", m.seq)))
        .expect("the delta's bundle archived");

    let replay = |root: &std::path::Path| {
        owned(&[
            "replay",
            "--root",
            root.to_str().unwrap(),
            bundle.to_str().unwrap(),
        ])
    };
    let empty = env.path().join("empty");
    let out = shipper_async(replay(&empty)).await;
    assert!(!out.status.success(), "applied: {}", text(&out));
    let t = text(&out);
    let want = format!("\"big.bin\" (its previous version ({BIG} bytes)");
    assert!(t.contains(&want), "{want} not in: {t}");
    assert!(tree(&empty).is_empty(), "something applied");

    let out = shipper_async(replay(&env.root())).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(env.root().join("big.bin")).unwrap(), v2);

    let out = shipper_async(owned(&["inspect", bundle.to_str().unwrap()])).await;
    let t = text(&out);
    assert!(
        t.contains("deltas (rebuilt from root's previous version): 1"),
        "{t}"
    );
}

/// A large file's signature is kept while the file is, and goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_files_signature_goes_when_the_file_does() {
    let env = Env::new();
    env.write("big.bin", noise(5 << 20, 10));
    env.write("small.html", "hi");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    let signatures = env.path().join("state-s/signatures");
    let count = || std::fs::read_dir(&signatures).map_or(0, |d| d.count());
    signed(&env, 1).await;
    assert_eq!(count(), 1, "one signature, for the large file only");
    std::fs::remove_file(env.src().join("big.bin")).unwrap();
    wait_in_sync(&env).await;
    wait_until("the signature removed", || count() == 0).await;
    s.stop().await;
    r.stop().await;
}

/// One delta a hostile sender crafts: path, base size, recipe, the content
/// it claims to make, and its entry's bytes.
type Crafted<'a> = (&'a str, u64, &'a str, &'a [u8], &'a [u8]);

/// A bundle of `deltas` as a hostile sender would craft it, with a wrong
/// `base_hash`.
fn crafted(dir: &std::path::Path, name: &str, deltas: &[Crafted<'_>]) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join(format!("{name}.zip"));
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    let mut list = Vec::new();
    for (p, base_size, recipe, new, data) in deltas {
        z.start_file(shipper::bundle::manifest::delta_entry_name(p), options)
            .unwrap();
        z.write_all(data).unwrap();
        list.push(serde_json::json!({"path": p, "base_size": base_size,
            "base_hash": "0".repeat(64), "recipe": recipe, "size": new.len(),
            "mtime": 0, "mtime_nsec": 0, "mode": 0o644,
            "hash": blake3::hash(new).to_hex().to_string()}));
    }
    let m = serde_json::json!({"format": 2, "sender": "hostile", "seq": 1, "created": 0,
        "files": [], "deletions": [], "deltas": list});
    z.start_file(".shipper/manifest.json", options).unwrap();
    z.write_all(m.to_string().as_bytes()).unwrap();
    z.finish().unwrap();
    path
}

/// Found by review: the receiver checked only what a delta made, so a
/// delta copying one byte of a root file, with the hash of a guessed byte,
/// was refused naming that file exactly when the guess was wrong (a second
/// delta that cannot apply kept root untouched): a sender could read any
/// root file of a size it knew, byte by byte. Now root's file must hash to
/// the delta's `base_hash` before anything is copied from it: every guess
/// is refused alike.
#[test]
fn a_crafted_delta_learns_nothing_of_a_root_file() {
    let env = Env::new();
    let secret = b"hunter2-pw";
    std::fs::write(env.root().join("private.txt"), secret).unwrap();
    let dir = env.path().join("crafted");
    std::fs::create_dir_all(&dir).unwrap();
    let refusals: std::collections::BTreeSet<bool> = (b'a'..=b'z')
        .chain(b'0'..=b'9')
        .map(|guess| {
            let b = crafted(
                &dir,
                &format!("g{guess}"),
                &[
                    ("private.txt", secret.len() as u64, "c0+1", &[guess], b""),
                    ("zz-missing", 1, "d1", b"x", b"x"),
                ],
            );
            let root = env.root();
            let out = shipper(&[
                "replay",
                "--root",
                root.to_str().unwrap(),
                b.to_str().unwrap(),
            ]);
            assert!(!out.status.success(), "applied: {}", text(&out));
            text(&out).contains("\"private.txt\"")
        })
        .collect();
    assert_eq!(
        refusals,
        [true].into(),
        "some guess told apart from the others"
    );
    assert_eq!(
        std::fs::read(env.root().join("private.txt")).unwrap(),
        secret
    );
}

/// A large file rewritten whole (a new encode) ships whole, signed from the
/// read that found the delta would not pay; and a large file renamed is
/// made from the receiver's copy and keeps its signature: the next change
/// of each is a delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_whole_rewrite_or_a_rename_the_next_change_is_a_delta() {
    let env = Env::new();
    env.write("a.bin", noise(BIG, 20));
    env.write("b.bin", noise(BIG, 21));
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    wait_until("the first ship archived", || !env.archived().is_empty()).await;
    signed(&env, 2).await;

    let a2 = noise(BIG, 22);
    env.write("a.bin", &a2);
    std::fs::rename(env.src().join("b.bin"), env.src().join("c.bin")).unwrap();
    let first = manifests(&env).iter().map(|m| m.seq).max().unwrap();
    wait_in_sync(&env).await;
    let whole = |m: &Manifest| m.files.iter().any(|f| f.path == "a.bin");
    let made = |m: &Manifest| m.copies.iter().any(|c| c.path == "c.bin");
    let mut seq = 0;
    wait_until("the rewrite and the rename archived", || {
        let after: Vec<Manifest> = manifests(&env)
            .into_iter()
            .filter(|m| m.seq > first)
            .collect();
        seq = after.iter().map(|m| m.seq).max().unwrap_or(0);
        after.iter().any(whole) && after.iter().any(made)
    })
    .await;

    let a3 = changed(&a2, 5000, 5000, 23);
    let c2 = changed(&noise(BIG, 21), BIG / 2, 5000, 24);
    env.write("a.bin", &a3);
    env.write("c.bin", &c2);
    arrived(&env, "a.bin", &a3).await;
    arrived(&env, "c.bin", &c2).await;
    let mut shipped = Vec::new();
    wait_until("both changes archived", || {
        let after = manifests(&env).into_iter().filter(|m| m.seq > seq);
        shipped = after
            .flat_map(|m| {
                let deltas = m.deltas.into_iter().map(|d| (d.path, "delta"));
                deltas.chain(m.files.into_iter().map(|f| (f.path, "whole")))
            })
            .collect();
        shipped.sort();
        shipped.len() >= 2
    })
    .await;
    assert_eq!(
        shipped,
        [("a.bin".into(), "delta"), ("c.bin".into(), "delta")]
    );
    s.stop().await;
    r.stop().await;
}
