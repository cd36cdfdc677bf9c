//! The [`Sentinel`] follows the source by its configured path, not by the
//! directory first found there: generators build a new tree beside the old
//! one and rename it over, deploy tools re-point a symlink. It looks at the
//! path when the watched directory itself is renamed or removed, and every
//! [`SOURCE_POLL`] besides, and reports a different directory (already
//! watched, with its own channel of events) or none. What that means for
//! shipping is the sender's business.
//!
//! Each look stats and canonicalizes the path and reads the clock (to hold
//! off a retry after a failed watch); a new watch is of the directory
//! alone, the sender's walk of it watching what lies below.
//! All of it runs on the sentinel's own thread, blocking, except the first
//! look, which runs on the caller's.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::events::WatchMsg;
use super::watcher::{WatchGuard, start};
use crate::paths::Excludes;

/// How often the [`Sentinel`] looks at the source path without a hint (a
/// re-pointed symlink raises no event on the directory it pointed to).
pub const SOURCE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// After a failed watch of a new source directory, how long before the
/// next try.
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
                // Said before the new watch: the old watch's events (its
                // removal, say) must not ripen into deletions meanwhile.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
