//! The receiver's `on_apply` hook: run after each applied bundle with what
//! it changed, seen from a web server serving root as another user; its
//! failures and timeouts shown on both ends without stopping shipping;
//! and `shipper replay` running it only when asked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::util::{self, Daemon, Env, free_addr, sample, scrape, wait_status, wait_until};
use crate::web::Nginx;

/// Write an executable script `name` in the env.
fn script(env: &Env, name: &str, body: &str) -> PathBuf {
    let p = env.path().join(name);
    std::fs::write(&p, format!("#!/bin/bash\n{body}")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The records a hook left in `dir` (files named `hook-SEQ`), by name.
fn records(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let done = name.starts_with("hook-") && !name.ends_with(".tmp");
                    done.then(|| (name, std::fs::read_to_string(e.path()).unwrap()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A hook that records its environment and each line it is given, and
/// fetches each written path from the web server on port `$2` the way a
/// cache purge would, recording the answer: `hook-SEQ` in `$1`.
const FETCHING_HOOK: &str = r#"out="$1/hook-$SHIPPER_SEQ"
echo "seq=$SHIPPER_SEQ sender=$SHIPPER_SENDER root=$SHIPPER_ROOT" > "$out.tmp"
while IFS= read -r line; do
  path="${line#? }"
  exec 3<>"/dev/tcp/127.0.0.1/$2"
  printf 'GET /%s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$path" >&3
  resp=$(cat <&3)
  exec 3<&-
  code=$(printf '%s' "$resp" | head -n1 | cut -d' ' -f2)
  case "$line" in
    "+ "*) printf '%s -> %s %s\n' "$line" "$code" "${resp#*$'\r\n\r\n'}" >> "$out.tmp" ;;
    *) printf '%s -> %s\n' "$line" "$code" >> "$out.tmp" ;;
  esac
done
mv "$out.tmp" "$out"
"#;

/// A hook is told each bundle's sequence, sender and root, and the paths it
/// wrote (`+`) and deleted (`-`), once they are published: fetched through
/// nginx (workers as www-data), a written page is already the new one and
/// a deleted one is gone.
#[tokio::test]
async fn the_hook_is_told_what_each_bundle_changed_once_the_web_server_serves_it() {
    let env = Env::new();
    let web_dir = env.path().join("nginx");
    std::fs::create_dir_all(&web_dir).unwrap();
    let web = Nginx::serve(&env.root(), &web_dir, env.path());
    let out = env.path().join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    let hook = script(&env, "purge.sh", FETCHING_HOOK);
    let r = env
        .start_receiver(&format!(
            "on_apply = [\"{}\", \"{}\", \"{}\"]\n",
            hook.display(),
            out.display(),
            web.addr.port()
        ))
        .await;
    env.write("page.html", "v1");
    env.write("old.html", "old");
    let s = env.start_sender(r.addr, "");
    wait_until("the first bundle's hook", || {
        records(&out).iter().any(|(_, t)| t.contains("+ old.html"))
    })
    .await;
    env.write("page.html", "v2");
    std::fs::remove_file(env.src().join("old.html")).unwrap();
    wait_until("the hook told of the deletion", || {
        records(&out).iter().any(|(_, t)| t.contains("- old.html"))
    })
    .await;
    let all = records(&out);
    let text: String = all.iter().map(|(_, t)| t.as_str()).collect();
    assert!(text.contains("+ page.html -> 200 v1\n"), "{text}");
    assert!(text.contains("+ page.html -> 200 v2\n"), "{text}");
    assert!(text.contains("- old.html -> 404\n"), "{text}");
    // The hook saw what readers see.
    assert_eq!(web.get("page.html"), (200, b"v2".to_vec()));
    assert_eq!(web.get("old.html").0, 404);
    for (name, t) in &all {
        let seq = name.trim_start_matches("hook-");
        let first = format!("seq={seq} sender=test root={}\n", env.root().display());
        assert!(t.starts_with(&first), "{name}: {t}");
    }
    s.stop().await;
    r.stop().await;
}

/// A hook that fails while `$1/fail` exists, saying so on stderr.
const FLAKY_HOOK: &str = r#"cat > /dev/null
if [ -e "$1/fail" ]; then echo "purge of sequence $SHIPPER_SEQ failed" >&2; exit 1; fi
"#;

/// A failing hook (exit 1) is logged by the receiver with its stderr and
/// shown in the sender's status; the bundle stays applied, later changes
/// still arrive, and the next hook that succeeds clears the status.
#[tokio::test]
async fn a_failing_hook_shows_on_both_ends_and_shipping_goes_on() {
    let env = Env::new();
    let flags = env.path().join("flags");
    std::fs::create_dir_all(&flags).unwrap();
    std::fs::write(flags.join("fail"), "").unwrap();
    let hook = script(&env, "purge.sh", FLAKY_HOOK);
    let metrics = free_addr();
    let rcfg = env.config_file(
        "r.toml",
        &env.receiver_toml(
            "127.0.0.1:0",
            &format!(
                "on_apply = [\"{}\", \"{}\"]\nmetrics = \"{metrics}\"\n",
                hook.display(),
                flags.display()
            ),
        ),
    );
    let receiver = Daemon::start(&rcfg, &env.path().join("r.log"), None);
    let addr_file = env.path().join("state-r/listen.addr");
    wait_until("receiver listening", || addr_file.exists()).await;
    let addr = std::fs::read_to_string(&addr_file)
        .unwrap()
        .parse()
        .unwrap();
    let scfg = env.config_file("s.toml", &env.sender_toml(&format!("{addr}"), ""));
    let s = env.start_sender(addr, "");
    env.write("a.html", "a");
    let st = wait_status(&scfg, "the hook failure", |v| {
        v["receivers"][0]["hook_failure"]
            .as_str()
            .is_some_and(|f| f.contains("failed"))
    })
    .await;
    let failure = st["receivers"][0]["hook_failure"].as_str().unwrap();
    assert!(failure.contains("purge of sequence"), "{failure}");
    assert!(failure.contains("exit status: 1"), "{failure}");
    assert!(env.root().join("a.html").exists());
    wait_until("the failure in the receiver's log", || {
        let log = receiver.log_text();
        log.contains("on_apply") && log.contains("purge of sequence")
    })
    .await;
    // ...and counted where Prometheus looks.
    let failures = sample(
        &scrape(metrics).await,
        "shipper_hook_failures_total{sender=\"test\"}",
    );
    assert!(failures >= Some(1.0), "hook failures counted: {failures:?}");
    env.write("b.html", "b");
    wait_until("the next change arrives", || {
        env.root().join("b.html").exists()
    })
    .await;
    std::fs::remove_file(flags.join("fail")).unwrap();
    env.write("c.html", "c");
    wait_status(&scfg, "the failure cleared by a hook that succeeds", |v| {
        v["receivers"][0]["hook_failure"].is_null()
            && v["receivers"][0]["last_ack_seq"].as_u64() >= Some(3)
    })
    .await;
    assert!(env.root().join("c.html").exists());
    s.stop().await;
}

/// A hook still running at `on_apply_timeout` is killed, and the bundle is
/// acknowledged all the same: it is applied and archived once, never sent
/// again, and the sender's status says the hook was killed.
#[tokio::test]
async fn a_hook_past_its_timeout_is_killed_and_the_bundle_acknowledged_once() {
    let env = Env::new();
    let runs = env.path().join("runs");
    let hook = script(
        &env,
        "slow.sh",
        &format!(
            "echo \"$SHIPPER_SEQ\" >> '{}'\nexec sleep 600\n",
            runs.display()
        ),
    );
    let r = env
        .start_receiver(&format!(
            "on_apply = [\"{}\"]\non_apply_timeout = \"1s\"\n",
            hook.display()
        ))
        .await;
    let scfg = env.config_file("s.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let s = env.start_sender(r.addr, "");
    env.write("a.html", "a");
    let st = wait_status(&scfg, "the bundle acknowledged", |v| {
        v["receivers"][0]["last_ack_seq"].is_u64()
    })
    .await;
    let link = &st["receivers"][0];
    let failure = link["hook_failure"].as_str().unwrap_or_default();
    assert!(failure.contains("killed"), "{st}");
    assert_eq!(link["bundles_shipped"], 1, "{st}");
    let seq = link["last_ack_seq"].as_u64().unwrap();
    assert_eq!(env.archived().len(), 1, "{:?}", env.archived());
    let state = std::fs::read_to_string(env.path().join("state-r/receiver.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["applied"]["test"], seq, "{state}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), format!("{seq}\n"));
    s.stop().await;
    r.stop().await;
}

/// `shipper replay` applies bundles without running the hook; with
/// `--hooks` it runs it after each, told the root it replays into.
#[tokio::test]
async fn replay_runs_the_hook_only_when_asked() {
    let env = Env::new();
    let out = env.path().join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    let hook = script(
        &env,
        "record.sh",
        r#"{ echo "seq=$SHIPPER_SEQ sender=$SHIPPER_SENDER root=$SHIPPER_ROOT"; cat; } > "$1/hook-$SHIPPER_SEQ""#,
    );
    let cfg = env.config_file(
        "r.toml",
        &env.receiver_toml(
            "127.0.0.1:0",
            &format!(
                "on_apply = [\"{}\", \"{}\"]\n",
                hook.display(),
                out.display()
            ),
        ),
    );
    env.write("a.html", "a");
    env.write("d/b.html", "b");
    let packed = util::pack_items(
        &env.src(),
        &env.path().join("outbox"),
        "cms",
        5,
        shipper::bundle::pack::Limits::new(1 << 20, 1 << 20, 1000),
        util::upserts(&env.src()),
    );
    let bundle = packed[0].path.to_str().unwrap().to_owned();
    let other = env.path().join("restored");
    let (cfg, other) = (cfg.to_str().unwrap(), other.to_str().unwrap());
    let o = util::shipper(&["replay", "--config", cfg, "--root", other, &bundle]);
    assert!(o.status.success(), "{}", util::text(&o));
    assert!(Path::new(other).join("d/b.html").exists());
    assert!(records(&out).is_empty(), "{:?}", records(&out));
    let o = util::shipper(&[
        "replay", "--hooks", "--config", cfg, "--root", other, &bundle,
    ]);
    assert!(o.status.success(), "{}", util::text(&o));
    assert_eq!(
        records(&out),
        [(
            "hook-5".to_owned(),
            format!("seq=5 sender=cms root={other}\n+ a.html\n+ d/b.html\n")
        )]
    );
}

/// An `on_apply` program that does not exist is refused at start, naming
/// the key, before the receiver takes any bundle.
#[test]
fn a_hook_that_is_not_a_program_is_refused_at_start() {
    let env = Env::new();
    let cfg = env.config_file(
        "r.toml",
        &env.receiver_toml("127.0.0.1:0", "on_apply = [\"/nonexistent/purge\"]\n"),
    );
    let o = util::shipper(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = util::text(&o);
    assert!(
        t.contains("receiver.on_apply") && t.contains("/nonexistent/purge"),
        "{t}"
    );
}
