//! What each subcommand does, given parsed arguments. `main` only parses,
//! calls [`dispatch`] and maps the error to an exit code. The text
//! `shipper status` prints is rendered in `status_text`; `shipper verify`
//! (whose exit code says drift) is in `verify`; `shipper rollback` in
//! `rollback`; `shipper replay --from-bucket` in `from_bucket`.

mod from_bucket;
mod malloc;
mod rollback;
mod status_text;
mod verify;
pub use status_text::describe_status;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bundle::Manifest;
use crate::bundle::apply::{self, Applied, Target};
use crate::bundle::manifest::next_seq;
use crate::cli::{Cli, Command, ReplayTarget};
use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::hook::{self, Hook};
use crate::perms::Policy;
use crate::receiver::{self, ReceiverState};
use crate::tls::Fingerprint;

/// Run the command; the exit code it ends with (an error: failure).
pub fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    if let Command::Verify {
        config,
        repair,
        delete_extra,
        json,
    } = &cli.command
    {
        return Ok(verify::verify_command(
            config,
            *repair,
            *delete_extra,
            *json,
        ));
    }
    run_command(cli).map(|()| std::process::ExitCode::SUCCESS)
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            // SAFETY: no other thread exists yet: `main` parsed the
            // arguments and set up logging to stderr, loading the config
            // starts none, and the runtime (and rayon's pool, later)
            // starts below.
            unsafe { malloc::limit_arenas() };
            runtime()?.block_on(run_until_signal(config))
        }
        Command::Flush {
            config,
            timeout,
            allow_mass_delete,
        } => flush_command(&config, timeout, allow_mass_delete),
        Command::Replay {
            target,
            hooks,
            from_bucket,
            first,
            last,
            bundles,
        } => match from_bucket {
            true => from_bucket::replay(target, hooks, (first, last)),
            false => replay_command(target, hooks, &bundles),
        },
        Command::Status { config, json } => status_command(&config, json),
        Command::Pause { config } => pause_or_resume(&config, Request::Pause),
        Command::Resume { config } => pause_or_resume(&config, Request::Resume),
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "shipper", &mut std::io::stdout());
            Ok(())
        }
        Command::Keygen { out } => keygen_command(&out),
        Command::Rollback {
            config,
            to,
            release,
            sender,
        } => rollback::rollback_command(&config, to.filter(|_| !release), sender),
        Command::Verify { .. } => unreachable!("dispatched above"),
        Command::Inspect { bundle } => {
            let opened = apply::open(&bundle, &apply::Limits::default())
                .with_context(|| format!("bundle {}", bundle.display()))?;
            print!("{}", describe(&opened.manifest));
            Ok(())
        }
    }
}

/// How much longer than the flush itself `shipper flush` waits for the
/// sender's answer.
const FLUSH_ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// `shipper flush`: ship everything pending now and say what was shipped
/// once it is acknowledged, and what the mass-deletion guard still holds.
fn flush_command(
    config: &std::path::Path,
    timeout: std::time::Duration,
    allow_mass_delete: bool,
) -> anyhow::Result<()> {
    let req = Request::Flush {
        timeout_ms: timeout.as_millis() as u64,
        allow_mass_delete,
    };
    let held = match call_sender(config, req, timeout + FLUSH_ANSWER_GRACE)? {
        Response::Flushed {
            first_seq,
            last_seq,
            bundles,
            summary,
            held_deletions,
        } => {
            let seqs = if first_seq == last_seq {
                format!("{last_seq}")
            } else {
                format!("{first_seq}-{last_seq}")
            };
            // Kept and copied: the receiver had the content; only
            // metadata travelled.
            let kept = match (summary.kept, summary.copied) {
                (0, 0) => String::new(),
                (k, c) => format!(" (and {k} kept, {c} copied: content already there)"),
            };
            println!(
                "shipped sequence {seqs} ({bundles} bundle{}): {} files{kept}, {} deletions, {} bytes; acknowledged",
                if bundles == 1 { "" } else { "s" },
                summary.files,
                summary.deletions,
                summary.bytes
            );
            held_deletions
        }
        Response::NothingToShip { held_deletions } => {
            println!("nothing to ship: the receiver has everything");
            held_deletions
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the sender: {other:?}"),
    };
    if held > 0 {
        println!(
            "{held} deletions held by the mass-deletion guard; ship them with `shipper flush --allow-mass-delete`"
        );
    }
    Ok(())
}

/// `shipper status`: the running sender's report, as JSON or as text.
fn status_command(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let report = match call_sender(config, Request::Status, CALL_LIMIT)? {
        Response::Status(r) => r,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the sender: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", describe_status(&report));
    }
    Ok(())
}

/// `shipper keygen`: write a key pair to `out`, print its fingerprint and
/// say where it goes.
fn keygen_command(out: &std::path::Path) -> anyhow::Result<()> {
    let fp = crate::tls::keygen(out)?;
    println!("{fp}");
    eprintln!(
        "key pair written to {} ({}, {}); give this fingerprint to the peer: \
         as sender.receiver_fingerprint on senders, or in receiver.allowed_senders on the receiver",
        out.display(),
        crate::tls::CERT_FILE,
        crate::tls::KEY_FILE
    );
    Ok(())
}

/// Send one request to the sender configured in `config`, waiting at most
/// `limit` for the answer.
fn call_sender(
    config: &std::path::Path,
    req: Request,
    limit: std::time::Duration,
) -> anyhow::Result<Response> {
    let config = Config::load(config)?;
    let sender = config
        .sender
        .as_ref()
        .with_context(|| format!("{}: no [sender] table", config.file.display()))?;
    let sock = control::socket_path(&sender.state_dir);
    runtime()?.block_on(control::call(&sock, &req, limit))
}

/// How long `status`, `pause` and `resume` wait for the sender.
const CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

fn pause_or_resume(config: &std::path::Path, req: Request) -> anyhow::Result<()> {
    match call_sender(config, req, CALL_LIMIT)? {
        Response::Paused { paused: true } => {
            println!("paused: changes are kept and nothing is shipped until `shipper resume`");
            Ok(())
        }
        Response::Paused { paused: false } => {
            println!("resumed");
            Ok(())
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the sender: {other:?}"),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn run_until_signal(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        info!("signal received; stopping");
        stop.cancel();
    });
    run(config, shutdown).await
}

/// Run every role of `config` until `shutdown`; the first role to fail
/// stops the others.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Before either role touches anything: with both roles here, a root
    // inside the source would ship itself back forever.
    let checked = config.clone();
    tokio::task::spawn_blocking(move || crate::places::check(&checked.dirs()))
        .await
        .context("directory check task")?
        .with_context(|| config.file.display().to_string())?;
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(r) = config.receiver.clone() {
        // Bind before the sender starts, so a one-process setup connects at once.
        let (recv, listener) = receiver::Receiver::bind(r).await?;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            recv.serve(listener, stop).await;
            Ok(())
        });
    }
    if let Some(s) = config.sender.clone() {
        tasks.spawn(crate::sender::run(s, shutdown.clone()));
    }
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        let r = done.context("role task panicked").and_then(|r| r);
        if r.is_err() && result.is_ok() {
            result = r;
        }
        shutdown.cancel();
    }
    result
}

pub(crate) fn replay_command(
    target: ReplayTarget,
    hooks: bool,
    bundles: &[PathBuf],
) -> anyhow::Result<()> {
    let receiver_config = |config: Config| {
        let file = config.file;
        config
            .receiver
            .with_context(|| format!("{}: no [receiver] table to replay into", file.display()))
    };
    // Held to the end: the receiver's state and root are written below.
    let mut _lock = None;
    let on_apply;
    let mut trees = None;
    let (target, state_dir, limits) = match (target.config, target.root) {
        (Some(file), None) => {
            let config = Config::load(&file)?;
            crate::places::check(&config.dirs())
                .with_context(|| config.file.display().to_string())?;
            let r = receiver_config(config)?;
            let target = receiver::target_for(&r)?;
            _lock = Some(receiver::StateLock::acquire(&r.state_dir, "receiver")?);
            trees = receiver::trees_of(&r);
            on_apply = r.on_apply;
            (target, Some(r.state_dir), r.limits)
        }
        (config, Some(root)) => {
            let (t, limits, hook) = replay_root_target(config, root)?;
            on_apply = hook;
            (t, None, limits)
        }
        (None, None) => bail!("replay needs --config or --root"),
    };
    let held = match &state_dir {
        Some(dir) => ReceiverState::load(dir)?.held.into_keys().collect(),
        None => Vec::new(),
    };
    let into = ReplayInto {
        target: &target,
        trees: trees.as_ref(),
        held,
    };
    let hook = if hooks {
        Some(replay_hook(on_apply)?)
    } else {
        None
    };
    let (applied, hook_failures) = match &hook {
        None => (replay_then(&into, &limits, bundles, &mut |_, _| {})?, 0),
        Some(hook) => replay_with_hook(&into, &limits, bundles, hook)?,
    };
    if let Some(dir) = state_dir {
        let mut state = ReceiverState::load(&dir)?;
        for (sender, a) in &applied {
            state.record_applied(sender, a.seq);
        }
        state.save(&dir)?;
    }
    let files: u64 = applied.iter().map(|(_, a)| a.published).sum();
    let deletions: u64 = applied.iter().map(|(_, a)| a.summary.deletions).sum();
    println!(
        "replayed {} bundle(s): {files} files published, {deletions} deletions{}",
        applied.len(),
        match hook_failures {
            0 => String::new(),
            n => format!("; the on_apply hook failed {n} time(s) (see above)"),
        }
    );
    Ok(())
}

/// [`replay`], running `hook` after each bundle that changed something in
/// root, as the receiver does; a failure is logged and counted, and the
/// replay goes on. Returns what was applied and how many runs failed.
fn replay_with_hook(
    into: &ReplayInto,
    limits: &apply::Limits,
    bundles: &[PathBuf],
    hook: &Hook,
) -> anyhow::Result<(Vec<(String, Applied)>, u64)> {
    let rt = runtime()?;
    let mut failures = 0;
    let target = into.target;
    let applied = replay_then(into, limits, bundles, &mut |sender, a| {
        let changes = hook::changes(&a.written, &a.deleted);
        if changes.is_empty() {
            return;
        }
        let applied = hook::Applied {
            seq: a.seq,
            sender: sender.to_owned(),
            root: target.root.clone(),
            changes,
        };
        if let Err(e) = rt.block_on(hook.run(&applied)) {
            warn!(sender, seq = a.seq, error = %e, "on_apply hook failed; the bundle stays applied");
            failures += 1;
        }
    })?;
    Ok((applied, failures))
}

/// `replay --root DIR [--config FILE]`: DIR written as FILE's policy
/// says (or as a receiver with none would write it), within its limits;
/// and its hook.
fn replay_root_target(
    config: Option<PathBuf>,
    root: PathBuf,
) -> anyhow::Result<(Target, apply::Limits, Option<Hook>)> {
    let (limits, policy, hook) = match config {
        Some(file) => {
            let config = Config::load(&file)?;
            let file = config.file;
            let r = config.receiver.with_context(|| {
                format!("{}: no [receiver] table to replay into", file.display())
            })?;
            let policy = r.policy().map_err(anyhow::Error::msg)?;
            (r.limits, policy, r.on_apply)
        }
        None => (apply::Limits::default(), Policy::default(), None),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let staging = apply::sibling_staging(&root);
    let t = Target {
        parts: staging.with_extension("parts"),
        root,
        staging,
        policy,
        keep: None,
        snapshot: false,
    };
    t.prepare()?;
    Ok((t, limits, hook))
}

/// Apply `b` to `target` (with `sender`'s part sets); under `publish =
/// "tree"`, into the next snapshot, which root then points at.
fn apply_into(into: &ReplayInto, sender: &str, b: apply::Opened) -> anyhow::Result<Applied> {
    let mut t = into.target.for_sender(sender);
    let Some(trees) = into.trees else {
        return Ok(apply::apply(&t, b)?);
    };
    let (_, snapshot) = trees.next()?;
    t.root = snapshot.clone();
    t.snapshot = true;
    match apply::apply(&t, b) {
        Ok(a) => trees.publish(&snapshot).map(|()| a),
        Err(e) => {
            trees.discard(&snapshot);
            Err(e.into())
        }
    }
}

/// The hook `replay --hooks` runs: the config's `receiver.on_apply`,
/// checked as the receiver checks it at start.
fn replay_hook(on_apply: Option<Hook>) -> anyhow::Result<Hook> {
    let hook = on_apply.context(
        "--hooks runs receiver.on_apply of the config given with --config, and there is none",
    )?;
    hook.check_program().map_err(anyhow::Error::msg)?;
    Ok(hook)
}

/// Apply `bundles` to `target` in sequence order per sender. Every bundle is
/// opened and checked before the first is applied; a bundle that does not
/// check out stops the replay before anything of it is applied. Returns each
/// applied bundle with its sender's key (see `replay_key`).
pub fn replay(
    target: &Target,
    limits: &apply::Limits,
    bundles: &[PathBuf],
) -> anyhow::Result<Vec<(String, Applied)>> {
    let into = ReplayInto {
        target,
        trees: None,
        held: Vec::new(),
    };
    replay_then(&into, limits, bundles, &mut |_, _| {})
}

/// Where `shipper replay` applies bundles: a target, its snapshots under
/// `publish = "tree"`, and the senders a rollback holds there (whose
/// bundles are refused).
pub struct ReplayInto<'a> {
    pub target: &'a Target,
    pub trees: Option<&'a receiver::Trees>,
    pub held: Vec<String>,
}

/// [`replay`], calling `after` with the sender's id (as its manifest gives
/// it) and what was applied after each bundle; under `publish = "tree"`
/// (`trees`), each bundle into the next snapshot, which root then points at.
pub fn replay_then(
    into: &ReplayInto,
    limits: &apply::Limits,
    bundles: &[PathBuf],
    after: &mut dyn FnMut(&str, &Applied),
) -> anyhow::Result<Vec<(String, Applied)>> {
    let mut opened = Vec::new();
    for path in bundles {
        let b = apply::open(path, limits)
            .with_context(|| format!("refusing bundle {}", path.display()))?;
        let key = replay_key(&b);
        if into.held.contains(&key) {
            bail!(
                "refusing bundle {}: its sender {key} is held by a rollback (`shipper rollback --release` first)",
                path.display()
            );
        }
        opened.push((key, b));
    }
    opened.sort_by(|(ka, a), (kb, b)| (ka, a.manifest.seq).cmp(&(kb, b.manifest.seq)));
    let mut prev: Option<(String, u64)> = None;
    let mut done = Vec::new();
    let bar = progress(opened.len() as u64, "replaying");
    for (sender, b) in opened {
        let (seq, path, id) = (b.manifest.seq, b.path.clone(), b.manifest.sender.clone());
        if let Some((ps, pseq)) = &prev
            && *ps == sender
        {
            if *pseq == seq {
                bail!(
                    "bundle {} repeats sequence {seq} of sender {sender}",
                    path.display()
                );
            }
            if next_seq(*pseq) != Ok(seq) {
                warn!(
                    sender,
                    from = pseq,
                    to = seq,
                    "sequence gap: bundles in between are missing; later files may depend on them"
                );
            }
        }
        let a = apply_into(into, &sender, b)
            .with_context(|| format!("applying bundle {}", path.display()))?;
        info!(
            sender,
            seq,
            files = a.published,
            deletions = a.summary.deletions,
            "bundle replayed"
        );
        after(&id, &a);
        prev = Some((sender.clone(), seq));
        done.push((sender, a));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(done)
}

/// Whose bundle this is, as the receiver keyed it: a receiver with keys
/// archives a sender's bundles as `<fingerprint>-<seq>.zip`, and two senders
/// may share one id. A name that does not say (renamed, or not from an
/// archive) falls back to the manifest's sender id.
fn replay_key(b: &apply::Opened) -> String {
    b.path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(receiver::parse_archive_name)
        .filter(|(key, seq)| {
            *seq == b.manifest.seq
                && (*key == b.manifest.sender || key.parse::<Fingerprint>().is_ok())
        })
        .map_or_else(|| b.manifest.sender.clone(), |(key, _)| key.to_owned())
}

/// A progress bar on a terminal; nothing at all when stderr is not one
/// (logs, pipes, systemd).
fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) || len < 2 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} bundles, {elapsed}")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    // Draw at once: short work would otherwise finish before the first frame.
    bar.tick();
    bar
}

/// The files of `m` made from what root holds (kept, copied, rebuilt
/// from deltas), described on to `s`.
fn describe_reused(m: &Manifest, s: &mut String) {
    if !m.kept.is_empty() {
        let _ = writeln!(
            s,
            "kept (content not carried; root must hold it): {}",
            m.kept.len()
        );
    }
    for k in &m.kept {
        let _ = writeln!(s, "  {:>12}  {:o}  {}", k.size, k.mode, k.path);
    }
    if !m.copies.is_empty() {
        let _ = writeln!(s, "copies (from root's own files): {}", m.copies.len());
    }
    for c in &m.copies {
        let _ = writeln!(
            s,
            "  {:>12}  {:o}  {} <- {}",
            c.size, c.mode, c.path, c.from
        );
    }
    if !m.deltas.is_empty() {
        let _ = writeln!(
            s,
            "deltas (rebuilt from root's previous version): {}",
            m.deltas.len()
        );
    }
    for d in &m.deltas {
        let _ = writeln!(
            s,
            "  {:>12}  {:o}  {} ({} bytes carried; previous version {} bytes, {})",
            d.size,
            d.mode,
            d.path,
            d.data_len(),
            d.base_size,
            d.base_hash
        );
    }
}

/// Human description of a manifest, for `shipper inspect`.
pub fn describe(m: &Manifest) -> String {
    let mut s = String::new();
    let created = chrono::DateTime::from_timestamp(m.created, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    let _ = writeln!(s, "sender:    {}", m.sender);
    let _ = writeln!(s, "sequence:  {}", m.seq);
    let _ = writeln!(s, "created:   {created}");
    let _ = writeln!(s, "format:    {}", m.format);
    let _ = writeln!(s, "files:     {}", m.files.len());
    for f in &m.files {
        let _ = writeln!(s, "  {:>12}  {:o}  {}", f.size, f.mode, f.path);
    }
    let _ = writeln!(s, "parts:     {}", m.parts.len());
    for p in &m.parts {
        let _ = writeln!(
            s,
            "  {:>12}  part {}/{} of {} ({} bytes){}",
            p.size,
            p.index + 1,
            p.count,
            p.path,
            p.file_size,
            if p.file_hash.is_some() { ", last" } else { "" }
        );
    }
    let _ = writeln!(s, "deletions: {}", m.deletions.len());
    for d in &m.deletions {
        let _ = writeln!(s, "  {d}");
    }
    if !m.abandoned.is_empty() {
        let _ = writeln!(s, "abandoned part sets: {}", m.abandoned.join(", "));
    }
    if !m.dirs.is_empty() {
        let _ = writeln!(s, "dirs:      {}", m.dirs.len());
    }
    for d in &m.dirs {
        let _ = writeln!(s, "  {:>12}  {:o}  {}/", "", d.mode, d.path);
    }
    if !m.links.is_empty() {
        let _ = writeln!(s, "links:     {}", m.links.len());
    }
    for l in &m.links {
        let _ = writeln!(s, "  {} -> {}", l.path, l.target);
    }
    describe_reused(m, &mut s);
    s
}
