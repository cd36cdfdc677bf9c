//! Relative paths as shipper ships them, and the exclude rules of the sender.
//!
//! A shipped path is a UTF-8, `/`-separated path relative to the synced root.
//! [`validate`] is the single gate every path from a manifest passes before it
//! is joined to a directory; it is pure and never touches the filesystem.

use std::path::{Component, Path};

use globset::{Glob, GlobSet, GlobSetBuilder};

/// Longest relative path accepted, in bytes (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single component accepted, in bytes (NAME_MAX on common filesystems).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// First component reserved for shipper's own entries inside a bundle.
pub const RESERVED_DIR: &str = ".shipper";

/// Patterns every sender excludes unless `exclude_defaults = false`:
/// editor swap and backup files, and the names editors and tools write
/// before renaming a finished file into place.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "*.swp",
    "*.swx",
    "*.swo",
    "*~",
    ".#*",
    "#*#",
    "*.tmp",
    ".*.tmp",
    ".~lock.*#",
    ".DS_Store",
    ".shipper",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path is {0} bytes, longer than {MAX_PATH_BYTES}")]
    TooLong(usize),
    #[error("absolute path")]
    Absolute,
    #[error("drive letter")]
    DriveLetter,
    #[error("backslash in path")]
    Backslash,
    #[error("NUL or control character in path")]
    Control,
    #[error("empty or `.` component")]
    EmptyComponent,
    #[error("`..` component")]
    ParentDir,
    #[error("component of {0} bytes, longer than {MAX_COMPONENT_BYTES}")]
    ComponentTooLong(usize),
    #[error("`{RESERVED_DIR}/` is reserved for shipper's own entries")]
    Reserved,
}

/// Check that `path` is a plain relative path that stays below the directory
/// it is joined to. Pure: the same answer on every machine.
pub fn validate(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(path.len()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    let b = path.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err(PathError::DriveLetter);
    }
    for (i, comp) in path.split('/').enumerate() {
        match comp {
            "" | "." => return Err(PathError::EmptyComponent),
            ".." => return Err(PathError::ParentDir),
            RESERVED_DIR if i == 0 => return Err(PathError::Reserved),
            c if c.len() > MAX_COMPONENT_BYTES => {
                return Err(PathError::ComponentTooLong(c.len()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The shipped form of `abs` below `base`, or `None` when it is not below
/// `base` or its name is not UTF-8 (such names cannot be stored in a zip).
pub fn relative(base: &Path, abs: &Path) -> Option<String> {
    let rel = abs.strip_prefix(base).ok()?;
    // Exactly as long as it will be: a walk keeps one per file found.
    let mut out = String::with_capacity(rel.as_os_str().len());
    for comp in rel.components() {
        match comp {
            Component::Normal(c) => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(c.to_str()?);
            }
            _ => return None,
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

/// The path of `abs` below `base` with its non-UTF-8 bytes replaced, when
/// that is why it has no shipped form (a name written by a Latin-1 tool,
/// say): such a file cannot travel, and must be named, not skipped silently.
pub fn unshippable_name(base: &Path, abs: &Path) -> Option<String> {
    let rel = abs.strip_prefix(base).ok()?;
    if rel.as_os_str().is_empty() || rel.to_str().is_some() {
        return None;
    }
    Some(rel.to_string_lossy().into_owned())
}

/// True when `path` is `dir` or lies below it (both in shipped form).
pub fn is_within(path: &str, dir: &str) -> bool {
    path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// Why the symlink at `link` (shipped form) pointing to `target` may not
/// travel, if it may not: its target is empty, absolute, too long, holds a
/// NUL, climbs out of a name it went down (`a/..`), or, resolved lexically
/// from the link's directory, leaves the tree (rsync's `--safe-links`).
/// Lexical: a link inside the tree is itself shipped as a link, so what the
/// target names on the receiver is what it names here. That holds only
/// because every `..` comes first, climbing real directories (a link's
/// directories are never links): a `..` after a name climbs out of
/// wherever that name leads, and with `a -> .` beside it, `a/../x` is
/// outside the tree although it reads as inside.
pub fn unsafe_link(link: &str, target: &str) -> Option<&'static str> {
    if target.is_empty() {
        return Some("its target is empty");
    }
    if target.starts_with('/') {
        return Some("its target is absolute");
    }
    if target.len() > MAX_PATH_BYTES || target.contains('\0') {
        return Some("its target is not a path that can travel");
    }
    let mut depth = link.matches('/').count();
    let mut named = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if named => {
                return Some(
                    "its target climbs out of a name (`name/..`), which a link could lead outside the tree",
                );
            }
            ".." if depth == 0 => return Some("its target leaves the tree"),
            ".." => depth -= 1,
            _ => named = true,
        }
    }
    None
}

/// The sender's exclude rules.
///
/// A pattern without `/` matches any single component, so `*.swp` excludes a
/// swap file at any depth and `cache` excludes every directory named cache.
/// A pattern with `/` matches the path from the root, and everything below
/// what it matches.
#[derive(Debug, Clone)]
pub struct Excludes {
    component: GlobSet,
    anchored: GlobSet,
}

impl Excludes {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, globset::Error> {
        let mut component = GlobSetBuilder::new();
        let mut anchored = GlobSetBuilder::new();
        for p in patterns {
            let p = p.as_ref();
            if p.contains('/') {
                let p = p.trim_start_matches('/').trim_end_matches('/');
                anchored.add(Glob::new(p)?);
            } else {
                component.add(Glob::new(p)?);
            }
        }
        Ok(Self {
            component: component.build()?,
            anchored: anchored.build()?,
        })
    }

    pub fn is_excluded(&self, rel: &str) -> bool {
        if rel.split('/').any(|c| self.component.is_match(c)) {
            return true;
        }
        if self.anchored.is_empty() {
            return false;
        }
        // A match on any leading part excludes everything below it.
        let mut end = 0;
        for comp in rel.split('/') {
            end += comp.len();
            if self.anchored.is_match(&rel[..end]) {
                return true;
            }
            end += 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for p in [
            "a",
            "a/b.html",
            "dir with space/é.txt",
            "x/.hidden",
            "..a/b..",
            "日本/語",
        ] {
            assert_eq!(validate(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn refuses_paths_that_escape_or_confuse() {
        let long = "a".repeat(256);
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("a/../../b", PathError::ParentDir),
            ("..", PathError::ParentDir),
            ("a\\b", PathError::Backslash),
            ("C:/x", PathError::DriveLetter),
            ("a\0b", PathError::Control),
            ("a\nb", PathError::Control),
            ("a//b", PathError::EmptyComponent),
            ("a/./b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            (".shipper/manifest.json", PathError::Reserved),
        ];
        for (p, e) in cases {
            assert_eq!(validate(p).as_ref(), Err(e), "{p:?}");
        }
        assert_eq!(validate(&long), Err(PathError::ComponentTooLong(256)));
        assert_eq!(validate(&"a/".repeat(3000)), Err(PathError::TooLong(6000)));
    }

    #[test]
    fn a_link_travels_only_if_its_target_stays_inside_the_tree() {
        for (link, target) in [
            ("current", "2026/11"),
            ("latest.html", "2026/11/a.html"),
            ("a/b/up", "../../index.html"),
            ("a/self", "."),
            ("a/x", "../a/./b//c"),
        ] {
            assert_eq!(unsafe_link(link, target), None, "{link} -> {target}");
        }
        for (link, target, why) in [
            ("l", "", "empty"),
            ("l", "/etc/passwd", "absolute"),
            ("l", "..", "leaves"),
            ("a/l", "../../outside", "leaves"),
            ("a/l", "b/../../../x", "climbs"),
            ("l", "a\0b", "travel"),
            // With `a` a link to `.`, `a/..` is root's parent: climbing
            // out of a name is refused, as that name may be a link.
            ("e", "a/../outside", "climbs"),
            ("d/e", "../a/./../x", "climbs"),
        ] {
            let e = unsafe_link(link, target).unwrap();
            assert!(e.contains(why), "{link} -> {target}: {e}");
        }
    }

    #[test]
    fn relative_joins_components_with_slash() {
        let base = Path::new("/src");
        assert_eq!(
            relative(base, Path::new("/src/a/b")).as_deref(),
            Some("a/b")
        );
        assert_eq!(relative(base, Path::new("/src")), None);
        assert_eq!(relative(base, Path::new("/other/a")), None);
    }

    #[test]
    fn is_within_respects_component_boundaries() {
        assert!(is_within("a/b", "a"));
        assert!(is_within("a", "a"));
        assert!(!is_within("ab/c", "a"));
    }

    #[test]
    fn default_excludes_catch_editor_files_at_any_depth() {
        let ex = Excludes::new(DEFAULT_EXCLUDES).unwrap();
        for p in ["x/.index.html.swp", "a~", "d/.#lock", "#auto#", "p/q.tmp"] {
            assert!(ex.is_excluded(p), "{p}");
        }
        for p in ["index.html", "img/a.png", "swp/file"] {
            assert!(!ex.is_excluded(p), "{p}");
        }
    }

    #[test]
    fn anchored_patterns_exclude_their_subtree() {
        let ex = Excludes::new(&["cache/tmp", "*.log"]).unwrap();
        assert!(ex.is_excluded("cache/tmp"));
        assert!(ex.is_excluded("cache/tmp/x/y"));
        assert!(!ex.is_excluded("other/cache/tmp"));
        assert!(ex.is_excluded("a/b.log"));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    proptest! {
        /// Whatever the input, an accepted path joined to a root stays below it.
        #[test]
        fn accepted_paths_never_escape(s in "[a-zA-Z0-9./\\\\:\\x00-\\x1f é~-]{0,40}") {
            if validate(&s).is_ok() {
                let joined = Path::new("/root").join(&s);
                prop_assert!(joined.starts_with("/root"));
                for c in Path::new(&s).components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "{s:?} has {c:?}");
                }
            }
        }

        /// Relative paths built from normal names are accepted.
        #[test]
        fn plain_names_are_accepted(parts in proptest::collection::vec("[a-z0-9 é_-][a-z0-9 .é_-]{0,20}", 1..6)) {
            let p = parts.join("/");
            prop_assume!(!parts.iter().any(|c| c == "." || c == ".." ));
            prop_assume!(parts[0] != RESERVED_DIR);
            prop_assert_eq!(validate(&p), Ok(()));
        }
    }
}
