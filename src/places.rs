//! The directories a config names, compared where they really are, and the
//! only way shipper empties one of its own.
//!
//! shipper cleans, prunes and writes the directories it is given, so two
//! that overlap are dangerous: a `staging_dir` holding root lost the whole
//! site to the start-up clean-up, and a receiver root inside the sender's
//! source shipped itself back forever. [`check`] refuses at start any two
//! configured directories where one holds the other or both are the same,
//! naming both keys and both resolved paths. Paths are compared as the
//! kernel sees them, not as written: symlinks and `..` are resolved, and a
//! directory is recognised by device and inode, so a bind mount of root is
//! still root. Directories that do not exist yet are placed below their
//! deepest existing ancestor. Two nestings are by design and allowed: the
//! sender's `state_dir` inside its `source` (never shipped) and the
//! receiver's `staging_dir` inside its `state_dir` (its default).
//!
//! [`remove_own`] is the one clean-up: it removes only entries whose names
//! shipper gives (each caller says which), and leaves anything else alone.
//!
//! Comparing is pure ([`Location::holds`]); resolving reads the filesystem
//! (and the working directory, for a relative path), removing changes it;
//! both block.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// `inner` lies inside `outer`, or is the same directory (`same`).
    #[error(
        "{inner_key} {} {} {outer_key} {}: shipper cleans and writes the directories it is given, so each must lie apart from the others",
        inner.display(),
        if *same { "is the same directory as" } else { "lies inside" },
        outer.display()
    )]
    Overlap {
        inner_key: &'static str,
        inner: PathBuf,
        outer_key: &'static str,
        outer: PathBuf,
        same: bool,
    },
    #[error("{key} {}: cannot tell where it is: {source}", path.display())]
    Resolve {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("removing {}: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

/// A directory as the kernel knows it: (device, inode).
type DirId = (u64, u64);

/// Where a directory is, or will be once created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The deepest directory of the path that exists, symlinks and `..`
    /// resolved.
    existing: PathBuf,
    /// Device and inode of `existing` and of each directory above it,
    /// nearest first.
    ids: Vec<DirId>,
    /// The components below `existing` that do not exist yet.
    missing: Vec<OsString>,
}

impl Location {
    /// Resolve `path` one component at a time, as the kernel would walk it:
    /// a symlink is followed where it stands (so `link/..` is the parent of
    /// the link's target), and the walk stops following once a component
    /// does not exist.
    pub fn resolve(path: &Path) -> io::Result<Self> {
        let path = if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir()?.join(path)
        };
        let mut existing = PathBuf::from("/");
        let mut missing: Vec<OsString> = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                // `existing` is resolved, so its textual parent is its real one.
                Component::ParentDir => {
                    if missing.pop().is_none() {
                        existing.pop();
                    }
                }
                Component::Normal(name) if !missing.is_empty() => missing.push(name.to_owned()),
                Component::Normal(name) => {
                    let next = existing.join(name);
                    match fs::canonicalize(&next) {
                        Ok(real) => existing = real,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            if fs::symlink_metadata(&next).is_ok() {
                                return Err(io::Error::new(
                                    io::ErrorKind::NotFound,
                                    format!("{} is a symlink to nothing", next.display()),
                                ));
                            }
                            missing.push(name.to_owned());
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let ids = existing
            .ancestors()
            .map(|dir| fs::metadata(dir).map(|m| (m.dev(), m.ino())))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            existing,
            ids,
            missing,
        })
    }

    /// The path this location resolves to, for messages.
    pub fn path(&self) -> PathBuf {
        let mut p = self.existing.clone();
        p.extend(&self.missing);
        p
    }

    /// True when `other` is this directory or lies anywhere below it.
    pub fn holds(&self, other: &Location) -> bool {
        // Where this directory's existing part stands among `other`'s
        // existing part and the directories above it.
        let Some(depth) = other.ids.iter().position(|id| Some(id) == self.ids.first()) else {
            return false;
        };
        // Nothing exists below a missing component: `other` can only lie
        // below this one through the same missing names.
        self.missing.is_empty() || (depth == 0 && other.missing.starts_with(&self.missing))
    }
}

/// Nestings shipper is built for, as (inner, outer). Being the same
/// directory is never allowed.
const ALLOWED: [(&str, &str); 2] = [
    // Never shipped: the sender ignores its state_dir inside the source.
    ("sender.state_dir", "sender.source"),
    // The default staging directory is `state_dir/staging`.
    ("receiver.staging_dir", "receiver.state_dir"),
];

/// The first two of `places` that overlap other than as [`ALLOWED`].
fn overlap(places: &[(&'static str, Location)]) -> Option<PlaceError> {
    for (i, (a_key, a)) in places.iter().enumerate() {
        for (b_key, b) in &places[i + 1..] {
            let (a_holds_b, b_holds_a) = (a.holds(b), b.holds(a));
            let same = a_holds_b && b_holds_a;
            let ((inner_key, inner), (outer_key, outer)) = match (a_holds_b, b_holds_a) {
                (false, false) => continue,
                (true, false) => ((b_key, b), (a_key, a)),
                _ => ((a_key, a), (b_key, b)),
            };
            if !same && ALLOWED.contains(&(*inner_key, *outer_key)) {
                continue;
            }
            return Some(PlaceError::Overlap {
                inner_key,
                inner: inner.path(),
                outer_key,
                outer: outer.path(),
                same,
            });
        }
    }
    None
}

/// Resolve each directory (key, path) and refuse the first two that
/// overlap. Blocking; nothing is created or changed.
pub fn check(dirs: &[(&'static str, &Path)]) -> Result<(), PlaceError> {
    let places = dirs
        .iter()
        .map(|&(key, path)| {
            Location::resolve(path)
                .map(|l| (key, l))
                .map_err(|source| PlaceError::Resolve {
                    key,
                    path: path.to_owned(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    overlap(&places).map_or(Ok(()), Err)
}

/// Remove the directory tree at `path`, one shipper made; one already gone
/// is fine. A symlink inside is removed itself, never followed. Blocking.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Remove the entries of `dir` whose names shipper gave them (`ours` says
/// which); anything else in `dir` is left alone. Blocking.
pub fn remove_own(dir: &Path, ours: impl Fn(&str) -> bool) -> Result<(), PlaceError> {
    let gone = |path: &Path| {
        let path = path.to_owned();
        move |source| PlaceError::Remove { path, source }
    };
    for entry in fs::read_dir(dir).map_err(gone(dir))?.flatten() {
        if !entry.file_name().to_str().is_some_and(&ours) {
            continue;
        }
        let path = entry.path();
        // A symlink is removed itself, never what it points to.
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(gone(&path)(e)),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(existing: &str, ids: &[DirId], missing: &[&str]) -> Location {
        Location {
            existing: existing.into(),
            ids: ids.to_vec(),
            missing: missing.iter().map(OsString::from).collect(),
        }
    }

    /// `/mnt/site` is a bind mount of `/var/www`: other names, same
    /// directory. Only device and inode tell.
    #[test]
    fn a_bind_mount_is_the_directory_it_mounts() {
        let www = at("/var/www", &[(1, 10), (1, 2), (1, 1)], &[]);
        let site_via_mount = at("/mnt/site/site", &[(1, 11), (1, 10), (1, 3), (1, 1)], &[]);
        let mount = at("/mnt/site", &[(1, 10), (1, 3), (1, 1)], &[]);
        assert!(www.holds(&site_via_mount));
        assert!(!site_via_mount.holds(&www));
        assert!(www.holds(&mount) && mount.holds(&www));
        let e = overlap(&[
            ("receiver.root", site_via_mount),
            ("receiver.staging_dir", www),
        ])
        .expect("overlap found");
        let text = e.to_string();
        assert!(
            text.contains("receiver.root /mnt/site/site lies inside receiver.staging_dir /var/www"),
            "{text}"
        );
        let e = overlap(&[
            ("receiver.archive_dir", mount.clone()),
            ("sender.source", mount),
        ]);
        assert!(matches!(e, Some(PlaceError::Overlap { same: true, .. })));
    }

    #[test]
    fn missing_directories_lie_below_their_existing_ancestor() {
        let base = [(1, 5), (1, 1)];
        let new = at("/srv", &base, &["new"]);
        let below = at("/srv", &base, &["new", "deeper"]);
        let beside = at("/srv", &base, &["newer"]);
        assert!(new.holds(&below) && !below.holds(&new));
        assert!(!new.holds(&beside) && !beside.holds(&new));
        // An existing directory cannot lie below one that does not exist.
        let srv_x = at("/srv/x", &[(1, 6), (1, 5), (1, 1)], &[]);
        assert!(!new.holds(&srv_x));
        assert!(at("/srv", &base, &[]).holds(&new));
    }

    #[test]
    fn only_the_designed_nestings_are_allowed_and_never_sameness() {
        let src = at("/s", &[(1, 5), (1, 1)], &[]);
        let inside = at("/s", &[(1, 5), (1, 1)], &[".state"]);
        assert!(overlap(&[("sender.source", src.clone()), ("sender.state_dir", inside)]).is_none());
        let e = overlap(&[
            ("sender.source", src.clone()),
            ("sender.state_dir", src.clone()),
        ]);
        assert!(
            matches!(e, Some(PlaceError::Overlap { same: true, .. })),
            "{e:?}"
        );
        let below = at("/s", &[(1, 5), (1, 1)], &["www"]);
        let e = overlap(&[("sender.source", src), ("receiver.root", below)]).unwrap();
        assert!(
            matches!(
                e,
                PlaceError::Overlap {
                    inner_key: "receiver.root",
                    outer_key: "sender.source",
                    same: false,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn symlinks_and_dotdot_resolve_as_the_kernel_walks_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(d.join("web/site")).unwrap();
        fs::create_dir_all(d.join("deep/er")).unwrap();
        std::os::unix::fs::symlink(d.join("web/site"), d.join("link")).unwrap();
        let web = Location::resolve(&d.join("web")).unwrap();
        // `link/..` is the target's parent, not the directory holding link.
        for spelling in ["link/..", "web/site/..", "deep/er/../../web", "web/./"] {
            let l = Location::resolve(&d.join(spelling)).unwrap();
            assert_eq!(l, web, "{spelling}");
        }
        let planned = Location::resolve(&d.join("link/new/../new2/x")).unwrap();
        assert_eq!(planned.path(), d.join("web/site/new2/x"));
        assert!(web.holds(&planned));
        std::os::unix::fs::symlink(d.join("nothing"), d.join("dangling")).unwrap();
        assert!(Location::resolve(&d.join("dangling/x")).is_err());
    }

    #[test]
    fn check_refuses_a_staging_dir_that_holds_root_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(d.join("web/site")).unwrap();
        let root = d.join("web/site");
        let staging = d.join("web/site/../other/..");
        let e = check(&[("receiver.root", &root), ("receiver.staging_dir", &staging)])
            .unwrap_err()
            .to_string();
        let expected = format!(
            "receiver.root {} lies inside receiver.staging_dir {}",
            root.display(),
            d.join("web").display()
        );
        assert!(e.contains(&expected), "{e}");
        assert!(
            check(&[
                ("receiver.root", &root),
                ("receiver.staging_dir", &d.join("stage"))
            ])
            .is_ok()
        );
    }

    #[test]
    fn remove_own_leaves_what_shipper_did_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("ours-dir/sub")).unwrap();
        fs::write(d.join("ours-file"), "x").unwrap();
        fs::write(d.join("theirs"), "x").unwrap();
        fs::create_dir_all(d.join("elsewhere")).unwrap();
        fs::write(d.join("elsewhere/kept"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join("ours-link")).unwrap();
        remove_own(d, |n| n.starts_with("ours-")).unwrap();
        let mut left: Vec<_> = fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["elsewhere", "theirs"]);
        assert!(d.join("elsewhere/kept").exists(), "followed a symlink");
    }
}
