//! Writing and deleting below a root directory through directory handles
//! that never follow symlinks, all or nothing per bundle.
//!
//! Every path is walked one component at a time with
//! `openat(O_DIRECTORY | O_NOFOLLOW)`, and entries are placed and moved
//! with `renameat`/`linkat` relative to their parent's handle. A symlink
//! planted anywhere inside root (by someone else, or swapped in while we
//! work) therefore cannot redirect a write or a deletion outside root: it
//! is refused. Paths given here have already passed
//! [`crate::paths::validate`].
//!
//! A bundle's changes go through one [`Publish`]. Nothing it replaces or
//! deletes is destroyed until [`Publish::commit`]: a replaced file is kept
//! as a hard link, a deleted entry (a whole directory at once) is moved, into
//! an undo directory outside root on its filesystem, and every step is
//! recorded. When a step fails, [`Publish::roll_back`] walks the record
//! backwards and root is again exactly what it was, the same inodes.
//!
//! # Layout
//! - `root`: [`Root`], the walk below it that refuses symlinks; looks only.
//! - `publish`: [`Publish`], every change to root and its undo (its tests
//!   in `publish_tests.rs`).
//! - `retime`: files a bundle keeps: read below root, given their metadata
//!   in place.
//! - `links`: trees of hard links, for snapshots of a whole root.
//! - `undo`: a committed publish kept as a record ([`Publish::keep`]) and
//!   undone from it later ([`undo_kept`]), for rollback.
//! - `fault` (tests only): make any one change fail; `snapshot`: tell
//!   whether root is exactly as it was (shared with `tests/it`).

mod links;
mod publish;
mod retime;
mod root;
mod undo;

#[cfg(test)]
pub(crate) mod fault;
#[cfg(test)]
mod snapshot;

pub use links::link_tree;
pub use publish::{Publish, SYNC_EACH_MAX};
pub use root::{BeneathError, Root, open_dir_path};
pub use undo::{RECORD_STEPS, Restore, restores, undo_kept};
