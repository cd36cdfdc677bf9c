//! The watcher: notify events in, [`WatchMsg`]s out on a channel. No policy:
//! it only translates OS events into what happened to which relative path.
//!
//! The [`Sentinel`] follows the source by its configured path, not by the
//! directory first found there: generators build a new tree beside the old
//! one and rename it over, deploy tools re-point a symlink. It looks at the
//! path when the watched directory itself is renamed or removed, and every
//! [`SOURCE_POLL`] besides, and reports a different directory (already
//! watched, with its own channel of events) or none. What that means for
//! shipping is the sender's business.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::paths::{Excludes, relative, unshippable_name};
use crate::stamp::Stamp;

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
/// `moved` is told when `source` itself is renamed or removed.
fn start(
    source: &Path,
    excludes: Excludes,
    ignore: Vec<PathBuf>,
    tx: UnboundedSender<WatchMsg>,
    moved: std::sync::mpsc::Sender<()>,
) -> notify::Result<WatchGuard> {
    let base = source.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
        Ok(ev) => {
            if concerns_root(&base, &ev) {
                let _ = moved.send(());
            }
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

/// The watched directory itself was renamed or removed (inotify's
/// IN_MOVE_SELF and IN_DELETE_SELF, which carry no path below it).
fn concerns_root(base: &Path, ev: &Event) -> bool {
    matches!(
        ev.kind,
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
    ) && ev.paths.iter().any(|p| p == base)
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

/// How often the [`Sentinel`] looks at the source path without a hint (a
/// re-pointed symlink raises no event on the directory it pointed to).
pub const SOURCE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// After a failed watch of a new source directory, how long before the
/// next try: each try walks the whole tree.
const REWATCH_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(10);

/// The directory the configured source path names: the path it resolves to
/// (through symlinks) and its device and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceId {
    dir: PathBuf,
    dev: u64,
    ino: u64,
}

/// Which directory `configured` names now. Blocking.
fn identify(configured: &Path) -> std::io::Result<SourceId> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(configured)?;
    if !md.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let dir = std::fs::canonicalize(configured)?;
    Ok(SourceId {
        dir,
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// What a look at the source path found, against the directory watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceChange {
    /// The watched directory (or, still, none).
    Same,
    /// No directory where one was watched.
    Missing,
    /// A directory other than the watched one, or one where none was.
    Replaced,
}

/// Compare the directory watched with the one found now (`None`: none).
fn source_change(watched: Option<&SourceId>, now: Option<&SourceId>) -> SourceChange {
    match (watched, now) {
        (Some(w), Some(n)) if w == n => SourceChange::Same,
        (None, None) => SourceChange::Same,
        (Some(_), None) => SourceChange::Missing,
        (_, Some(_)) => SourceChange::Replaced,
    }
}

/// A source directory being watched, and the events its watch raises.
pub struct Watched {
    /// The directory, through symlinks: the base of every relative path.
    pub dir: PathBuf,
    pub guard: WatchGuard,
    pub events: UnboundedReceiver<WatchMsg>,
}

/// What the [`Sentinel`] reports.
pub enum SourceEvent {
    /// The directory watched so far is no longer at the source path; what
    /// is there now follows. Events of its watch no longer concern the
    /// source.
    Left,
    /// A directory is at the source path and watched: the first one, a
    /// replacement, or one back after none was.
    Watched(Watched),
    /// No directory can be watched at the source path: why, with the path.
    Missing(String),
}

/// Follows the source path on a thread of its own; see the module header.
pub struct Sentinel {
    wake: std::sync::mpsc::Sender<()>,
}

impl Sentinel {
    /// Look at `configured` now and watch what is there (blocking, like the
    /// first watch always was: a watch that fails at start is an error),
    /// then keep looking on a thread until `tx` closes. Returns the first
    /// look: [`SourceEvent::Watched`] or [`SourceEvent::Missing`].
    pub fn start(
        configured: PathBuf,
        excludes: Excludes,
        ignore: Vec<PathBuf>,
        tx: UnboundedSender<SourceEvent>,
    ) -> notify::Result<(Self, SourceEvent)> {
        let (wake, woken) = std::sync::mpsc::channel();
        let mut follow = Follow {
            configured,
            excludes,
            ignore,
            wake: wake.clone(),
            watched: None,
            reported: None,
            retry_at: None,
        };
        let first = match identify(&follow.configured) {
            Ok(id) => {
                let w = follow.watch(&id.dir)?;
                follow.watched = Some(id);
                SourceEvent::Watched(w)
            }
            Err(e) => {
                let why = follow.missing(&e);
                follow.reported = Some(why.clone());
                SourceEvent::Missing(why)
            }
        };
        // From here on, looks happen on the thread, so the sender's runtime
        // never waits on a stat or on the walk a new watch makes.
        std::thread::Builder::new()
            .name("source-sentinel".into())
            .spawn(move || {
                while !tx.is_closed() {
                    let _ = woken.recv_timeout(SOURCE_POLL);
                    // One look answers every hint that came meanwhile.
                    while woken.try_recv().is_ok() {}
                    follow.look(&mut |ev| {
                        let _ = tx.send(ev);
                    });
                }
            })
            .map_err(|e| notify::Error::generic(&format!("starting the source sentinel: {e}")))?;
        Ok((Self { wake }, first))
    }

    /// Look at the source path now rather than at the next poll.
    pub fn check_now(&self) {
        let _ = self.wake.send(());
    }
}

/// The sentinel thread's state.
struct Follow {
    configured: PathBuf,
    excludes: Excludes,
    ignore: Vec<PathBuf>,
    /// Handed to each watch, to hear when its directory moves.
    wake: std::sync::mpsc::Sender<()>,
    watched: Option<SourceId>,
    /// The last reason reported for a missing source, so it is said once.
    reported: Option<String>,
    /// No new watch before this, after one failed.
    retry_at: Option<std::time::Instant>,
}

impl Follow {
    fn watch(&self, dir: &Path) -> notify::Result<Watched> {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let guard = start(
            dir,
            self.excludes.clone(),
            self.ignore.clone(),
            tx,
            self.wake.clone(),
        )?;
        Ok(Watched {
            dir: dir.to_path_buf(),
            guard,
            events,
        })
    }

    fn missing(&self, e: &dyn std::fmt::Display) -> String {
        format!("sender.source {}: {e}", self.configured.display())
    }

    /// Report the source missing for `why`, unless that was the last report.
    fn report_missing(&mut self, why: String, report: &mut dyn FnMut(SourceEvent)) {
        if self.reported.as_ref() != Some(&why) {
            self.reported = Some(why.clone());
            report(SourceEvent::Missing(why));
        }
    }

    /// Report what changed at the source path since the last look, if
    /// anything; blocking.
    fn look(&mut self, report: &mut dyn FnMut(SourceEvent)) {
        let now = identify(&self.configured);
        match source_change(self.watched.as_ref(), now.as_ref().ok()) {
            SourceChange::Same => {
                // Still missing, perhaps for another reason now.
                if let Err(e) = now {
                    let why = self.missing(&e);
                    self.report_missing(why, report);
                }
            }
            SourceChange::Missing => {
                let Err(e) = now else { return };
                self.watched = None;
                let why = self.missing(&e);
                self.report_missing(why, report);
            }
            SourceChange::Replaced => {
                let Ok(id) = now else { return };
                // Said before the new watch, which walks the whole new
                // tree: the old watch's events (its removal, say) must not
                // ripen into deletions meanwhile.
                if self.watched.take().is_some() {
                    report(SourceEvent::Left);
                }
                if self.retry_at.is_some_and(|t| std::time::Instant::now() < t) {
                    return;
                }
                match self.watch(&id.dir) {
                    Ok(w) => {
                        self.watched = Some(id);
                        self.reported = None;
                        self.retry_at = None;
                        report(SourceEvent::Watched(w));
                    }
                    Err(e) => {
                        // Unwatched, changes would go unseen: hold until a
                        // later try succeeds.
                        self.retry_at = Some(std::time::Instant::now() + REWATCH_AFTER_FAILURE);
                        let why = self.missing(&format!("cannot watch {}: {e}", id.dir.display()));
                        self.report_missing(why, report);
                    }
                }
            }
        }
    }
}

/// What a walk of a directory found.
#[derive(Debug, Default)]
pub struct Walk {
    /// The walked directory in shipped form; `None` for the whole source.
    pub dir: Option<String>,
    pub files: Vec<(String, Stamp)>,
    pub dirs: u64,
    /// How long the walk took…
    pub took: std::time::Duration,
    /// …from when (an event handled since may be newer than what it saw).
    pub began: Option<std::time::Instant>,
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
        began: Some(started),
        ..Walk::default()
    };
    // Not even the walked directory itself is followed if it turned into a
    // symlink since its event: what lies elsewhere is never listed.
    let mut it = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .follow_root_links(false)
        .into_iter();
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
            out.files.push((rel, Stamp::of(&md)));
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
    fn a_look_at_the_source_path_tells_same_missing_or_replaced() {
        let id = |dir: &str, ino| SourceId {
            dir: PathBuf::from(dir),
            dev: 1,
            ino,
        };
        let (a, b) = (id("/srv/out", 10), id("/srv/out", 11));
        use SourceChange::*;
        assert_eq!(source_change(Some(&a), Some(&a)), Same);
        assert_eq!(source_change(None, None), Same, "still missing");
        assert_eq!(source_change(Some(&a), None), Missing);
        assert_eq!(source_change(Some(&a), Some(&b)), Replaced, "new inode");
        assert_eq!(source_change(None, Some(&a)), Replaced, "back");
        // The same directory reached under another path (the symlink was
        // re-pointed at it by a new name): its events name the old path.
        let renamed = id("/srv/releases/43", 10);
        assert_eq!(source_change(Some(&a), Some(&renamed)), Replaced);
    }

    #[test]
    fn the_source_is_identified_through_symlinks_and_only_as_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("1"), dir.path().join("2"));
        std::fs::create_dir(&one).unwrap();
        std::fs::create_dir(&two).unwrap();
        let current = dir.path().join("current");
        std::os::unix::fs::symlink("1", &current).unwrap();
        let first = identify(&current).unwrap();
        assert_eq!(first.dir, one.canonicalize().unwrap());
        assert_eq!(identify(&one).unwrap(), first);
        std::fs::remove_file(&current).unwrap();
        std::os::unix::fs::symlink("2", &current).unwrap();
        assert_ne!(identify(&current).unwrap(), first);
        std::fs::remove_file(&current).unwrap();
        assert_eq!(
            identify(&current).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        std::fs::write(&current, "a file").unwrap();
        assert_eq!(
            identify(&current).unwrap_err().kind(),
            std::io::ErrorKind::NotADirectory
        );
    }

    #[test]
    fn only_a_rename_or_removal_of_the_watched_directory_itself_is_a_hint() {
        let base = Path::new("/s");
        let on = |kind, p: &str| concerns_root(base, &ev(kind, &[p]));
        assert!(on(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            "/s"
        ));
        assert!(on(EventKind::Remove(RemoveKind::Folder), "/s"));
        assert!(!on(EventKind::Remove(RemoveKind::File), "/s/a"));
        // Walks open the directory: that must not wake the sentinel.
        assert!(!on(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/s"
        ));
    }

    #[tokio::test]
    async fn the_sentinel_reports_a_source_renamed_away_and_its_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let no_excludes = Excludes::new::<&str>(&[]).unwrap();
        let (_sentinel, first) = Sentinel::start(src.clone(), no_excludes, Vec::new(), tx).unwrap();
        let SourceEvent::Watched(_old) = first else {
            panic!("an existing source is watched at once")
        };
        std::fs::rename(&src, dir.path().join("src.old")).unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv());
        match next.await.unwrap().unwrap() {
            SourceEvent::Missing(why) => assert!(why.contains("src"), "{why}"),
            _ => panic!("nothing is at the source path"),
        }
        std::fs::create_dir(&src).unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv());
        let SourceEvent::Watched(mut new) = next.await.unwrap().unwrap() else {
            panic!("the new directory is watched")
        };
        // Events come from the new directory's watch, not the old one's.
        std::fs::write(dir.path().join("src.old/old"), "x").unwrap();
        std::fs::write(src.join("new"), "x").unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), new.events.recv());
        assert!(matches!(
            got.await.unwrap().unwrap(),
            WatchMsg::Changed { path, .. } if path == "new"
        ));
    }

    #[test]
    fn a_directory_swapped_in_between_two_looks_is_left_then_watched() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(dir.path().join("src.new")).unwrap();
        let (wake, _woken) = std::sync::mpsc::channel();
        let mut follow = Follow {
            configured: src.clone(),
            excludes: Excludes::new::<&str>(&[]).unwrap(),
            ignore: Vec::new(),
            wake,
            watched: None,
            reported: None,
            retry_at: None,
        };
        let mut seen = Vec::new();
        let mut record = |ev: SourceEvent| {
            seen.push(match ev {
                SourceEvent::Left => "left".to_owned(),
                SourceEvent::Watched(w) => format!("watched {}", w.dir.display()),
                SourceEvent::Missing(why) => format!("missing {why}"),
            })
        };
        follow.look(&mut record);
        follow.look(&mut record);
        std::fs::rename(&src, dir.path().join("src.old")).unwrap();
        std::fs::rename(dir.path().join("src.new"), &src).unwrap();
        follow.look(&mut record);
        let watched = format!("watched {}", src.canonicalize().unwrap().display());
        assert_eq!(seen, [watched.clone(), "left".into(), watched]);
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
