//! Cutting one packing run's entries into bundles: a bundle is opened in
//! the outbox under a temporary name when the first entry needs one, cut
//! when the next entry would pass a limit, then numbered, sealed, renamed
//! to its sequence and handed on ([`Packed`]). Also what the run did
//! ([`Report`]) and the names the outbox holds. Writes only in the outbox.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::growing::Growing;
use super::limits::Limits;
use super::manifest::FileMeta;
use super::source_read::Lost;
use super::summary::Summary;
use super::writer::{OpenBundle, Sealed, with_path};
use crate::stamp::Stamp;

/// Bundles are packed under a temporary name starting with this.
const PACKING_PREFIX: &str = ".packing-";

/// A finished bundle in the outbox, ready to send.
#[derive(Debug, Clone)]
pub struct Packed {
    pub seq: u64,
    pub path: PathBuf,
    pub size: u64,
    pub summary: Summary,
    /// What the receiver will have once it applies this bundle: `Some`
    /// shipped with this metadata, `None` deleted.
    pub changes: Vec<(String, Option<FileMeta>)>,
    /// For this receiver only (by its place in `sender.receiver`): part of
    /// a whole tree for a receiver that needs one. `None`: for every one.
    pub only: Option<usize>,
    /// Part of the bucket's base of this number (see
    /// `sender::whole_tree::BaseTrees`).
    pub base: Option<u64>,
    /// The paths the receivers copy this bundle's copies from: a receiver
    /// that lacks one no longer holds it as the sender believes.
    pub sources: Vec<String>,
}

/// What one packing run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Paths now on their way to the receiver (every bundle's `changes`).
    pub shipped: Vec<(String, Option<FileMeta>)>,
    /// Paths that changed while being read: still pending.
    pub requeue: Vec<String>,
    /// Paths that could not be packed, with why (the error names the path):
    /// still pending, to be retried.
    pub failed: Vec<(String, String)>,
    /// Overdue paths shipped as a snapshot while still being written: they
    /// ship again once they settle.
    pub unsettled: Vec<String>,
    /// Symlinks not shipped, with their target and why: pointing outside
    /// the tree (or absolute), they stay skipped until they change.
    pub skipped_links: Vec<SkippedLink>,
    pub bundles: Vec<(u64, Summary)>,
    /// Bytes the run read stored into its first bundle held small
    /// ([`super::limits::FirstBundle::stored`]).
    pub held_stored: u64,
    /// Large files packed with their bytes and not signed yet: signed off
    /// the packing path, by the sender's signer, if they still hold this
    /// content then.
    pub unsigned: Vec<Unsigned>,
}

/// A large file packed (found with `stamp`, content `hash`) that has no
/// signature for its content yet.
#[derive(Debug, Clone)]
pub struct Unsigned {
    pub path: String,
    pub stamp: crate::stamp::Stamp,
    pub hash: blake3::Hash,
}

/// A symlink that is not shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLink {
    pub path: String,
    pub target: String,
    pub why: &'static str,
}

impl Report {
    /// `rel` did not make it into a bundle: torn, it stays pending;
    /// unreadable, it is retried.
    pub(super) fn lost(&mut self, rel: &str, why: Lost) {
        match why {
            Lost::Torn => self.requeue.push(rel.to_owned()),
            Lost::Unreadable(e) => self.failed.push((rel.to_owned(), e.to_string())),
        }
    }
}

/// The bundles of one packing run: the one being written, and where
/// finished ones go. `alloc_seq` hands out (and persists) sequence
/// numbers; `emit` receives each finished bundle and may block.
pub(super) struct Cutter<'c> {
    pub(super) outbox: &'c Path,
    pub(super) sender: &'c str,
    pub(super) limits: Limits,
    pub(super) alloc_seq: &'c mut dyn FnMut() -> io::Result<u64>,
    pub(super) emit: &'c mut dyn FnMut(Packed) -> io::Result<()>,
    /// Told of each bundle opened, which may be sent as it grows.
    pub(super) opened: &'c dyn Fn(&Arc<Growing>),
    pub(super) open: Option<OpenBundle>,
    /// Paths a finished bundle of this run changes or deletes: on the
    /// receiver they may no longer hold what they did when the run began,
    /// so no later bundle copies from them. (The open bundle's own
    /// deletions apply after its copies are made.)
    pub(super) closed: std::collections::HashSet<String>,
}

impl Cutter<'_> {
    /// The open bundle, with room for an entry of `need` more bytes named
    /// `name`: the open one is finished first if the entry would push it
    /// past a limit or clash with a name in it.
    pub(super) fn room_for(
        &mut self,
        report: &mut Report,
        need: u64,
        name: &str,
    ) -> io::Result<&mut OpenBundle> {
        self.room_for_writing(report, (need, need), name)
    }

    /// [`Cutter::room_for`] an entry of `need` bytes in the bundle that
    /// makes the receiver write `writes` bytes.
    pub(super) fn room_for_writing(
        &mut self,
        report: &mut Report,
        (need, writes): (u64, u64),
        name: &str,
    ) -> io::Result<&mut OpenBundle> {
        let limits = self.limits.of_bundle(report.bundles.is_empty());
        let full = self
            .open
            .as_ref()
            .is_some_and(|b| b.is_full_for(&limits, (need, writes), name));
        if full && let Some(b) = self.open.take() {
            self.finish(b, report)?;
        }
        if self.open.is_none() {
            self.open = Some(self.start()?);
        }
        Ok(self.open.as_mut().expect("just opened"))
    }

    /// `path` is deleted.
    pub(super) fn add_deletion(&mut self, report: &mut Report, path: &str) -> io::Result<()> {
        self.room_for(report, OpenBundle::deletion_need(path), path)?
            .add_deletion(path);
        Ok(())
    }

    /// The directory `path`, as `stamp` says.
    pub(super) fn add_dir(
        &mut self,
        report: &mut Report,
        path: &str,
        stamp: Stamp,
    ) -> io::Result<()> {
        self.room_for(report, OpenBundle::tree_entry_need(path, ""), path)?
            .add_dir(path, stamp);
        Ok(())
    }

    /// The symlink `path` to `target`.
    pub(super) fn add_link(
        &mut self,
        report: &mut Report,
        path: &str,
        target: &str,
        stamp: Stamp,
    ) -> io::Result<()> {
        let hash = blake3::hash(target.as_bytes()).to_hex().to_string();
        self.room_for(report, OpenBundle::tree_entry_need(path, target), path)?
            .add_link(path, target, stamp, hash);
        Ok(())
    }

    /// The file `path`, which the receivers hold with content `hash`
    /// already: its metadata alone.
    pub(super) fn add_kept(
        &mut self,
        report: &mut Report,
        path: &str,
        stamp: Stamp,
        hash: blake3::Hash,
    ) -> io::Result<()> {
        let need = OpenBundle::tree_entry_need(path, &hash.to_hex());
        self.room_for(report, need, path)?
            .add_kept(path, stamp, hash);
        Ok(())
    }

    /// The file `path`, which the receivers make from their own copy of
    /// content `hash` at `from`. `false` when they cannot: a finished
    /// bundle of this run (the one the copy would follow) changes or
    /// deletes `from`; the caller packs the content instead.
    pub(super) fn add_copy(
        &mut self,
        report: &mut Report,
        path: &str,
        (from, stamp): (&str, Stamp),
        hash: blake3::Hash,
    ) -> io::Result<bool> {
        let need = OpenBundle::tree_entry_need(path, &hash.to_hex()) + from.len() as u64;
        // The receiver writes the copy: it counts toward what the bundle
        // unpacks to. Finding room may finish the bundle that deletes
        // `from`: only then is it known where the copy would go.
        self.room_for_writing(report, (need, stamp.size), path)?;
        if self.closed.contains(from) {
            return Ok(false);
        }
        let b = self.open.as_mut().expect("room was just made");
        b.add_copy(path, from, stamp, hash);
        Ok(true)
    }

    /// End the run: the open bundle is finished if `packed` says all went
    /// well, abandoned (its file removed) if not.
    pub(super) fn end(&mut self, packed: io::Result<()>, report: &mut Report) -> io::Result<()> {
        if let Some(b) = self.open.take() {
            match &packed {
                Ok(()) => return self.finish(b, report),
                Err(_) => b.abandon(),
            }
        }
        packed
    }

    /// Finish the open bundle now, if there is one, whatever room it has
    /// left.
    pub(super) fn seal(&mut self, report: &mut Report) -> io::Result<()> {
        match self.open.take() {
            Some(b) => self.finish(b, report),
            None => Ok(()),
        }
    }

    fn start(&self) -> io::Result<OpenBundle> {
        let tmp = tempfile::Builder::new()
            .prefix(PACKING_PREFIX)
            .suffix(".zip")
            .tempfile_in(self.outbox)
            .map_err(|e| with_path(e, self.outbox))?;
        let (file, tmp) = tmp.into_parts();
        let b = OpenBundle::new(file, tmp, self.sender, self.limits.max_bundle_size)?;
        (self.opened)(b.growing());
        Ok(b)
    }

    fn finish(&mut self, b: OpenBundle, report: &mut Report) -> io::Result<()> {
        if b.is_empty() {
            // Everything in it turned out torn, gone or unreadable: no bundle.
            b.abandon();
            return Ok(());
        }
        let seq = (self.alloc_seq)().inspect_err(|_| b.abandon())?;
        let Sealed {
            tmp,
            publisher,
            summary,
            changes,
            sources,
        } = b.seal(seq)?;
        let path = self.outbox.join(bundle_file_name(seq));
        tmp.persist(&path).map_err(|e| with_path(e.error, &path))?;
        let size = std::fs::metadata(&path)
            .map_err(|e| with_path(e, &path))?
            .len();
        (self.emit)(Packed {
            seq,
            path,
            size,
            summary,
            changes: changes.clone(),
            only: None,
            base: None,
            sources,
        })?;
        // Recorded and in the outbox: those sending it as it grew may end
        // it. (Dropped on any error before, it is abandoned.)
        publisher.seal(seq, size);
        // Only a bundle handed on is on its way: if `emit` failed, its
        // changes stay pending.
        report.bundles.push((seq, summary));
        self.closed.extend(changes.iter().map(|(p, _)| p.clone()));
        report.shipped.extend(changes);
        Ok(())
    }
}

pub fn bundle_file_name(seq: u64) -> String {
    format!("{seq:020}.zip")
}

/// True for the names the outbox holds: [`bundle_file_name`] and the
/// temporary files bundles are packed in. Only these are cleaned from it.
pub fn is_outbox_name(name: &str) -> bool {
    let finished = name
        .strip_suffix(".zip")
        .is_some_and(|seq| seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()));
    finished || (name.starts_with(PACKING_PREFIX) && name.ends_with(".zip"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_is_cleaned_only_of_its_own_names() {
        assert!(is_outbox_name(&bundle_file_name(7)));
        assert!(is_outbox_name(".packing-a1B2c3.zip"));
        for other in ["mine.txt", "7.zip", "backup-2019.zip", ".packing-x.part"] {
            assert!(!is_outbox_name(other), "{other}");
        }
    }
}
