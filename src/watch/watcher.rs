//! The OS watch of one source directory: notify's callback, on notify's
//! thread, turns each event into [`WatchMsg`]s and sends those the sender
//! may ship (not excluded, not in an ignored directory) down a channel, and
//! tells the source sentinel when the directory itself moved. The watch
//! starts on the directory alone; each directory below it is added as a
//! walk lists it ([`WatchGuard::watch_one`], see `walk.rs`), never by
//! notify's own recursive walk, which stats every file of the tree.

use std::path::{Path, PathBuf};

use notify::event::ModifyKind;
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use super::events::{WatchMsg, translate};
use crate::paths::{Excludes, relative};

/// Keeps the OS watch alive; dropping it stops watching.
pub struct WatchGuard {
    watcher: std::sync::Mutex<notify::RecommendedWatcher>,
}

impl WatchGuard {
    /// Watch `dir` (not what is below it) before it is listed: this
    /// returns once the watch exists, so a listing after it misses
    /// nothing: what it does not see raises an event. Blocking.
    pub fn watch_one(&self, dir: &Path) -> notify::Result<()> {
        let mut w = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        w.watch(dir, RecursiveMode::NonRecursive)
    }
}

/// Watch `source` recursively, sending translated events to `tx`.
/// `ignore` holds directories below source never to report (state kept there).
/// `moved` is told when `source` itself is renamed or removed.
pub(super) fn start(
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
    // The directories below are watched as the walk that follows lists them.
    watcher.watch(source, RecursiveMode::NonRecursive)?;
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

/// Whether `msg` concerns a path the sender may ship: not excluded, not
/// below a directory in `ignore`.
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
    use notify::event::{AccessKind, AccessMode, RemoveKind, RenameMode};

    #[test]
    fn only_a_rename_or_removal_of_the_watched_directory_itself_is_a_hint() {
        let base = Path::new("/s");
        let on = |kind, p: &str| concerns_root(base, &Event::new(kind).add_path(PathBuf::from(p)));
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

    #[test]
    fn excluded_and_ignored_paths_are_not_sent_and_rescans_always_are() {
        let base = Path::new("/s");
        let excludes = Excludes::new(&["*.swp"]).unwrap();
        let ignore = [PathBuf::from("/s/state")];
        let sent = |msg: WatchMsg| wanted(&msg, base, &excludes, &ignore);
        assert!(sent(WatchMsg::Closed("a/page".into())));
        assert!(!sent(WatchMsg::Closed("a/.page.swp".into())));
        assert!(!sent(WatchMsg::Removed("state/journal".into())));
        assert!(!sent(WatchMsg::Scan(PathBuf::from("/s/state"))));
        assert!(sent(WatchMsg::Scan(PathBuf::from("/s/a"))));
        assert!(
            sent(WatchMsg::Scan(PathBuf::from("/s"))),
            "the source itself"
        );
        assert!(sent(WatchMsg::Rescan("overflow".into())));
    }
}
