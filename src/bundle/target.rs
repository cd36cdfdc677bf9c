//! Where a received bundle goes: root, the staging directory beside it,
//! and the directory of part sets; and the permission policy of what it
//! writes in root.
//!
//! [`Target`] checks that staging shares root's filesystem (so a staged
//! file can be renamed into place atomically), names the directory each
//! bundle is staged in, and cleans what an interrupted apply left there.
//! [`default_staging`] and [`sibling_staging`] choose staging when none is
//! configured. Never writes inside root.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::{BundleError, io_at};
use super::part_sets::SENDER_DIR_PREFIX;
use crate::durable;
use crate::perms::Policy;

/// Where a bundle is applied.
#[derive(Debug, Clone)]
pub struct Target {
    pub root: PathBuf,
    /// On root's filesystem, outside root.
    pub staging: PathBuf,
    /// Parts of large files received so far.
    pub parts: PathBuf,
    /// The modes and group given to what is written in root.
    pub policy: Policy,
    /// Where the bundle keeps what it replaces and deletes once published,
    /// for rollback; `None`: it is discarded.
    pub keep: Option<KeepAs>,
    /// Root is a snapshot whose files older snapshots share (`publish =
    /// "tree"`): no file is changed in place, so a file kept with new
    /// metadata is copied and the copy given it.
    pub snapshot: bool,
}

/// A bundle's record for rollback: the new directory it becomes, and the
/// files kept beside its changes (name, content).
#[derive(Debug, Clone)]
pub struct KeepAs {
    pub record: PathBuf,
    pub with: Vec<(String, Vec<u8>)>,
}

/// Every directory a bundle is staged in is named with this, so that
/// cleaning staging never removes anything shipper did not make.
const STAGE_PREFIX: &str = ".shipper-stage-";

impl Target {
    /// Create the directories and check that staging shares root's filesystem.
    pub fn prepare(&self) -> Result<(), BundleError> {
        for d in [&self.root, &self.staging, &self.parts] {
            fs::create_dir_all(d).map_err(io_at(d))?;
        }
        let root_dev = fs::metadata(&self.root).map_err(io_at(&self.root))?.dev();
        let staging_dev = fs::metadata(&self.staging)
            .map_err(io_at(&self.staging))?
            .dev();
        if root_dev != staging_dev {
            return Err(BundleError::Io {
                path: self.staging.clone(),
                source: io::Error::other(format!(
                    "staging directory is on another filesystem than root {}: files could not be renamed into place atomically (set receiver.staging_dir)",
                    self.root.display()
                )),
            });
        }
        Ok(())
    }

    /// Whether `dir` is on staging's filesystem: then the `syncfs` that
    /// makes a bundle's staged files durable writes what is pending in
    /// `dir` too. `false` when either cannot be looked at.
    pub fn shares_filesystem(&self, dir: &Path) -> bool {
        same_filesystem(dir, &self.staging)
    }

    /// The same target with a directory of part sets of its own for one
    /// sender, so no sender completes, supersedes or drops another's sets.
    /// `key` is a valid sender id or a fingerprint; the prefix keeps "." and
    /// ".." from naming anything but a directory of their own.
    pub fn for_sender(&self, key: &str) -> Target {
        Target {
            parts: self.parts.join(format!("{SENDER_DIR_PREFIX}{key}")),
            ..self.clone()
        }
    }

    /// The directory bundle `seq` of `sender` is staged in.
    pub(super) fn stage_dir(&self, sender: &str, seq: u64) -> PathBuf {
        self.staging.join(format!("{STAGE_PREFIX}{sender}-{seq}"))
    }

    /// Remove what an interrupted apply left in staging: only shipper's
    /// own stage directories, whatever else a configured staging holds.
    pub fn clean_staging(&self) -> Result<(), crate::places::PlaceError> {
        crate::places::remove_own(&self.staging, |name| name.starts_with(STAGE_PREFIX))
    }
}

/// Staging for `root` when none is configured: `state_dir/staging` if that
/// is on root's filesystem, else [`sibling_staging`].
pub fn default_staging(root: &Path, state_dir: &Path) -> PathBuf {
    if same_filesystem(root, state_dir) {
        return state_dir.join("staging");
    }
    sibling_staging(root)
}

/// Whether `a` and `b` are on one filesystem; `false` when either cannot
/// be looked at.
fn same_filesystem(a: &Path, b: &Path) -> bool {
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    dev(a).is_some() && dev(a) == dev(b)
}

/// A hidden directory beside root, so on its filesystem but outside it.
pub fn sibling_staging(root: &Path) -> PathBuf {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    durable::parent_of(root).join(format!(".{name}.shipper-staging"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &Path) -> Target {
        Target {
            root: dir.join("root"),
            staging: dir.join("staging"),
            parts: dir.join("parts"),
            policy: Policy::default(),
            keep: None,
            snapshot: false,
        }
    }

    #[test]
    fn a_directory_shares_stagings_filesystem_only_when_both_are_there() {
        let t = tempfile::tempdir().unwrap();
        let target = target(t.path());
        target.prepare().unwrap();
        assert!(target.shares_filesystem(t.path()));
        assert!(!target.shares_filesystem(&t.path().join("missing")));
        // /proc is never the temporary directory's filesystem.
        assert!(!target.shares_filesystem(Path::new("/proc")));
    }

    #[test]
    fn staging_beside_root_is_hidden_and_outside_it() {
        assert_eq!(
            sibling_staging(Path::new("/srv/www")),
            Path::new("/srv/.www.shipper-staging")
        );
    }

    #[test]
    fn cleaning_staging_removes_only_stage_directories() {
        let t = tempfile::tempdir().unwrap();
        let target = target(t.path());
        target.prepare().unwrap();
        let stage = target.stage_dir("app1", 7);
        assert!(stage.starts_with(&target.staging));
        fs::create_dir_all(stage.join("undo")).unwrap();
        fs::write(target.staging.join("mine.txt"), "not shipper's").unwrap();
        target.clean_staging().unwrap();
        assert!(!stage.exists());
        assert!(target.staging.join("mine.txt").exists());
    }

    #[test]
    fn each_sender_gets_a_directory_of_part_sets_of_its_own() {
        let t = tempfile::tempdir().unwrap();
        let target = target(t.path());
        let a = target.for_sender("..");
        assert_eq!(a.parts, target.parts.join("from-.."));
        assert_eq!((a.root, a.staging), (target.root, target.staging));
    }
}
