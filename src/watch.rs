//! The watcher: notify events in, [`WatchMsg`]s out on a channel. No policy:
//! it only translates OS events into what happened to which relative path.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use crate::paths::{Excludes, relative, unshippable_name};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMsg {
    /// Content or metadata changed, or the file appeared. `writing`: a
    /// writer may still hold it open.
    Changed { path: String, writing: bool },
    /// A writer closed the file.
    Closed(String),
    /// The path is gone (deleted or renamed away); may be a directory.
    Removed(String),
    /// A directory appeared (created or renamed in): walk it, since files
    /// may have been written into it before its watch existed.
    Scan(PathBuf),
    /// Events were lost (queue overflow or watcher error): compare the tree.
    Rescan(String),
    /// A path whose name is not UTF-8 appeared or changed (`gone`: went
    /// away): it cannot travel. `path` has the bad bytes replaced.
    BadName { path: String, gone: bool },
}

/// Keeps the OS watch alive; dropping it stops watching.
pub struct WatchGuard {
    watcher: std::sync::Mutex<notify::RecommendedWatcher>,
}

impl WatchGuard {
    /// Make sure `dir` is watched before it is walked. notify adds watches
    /// for new directories on its own thread, some time after reporting
    /// them; a walk that ran before that could miss a file created in the
    /// gap. `watch` returns once the watch exists, so a walk after it
    /// misses nothing: what it does not see raises an event. Blocking.
    pub fn watch_dir(&self, dir: &Path) -> notify::Result<()> {
        let mut w = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        w.watch(dir, RecursiveMode::Recursive)
    }
}

/// Watch `source` recursively, sending translated events to `tx`.
/// `ignore` holds directories below source never to report (state kept there).
pub fn start(
    source: &Path,
    excludes: Excludes,
    ignore: Vec<PathBuf>,
    tx: UnboundedSender<WatchMsg>,
) -> notify::Result<WatchGuard> {
    let base = source.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
        Ok(ev) => {
            for msg in translate(&base, &ev) {
                if wanted(&msg, &base, &excludes, &ignore) {
                    let _ = tx.send(msg);
                }
            }
        }
        Err(e) => {
            let _ = tx.send(WatchMsg::Rescan(format!("watcher error: {e}")));
        }
    })?;
    watcher.watch(source, RecursiveMode::Recursive)?;
    Ok(WatchGuard {
        watcher: std::sync::Mutex::new(watcher),
    })
}

fn wanted(msg: &WatchMsg, base: &Path, excludes: &Excludes, ignore: &[PathBuf]) -> bool {
    let rel = match msg {
        WatchMsg::Changed { path, .. }
        | WatchMsg::Closed(path)
        | WatchMsg::Removed(path)
        | WatchMsg::BadName { path, .. } => path.clone(),
        WatchMsg::Scan(dir) => match relative(base, dir) {
            Some(r) => r,
            None => return true,
        },
        WatchMsg::Rescan(_) => return true,
    };
    !excludes.is_excluded(&rel) && !ignore.iter().any(|i| base.join(&rel).starts_with(i))
}

/// Translate one notify event. Stats the path only to tell a directory
/// renamed in from a file.
pub fn translate(base: &Path, ev: &Event) -> Vec<WatchMsg> {
    if ev.need_rescan() {
        return vec![WatchMsg::Rescan("event queue overflowed".into())];
    }
    let rel = |p: &PathBuf| relative(base, p);
    let mut out = Vec::new();
    // Names that cannot travel are reported, never dropped without a word.
    for p in &ev.paths {
        if let Some(path) = unshippable_name(base, p) {
            let gone = std::fs::symlink_metadata(p).is_err();
            out.push(WatchMsg::BadName { path, gone });
        }
    }
    let appeared = |p: &PathBuf, out: &mut Vec<WatchMsg>| {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            out.push(WatchMsg::Scan(p.clone()));
        } else if let Some(r) = rel(p) {
            out.push(WatchMsg::Changed {
                path: r,
                writing: false,
            });
        }
    };
    match ev.kind {
        EventKind::Create(CreateKind::Folder) => {
            out.extend(ev.paths.iter().map(|p| WatchMsg::Scan(p.clone())));
        }
        EventKind::Create(_) => {
            for p in &ev.paths {
                let md = std::fs::symlink_metadata(p);
                if md.as_ref().is_ok_and(|m| m.is_dir()) {
                    out.push(WatchMsg::Scan(p.clone()));
                } else if let Some(r) = rel(p) {
                    // A new regular file was opened for writing: hold it until
                    // closed. Symlinks and the like have no writer to wait for.
                    let writing = md.map(|m| m.is_file()).unwrap_or(true);
                    out.push(WatchMsg::Changed { path: r, writing });
                }
            }
        }
        EventKind::Modify(ModifyKind::Data(_)) => {
            out.extend(
                ev.paths
                    .iter()
                    .filter_map(rel)
                    .map(|path| WatchMsg::Changed {
                        path,
                        writing: true,
                    }),
            );
        }
        EventKind::Modify(ModifyKind::Name(mode)) => match mode {
            RenameMode::From => out.extend(ev.paths.iter().filter_map(rel).map(WatchMsg::Removed)),
            RenameMode::To => ev.paths.iter().for_each(|p| appeared(p, &mut out)),
            // inotify reports From and To on their own as well; acting on
            // Both too would walk a renamed directory twice.
            RenameMode::Both if cfg!(target_os = "linux") => {}
            RenameMode::Both => {
                if let [from, to] = &ev.paths[..] {
                    out.extend(rel(from).map(WatchMsg::Removed));
                    appeared(to, &mut out);
                }
            }
            _ => {
                for p in &ev.paths {
                    if std::fs::symlink_metadata(p).is_ok() {
                        appeared(p, &mut out);
                    } else {
                        out.extend(rel(p).map(WatchMsg::Removed));
                    }
                }
            }
        },
        EventKind::Modify(_) => {
            out.extend(
                ev.paths
                    .iter()
                    .filter_map(rel)
                    .map(|path| WatchMsg::Changed {
                        path,
                        writing: false,
                    }),
            );
        }
        EventKind::Remove(_) => out.extend(ev.paths.iter().filter_map(rel).map(WatchMsg::Removed)),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            out.extend(ev.paths.iter().filter_map(rel).map(WatchMsg::Closed));
        }
        EventKind::Access(_) => {}
        EventKind::Any | EventKind::Other => {
            if ev.paths.is_empty() {
                out.push(WatchMsg::Rescan("event without a path".into()));
            } else {
                ev.paths.iter().for_each(|p| appeared(p, &mut out));
            }
        }
    }
    out
}

/// The stat fields that tell whether a file differs from what was shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub mode: u32,
}

impl FileStat {
    pub fn of(md: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: md.len(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            mode: md.mode() & 0o7777,
        }
    }

    pub fn matches(&self, m: &crate::bundle::manifest::FileMeta) -> bool {
        self.size == m.size
            && self.mtime == m.mtime
            && self.mtime_nsec == m.mtime_nsec
            && self.mode == m.mode
    }
}

/// What a walk of a directory found.
#[derive(Debug, Default)]
pub struct Walk {
    /// The walked directory in shipped form; `None` for the whole source.
    pub dir: Option<String>,
    pub files: Vec<(String, FileStat)>,
    pub dirs: u64,
    /// How long the walk took.
    pub took: std::time::Duration,
    /// Files some process holds open for writing, where the OS tells…
    pub writers: std::collections::HashSet<String>,
    /// …as of this moment (a close seen after it supersedes the report).
    pub writers_at: Option<std::time::Instant>,
    /// Paths whose names are not UTF-8 (bad bytes replaced): they cannot
    /// travel; a directory so named stands for everything below it.
    pub bad_names: Vec<String>,
}

/// Walk `dir` (below `base`): every regular file not excluded, in shipped
/// form, with its stat. Blocking.
pub fn walk(base: &Path, dir: &Path, excludes: &Excludes, ignore: &[PathBuf]) -> Walk {
    let started = std::time::Instant::now();
    let mut out = Walk {
        dir: relative(base, dir),
        ..Walk::default()
    };
    let mut it = walkdir::WalkDir::new(dir).follow_links(false).into_iter();
    while let Some(entry) = it.next() {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_dir() {
            out.dirs += 1;
        }
        let Some(rel) = relative(base, entry.path()) else {
            if let Some(bad) = unshippable_name(base, entry.path()) {
                out.bad_names.push(bad);
                if entry.file_type().is_dir() {
                    it.skip_current_dir();
                }
            }
            continue;
        };
        if excludes.is_excluded(&rel) || ignore.iter().any(|i| entry.path().starts_with(i)) {
            if entry.file_type().is_dir() {
                out.dirs -= 1;
                it.skip_current_dir();
            }
            continue;
        }
        if entry.file_type().is_file()
            && let Ok(md) = entry.metadata()
        {
            out.files.push((rel, FileStat::of(&md)));
        }
    }
    out.writers_at = Some(std::time::Instant::now());
    out.writers = open_for_writing(base);
    out.took = started.elapsed();
    out
}

/// Files below `base` that some process has open for writing, read from
/// /proc/PID/fd and fdinfo (the processes this user may inspect). A walk
/// cannot see a write in progress any other way: a writer that stalled
/// mid-file before the watch existed raises no event. Empty where /proc is
/// not available. Blocking.
pub fn open_for_writing(base: &Path) -> std::collections::HashSet<String> {
    let mut found = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let is_pid = p
            .file_name()
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(rel) = relative(base, &target) else {
                continue;
            };
            let info = p.path().join("fdinfo").join(fd.file_name());
            let writable = std::fs::read_to_string(info).ok().and_then(|t| {
                let flags = t.lines().find_map(|l| l.strip_prefix("flags:"))?;
                u32::from_str_radix(flags.trim(), 8).ok()
            });
            // O_ACCMODE: 1 = O_WRONLY, 2 = O_RDWR.
            if writable.is_some_and(|f| f & 3 != 0) {
                found.insert(rel);
            }
        }
    }
    found
}

/// The kernel's per-user inotify watch limit, where there is one to read.
pub fn inotify_watch_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, RemoveKind};

    fn ev(kind: EventKind, paths: &[&str]) -> Event {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    #[test]
    fn writes_closes_and_removes_map_to_relative_paths() {
        let base = Path::new("/nonexistent-src");
        let t = |k, p: &[&str]| translate(base, &ev(k, p));
        assert_eq!(
            t(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &["/nonexistent-src/a/b"]
            ),
            [WatchMsg::Changed {
                path: "a/b".into(),
                writing: true
            }]
        );
        assert_eq!(
            t(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &["/nonexistent-src/a"]
            ),
            [WatchMsg::Closed("a".into())]
        );
        assert_eq!(
            t(
                EventKind::Remove(RemoveKind::Folder),
                &["/nonexistent-src/d"]
            ),
            [WatchMsg::Removed("d".into())]
        );
        assert_eq!(
            t(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                &["/nonexistent-src/old"]
            ),
            [WatchMsg::Removed("old".into())]
        );
        assert!(
            t(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                &["/nonexistent-src/a"]
            )
            .is_empty()
        );
        assert!(
            t(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &["/elsewhere/a"]
            )
            .is_empty()
        );
    }

    #[test]
    fn overflow_and_pathless_events_ask_for_a_rescan() {
        let base = Path::new("/s");
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(matches!(
            translate(base, &overflow)[..],
            [WatchMsg::Rescan(_)]
        ));
        assert!(matches!(
            translate(base, &Event::new(EventKind::Any))[..],
            [WatchMsg::Rescan(_)]
        ));
    }

    #[test]
    fn files_held_open_for_writing_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("done"), "x").unwrap();
        let base = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // Another process holds "busy" open for writing.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3>busy; read x")
            .current_dir(&base)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let w = open_for_writing(&base);
                if w.contains("busy") {
                    tx.send(w).unwrap();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = done_tx.send(());
        });
        let _ = done_rx.recv();
        let w = rx.try_recv().expect("writer not found in /proc");
        assert!(!w.contains("done"));
        child.kill().unwrap();
        let _ = child.wait();
    }

    #[test]
    fn a_directory_renamed_in_is_scanned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let got = translate(
            dir.path(),
            &ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                &[dir.path().join("d").to_str().unwrap()],
            ),
        );
        assert_eq!(got, [WatchMsg::Scan(dir.path().join("d"))]);
    }
}
