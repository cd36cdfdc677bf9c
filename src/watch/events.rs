//! What happened in the source, as the sender hears it: [`WatchMsg`], and
//! [`translate`], which turns one notify event into them, relative to the
//! watched directory.
//!
//! Translating stats the paths a creation or an arrival names (never reads
//! them): whether each is a directory to walk, a new regular file a writer
//! may still hold, or gone again. A removal is taken as reported, but for a
//! watched directory's own move, which its parent reports. Which messages
//! matter, and when a path ships, is decided elsewhere.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind};

use crate::paths::{relative, unshippable_name};

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

/// Translate one notify event. Stats paths to tell a directory from a file
/// and a new regular file from a symlink, and whether a path that cannot
/// travel is gone.
pub fn translate(base: &Path, ev: &Event) -> Vec<WatchMsg> {
    if ev.need_rescan() {
        return vec![WatchMsg::Rescan("event queue overflowed".into())];
    }
    let mut out = Translation {
        base,
        msgs: Vec::new(),
    };
    let paths = &ev.paths;
    // Names that cannot travel are reported, never dropped without a word.
    paths.iter().for_each(|p| out.bad_name(p));
    match ev.kind {
        EventKind::Create(CreateKind::Folder) => paths.iter().for_each(|p| out.scan(p)),
        EventKind::Create(_) => paths.iter().for_each(|p| out.created(p)),
        EventKind::Modify(ModifyKind::Data(_)) => paths.iter().for_each(|p| out.changed(p, true)),
        EventKind::Modify(ModifyKind::Name(mode)) => out.renamed(mode, paths, ev.tracker()),
        EventKind::Modify(_) => paths.iter().for_each(|p| out.changed(p, false)),
        EventKind::Remove(_) => paths.iter().for_each(|p| out.removed(p)),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            paths.iter().for_each(|p| out.closed(p))
        }
        EventKind::Access(_) => {}
        EventKind::Any | EventKind::Other if paths.is_empty() => out
            .msgs
            .push(WatchMsg::Rescan("event without a path".into())),
        EventKind::Any | EventKind::Other => paths.iter().for_each(|p| out.appeared(p)),
    }
    out.msgs
}

/// The messages one event becomes. Paths are made relative to `base`, and
/// one outside it is dropped, except a directory to walk ([`WatchMsg::Scan`]),
/// which keeps its full path.
struct Translation<'a> {
    base: &'a Path,
    msgs: Vec<WatchMsg>,
}

impl Translation<'_> {
    fn rel(&self, p: &Path) -> Option<String> {
        relative(self.base, p)
    }

    fn bad_name(&mut self, p: &Path) {
        if let Some(path) = unshippable_name(self.base, p) {
            let gone = std::fs::symlink_metadata(p).is_err();
            self.msgs.push(WatchMsg::BadName { path, gone });
        }
    }

    fn scan(&mut self, p: &Path) {
        self.msgs.push(WatchMsg::Scan(p.to_path_buf()));
    }

    fn changed(&mut self, p: &Path, writing: bool) {
        if let Some(path) = self.rel(p) {
            self.msgs.push(WatchMsg::Changed { path, writing });
        }
    }

    fn removed(&mut self, p: &Path) {
        self.msgs.extend(self.rel(p).map(WatchMsg::Removed));
    }

    fn closed(&mut self, p: &Path) {
        self.msgs.extend(self.rel(p).map(WatchMsg::Closed));
    }

    /// A path created: a directory is walked; a new regular file was
    /// opened for writing, so it is held until closed. Symlinks and the
    /// like have no writer to wait for.
    fn created(&mut self, p: &Path) {
        let md = std::fs::symlink_metadata(p);
        if md.as_ref().is_ok_and(|m| m.is_dir()) {
            self.scan(p);
        } else {
            self.changed(p, md.map(|m| m.is_file()).unwrap_or(true));
        }
    }

    /// A path that appeared some other way (renamed in, say): a directory
    /// is walked, anything else changed.
    fn appeared(&mut self, p: &Path) {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            self.scan(p);
        } else {
            self.changed(p, false);
        }
    }

    /// `tracker`: the rename's cookie, which ties its From and To events.
    fn renamed(&mut self, mode: RenameMode, paths: &[PathBuf], tracker: Option<usize>) {
        match mode {
            // A watched directory's own move (IN_MOVE_SELF), which inotify
            // names by the path it was watched at: stale once it moved, and
            // another may be there by then (after `mv a b; mv b a` it came
            // once `a` was back, and `a` was deleted at the receivers).
            // Its parent, watched too, reported the move with a cookie; the
            // source's own move is the sentinel's.
            RenameMode::From if cfg!(target_os = "linux") && tracker.is_none() => {}
            RenameMode::From => paths.iter().for_each(|p| self.removed(p)),
            RenameMode::To => paths.iter().for_each(|p| self.appeared(p)),
            // inotify reports From and To on their own as well; acting on
            // Both too would walk a renamed directory twice.
            RenameMode::Both if cfg!(target_os = "linux") => {}
            RenameMode::Both => {
                if let [from, to] = paths {
                    self.removed(from);
                    self.appeared(to);
                }
            }
            _ => {
                for p in paths {
                    if std::fs::symlink_metadata(p).is_ok() {
                        self.appeared(p);
                    } else {
                        self.removed(p);
                    }
                }
            }
        }
    }
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

    #[test]
    fn a_watched_directorys_own_move_is_left_to_its_parents_report() {
        let base = Path::new("/nonexistent-src");
        let from = |tracker| {
            let mut e = ev(
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                &["/nonexistent-src/a"],
            );
            if let Some(t) = tracker {
                e = e.set_tracker(t);
            }
            translate(base, &e)
        };
        assert_eq!(from(Some(7)), [WatchMsg::Removed("a".into())]);
        // IN_MOVE_SELF: no cookie, and the path it names may hold another.
        assert!(from(None).is_empty());
    }

    #[test]
    fn a_new_regular_file_waits_for_its_writer_and_a_symlink_does_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        let created = |name: &str| {
            let path = dir.path().join(name);
            translate(
                dir.path(),
                &ev(
                    EventKind::Create(CreateKind::Any),
                    &[path.to_str().unwrap()],
                ),
            )
        };
        let changed = |path: &str, writing| WatchMsg::Changed {
            path: path.into(),
            writing,
        };
        assert_eq!(created("f"), [changed("f", true)]);
        assert_eq!(created("l"), [changed("l", false)]);
        // Gone again before the stat: a writer may still hold it.
        assert_eq!(created("gone"), [changed("gone", true)]);
    }
}
