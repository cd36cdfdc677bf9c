//! Walking the source: every regular file, directory and symlink below a
//! directory that is not excluded, in shipped form, with its [`Stamp`]
//! (whose kind tells them apart), and the files some
//! process holds open for writing (read from /proc). What the walk finds is
//! compared with what was shipped by the sender, not here.
//!
//! A walk can also watch each directory it lists ([`walk_watching`]),
//! just before listing it: whatever appears there after the listing raises
//! an event, so nothing falls between the two. One pass does both: a
//! recursive watch would first stat every file of the tree on its own.
//!
//! A walk given a stop flag gives up once it is set, and then returns no
//! result at all: a walk cut short must never be compared, since what it
//! did not reach would look deleted.
//!
//! Blocking: it reads the filesystem and /proc, and the clock to say when
//! it began and how long it took. Never follows a symlink.

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::paths::{Excludes, relative, unshippable_name};
use crate::stamp::Stamp;

/// The access-mode bits of the open(2) flags /proc/PID/fdinfo shows in
/// octal: 0 is O_RDONLY, 1 O_WRONLY, 2 O_RDWR.
const O_ACCMODE: u32 = 0o3;

/// What a walk of a directory found.
#[derive(Debug, Default)]
pub struct Walk {
    /// The walked directory in shipped form; `None` for the whole source.
    pub dir: Option<String>,
    /// Regular files, directories (the walked one included, unless it is
    /// the source) and symlinks.
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
    /// Directories that could not be watched, how many (changes in them
    /// go unseen until the next walk)…
    pub unwatched: u64,
    /// …and the first one's error, naming it.
    pub unwatched_error: Option<String>,
    /// Directories whose listing failed (permission denied, an I/O error),
    /// in shipped form (`""` for the source), each with its error: what the
    /// walk did not see below them is not known to be gone.
    pub unreadable: Vec<(String, String)>,
}

/// Whether `e` says nothing is at the path: it or a directory above it is
/// gone. Any other error (permission denied, an I/O error) says nothing
/// about whether it is there.
pub fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Walk `dir` (below `base`): every regular file, directory and symlink
/// not excluded, in shipped form, with its stat. Blocking.
pub fn walk(base: &Path, dir: &Path, excludes: &Excludes, ignore: &[PathBuf]) -> Walk {
    let never = AtomicBool::new(false);
    walk_watching(base, dir, excludes, ignore, (&|_| Ok(()), &never))
        .expect("a walk nothing can stop runs to its end")
}

/// What a walk calls on each directory just before listing it (to watch
/// it); an error names the directory and is counted as unwatched.
pub type WatchDir<'a> = dyn Fn(&Path) -> Result<(), String> + 'a;

/// [`walk`], calling `watch` on each directory it lists (not excluded,
/// not ignored) just before listing it; `None`, with no result, if `stop`
/// is set before it ends (checked before each directory). Blocking.
pub fn walk_watching(
    base: &Path,
    dir: &Path,
    excludes: &Excludes,
    ignore: &[PathBuf],
    (watch, stop): (&WatchDir<'_>, &AtomicBool),
) -> Option<Walk> {
    let started = std::time::Instant::now();
    let mut w = Walker {
        base,
        excludes,
        ignore,
        watch,
        pending: Vec::new(),
        out: Walk {
            dir: relative(base, dir),
            began: Some(started),
            ..Walk::default()
        },
    };
    // Not even the walked directory itself is followed if it turned into a
    // symlink since its event: what lies elsewhere is never listed.
    match std::fs::symlink_metadata(dir) {
        Ok(md) => w.found(dir.to_path_buf(), &md),
        Err(e) if is_gone(&e) => {}
        // A directory above it closed to us: nothing below is known gone.
        Err(e) => w.unreadable(dir, &e),
    }
    while let Some(d) = w.pending.pop() {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        w.list(&d);
    }
    let mut out = w.out;
    out.writers_at = Some(std::time::Instant::now());
    out.writers = open_for_writing(base);
    out.took = started.elapsed();
    Some(out)
}

/// One walk under way: the directories still to list, and what it found.
struct Walker<'a> {
    base: &'a Path,
    excludes: &'a Excludes,
    ignore: &'a [PathBuf],
    watch: &'a WatchDir<'a>,
    pending: Vec<PathBuf>,
    out: Walk,
}

impl Walker<'_> {
    /// An entry at `path` with (its own, never followed) metadata `md`.
    fn found(&mut self, path: PathBuf, md: &Metadata) {
        let ft = md.file_type();
        let Some(rel) = relative(self.base, &path) else {
            if let Some(bad) = unshippable_name(self.base, &path) {
                // A directory so named: everything below it stands with it.
                self.out.bad_names.push(bad);
            } else if ft.is_dir() {
                // The source itself.
                self.out.dirs += 1;
                self.pending.push(path);
            }
            return;
        };
        if self.excludes.is_excluded(&rel) || self.ignore.iter().any(|i| path.starts_with(i)) {
            return;
        }
        if ft.is_dir() {
            self.out.dirs += 1;
            self.pending.push(path);
        }
        if ft.is_file() || ft.is_dir() || ft.is_symlink() {
            self.out.files.push((rel, Stamp::of(md)));
        }
    }

    /// Watch the directory `dir`, then list it.
    fn list(&mut self, dir: &Path) {
        let watched = (self.watch)(dir);
        let entries = match std::fs::read_dir(dir) {
            // Unwatched only where it could be listed: one gone or
            // unreadable is not a matter of the watch limit.
            Ok(entries) => {
                if let Err(e) = watched {
                    self.out.unwatched += 1;
                    self.out
                        .unwatched_error
                        .get_or_insert_with(|| format!("{}: {e}", dir.display()));
                }
                entries
            }
            Err(e) if is_gone(&e) => return, // gone since: as if empty
            Err(e) => return self.unreadable(dir, &e),
        };
        for e in entries {
            let e = match e {
                Ok(e) => e,
                Err(e) => return self.unreadable(dir, &e),
            };
            // The entry's own metadata (lstat): a link is never followed.
            match e.metadata() {
                Ok(md) => self.found(e.path(), &md),
                Err(err) if is_gone(&err) => {}
                // Listed but not searchable (a directory without x).
                Err(err) => return self.unreadable(dir, &err),
            }
        }
    }

    /// The directory `dir` could not be listed in full: say so, naming it.
    fn unreadable(&mut self, dir: &Path, e: &std::io::Error) {
        let rel = relative(self.base, dir).unwrap_or_default();
        let error = format!("{}: {e}", dir.display());
        self.out.unreadable.push((rel, error));
    }
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
            if writable.is_some_and(|f| f & O_ACCMODE != 0) {
                found.insert(rel);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory and its canonical path (the walk's base).
    fn canonical_tempdir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        (dir, base)
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
    fn a_walk_lists_files_dirs_and_links_but_not_excluded_ignored_or_badly_named() {
        use crate::stamp::Kind;
        use std::os::unix::ffi::OsStrExt;
        let (_dir, base) = canonical_tempdir();
        for d in ["a", "state", "cache"] {
            std::fs::create_dir(base.join(d)).unwrap();
        }
        for f in ["top", "a/page", "a/.page.swp", "state/journal", "cache/x"] {
            std::fs::write(base.join(f), "x").unwrap();
        }
        std::os::unix::fs::symlink("/etc", base.join("a/etc")).unwrap();
        let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::fs::write(base.join(latin1), "x").unwrap();
        let excludes = Excludes::new(&["*.swp", "cache"]).unwrap();
        let w = walk(&base, &base, &excludes, &[base.join("state")]);
        let mut files: Vec<(&str, Kind)> =
            w.files.iter().map(|(p, s)| (p.as_str(), s.kind)).collect();
        files.sort();
        assert_eq!(
            files,
            [
                ("a", Kind::Dir),
                ("a/etc", Kind::Link),
                ("a/page", Kind::File),
                ("top", Kind::File)
            ]
        );
        assert_eq!(w.bad_names, ["caf\u{fffd}"]);
        assert_eq!(w.dir, None, "the whole source");
        assert_eq!(w.dirs, 2, "the source and a: cache excluded, state ignored");
        let sub = walk(&base, &base.join("a"), &excludes, &[]);
        assert_eq!(sub.dir.as_deref(), Some("a"));
        assert_eq!(sub.files.len(), 3, "a itself, a/page, a/etc");
    }

    #[test]
    fn a_walk_stopped_before_its_end_gives_no_result() {
        // A sender that failed to start waited for its whole catch-up walk
        // (seconds at a million files) before it could say why.
        let (_dir, base) = canonical_tempdir();
        for d in ["a/b", "c/d", "e"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
            std::fs::write(base.join(d).join("f"), "x").unwrap();
        }
        let stop = AtomicBool::new(false);
        let listed = std::sync::atomic::AtomicUsize::new(0);
        // The sender goes away while the second directory is listed.
        let watch = |_: &Path| {
            if listed.fetch_add(1, Ordering::Relaxed) == 1 {
                stop.store(true, Ordering::Relaxed);
            }
            Ok(())
        };
        let none = Excludes::new::<&str>(&[]).unwrap();
        assert!(walk_watching(&base, &base, &none, &[], (&watch, &stop)).is_none());
        assert_eq!(
            listed.load(Ordering::Relaxed),
            2,
            "no directory listed after the stop"
        );
        stop.store(false, Ordering::Relaxed);
        let whole = walk_watching(&base, &base, &none, &[], (&|_| Ok(()), &stop)).unwrap();
        assert_eq!(
            whole.dirs, 6,
            "unstopped, it lists the source and its five directories"
        );
    }

    #[test]
    fn a_walk_watches_each_directory_it_lists_before_listing_it() {
        let (_dir, base) = canonical_tempdir();
        for d in ["a/b", "cache", "state"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let excludes = Excludes::new(&["cache"]).unwrap();
        let watched = std::sync::Mutex::new(Vec::new());
        // What appears in a directory once its watch exists is listed too:
        // the listing comes after the watch, so nothing falls between.
        let watch = |d: &Path| {
            std::fs::write(d.join("after-watch"), "x").unwrap();
            let rel = relative(&base, d).unwrap_or_default();
            watched.lock().unwrap().push(rel);
            if d.ends_with("b") {
                Err("no more watches".into())
            } else {
                Ok(())
            }
        };
        let never = AtomicBool::new(false);
        let w = walk_watching(
            &base,
            &base,
            &excludes,
            &[base.join("state")],
            (&watch, &never),
        )
        .unwrap();
        let mut watched = watched.into_inner().unwrap();
        watched.sort();
        assert_eq!(watched, ["", "a", "a/b"], "not excluded or ignored ones");
        let mut found: Vec<&str> = w.files.iter().map(|(p, _)| p.as_str()).collect();
        found.sort();
        assert_eq!(
            found,
            [
                "a",
                "a/after-watch",
                "a/b",
                "a/b/after-watch",
                "after-watch"
            ]
        );
        assert_eq!(w.unwatched, 1);
        let error = w.unwatched_error.unwrap();
        assert!(
            error.contains("a/b") && error.contains("no more watches"),
            "{error}"
        );
    }
}
