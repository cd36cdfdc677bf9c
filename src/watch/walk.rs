//! Walking the source: every regular file, directory and symlink below a
//! directory that is not excluded, in shipped form, with its [`Stamp`]
//! (whose kind tells them apart), and the files some
//! process holds open for writing (read from /proc). What the walk finds is
//! compared with what was shipped by the sender, not here.
//!
//! Blocking: it reads the filesystem and /proc, and the clock to say when
//! it began and how long it took. Never follows a symlink.

use std::path::{Path, PathBuf};

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
}

/// Walk `dir` (below `base`): every regular file, directory and symlink
/// not excluded, in shipped form, with its stat. Blocking.
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
        let ft = entry.file_type();
        // Not following links, the metadata is the entry's own (lstat).
        if (ft.is_file() || ft.is_dir() || ft.is_symlink())
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
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
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
}
