//! The receiver's `on_apply` hook: a command run after each applied bundle
//! (to purge a cache, say), told what changed. It gets `SHIPPER_SEQ`,
//! `SHIPPER_SENDER` and `SHIPPER_ROOT` in its environment and the changed
//! paths on stdin, one per line: `+ path` for a written file, `- path` for
//! a deletion. It runs in a process group of its own and is killed with
//! everything it started once `on_apply_timeout` passes, so it can never
//! hold an acknowledgement longer than that. Runs processes; async.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStderr, Command};

/// How much of a failed hook's stderr its error quotes (the end of it).
const STDERR_TAIL: usize = 2048;

/// The configured command and how long it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Program and arguments; never run through a shell.
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// One path a bundle changed, as the hook reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Wrote(String),
    Deleted(String),
}

impl Change {
    /// The line the hook reads on stdin.
    pub fn line(&self) -> String {
        match self {
            Change::Wrote(p) => format!("+ {p}\n"),
            Change::Deleted(p) => format!("- {p}\n"),
        }
    }
}

/// The lines for a bundle that deleted `deleted` and wrote `written`, in
/// the order they happened in root: deletions first.
pub fn changes(written: &[String], deleted: &[String]) -> Vec<Change> {
    let deletions = deleted.iter().map(|p| Change::Deleted(p.clone()));
    deletions
        .chain(written.iter().map(|p| Change::Wrote(p.clone())))
        .collect()
}

/// What the hook is told about one applied bundle.
#[derive(Debug, Clone)]
pub struct Applied {
    pub seq: u64,
    /// The sender's id, as its manifests give it.
    pub sender: String,
    pub root: PathBuf,
    pub changes: Vec<Change>,
}

/// Why a hook run failed; each names the program.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("on_apply hook {program}: cannot start: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("on_apply hook {program}: {status}{}", stderr_suffix(.stderr))]
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("on_apply hook {program}: still running after {}, killed", humantime::format_duration(*.timeout))]
    TimedOut { program: String, timeout: Duration },
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl Hook {
    fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or("")
    }

    /// Refuse a program that is not an executable file, naming the key:
    /// checked at start, not at the first bundle. Blocking (a stat).
    pub fn check_program(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let program = self.program();
        match std::fs::metadata(program) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
            Ok(_) => Err(format!(
                "receiver.on_apply: {program} is not an executable file"
            )),
            Err(e) => Err(format!("receiver.on_apply: {program}: {e}")),
        }
    }

    /// Run the hook for `applied` and wait for it, at most `timeout`.
    pub async fn run(&self, applied: &Applied) -> Result<(), HookError> {
        let program = self.program().to_owned();
        let mut child =
            command(&self.argv, applied)
                .spawn()
                .map_err(|source| HookError::Start {
                    program: program.clone(),
                    source,
                })?;
        let input: String = applied.changes.iter().map(Change::line).collect();
        let mut stdin = child.stdin.take();
        // A hook that never reads stdin must not stall the run: write from
        // a task of its own and ignore a closed pipe.
        let writer = tokio::spawn(async move {
            if let Some(stdin) = stdin.as_mut() {
                let _ = stdin.write_all(input.as_bytes()).await;
            }
        });
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let reader = tokio::spawn(keep_tail(child.stderr.take(), stderr_tail.clone()));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let waited = tokio::time::timeout_at(deadline, child.wait()).await;
        writer.abort();
        match waited {
            Ok(Ok(status)) if status.success() => {
                reader.abort();
                Ok(())
            }
            Ok(Ok(status)) => {
                // Its stderr ends when the last process holding it does: a
                // daemon the hook left could hold it for ever, so it is
                // read only until the hook's time is up.
                let _ = tokio::time::timeout_at(deadline, reader).await;
                let stderr = stderr_tail.lock().map(|t| tail(&t)).unwrap_or_default();
                Err(HookError::Failed {
                    program,
                    status,
                    stderr,
                })
            }
            Ok(Err(source)) => Err(HookError::Start { program, source }),
            Err(_) => {
                kill_group(&mut child).await;
                reader.abort();
                Err(HookError::TimedOut {
                    program,
                    timeout: self.timeout,
                })
            }
        }
    }
}

fn command(argv: &[String], applied: &Applied) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("SHIPPER_SEQ", applied.seq.to_string())
        .env("SHIPPER_SENDER", &applied.sender)
        .env("SHIPPER_ROOT", &applied.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Kill the hook and everything it started, then reap it.
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill().await;
}

/// Read `stderr` to its end, keeping only its last [`STDERR_TAIL`] bytes
/// in `kept` (a hook may write without end), readable whenever the
/// reading is given up.
async fn keep_tail(stderr: Option<ChildStderr>, kept: Arc<Mutex<Vec<u8>>>) {
    let Some(mut stderr) = stderr else { return };
    let mut buf = [0u8; 8192];
    while let Ok(n @ 1..) = stderr.read(&mut buf).await {
        let Ok(mut kept) = kept.lock() else { return };
        kept.extend_from_slice(&buf[..n]);
        let over = kept.len().saturating_sub(STDERR_TAIL);
        kept.drain(..over);
    }
}

/// The last [`STDERR_TAIL`] bytes of `bytes`, as text.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn sh(script: &str, timeout: Duration) -> Hook {
        Hook {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout,
        }
    }

    fn applied(dir: &Path) -> Applied {
        Applied {
            seq: 7,
            sender: "cms".into(),
            root: dir.to_owned(),
            changes: vec![
                Change::Wrote("a b.html".into()),
                Change::Deleted("old.html".into()),
            ],
        }
    }

    #[tokio::test]
    async fn the_hook_reads_the_changes_and_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "cat > '{0}'; echo \"$SHIPPER_SEQ $SHIPPER_SENDER $SHIPPER_ROOT\" >> '{0}'",
            out.display()
        );
        sh(&script, Duration::from_secs(30))
            .run(&applied(dir.path()))
            .await
            .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            text,
            format!("+ a b.html\n- old.html\n7 cms {}\n", dir.path().display())
        );
    }

    #[tokio::test]
    async fn a_failing_hook_is_named_with_its_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let err = sh("echo purge failed >&2; exit 3", Duration::from_secs(30))
            .run(&applied(dir.path()))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, HookError::Failed { .. }), "{text}");
        assert!(text.contains("/bin/sh") && text.contains("3"), "{text}");
        assert!(text.contains("purge failed"), "{text}");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The hook starts a grandchild and waits; both must die.
        let script = format!("sleep 600 & echo $! > '{}'; wait", pidfile.display());
        let err = sh(&script, Duration::from_millis(500))
            .run(&applied(dir.path()))
            .await
            .unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // A killed grandchild is reaped by init; until then it is a zombie.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the hook's child {pid} outlived the timeout"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A failing hook whose daemon keeps its stderr open held the
    /// receiver (and the sender's ack) for as long as the daemon lived:
    /// its stderr was read to the end before the failure was reported.
    #[tokio::test]
    async fn a_failing_hook_whose_daemon_holds_stderr_is_reported_by_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "echo purge failed >&2; sleep 600 & echo $! > '{}'; exit 3",
            pidfile.display()
        );
        let hook = sh(&script, Duration::from_secs(2));
        let a = applied(dir.path());
        let err = tokio::time::timeout(Duration::from_secs(20), hook.run(&a))
            .await
            .expect("the hook's daemon held the run past its timeout")
            .unwrap_err();
        let text = err.to_string();
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        assert!(matches!(err, HookError::Failed { .. }), "{text}");
        assert!(text.contains("purge failed"), "{text}");
    }

    #[tokio::test]
    async fn a_hook_that_never_reads_stdin_still_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = applied(dir.path());
        // Far more than a pipe holds.
        a.changes = (0..20_000)
            .map(|i| Change::Wrote(format!("pages/{i:06}.html")))
            .collect();
        sh("exit 0", Duration::from_secs(30)).run(&a).await.unwrap();
    }

    #[test]
    fn only_an_executable_file_passes_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let hook = |p: &Path| Hook {
            argv: vec![p.to_string_lossy().into_owned()],
            timeout: Duration::from_secs(1),
        };
        assert_eq!(hook(Path::new("/bin/sh")).check_program(), Ok(()));
        let plain = dir.path().join("purge");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        for p in [plain.as_path(), dir.path(), &dir.path().join("missing")] {
            let e = hook(p).check_program().unwrap_err();
            assert!(
                e.starts_with("receiver.on_apply: ") && e.contains(&*p.to_string_lossy()),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let hook = Hook {
            argv: vec!["/nonexistent/purge".into()],
            timeout: Duration::from_secs(1),
        };
        let err = hook.run(&applied(dir.path())).await.unwrap_err();
        assert!(matches!(err, HookError::Start { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/purge"), "{err}");
    }
}
