//! `publish = "tree"`: root is a symlink to a snapshot of the whole tree,
//! and a bundle is published by building the next snapshot and replacing
//! the symlink with one to it, in one rename. A reader that resolved root
//! sees one snapshot whole, never a mix of two bundles.
//!
//! Snapshots live beside root, in `.ROOTNAME.shipper-trees/t-N`. The next
//! one starts as hard links of every file of the current one (directories
//! made anew), then takes the bundle's changes through the same publish as
//! a plain root; nothing in a snapshot is changed in place (a file kept
//! with new metadata is copied first: see `bundle::apply`), so a snapshot
//! never changes once root pointed at it. The newest `tree_keep` are kept;
//! one built but never pointed at (a crash) is removed at start. A root
//! that was a directory becomes a snapshot of itself at the first start,
//! its directory kept aside. Blocking: run off the async runtime.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rustix::fs::{Mode, OFlags, RenameFlags};
use tracing::{info, warn};

use crate::beneath::link_tree;
use crate::config::{PublishMode, ReceiverConfig};
use crate::durable;
use crate::places::remove_tree;

/// How a snapshot is opened to be synced.
const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::CLOEXEC)
    .union(OFlags::RDONLY);

/// The prefix of each snapshot's name; the rest is its number.
const SNAPSHOT: &str = "t-";

/// The snapshots of one root.
#[derive(Debug, Clone)]
pub struct Trees {
    root: PathBuf,
    /// `.ROOTNAME.shipper-trees` beside root.
    dir: PathBuf,
    keep: usize,
}

/// Root's snapshots under `publish = "tree"` (nothing looked at yet), or
/// `None` under `publish = "file"`.
pub fn of(cfg: &ReceiverConfig) -> Option<Trees> {
    match cfg.publish {
        PublishMode::Tree { keep } => Some(Trees::at(&cfg.root, keep)),
        PublishMode::File => None,
    }
}

/// The directory beside `root` that holds its snapshots.
pub fn trees_dir(root: &Path) -> PathBuf {
    let name = root.file_name().unwrap_or_default().to_string_lossy();
    root.with_file_name(format!(".{name}.shipper-trees"))
}

impl Trees {
    /// The snapshots of `root`, which is made a symlink to the first one
    /// (an empty tree, or a snapshot of the directory it was) if it is not
    /// one yet. A snapshot begun and never published is removed. Refused
    /// when root is anything else (a symlink elsewhere, a file).
    pub fn open(root: &Path, keep: usize, dir_mode: u32) -> anyhow::Result<Self> {
        let trees = Self::at(root, keep);
        // Readers (nginx) go through root into it: 0755, like a web root.
        std::fs::create_dir_all(&trees.dir)
            .with_context(|| format!("creating {}", trees.dir.display()))?;
        match std::fs::symlink_metadata(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let first = trees.snapshot(1);
                remove_tree(&first)?;
                mkdir(&first, dir_mode)?;
                trees.point_at(&first)?;
            }
            Ok(m) if m.file_type().is_dir() => trees.adopt()?,
            Ok(m) if m.file_type().is_symlink() => {
                trees.current().with_context(|| {
                    format!(
                        "receiver.root {} is a symlink shipper did not make: publish = \"tree\" needs root to be its own (remove the symlink, or point root elsewhere)",
                        root.display()
                    )
                })?;
            }
            Ok(_) => bail!(
                "receiver.root {} is neither a directory nor a symlink to a snapshot",
                root.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
        }
        trees.remove_unpublished()?;
        Ok(trees)
    }

    /// The snapshots of `root`, as [`Trees::open`] left them: nothing is
    /// looked at or made.
    pub fn at(root: &Path, keep: usize) -> Self {
        Self {
            root: root.to_owned(),
            dir: trees_dir(root),
            keep,
        }
    }

    fn snapshot(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{SNAPSHOT}{n}"))
    }

    /// The snapshot root points at, and its number.
    pub fn current(&self) -> anyhow::Result<(u64, PathBuf)> {
        let target = std::fs::read_link(&self.root)
            .with_context(|| format!("reading the symlink {}", self.root.display()))?;
        let dir_name = self.dir.file_name().unwrap_or_default();
        let mut parts = target.components();
        let n = match (parts.next(), parts.next(), parts.next()) {
            (Some(d), Some(t), None) if d.as_os_str() == dir_name => t
                .as_os_str()
                .to_str()
                .and_then(|t| t.strip_prefix(SNAPSHOT))
                .and_then(|n| n.parse::<u64>().ok()),
            _ => None,
        };
        let Some(n) = n else {
            bail!(
                "{} points at {}, not at a snapshot in {}",
                self.root.display(),
                target.display(),
                self.dir.display()
            );
        };
        Ok((n, self.snapshot(n)))
    }

    /// Every snapshot's number, oldest first.
    fn numbers(&self) -> anyhow::Result<Vec<u64>> {
        let mut all: Vec<u64> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix(SNAPSHOT)?.parse().ok())
            .collect();
        all.sort_unstable();
        Ok(all)
    }

    /// Remove the snapshots newer than the current one: begun, never
    /// pointed at.
    fn remove_unpublished(&self) -> anyhow::Result<()> {
        let (current, _) = self.current()?;
        for n in self.numbers()?.into_iter().filter(|n| *n > current) {
            info!(snapshot = %self.snapshot(n).display(), "removing a snapshot begun and never published");
            remove_tree(&self.snapshot(n))?;
        }
        Ok(())
    }

    /// Begin the next snapshot: every file of the current one hard-linked,
    /// every directory made anew with its mode and group. Returns its
    /// number and path.
    pub fn next(&self) -> anyhow::Result<(u64, PathBuf)> {
        let (n, current) = self.current()?;
        let next = self.snapshot(n + 1);
        remove_tree(&next)?;
        link_tree(&current, &next)
            .with_context(|| format!("making {} from {}", next.display(), current.display()))?;
        Ok((n + 1, next))
    }

    /// Make `snapshot` (begun by [`Trees::next`], changed since) durable and
    /// point root at it in one rename; then remove the snapshots past
    /// `tree_keep`.
    pub fn publish(&self, snapshot: &Path) -> anyhow::Result<()> {
        sync_fs(snapshot)?;
        self.point_at(snapshot)?;
        self.prune();
        Ok(())
    }

    /// Give up a snapshot begun by [`Trees::next`] (its bundle failed).
    pub fn discard(&self, snapshot: &Path) {
        if let Err(e) = remove_tree(snapshot) {
            warn!(snapshot = %snapshot.display(), error = %e, "could not remove a snapshot not published");
        }
    }

    /// Replace root by a symlink to `snapshot`, durably.
    fn point_at(&self, snapshot: &Path) -> anyhow::Result<()> {
        let tmp = self.new_link(snapshot)?;
        // Relative to root's directory, moved there from the snapshots'.
        std::fs::rename(&tmp, &self.root)
            .with_context(|| format!("replacing {}", self.root.display()))?;
        durable::sync_dir(self.root.parent().unwrap_or(Path::new("/")))
            .with_context(|| format!("syncing the directory of {}", self.root.display()))
    }

    /// A new symlink to `snapshot` among the snapshots, to be renamed over
    /// root: it holds the snapshot's path relative to root's directory, so
    /// the whole tree can move.
    fn new_link(&self, snapshot: &Path) -> anyhow::Result<PathBuf> {
        let link = Path::new(self.dir.file_name().unwrap_or_default())
            .join(snapshot.file_name().unwrap_or_default());
        let tmp = self.dir.join(".root.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&link, &tmp)
            .with_context(|| format!("making the symlink {}", tmp.display()))?;
        Ok(tmp)
    }

    /// Keep the newest `tree_keep` snapshots, the current one always.
    fn prune(&self) {
        let Ok((current, _)) = self.current() else {
            return;
        };
        let Ok(all) = self.numbers() else { return };
        let old: Vec<u64> = all.into_iter().filter(|n| *n < current).collect();
        let excess = (old.len() + 1).saturating_sub(self.keep);
        for n in old.into_iter().take(excess) {
            if let Err(e) = remove_tree(&self.snapshot(n)) {
                warn!(snapshot = %self.snapshot(n).display(), error = %e, "could not remove an old snapshot");
            }
        }
    }

    /// Root is a directory: make it the first snapshot (its files hard-
    /// linked), point root at that in one exchange, and keep the directory
    /// aside, named in the log.
    fn adopt(&self) -> anyhow::Result<()> {
        let first = self.snapshot(1);
        remove_tree(&first)?;
        link_tree(&self.root, &first)
            .with_context(|| format!("making {} from {}", first.display(), self.root.display()))?;
        sync_fs(&first)?;
        let tmp = self.new_link(&first)?;
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        let aside = self.dir.join("was-a-directory");
        // One step: readers see the directory or the snapshot, never neither.
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            &self.root,
            RenameFlags::EXCHANGE,
        )
        .with_context(|| {
            format!(
                "making {} a symlink to {}",
                self.root.display(),
                first.display()
            )
        })?;
        std::fs::rename(&tmp, &aside)
            .with_context(|| format!("moving the old root directory to {}", aside.display()))?;
        durable::sync_dir(parent)?;
        durable::sync_dir(&self.dir)?;
        warn!(
            root = %self.root.display(),
            kept = %aside.display(),
            "publish = \"tree\": root was a directory; it is now a symlink to a snapshot of it, and the directory is kept (its files are the snapshot's, hard-linked): remove it when satisfied"
        );
        Ok(())
    }
}

/// Make everything on the filesystem of `snapshot` durable: its links
/// and directories were all made anew.
fn sync_fs(snapshot: &Path) -> anyhow::Result<()> {
    let fd = rustix::fs::open(snapshot, DIR, Mode::empty())
        .with_context(|| format!("opening {}", snapshot.display()))?;
    rustix::fs::syncfs(&fd).with_context(|| format!("syncing {}", snapshot.display()))
}

/// Make the directory `path` with `mode` (umask aside).
fn mkdir(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
#[path = "trees_tests.rs"]
mod tests;
