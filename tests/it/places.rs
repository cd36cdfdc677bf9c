//! The directories a config names: overlapping ones are refused at start,
//! compared where they really are; clean-up and pruning touch only what
//! shipper itself named.

use std::path::Path;
use std::time::{Duration, SystemTime};

use shipper::config::Config;
use tokio_util::sync::CancellationToken;

use crate::util::*;

/// A refusal comes at once; a config that is not refused runs forever.
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

fn real(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

/// `web/site` (root) beside `web/other`, each with a page.
fn web_with_two_sites(env: &Env) -> std::path::PathBuf {
    let web = env.path().join("web");
    for site in ["site", "other"] {
        std::fs::create_dir_all(web.join(site)).unwrap();
        std::fs::write(web.join(site).join("index.html"), site).unwrap();
    }
    web
}

/// A receiver with root `web/site` and the given `staging_dir`.
fn staged_receiver(staging_dir: &str) -> String {
    format!(
        "[receiver]\nlisten = \"127.0.0.1:0\"\nroot = \"web/site\"\nstate_dir = \"state-r\"\narchive_dir = \"archive\"\nstaging_dir = \"{staging_dir}\"\n"
    )
}

async fn bind_refusal(env: &Env, staging_dir: &str) -> String {
    let cfg = env.config(&staged_receiver(staging_dir)).receiver.unwrap();
    match shipper::receiver::Receiver::bind(cfg).await {
        Ok(_) => panic!("staging_dir = {staging_dir:?} holding root was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

/// `root = "/var/www/site"`, `staging_dir = "/var/www"`: at start the
/// receiver "cleaned" staging and deleted the whole site and its siblings.
#[tokio::test]
async fn a_staging_dir_holding_root_is_refused_and_nothing_is_deleted() {
    let env = Env::new();
    let web = web_with_two_sites(&env);
    let before = tree(&web);
    let e = bind_refusal(&env, "web").await;
    assert!(
        e.contains("receiver.staging_dir") && e.contains("receiver.root"),
        "{e}"
    );
    assert!(e.contains(&real(&web)), "resolved path not named: {e}");
    assert_eq!(tree(&web), before, "files under staging_dir were deleted");
}

/// The same staging directory spelled through a symlink or with `..` got
/// past a textual comparison of paths.
#[tokio::test]
async fn a_staging_dir_reaching_root_through_a_symlink_or_dotdot_is_refused() {
    for spelling in ["web-link", "web/other/.."] {
        let env = Env::new();
        let web = web_with_two_sites(&env);
        std::os::unix::fs::symlink(&web, env.path().join("web-link")).unwrap();
        let before = tree(&web);
        let e = bind_refusal(&env, spelling).await;
        assert!(
            e.contains("receiver.staging_dir") && e.contains("receiver.root"),
            "{spelling}: {e}"
        );
        assert!(e.contains(&real(&web)), "{spelling}: {e}");
        assert_eq!(tree(&web), before, "{spelling}: files deleted");
    }
}

/// `shipper replay --config` used the receiver's directories as given:
/// with a `staging_dir` holding root it staged into the directory above
/// the site.
#[test]
fn replay_into_a_config_whose_staging_dir_holds_root_is_refused() {
    let env = Env::new();
    let web = web_with_two_sites(&env);
    env.write("new.html", "new");
    let bundle = crate::bundles::pack(&env.src(), &env.path().join("out"), 1, &[]);
    let before = tree(&web);
    let file = env.config_file("replay.toml", &staged_receiver("web"));
    let out = shipper(&[
        "replay",
        "--config",
        file.to_str().unwrap(),
        bundle.path.to_str().unwrap(),
    ]);
    let said = text(&out);
    assert!(!out.status.success(), "replayed: {said}");
    assert!(
        said.contains("replay.toml") && said.contains("receiver.staging_dir"),
        "{said}"
    );
    assert_eq!(tree(&web), before, "replay changed the web directory");
}

fn both_roles(env: &Env, sender_dirs: &str, root: &str) -> Config {
    let addr = free_addr();
    env.config(&format!(
        "[sender]\n{sender_dirs}receiver = \"{addr}\"\nid = \"test\"\ninterval = \"1s\"\nsettle = \"250ms\"\n\
         [receiver]\nlisten = \"{addr}\"\nroot = \"{root}\"\nstate_dir = \"state-r\"\narchive_dir = \"archive\"\n"
    ))
}

/// Run `config` as `shipper run` does and return its refusal.
async fn run_refusal(env: &Env, config: Config) -> String {
    let stop = CancellationToken::new();
    match tokio::time::timeout(REFUSED_WITHIN, shipper::commands::run(config, stop.clone())).await {
        Ok(Err(e)) => format!("{e:#}"),
        Ok(Ok(())) => panic!("stopped without an error"),
        Err(_) => {
            stop.cancel();
            panic!(
                "not refused; after {REFUSED_WITHIN:?} the env holds {:?}",
                tree(env.path()).keys().collect::<Vec<_>>()
            )
        }
    }
}

/// One config running both roles with the receiver's root inside the
/// sender's source shipped root's new files back to itself:
/// `mirror/mirror/mirror/…` until the disk filled. The sender's state in
/// root was shipped to every reader of root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_config_with_root_inside_source_is_refused_before_anything_mirrors() {
    for (sender_dirs, root, keys) in [
        (
            "source = \"src\"\nstate_dir = \"state-s\"\n",
            "src/mirror",
            ["sender.source", "receiver.root"],
        ),
        (
            "source = \"src\"\nstate_dir = \"www/.state\"\n",
            "www",
            ["sender.state_dir", "receiver.root"],
        ),
    ] {
        let env = Env::new();
        env.write("index.html", "hello");
        let config = both_roles(&env, sender_dirs, root);
        let e = run_refusal(&env, config).await;
        assert!(e.contains(keys[0]) && e.contains(keys[1]), "{root}: {e}");
        assert_eq!(
            tree(&env.src()).into_keys().collect::<Vec<_>>(),
            ["index.html"],
            "{root}: source changed"
        );
        assert!(!env.root().join(".state").exists(), "sender state in root");
    }
}

/// A sender whose `state_dir` held its source (or was it) shipped nothing,
/// and its start-up emptied `state_dir/outbox` whatever that held. A
/// state_dir inside the source stays allowed and is never shipped, nor is
/// the clearing of its leftovers at a restart (which runs while the
/// source is walked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_state_dir_holding_its_source_is_refused() {
    for (source, state_dir) in [("site/src", "site"), ("src", "src")] {
        let env = Env::new();
        env.write("index.html", "hello");
        std::fs::create_dir_all(env.path().join("site/outbox")).unwrap();
        std::fs::write(env.path().join("site/outbox/keep.txt"), "mine").unwrap();
        let config = env.config(&format!(
            "[sender]\nsource = \"{source}\"\nstate_dir = \"{state_dir}\"\nreceiver = \"{}\"\n",
            free_addr()
        ));
        let e = run_refusal(&env, config).await;
        assert!(
            e.contains("sender.state_dir") && e.contains("sender.source"),
            "{state_dir}: {e}"
        );
        assert!(env.path().join("site/outbox/keep.txt").exists());
    }

    let env = Env::new();
    env.write("index.html", "hello");
    let r = env.start_receiver("").await;
    let cfg = env
        .config(&format!(
            "[sender]\nsource = \"src\"\nreceiver = \"{}\"\nstate_dir = \"src/.state\"\ninterval = \"1s\"\nsettle = \"250ms\"\n",
            r.addr
        ))
        .sender
        .unwrap();
    let stop = CancellationToken::new();
    let sender = tokio::spawn(shipper::sender::run(cfg.clone(), stop.clone()));
    let root = env.root();
    wait_until("index.html published", || root.join("index.html").exists()).await;
    assert!(!root.join(".state").exists(), "sender state was shipped");
    stop.cancel();
    let _ = sender.await;

    // Restarted with leftovers of a crash in its state: the source is
    // walked while the state loads and clears them, and neither they nor
    // their removal reach the receiver.
    let state = env.src().join(".state");
    let leftovers = [
        state.join(format!("{}ledger", shipper::durable::TEMP_PREFIX)),
        state.join("outbox/00000000000000000007.zip"),
    ];
    for l in &leftovers {
        std::fs::write(l, "left by a crash").unwrap();
    }
    let stop = CancellationToken::new();
    let sender = tokio::spawn(shipper::sender::run(cfg, stop.clone()));
    env.write("two.html", "two");
    wait_until("two.html published", || root.join("two.html").exists()).await;
    for l in &leftovers {
        assert!(!l.exists(), "{} was not cleared at start", l.display());
    }
    assert!(!root.join(".state").exists(), "sender state was shipped");
    assert_eq!(
        tree(&root).into_keys().collect::<Vec<_>>(),
        ["index.html", "two.html"]
    );
    stop.cancel();
    let _ = sender.await;
    r.stop().await;
}

/// `archive_keep` pruned every `*.zip` in `archive_dir` by age, so an
/// operator's `backup-2019.zip` kept there was deleted; start-up clean-up
/// emptied staging, `incoming`, `publishing` and the outbox whatever they
/// held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_up_and_pruning_remove_only_what_shipper_named() {
    let env = Env::new();
    let p = env.path();
    let strays = [
        "archive/backup-2019.zip",
        "stage/notes.txt",
        "stage/site-2/index.html",
        "state-r/incoming/readme.txt",
        "state-r/publishing/notes.zip",
        "state-s/outbox/mine.txt",
    ];
    for s in strays {
        std::fs::create_dir_all(p.join(s).parent().unwrap()).unwrap();
        std::fs::write(p.join(s), "not shipper's").unwrap();
    }
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_546_300_800);
    std::fs::File::options()
        .write(true)
        .open(p.join(strays[0]))
        .unwrap()
        .set_modified(old)
        .unwrap();

    let r = env
        .start_receiver("archive_keep = 1\nstaging_dir = \"stage\"\n")
        .await;
    let s = env.start_sender(r.addr, "");
    for page in ["a.html", "b.html"] {
        env.write(page, page);
        wait_in_sync(&env).await;
    }
    let shipped = |env: &Env| -> Vec<String> {
        env.archived()
            .iter()
            .filter_map(|a| a.file_name()?.to_str().map(str::to_owned))
            .filter(|n| n.starts_with("test-"))
            .collect()
    };
    wait_until("only the newest bundle archived", || {
        shipped(&env) == ["test-00000000000000000002.zip"]
    })
    .await;
    s.stop().await;
    r.stop().await;
    for s in strays {
        assert!(p.join(s).exists(), "{s} was removed");
    }
}

/// archive_dir was created with the umask's mode and used whatever its
/// mode; whoever could write to it could plant the bundles `replay` is
/// pointed at to rebuild a root.
#[tokio::test]
async fn archive_dir_is_created_private_and_a_shared_one_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let toml = "[receiver]\nlisten = \"127.0.0.1:0\"\nroot = \"www\"\nstate_dir = \"state-r\"\narchive_dir = \"kept/bundles\"\n";
    let r = env.start_receiver_from(toml).await;
    r.stop().await;
    let archive = env.path().join("kept/bundles");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&archive), 0o700);
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = env.config(toml).receiver.unwrap();
    match shipper::receiver::Receiver::bind(cfg).await {
        Ok(_) => panic!("an archive_dir others can write to was accepted"),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                e.contains("receiver.archive_dir") && e.contains("writable"),
                "{e}"
            );
        }
    }
}
