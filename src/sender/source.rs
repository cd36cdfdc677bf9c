//! The source directory: its watch, the sentinel that follows the
//! configured path (another directory there, or none), and walks of it off
//! the runtime. While no directory is watched at the path the source is
//! held: nothing is cut, and its files are not taken as deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tracing::{info, warn};

use crate::paths::Excludes;
use crate::status::{SourceMissing, unix_now};
use crate::watch::{self as watcher, SourceEvent, Walk, WatchGuard, WatchMsg};

/// The source as the sender follows it.
pub(super) struct Source {
    /// The configured path, as written.
    path: PathBuf,
    /// The directory watched (the configured path resolved).
    dir: PathBuf,
    /// The watch on `dir`; `None` while it is missing or its replacement is
    /// not watched yet.
    watch_guard: Option<Arc<WatchGuard>>,
    /// Follows the configured path.
    sentinel: watcher::Sentinel,
    /// Set while no directory is at the source path.
    missing: Option<SourceMissing>,
    /// Finished walks go here.
    walks: UnboundedSender<Walk>,
    exclude: Excludes,
    /// Never walked (the sender's own state, if inside the source).
    ignore: Vec<PathBuf>,
    /// Set when the source is dropped (the sender stops, or failed to
    /// start): walks under way give up instead of listing the rest of the
    /// tree for no one.
    stop: Arc<AtomicBool>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the source reports to the sender's loop.
pub(super) struct Feeds {
    /// The sentinel's reports: another directory at the path, or none.
    pub(super) events: UnboundedReceiver<SourceEvent>,
    /// Finished walks: the files found.
    pub(super) walks: UnboundedReceiver<Walk>,
}

impl Source {
    /// Follow the source at `path`. Returns it with the sentinel's first
    /// look at the path, and what it will report.
    pub(super) fn start(
        path: &Path,
        exclude: &Excludes,
        ignore: Vec<PathBuf>,
    ) -> anyhow::Result<(Self, SourceEvent, Feeds)> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (sentinel, first_look) =
            watcher::Sentinel::start(path.to_owned(), exclude.clone(), ignore.clone(), events_tx)
                .with_context(|| format!("watching {}", path.display()))?;
        let (walks_tx, walks) = mpsc::unbounded_channel();
        let source = Self {
            path: path.to_owned(),
            dir: path.to_owned(),
            watch_guard: None,
            sentinel,
            missing: None,
            walks: walks_tx,
            exclude: exclude.clone(),
            ignore,
            stop: Arc::default(),
        };
        Ok((source, first_look, Feeds { events, walks }))
    }

    /// The directory watched (or last watched).
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why the source is held, while it is.
    pub(super) fn missing(&self) -> Option<&SourceMissing> {
        self.missing.as_ref()
    }

    /// Whether a directory at the source path is watched now.
    pub(super) fn watched(&self) -> bool {
        self.watch_guard.is_some()
    }

    /// Whether nothing is at `path` (shipped form) in the source tree. A
    /// path that cannot be looked at (permission denied) is not taken as
    /// gone. Blocking: callers checking many paths wrap the loop in
    /// [`blocking`].
    pub(super) fn absent(&self, path: &str) -> bool {
        self.on_disk(path) == OnDisk::Gone
    }

    /// What is at `path` (shipped form) in the source tree. Blocking.
    pub(super) fn on_disk(&self, path: &str) -> OnDisk {
        on_disk_below(&self.dir, path)
    }

    /// Walk `dir` off the runtime, watching each directory as it is
    /// listed; the files found arrive on the walks feed.
    pub(super) fn scan(&self, dir: PathBuf) {
        let (base, ex, ignore) = (self.dir.clone(), self.exclude.clone(), self.ignore.clone());
        let tx = self.walks.clone();
        let (guard, stop) = (self.watch_guard.clone(), self.stop.clone());
        tokio::task::spawn_blocking(move || {
            let watch = |d: &Path| match &guard {
                // The source itself is watched with it.
                Some(g) if d != base => g.watch_one(d).map_err(|e| e.to_string()),
                _ => Ok(()),
            };
            // A walk given up (the source dropped) has no result to send.
            if let Some(walk) = watcher::walk_watching(&base, &dir, &ex, &ignore, (&watch, &stop)) {
                let _ = tx.send(walk);
            }
        });
    }

    /// Walk the whole source.
    pub(super) fn scan_all(&self) {
        self.scan(self.dir.clone());
    }

    /// The sentinel found another directory at the source path, or none.
    /// Returns the events of the new watch (`None` until there is one); a
    /// directory watched is walked whole, to be compared with what the
    /// receivers have.
    pub(super) fn follow(&mut self, ev: SourceEvent) -> Option<UnboundedReceiver<WatchMsg>> {
        self.watch_guard = None;
        match ev {
            // A look at what replaced it follows; until then nothing is
            // watched.
            SourceEvent::Left => {
                info!(source = %self.path.display(), old = %self.dir.display(), "source replaced: watching the new directory, then comparing it with what the receivers have");
                None
            }
            SourceEvent::Missing(reason) => {
                warn!(
                    source = %self.path.display(),
                    reason = %reason,
                    "source missing: holding; nothing is shipped or deleted until a directory is back at the source path"
                );
                let since = self.missing.as_ref().map_or_else(unix_now, |m| m.since);
                self.missing = Some(SourceMissing { reason, since });
                None
            }
            SourceEvent::Watched(w) => {
                if self.missing.take().is_some() {
                    info!(source = %self.path.display(), dir = %w.dir.display(), "source back: comparing it with what the receivers have");
                }
                self.dir = w.dir;
                self.watch_guard = Some(Arc::new(w.guard));
                self.scan_all();
                Some(w.events)
            }
        }
    }

    /// What a flush answers while the source is missing.
    pub(super) fn holding_message(&self) -> String {
        let (reason, since) = self
            .missing
            .as_ref()
            .map(|m| (m.reason.as_str(), m.since))
            .unwrap_or_default();
        format!(
            "the source is missing ({reason}) for {}: holding, nothing is shipped or deleted until it is back",
            humantime::format_duration(Duration::from_secs((unix_now() - since).max(0) as u64))
        )
    }

    /// Whether the source directory vanished, checked after a comparison
    /// found paths gone: then they are not taken as deleted, and the
    /// sentinel is asked to look now (it is about to report it missing).
    pub(super) fn vanished(&self) -> bool {
        if self.dir.is_dir() {
            return false;
        }
        warn!(source = %self.dir.display(), "the source vanished during a comparison: its files are not taken as deleted");
        self.sentinel.check_now();
        true
    }
}

/// The next event of the source's watch; none while there is no watch.
pub(super) async fn next_watch_msg(
    rx: &mut Option<UnboundedReceiver<WatchMsg>>,
) -> Option<WatchMsg> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Warn about each directory a walk could not read (what is below it is
/// kept), and when it could not watch directories it listed: changes in
/// them go unseen until the next comparison of the tree (a restart, or
/// lost events).
pub(super) fn warn_unseen(walk: &Walk) {
    for (_, error) in &walk.unreadable {
        warn!(
            error = error.as_str(),
            "cannot read this source directory: what the receivers have below it is kept, not deleted, until it can be read"
        );
    }
    if walk.unwatched > 0 {
        warn!(
            dirs = walk.unwatched,
            first = walk.unwatched_error.as_deref().unwrap_or_default(),
            "could not watch these directories: changes in them are not seen until the tree is compared again (raise fs.inotify.max_user_watches if it is the limit)"
        );
    }
}

/// Warn when the source has nearly as many directories as inotify may
/// watch (reads the limit from /proc).
pub(super) fn warn_near_watch_limit(dirs: u64) {
    if let Some(limit) = watcher::inotify_watch_limit()
        && dirs * 10 > limit * 9
    {
        warn!(
            dirs,
            limit,
            "the source has nearly as many directories as fs.inotify.max_user_watches allows: raise it, e.g. sysctl fs.inotify.max_user_watches={}",
            (dirs * 4).max(524_288)
        );
    }
}

/// What is at a path in the source tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDisk {
    /// Nothing: it or a directory above it is gone, or what is above it is
    /// no directory (a symlink: what lies past it is not in the tree).
    Gone,
    /// Something, reached through directories only.
    There,
    /// It cannot be looked at (permission denied, an I/O error).
    Unknown,
}

/// [`Source::on_disk`] for the tree at `dir`: one lstat when it is gone,
/// one per directory on its way when something is there.
fn on_disk_below(dir: &Path, path: &str) -> OnDisk {
    let failed = |e: std::io::Error| {
        if watcher::is_gone(&e) {
            OnDisk::Gone
        } else {
            OnDisk::Unknown
        }
    };
    if let Err(e) = std::fs::symlink_metadata(dir.join(path)) {
        return failed(e);
    }
    let mut above = dir.to_path_buf();
    let mut names = path.split('/').peekable();
    while let Some(name) = names.next() {
        if names.peek().is_none() {
            break;
        }
        above.push(name);
        match std::fs::symlink_metadata(&above) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return OnDisk::Gone,
            Err(e) => return failed(e),
        }
    }
    OnDisk::There
}

/// Run `f`, which stats the source (an lstat or a few per deleted path: a
/// mass deletion is 100,000 of them), from the sender's loop without stalling
/// the transports and the control socket that share its worker thread:
/// on a multi-threaded runtime tokio moves them to another worker first.
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::{OnDisk, on_disk_below};

    #[test]
    fn a_path_is_gone_when_gone_or_past_a_symlink_and_there_when_there() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("site/css")).unwrap();
        std::fs::write(d.join("site/css/main.css"), "x").unwrap();
        std::fs::create_dir_all(d.join("elsewhere/css")).unwrap();
        std::fs::write(d.join("elsewhere/css/main.css"), "x").unwrap();
        std::os::unix::fs::symlink("elsewhere", d.join("link")).unwrap();
        let at = |p: &str| on_disk_below(d, p);
        assert_eq!(at("site/css/main.css"), OnDisk::There);
        assert_eq!(at("site/css"), OnDisk::There);
        assert_eq!(at("link"), OnDisk::There, "the link itself is in the tree");
        assert_eq!(at("site/gone.html"), OnDisk::Gone);
        assert_eq!(at("gone/css/main.css"), OnDisk::Gone);
        assert_eq!(at("site/css/main.css/x"), OnDisk::Gone, "below a file");
        assert_eq!(
            at("link/css/main.css"),
            OnDisk::Gone,
            "reached through a symlink: not in the tree"
        );
        // Root reads past any permission; the kernel refuses a name too
        // long to look at whatever the user.
        let long = "x".repeat(300);
        assert_eq!(at(&format!("site/{long}")), OnDisk::Unknown);
    }
}
