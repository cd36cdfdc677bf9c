//! `sender.bucket` and `receiver.bucket`: bundles relayed through a real
//! S3-compatible server (s3s-fs, see `s3.rs`), to any number of
//! receivers, sealed so that the bucket itself is not trusted.

use object_store::{ObjectStore, PutPayload};

use crate::s3::{self, S3};
use crate::util::*;

/// A sender putting every bundle in `s3`'s bucket under `www`, and
/// nowhere else, sealed with `keys-s`.
fn sender_toml(env: &Env, s3: &S3, secret: &str, extra: &str) -> String {
    format!(
        "[sender]\nsource = \"src\"\nstate_dir = \"state-s\"\nid = \"test\"\ninterval = \"1s\"\nsettle = \"250ms\"\nkey_dir = \"keys-s\"\n{}{extra}",
        s3.keys(env.path(), "www", "s3-s.creds", secret)
    )
}

/// A receiver with root `name`, taking the bundles `allowed` sealed from
/// `s3`'s bucket under `www`.
fn receiver_toml(env: &Env, s3: &S3, name: &str, allowed: &str) -> String {
    format!(
        "[receiver]\nlisten = \"127.0.0.1:0\"\nroot = \"{name}\"\nstate_dir = \"state-{name}\"\narchive_dir = \"archive-{name}\"\nkey_dir = \"keys-r\"\nallowed_senders = [\"{allowed}\"]\nbucket_poll = \"200ms\"\n{}",
        s3.keys(env.path(), "www", "s3-r.creds", s3::SECRET_KEY)
    )
}

/// A test's place, its S3 server, and key pairs for the sender
/// (`keys-s`, whose fingerprint is returned) and the receivers (`keys-r`).
fn bucket_env() -> (Env, S3, String) {
    let env = Env::new();
    let s3 = S3::start(env.path());
    let s_fp = keygen(&env, "keys-s");
    keygen(&env, "keys-r");
    (env, s3, s_fp)
}

/// The sender of `sender_toml` with `extra`, started: its config file,
/// and the process.
fn start_sender(env: &Env, s3: &S3, extra: &str) -> (std::path::PathBuf, Daemon) {
    let file = env.config_file("sender.toml", &sender_toml(env, s3, s3::SECRET_KEY, extra));
    let sender = Daemon::start(&file, &env.path().join("sender.log"), None);
    (file, sender)
}

fn start_receiver(env: &Env, s3: &S3, name: &str, allowed: &str) -> Daemon {
    let file = env.config_file(
        &format!("{name}.toml"),
        &receiver_toml(env, s3, name, allowed),
    );
    Daemon::start(&file, &env.path().join(format!("{name}.log")), None)
}

fn in_step(env: &Env, roots: &[&str]) -> bool {
    let src = tree(&env.src());
    roots.iter().all(|r| tree(&env.path().join(r)) == src)
}

/// One sender, two receivers that only know the bucket: the existing
/// tree and every kind of change after it reach both, a third started
/// later catches up, and each bundle is uploaded once whatever the number
/// of receivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_take_every_change_from_the_bucket() {
    let (env, s3, s_fp) = bucket_env();
    env.write("index.html", "home");
    env.write("news/a.html", "a");
    let _r1 = start_receiver(&env, &s3, "www1", &s_fp);
    let _r2 = start_receiver(&env, &s3, "www2", &s_fp);
    let (_, sender) = start_sender(&env, &s3, "");
    wait_until("both roots hold the tree", || {
        in_step(&env, &["www1", "www2"])
    })
    .await;
    env.write("news/a.html", "a, changed");
    env.write("news/b.html", "b");
    std::fs::remove_file(env.src().join("index.html")).unwrap();
    std::fs::rename(env.src().join("news"), env.src().join("archive-2026")).unwrap();
    wait_until("both roots hold every change", || {
        in_step(&env, &["www1", "www2"])
    })
    .await;
    // A receiver started later takes every bundle from the first.
    let _r3 = start_receiver(&env, &s3, "www3", &s_fp);
    wait_until("the later receiver in step", || in_step(&env, &["www3"])).await;
    // Each bundle is in the bucket once: a zip and its seal.
    let zips = std::fs::read_dir(s3.object(&format!("www/b/{s_fp}")))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".zip"))
        .count();
    assert_eq!(zips, s3::seals(&s3, "www").len(), "{}", sender.log_text());
    assert!(zips >= 2, "{}", sender.log_text());
}

/// Whoever can write the bucket cannot publish through it. A zip
/// replaced after it was sealed, by another well-formed bundle of the same
/// number, is refused with the reason and applied once whole again; a
/// bundle with content of its own sealed with a key not in
/// `allowed_senders`, even in the sender's folder, is never applied, and
/// the sender's own bundles go on applying around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_foreign_bundle_in_the_bucket_is_never_applied() {
    let (env, s3, s_fp) = bucket_env();
    keygen(&env, "keys-x");
    env.write("a.html", "the sender's page");
    let (file, sender) = start_sender(&env, &s3, "");
    wait_until("a bundle sealed", || !s3::seals(&s3, "www").is_empty()).await;
    drop(sender);
    let seq = *s3::seals(&s3, "www").last().unwrap();
    let client = s3::client(&s3);
    let put = |key: String, bytes: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .put(&key.as_str().into(), PutPayload::from(bytes))
                .await
                .unwrap()
        }
    };
    let zip_key = s3::key("www", &s_fp, seq, "zip");
    let genuine = std::fs::read(s3.object(&zip_key)).unwrap();
    // Bundles of the same sender id and number with other content.
    let forge = |name: &str, n: u64| {
        let dir = env.path().join(format!("forged-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), "defaced").unwrap();
        let limits = shipper::bundle::pack::Limits::new(64 << 20, 256 << 20, 10_000);
        let packed = pack_items(&dir, &dir.join("out"), "test", n, limits, upserts(&dir));
        std::fs::read(&packed[0].path).unwrap()
    };
    put(zip_key.clone(), forge("a.html", seq)).await;

    let r = start_receiver(&env, &s3, "www1", &s_fp);
    wait_until("the replaced zip refused, in the log", || {
        r.log_text().contains("not the zip sealed")
    })
    .await;
    assert!(!env.path().join("www1/a.html").exists());

    // A stranger's seal over a bundle of its own, in the sender's folder,
    // numbered after what the sender will ship next.
    let stranger = shipper::tls::load_identity(&env.path().join("keys-x")).unwrap();
    let sealer = shipper::bucket::seal::Sealer::new(&stranger).unwrap();
    let url = shipper::bucket::url::BucketUrl::parse("s3://site/www").unwrap();
    let evil = forge("evil.html", seq + 50);
    let forged = sealer.seal(
        &url,
        "test",
        (seq + 50, seq, evil.len() as u64),
        &blake3::hash(&evil),
        (shipper::bucket::seal::Belongs::Chain, 0),
    );
    put(s3::key("www", &s_fp, seq + 50, "zip"), evil).await;
    put(
        s3::key("www", &s_fp, seq + 50, "seal"),
        serde_json::to_vec(&forged).unwrap(),
    )
    .await;

    // Whole again: applied; then the stranger's seal is looked at, and
    // refused; then the sender's next bundle applies too.
    put(zip_key, genuine).await;
    wait_until("the page applied once its zip is whole", || {
        std::fs::read(env.path().join("www1/a.html")).is_ok_and(|b| b == b"the sender's page")
    })
    .await;
    wait_until("the stranger's seal refused, in the log", || {
        r.log_text().contains("seal refused")
    })
    .await;
    let _sender = Daemon::start(&file, &env.path().join("sender-2.log"), None);
    env.write("b.html", "after the forged one");
    wait_until("root in step with the source", || in_step(&env, &["www1"])).await;
    assert!(!env.path().join("www1/evil.html").exists());
    assert!(
        s3.object(&s3::key("www", &s_fp, seq + 50, "seal")).exists(),
        "the stranger's objects stayed in the way"
    );
}

/// Credentials the server refuses are named in the sender's status and
/// log (the access key and where it came from), and nothing is lost:
/// with the right secret, everything ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_named_and_nothing_is_lost() {
    let (env, s3, s_fp) = bucket_env();
    env.write("a.html", "a");
    let file = env.config_file("sender.toml", &sender_toml(&env, &s3, "not-the-secret", ""));
    let sender = Daemon::start(&file, &env.path().join("sender.log"), None);
    let mut error = String::new();
    wait_until("the bucket's refusal in status", || {
        let out = shipper(&["status", "--config", file.to_str().unwrap(), "--json"]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        error = v["receivers"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        !error.is_empty()
    })
    .await;
    assert!(
        error.contains(s3::ACCESS_KEY) && error.contains("s3-s.creds"),
        "{error}"
    );
    drop(sender);
    let _r = start_receiver(&env, &s3, "www1", &s_fp);
    std::fs::write(
        env.path().join("sender.toml"),
        sender_toml(&env, &s3, s3::SECRET_KEY, ""),
    )
    .unwrap();
    let _sender = Daemon::start(&file, &env.path().join("sender-2.log"), None);
    wait_until("root in step once the secret is right", || {
        in_step(&env, &["www1"])
    })
    .await;
}

/// The server stopped while changes go on, then started again: the
/// bundles wait in the sender's outbox and the receivers catch up, nothing
/// lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stopped_and_started_again_loses_nothing() {
    let (env, mut s3, s_fp) = bucket_env();
    let _r = start_receiver(&env, &s3, "www1", &s_fp);
    let (file, _sender) = start_sender(&env, &s3, "");
    for i in 0..4 {
        env.write(&format!("p/{i}.html"), format!("page {i}"));
    }
    wait_until("the first pages in root", || in_step(&env, &["www1"])).await;
    s3.stop();
    for i in 4..8 {
        env.write(&format!("p/{i}.html"), format!("page {i}"));
    }
    wait_until("the sender's upload failing, in its status", || {
        let out = shipper(&["status", "--config", file.to_str().unwrap(), "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v["receivers"][0]["last_error"].is_string())
    })
    .await;
    s3.restart();
    for i in 8..10 {
        env.write(&format!("p/{i}.html"), format!("page {i}"));
    }
    std::fs::remove_file(env.src().join("p/1.html")).unwrap();
    // Behind the sender's backoff, which doubled while the server was away.
    wait_until_within(
        "root in step after the server came back",
        DEADLINE * 3,
        || in_step(&env, &["www1"]),
    )
    .await;
}

/// `shipper replay --config R --from-bucket` rebuilds a root from the
/// bucket's sealed bundles, a range of sequences at a time, and refuses a
/// zip that is not the one sealed before anything is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_takes_sealed_bundles_straight_from_the_bucket() {
    let (env, s3, s_fp) = bucket_env();
    env.write("a.html", "first");
    let (_, sender) = start_sender(&env, &s3, "");
    wait_until("a first bundle sealed", || {
        !s3::seals(&s3, "www").is_empty()
    })
    .await;
    env.write("b.html", "second");
    wait_until("a second bundle sealed", || {
        s3::seals(&s3, "www").len() >= 2
    })
    .await;
    drop(sender);
    let (first, second) = {
        let seals = s3::seals(&s3, "www");
        (seals[0], seals[1])
    };
    let rfile = env.config_file("www1.toml", &receiver_toml(&env, &s3, "www1", &s_fp));
    let replay = |range: &[&str]| {
        let mut args = vec![
            "replay",
            "--config",
            rfile.to_str().unwrap(),
            "--from-bucket",
        ];
        args.extend(range);
        shipper(&args)
    };
    let out = replay(&["--last", &first.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(env.path().join("www1/a.html").exists());
    assert!(
        !env.path().join("www1/b.html").exists(),
        "bundle {second} replayed too"
    );

    // The second, tampered: refused whole, naming it; nothing applied.
    let zip = s3.object(&s3::key("www", &s_fp, second, "zip"));
    let genuine = std::fs::read(&zip).unwrap();
    let mut tampered = genuine.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0xff;
    std::fs::write(&zip, &tampered).unwrap();
    let out = replay(&["--first", &second.to_string()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not the zip sealed"), "{}", text(&out));
    assert!(!env.path().join("www1/b.html").exists());

    std::fs::write(&zip, &genuine).unwrap();
    let out = replay(&["--first", &second.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(tree(&env.path().join("www1")), tree(&env.src()));
}

/// Two senders (two sites) sharing one prefix never overwrite each
/// other's bundles: each has a folder of its own, and each receiver takes
/// only the bundles of the sender it allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_sharing_a_prefix_each_reach_their_own_receivers() {
    let env = Env::new();
    let s3 = S3::start(env.path());
    let a_fp = keygen(&env, "keys-s");
    let b_fp = keygen(&env, "keys-b");
    keygen(&env, "keys-r");
    env.write("site-a.html", "a");
    let src_b = env.path().join("src-b");
    std::fs::create_dir_all(&src_b).unwrap();
    std::fs::write(src_b.join("site-b.html"), "b").unwrap();
    let a = env.config_file("a.toml", &sender_toml(&env, &s3, s3::SECRET_KEY, ""));
    let b_toml = sender_toml(&env, &s3, s3::SECRET_KEY, "")
        .replace("source = \"src\"", "source = \"src-b\"")
        .replace("state_dir = \"state-s\"", "state_dir = \"state-b\"")
        .replace("key_dir = \"keys-s\"", "key_dir = \"keys-b\"");
    let b = env.config_file("b.toml", &b_toml);
    let _sa = Daemon::start(&a, &env.path().join("a.log"), None);
    let _sb = Daemon::start(&b, &env.path().join("b.log"), None);
    let _ra = start_receiver(&env, &s3, "www-a", &a_fp);
    let _rb = start_receiver(&env, &s3, "www-b", &b_fp);
    for i in 0..3 {
        env.write(&format!("a-{i}.html"), format!("a {i}"));
        std::fs::write(src_b.join(format!("b-{i}.html")), format!("b {i}")).unwrap();
    }
    wait_until("each receiver holds its own site, whole", || {
        tree(&env.path().join("www-a")) == tree(&env.src())
            && tree(&env.path().join("www-b")) == tree(&src_b)
    })
    .await;
}

/// A receiver that takes from the bucket can be rolled back: while the
/// sender is held there its new bundles wait in the bucket (never
/// downloaded), and once released it takes them at the next poll, with
/// no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_bucket_receiver_takes_bundles_again_once_released() {
    let (env, s3, s_fp) = bucket_env();
    env.write("a.html", "a");
    let (_, _sender) = start_sender(&env, &s3, "");
    let r = start_receiver(&env, &s3, "www1", &s_fp);
    wait_until("the first page in root", || in_step(&env, &["www1"])).await;
    let first = *s3::seals(&s3, "www").last().unwrap();
    env.write("b.html", "b");
    wait_until("the second page in root", || in_step(&env, &["www1"])).await;
    let rfile = env.path().join("www1.toml");
    let rollback = |extra: &[&str]| {
        let mut args = vec!["rollback", "--config", rfile.to_str().unwrap()];
        args.extend(extra);
        shipper(&args)
    };
    let out = rollback(&["--to", &first.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!env.path().join("www1/b.html").exists());
    env.write("c.html", "c");
    wait_until("the held bundle passed over, in the log", || {
        r.log_text().contains("held")
    })
    .await;
    assert!(!env.path().join("www1/c.html").exists());
    let out = rollback(&["--release"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the page shipped while held, in root once released", || {
        env.path().join("www1/c.html").exists()
    })
    .await;
}

/// The sequences of `sender`'s objects under `prefix` whose names end
/// with `.ext` (`seal`: the chain, `base`: bases' members, `zip`: both).
fn objects(s3: &S3, sender: &str, ext: &str) -> Vec<u64> {
    numbered(&s3.object(&format!("www/b/{sender}")), &format!(".{ext}"))
}

/// The complete bases of `sender` in the bucket, by their first member.
fn bases(s3: &S3, sender: &str) -> Vec<u64> {
    numbered(&s3.object(&format!("www/bases/{sender}")), "")
}

/// The numbers N of the files in `dir` named `N` + `suffix`, in order.
fn numbered(dir: &std::path::Path, suffix: &str) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(suffix)?.parse().ok()
        })
        .collect();
    v.sort();
    v
}

/// What the bucket holds of `sender`, for a failed assertion to show.
fn listing(s3: &S3, sender: &str) -> String {
    format!(
        "chain {:?}, members {:?}, bases {:?}",
        objects(s3, sender, "seal"),
        objects(s3, sender, "base"),
        bases(s3, sender)
    )
}

/// Sender settings for a base every `secs` seconds, `keep` kept, and at
/// most `files` files per bundle when given.
fn base_settings(secs: u32, keep: u32, files: Option<u32>) -> String {
    let per_bundle = files.map(|n| format!("max_files_per_bundle = {n}\n"));
    format!(
        "bucket_base_every = \"{secs}s\"\nbucket_keep = {keep}\n{}",
        per_bundle.unwrap_or_default()
    )
}

/// The number after `name` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(name)? + name.len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The sequences a receiver's log says it applied.
fn applied(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("bundle applied"))
        .filter_map(|l| field(l, " seq="))
        .collect()
}

/// With a base due every 2 seconds and two kept, the bucket lets go of the
/// first bundles; a receiver started empty then takes the newest base and
/// the chain after it, one that was stopped meanwhile (behind what the
/// bucket keeps) does too, and one in step all along never downloads a
/// base.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_added_later_or_fallen_behind_catches_up_from_a_base() {
    let (env, s3, s_fp) = bucket_env();
    env.write("index.html", "home");
    env.write("news/a.html", "a");
    let r1 = start_receiver(&env, &s3, "www1", &s_fp);
    let r2 = start_receiver(&env, &s3, "www2", &s_fp);
    let bases_toml = base_settings(2, 2, None);
    let (_, sender) = start_sender(&env, &s3, &bases_toml);
    wait_until("both roots hold the tree", || {
        in_step(&env, &["www1", "www2"])
    })
    .await;
    drop(r2);
    // Two bundles of the chain while www2 is away, the first let go once
    // a later base is kept: www2 is then behind what the bucket keeps.
    let newest_chain = || *objects(&s3, &s_fp, "seal").last().unwrap();
    let before = newest_chain();
    env.write("news/a.html", "a, changed while www2 was away");
    wait_until("a bundle of the chain", || newest_chain() > before).await;
    let gone = newest_chain();
    env.write("news/b.html", "b");
    wait_until("another", || newest_chain() > gone).await;
    wait_until("www1 in step", || in_step(&env, &["www1"])).await;
    // Bases come only while the tree changes: it goes on changing until
    // two newer bases are kept and the first of those bundles is let go.
    let mut tick = 0;
    wait_until("the first of them let go, two bases kept", || {
        tick += 1;
        if tick % 50 == 0 {
            env.write("tick.html", format!("{tick}"));
        }
        bases(&s3, &s_fp).len() >= 2 && !objects(&s3, &s_fp, "seal").contains(&gone)
    })
    .await;
    assert!(
        sender.log_text().contains("a base is due"),
        "{}",
        sender.log_text()
    );
    let r3 = start_receiver(&env, &s3, "www3", &s_fp);
    let r2 = start_receiver(&env, &s3, "www2", &s_fp);
    wait_until(
        "the receiver started empty, and the one behind, in step",
        || in_step(&env, &["www3", "www2"]),
    )
    .await;
    for (name, r) in [("www3", &r3), ("www2", &r2)] {
        assert!(
            r.log_text().contains("taking this sender's newest base"),
            "{name}: {}",
            r.log_text()
        );
    }
    // Changes after go on reaching every receiver by the chain.
    env.write("news/c.html", "c");
    wait_until("every root in step", || {
        in_step(&env, &["www1", "www2", "www3"])
    })
    .await;
    // A receiver passes over bases' members but those of a base it says
    // it takes.
    let log = r1.log_text();
    let taken: Vec<(u64, u64)> = log
        .lines()
        .filter(|l| l.contains("taking this sender's newest base"))
        .filter_map(|l| Some((field(l, "first=")?, field(l, "last=")?)))
        .collect();
    let members = objects(&s3, &s_fp, "base");
    assert!(!members.is_empty());
    for seq in applied(&log).into_iter().filter(|s| members.contains(s)) {
        assert!(
            taken.iter().any(|(f, l)| (*f..=*l).contains(&seq)),
            "www1 applied member {seq} of a base it did not take: {log}"
        );
    }
}

/// A receiver stopped while it takes a base goes on with that base when
/// it starts again (it is recorded in its state), instead of taking the
/// chain from where it stopped and missing the base's other files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_stopped_part_way_through_a_base_finishes_it() {
    let (env, s3, s_fp) = bucket_env();
    for i in 0..60 {
        env.write(&format!("p/{i:02}.html"), format!("page {i}"));
    }
    // A base of two files per bundle, every 2 seconds; none let go.
    let extra = base_settings(2, 20, Some(2));
    let (_, _sender) = start_sender(&env, &s3, &extra);
    wait_until("a complete base", || !bases(&s3, &s_fp).is_empty()).await;
    let state = env.path().join("state-www3/receiver.json");
    let r = start_receiver(&env, &s3, "www3", &s_fp);
    wait_until("www3 part-way through the base", || {
        let json = std::fs::read(&state).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
        v["courses"]
            .as_object()
            .is_some_and(|c| c.values().any(|c| c["taking"].is_object()))
    })
    .await;
    drop(r);
    let recorded = std::fs::read_to_string(&state).unwrap();
    assert!(
        !in_step(&env, &["www3"]),
        "stopped after the whole base: {recorded}"
    );
    let r = start_receiver(&env, &s3, "www3", &s_fp);
    wait_until("www3 in step", || in_step(&env, &["www3"])).await;
    assert!(
        !r.log_text().contains("taking this sender's newest base"),
        "it went on with the base it was taking: {}",
        r.log_text()
    );
}

/// The last member of `sender`'s complete base beginning at `first`, as
/// its end object says.
fn base_last(s3: &S3, sender: &str, first: u64) -> u64 {
    let end = s3.object(&format!("www/bases/{sender}/{first:020}"));
    let seal: serde_json::Value = serde_json::from_slice(&std::fs::read(end).unwrap()).unwrap();
    seal["seq"].as_u64().unwrap()
}

/// A receiver taking a base follows two lists at once, the base's members
/// and the chain, each linked exactly: a chain bundle inside the base's
/// span deleted by someone who can only delete objects is waited for,
/// never skipped (found by a review: one position for both let it pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_bundle_deleted_inside_a_base_is_noticed_not_skipped() {
    let (env, s3, s_fp) = bucket_env();
    for i in 0..300 {
        env.write(&format!("p/{i:03}.html"), format!("page {i}"));
    }
    let extra = base_settings(2, 50, Some(2));
    let (_, sender) = start_sender(&env, &s3, &extra);
    wait_until("a complete base", || !bases(&s3, &s_fp).is_empty()).await;
    // Changes all along, so that chain bundles land between members.
    // A base (first f, last l) with a chain bundle c in [f, l) whose next
    // chain bundle c2 builds on it, and a member in (c, c2) or c2 > l.
    let pick = |s3: &S3| -> Option<(u64, u64, u64, u64)> {
        let chain = objects(s3, &s_fp, "seal");
        let members = objects(s3, &s_fp, "base");
        for f in bases(s3, &s_fp).into_iter().rev() {
            let l = base_last(s3, &s_fp, f);
            for w in chain.windows(2) {
                let (c, c2) = (w[0], w[1]);
                let between = members.iter().any(|m| *m > c && *m < c2 && *m <= l);
                if c >= f && c < l && (c2 > l || between) {
                    return Some((f, l, c, c2));
                }
            }
        }
        None
    };
    let mut n = 0;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let found = loop {
        n += 1;
        env.write(&format!("a/{n}.html"), format!("version {n}"));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if let Some(p) = pick(&s3) {
            break p;
        }
        assert!(
            std::time::Instant::now() < end,
            "no chain bundle inside a base: {}",
            listing(&s3, &s_fp)
        );
    };
    drop(sender);
    let (f, l, c, c2) = found;
    // The attacker: the ends of newer bases go (so the receiver takes this
    // one), and the chain bundle c.
    for newer in bases(&s3, &s_fp).into_iter().filter(|b| *b > f) {
        std::fs::remove_file(s3.object(&format!("www/bases/{s_fp}/{newer:020}"))).unwrap();
    }
    for ext in ["seal", "zip"] {
        std::fs::remove_file(s3.object(&format!("www/b/{s_fp}/{c:020}.{ext}"))).unwrap();
    }
    let r = start_receiver(&env, &s3, "www3", &s_fp);
    let noticed = format!("bundle {c} of this sender comes first");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !applied(&r.log_text()).contains(&c2) && !r.log_text().contains(&noticed) {
        assert!(std::time::Instant::now() < deadline, "{}", r.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = r.log_text();
    assert!(
        !applied(&log).contains(&c2),
        "base [{f}, {l}]: chain bundle {c} deleted, yet {c2} (sealed after {c}) applied: {:?}",
        applied(&log)
    );
}

/// With the bucket away and the outbox over `outbox_max`, the bucket's
/// backlog is dropped and it gets the whole tree when it returns: on the
/// chain, so that receivers in step take it (found by a review: as a base,
/// they passed it over and never had the files changed meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_backlog_dropped_still_reaches_receivers_in_step() {
    let env = Env::new();
    let mut s3 = S3::start(env.path());
    let s_fp = keygen(&env, "keys-s");
    let r_fp = keygen(&env, "keys-r");
    let _r = start_receiver(&env, &s3, "www1", &s_fp);
    // A direct receiver takes the bundles while the bucket is away, so
    // that the outbox lets the bucket's backlog go.
    let direct = env
        .start_receiver_from(&format!(
            "[receiver]\nlisten = \"127.0.0.1:0\"\nroot = \"direct\"\nstate_dir = \"state-direct\"\narchive_dir = \"archive-direct\"\nkey_dir = \"keys-r\"\nallowed_senders = [\"{s_fp}\"]\n"
        ))
        .await;
    let extra = format!(
        "receiver = \"{}\"\nreceiver_fingerprint = \"{r_fp}\"\noutbox_max = \"2MiB\"\nmax_bundle_size = \"1MiB\"\nchunk_size = \"512KiB\"\n",
        direct.addr
    );
    let (_, sender) = start_sender(&env, &s3, &extra);
    env.write("index.html", "home");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !in_step(&env, &["www1"]) {
        assert!(std::time::Instant::now() < end, "{}", sender.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s3.stop();
    // Incompressible pages, until the outbox lets the bucket's go.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let mut i = 0;
    while !sender.log_text().contains("its backlog is dropped") {
        assert!(std::time::Instant::now() < end, "{}", sender.log_text());
        env.write(&format!("media/{i}.bin"), noise(700_000, i));
        i += 1;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    s3.restart();
    env.write("after.html", "after the bucket came back");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !in_step(&env, &["www1"]) {
        let (src, root) = (tree(&env.src()), tree(&env.path().join("www1")));
        assert!(
            std::time::Instant::now() < end,
            "www1 lacks {:?}; {}",
            src.keys()
                .filter(|k| !root.contains_key(*k))
                .collect::<Vec<_>>(),
            listing(&s3, &s_fp),
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A base whose tree's last run packs nothing (its files gone by then)
/// still ends, with the last bundle packed for it, and bases go on being
/// made and pruned (found by a review: the base never ended and none was
/// asked for again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_whose_last_run_packs_nothing_does_not_stop_bases_for_good() {
    let (env, s3, s_fp) = bucket_env();
    // Eight paths per run: the first run is the folder and seven slow
    // files, the second one small file, gone by the time it runs.
    for i in 0..7 {
        env.write(&format!("p/{i}.bin"), noise(8 << 20, i));
    }
    env.write("zz.html", "last");
    let extra = base_settings(2, 50, Some(2));
    let (_, sender) = start_sender(&env, &s3, &extra);
    wait_until("a base asked for", || {
        sender.log_text().contains("a base is due")
    })
    .await;
    std::fs::remove_file(env.src().join("zz.html")).unwrap();
    wait_until("the tree packed", || {
        sender
            .log_text()
            .contains("whole tree packed for this receiver")
    })
    .await;
    // Bases are due every 2 seconds: one completes within a few.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while bases(&s3, &s_fp).is_empty() {
        assert!(
            std::time::Instant::now() < end,
            "no complete base; {}",
            listing(&s3, &s_fp)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `bucket_keep` bounds what stays in the bucket: a source that does not
/// change gets no new base, and bases no longer kept go whatever the
/// chain's newest bundle is (found by a review: a base every period, none
/// ever removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bases_of_an_unchanging_tree_are_pruned_to_bucket_keep() {
    let (env, s3, s_fp) = bucket_env();
    env.write("index.html", "home");
    let extra = base_settings(1, 2, None);
    let (_, sender) = start_sender(&env, &s3, &extra);
    wait_until("a base", || !bases(&s3, &s_fp).is_empty()).await;
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    assert!(
        bases(&s3, &s_fp).len() <= 2,
        "{}; the sender's log says it removed some {} times",
        listing(&s3, &s_fp),
        sender
            .log_text()
            .lines()
            .filter(|l| l.contains("removed"))
            .count()
    );
}

/// A receiver not behind what the bucket keeps, missing one chain seal
/// someone deleted, waits for it: only what the sender says it let go
/// (`kept_from`, signed) sends a receiver to a base, so no deletion at the
/// source is skipped that way (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chain_seal_deleted_does_not_make_a_receiver_skip_a_deletion() {
    let (env, s3, s_fp) = bucket_env();
    env.write("index.html", "home");
    env.write("secret.html", "published by mistake");
    let r = start_receiver(&env, &s3, "www1", &s_fp);
    let extra = base_settings(2, 50, None);
    let (_, _sender) = start_sender(&env, &s3, &extra);
    wait_until("www1 in step", || in_step(&env, &["www1"])).await;
    drop(r);
    let newest_chain = || *objects(&s3, &s_fp, "seal").last().unwrap();
    let before = newest_chain();
    std::fs::remove_file(env.src().join("secret.html")).unwrap();
    wait_until("the deletion in the chain", || newest_chain() > before).await;
    let deletion = newest_chain();
    env.write("news.html", "later");
    wait_until("a later bundle, and a base after the deletion", || {
        newest_chain() > deletion && bases(&s3, &s_fp).last().is_some_and(|b| *b > deletion)
    })
    .await;
    std::fs::remove_file(s3.object(&format!("www/b/{s_fp}/{deletion:020}.seal"))).unwrap();
    let r = start_receiver(&env, &s3, "www1", &s_fp);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(
        !env.path().join("www1/news.html").exists()
            || !env.path().join("www1/secret.html").exists(),
        "www1 took what came after the deletion and kept the deleted file: {}",
        r.log_text()
            .lines()
            .filter(|l| l.contains("base") || l.contains("not taken"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The bucket emptied (a new bucket, or its objects lost) while a
/// receiver is in step: the sender, restarted, finds a new instance and
/// puts the whole tree on the chain, its first bundle sealed after none;
/// the receiver takes it and goes on (found by a second review: it waited
/// for "bundle 0" for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_in_step_follows_the_sender_into_an_emptied_bucket() {
    let (env, s3, s_fp) = bucket_env();
    env.write("index.html", "home");
    let r = start_receiver(&env, &s3, "www1", &s_fp);
    let (file, sender) = start_sender(&env, &s3, "");
    wait_until("www1 in step", || in_step(&env, &["www1"])).await;
    env.write("a.html", "a");
    wait_until("www1 in step again", || in_step(&env, &["www1"])).await;
    drop(sender);
    std::fs::remove_dir_all(s3.object("www")).unwrap();
    env.write("b.html", "b");
    let _sender = Daemon::start(&file, &env.path().join("sender2.log"), None);
    let seals = || objects(&s3, &s_fp, "seal");
    wait_until("the whole tree and b.html in the new bucket", || {
        !seals().is_empty()
    })
    .await;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !in_step(&env, &["www1"]) && std::time::Instant::now() < end {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        in_step(&env, &["www1"]),
        "www1 never took the emptied bucket's chain (seals {:?}): {}",
        seals(),
        r.log_text()
            .lines()
            .filter(|l| l.contains("not taken") || l.contains("base"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The server stopped while a base goes up: once it is back the sender
/// goes on (with the base it had begun, or with a new one), the base ends
/// linked whole, and a receiver started empty takes it to the source's
/// tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_cut_off_by_the_server_going_away_still_completes_whole() {
    let (env, mut s3, s_fp) = bucket_env();
    for i in 0..200 {
        env.write(&format!("p/{i:03}.html"), format!("page {i}"));
    }
    let extra = base_settings(2, 20, Some(2));
    let (file, sender) = start_sender(&env, &s3, &extra);
    wait_until("a base's first members up", || {
        !objects(&s3, &s_fp, "base").is_empty()
    })
    .await;
    s3.stop();
    let cut_at = objects(&s3, &s_fp, "base").len();
    wait_until("the sender's upload failing, in its status", || {
        let out = shipper(&["status", "--config", file.to_str().unwrap(), "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v["receivers"][0]["last_error"].is_string())
    })
    .await;
    s3.restart();
    // The sender retries on its backoff, which doubled while the server
    // was away (up to 30 s). The wait after it gets as long: the one
    // failure seen here (1 run in 5) did not say which wait ran out.
    let after_backoff = DEADLINE * 3;
    wait_until_within("a complete base", after_backoff, || {
        !bases(&s3, &s_fp).is_empty()
    })
    .await;
    let r = start_receiver(&env, &s3, "www1", &s_fp);
    // Polled here rather than by `wait_until_within`, so a timeout shows
    // both logs: the one failure under a full suite did not say why.
    let end = std::time::Instant::now() + after_backoff;
    while !in_step(&env, &["www1"]) {
        let tail = |log: String| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        assert!(
            std::time::Instant::now() < end,
            "the receiver started empty never came in step\nreceiver:\n{}\nsender:\n{}",
            tail(r.log_text()),
            tail(sender.log_text())
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        r.log_text().contains("taking this sender's newest base"),
        "{}",
        r.log_text()
    );
    assert!(
        cut_at < 100,
        "the base was whole before the server went away ({cut_at} members): {}",
        sender.log_text()
    );
}
