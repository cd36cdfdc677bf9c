//! The blocking half of applying a bundle: the write-ahead record in
//! `state_dir/publishing`, the verify-and-apply itself (keeping what it
//! replaces for rollback), the archive, and finishing at start whatever
//! publish a crash interrupted. Everything
//! here does file I/O and fsyncs: run it off the async runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use super::identity::Sender;
use super::names::{archive_name, is_archive_name, parse_archive_name};
use super::records::Records;
use super::state::ReceiverState;
use super::trees::{self, Trees};
use crate::bundle::apply::{self, Target};
use crate::config::ReceiverConfig;
use crate::metrics::{ReceiverMetrics, RefusedFor};
use crate::proto::refusal::Refusal;

/// The blocking half of applying: the write-ahead record, the apply itself,
/// and the archive.
pub(super) struct Committer {
    target: Target,
    /// Holds the bundle being published: found here at start, it is
    /// applied again before anything newer is taken, or only archived if
    /// its sequence was recorded before the crash.
    publishing: PathBuf,
    archive_dir: PathBuf,
    archive_keep: usize,
    /// Where each applied bundle keeps what it replaced, for rollback.
    pub(super) records: Records,
    /// Under `publish = "tree"`: root's snapshots.
    pub(super) trees: Option<Trees>,
    limits: apply::Limits,
    part_ttl: Duration,
    /// Where the bundles refused here are counted.
    metrics: Arc<ReceiverMetrics>,
}

impl Committer {
    pub(super) fn new(
        cfg: &ReceiverConfig,
        target: &Target,
        metrics: Arc<ReceiverMetrics>,
    ) -> Self {
        Self {
            target: target.clone(),
            publishing: cfg.state_dir.join("publishing"),
            archive_dir: cfg.archive_dir.clone(),
            archive_keep: cfg.archive_keep,
            records: Records::new(&target.staging, cfg.rollback_keep, trees::of(cfg).is_some()),
            trees: trees::of(cfg),
            limits: cfg.limits,
            part_ttl: cfg.part_ttl,
            metrics,
        }
    }

    /// Verify and apply the received bundle at `received`, bundle `seq` of
    /// `sender`, whose last applied bundle was `prev`.
    pub(super) fn commit(
        &self,
        received: &Path,
        sender: &Sender,
        (seq, prev): (u64, u64),
    ) -> Result<apply::Applied, Refusal> {
        let refused = |refusal: Refusal, why| {
            self.metrics.refused(&sender.id, &refusal, why);
            refusal
        };
        let bundle_refused =
            |e: apply::BundleError| refused(e.refusal(), RefusedFor::of_bundle_error(&e));
        let mut opened = apply::open(received, &self.limits).map_err(bundle_refused)?;
        if opened.manifest.sender != sender.id || opened.manifest.seq != seq {
            let reason = format!(
                "manifest says sender {:?} sequence {}, the stream said {:?} {seq}",
                opened.manifest.sender, opened.manifest.seq, sender.id
            );
            return Err(refused(
                Refusal::permanent(None, reason),
                RefusedFor::Malformed,
            ));
        }
        // Record what is about to be published before root changes, so a
        // crash part-way is finished at the next start. (The opened bundle
        // follows its file to the new name: it is not opened again.)
        let wal = self.publishing.join(archive_name(&sender.key, seq));
        let io = |e: std::io::Error| {
            refused(
                Refusal::retry(refusal_for_io(&e, &wal)),
                RefusedFor::of_io(&e),
            )
        };
        // Not fsynced: if a crash tears it, recovery refuses it and the
        // sender, never having had an acknowledgement, sends it again. The
        // new name is made durable by the apply, after staging and before
        // root changes: a crash before then leaves root as it was.
        std::fs::rename(received, &wal).map_err(io)?;
        opened.path = wal.clone();
        let result = self.apply_keeping(&sender.key, (seq, prev), opened, true);
        // After the apply, which refreshed the sets this bundle continued.
        self.expire_part_sets();
        result.map_err(|e| {
            // apply put root back as it was: nothing is left to finish.
            let _ = std::fs::remove_file(&wal);
            match e {
                Failed::Bundle(e) => bundle_refused(e),
                Failed::Snapshot(e) => refused(Refusal::retry(format!("{e:#}")), RefusedFor::Io),
            }
        })
    }

    /// Apply `opened`, bundle `seq` of sender `key` applied over `prev`,
    /// keeping what it replaces for rollback; under `publish = "tree"`,
    /// into the next snapshot, which root then points at (or which is
    /// thrown away if the bundle fails).
    fn apply_keeping(
        &self,
        key: &str,
        (seq, prev): (u64, u64),
        mut opened: apply::Opened,
        record: bool,
    ) -> Result<apply::Applied, Failed> {
        let mut target = self.target.for_sender(key);
        // Here both when received and when finished at start.
        debug_assert_eq!(crate::durable::parent_of(&opened.path), self.publishing);
        opened.write_ahead = true;
        let snapshot = match &self.trees {
            Some(trees) => {
                let (n, path) = trees.next().map_err(Failed::Snapshot)?;
                target.root = path.clone();
                target.snapshot = true;
                Some((trees, n, path))
            }
            None => None,
        };
        let keep = match record {
            true => self
                .records
                .keep_as(key, (seq, prev), snapshot.as_ref().map(|s| s.1)),
            false => Ok(None),
        };
        let result = keep
            .map_err(|e| Failed::Snapshot(e.into()))
            .and_then(|keep| {
                target.keep = keep;
                apply::apply(&target, opened).map_err(Failed::Bundle)
            })
            .and_then(|applied| match &snapshot {
                Some((trees, _, path)) => trees
                    .publish(path)
                    .map(|()| applied)
                    .map_err(Failed::Snapshot),
                None => Ok(applied),
            });
        match (&result, &snapshot) {
            (Ok(_), _) => self.records.prune(key, seq),
            (Err(_), Some((trees, _, path))) => trees.discard(path),
            (Err(_), None) => {}
        }
        result
    }

    /// Remove the part sets of every sender that no bundle added to for
    /// `part_ttl` (each removal is logged with its set).
    pub(super) fn expire_part_sets(&self) {
        let now = std::time::SystemTime::now();
        apply::expire_part_sets(&self.target.parts, self.part_ttl, now);
    }

    /// Whether a bundle received into `dir` is written by the `syncfs`
    /// that makes a bundle's staged files durable: then it is worth handing
    /// to the disk as it arrives (`bundle::arrival`).
    pub(super) fn stages_beside(&self, dir: &Path) -> bool {
        self.target.shares_filesystem(dir)
    }

    /// Move the published bundle from the write-ahead slot to the archive.
    pub(super) fn archive_published(&self, name: &str) {
        let src = self.publishing.join(name);
        if let Err(e) = archive(&src, &self.archive_dir, name, self.archive_keep) {
            warn!(error = format!("{e:#}"), "archiving the bundle failed");
        }
        let _ = std::fs::remove_file(&src);
    }

    /// Finish bundles whose publish a crash interrupted. Blocking; run at
    /// start before any sender is accepted. A crash is finished, not
    /// undone: what the interrupted publish kept aside went with staging,
    /// and applying again is what the sender, never acknowledged, asks for.
    pub(super) fn recover(
        &self,
        state: &mut ReceiverState,
        state_dir: &Path,
    ) -> anyhow::Result<()> {
        let mut pending: Vec<PathBuf> = std::fs::read_dir(&self.publishing)?
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_archive_name))
            .map(|e| e.path())
            .collect();
        pending.sort();
        for wal in pending {
            let name = wal
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            // Named by commit() after the sender it came from.
            let Some((key, seq)) = parse_archive_name(&name) else {
                warn!(bundle = %wal.display(), "not a bundle name this receiver writes; removed");
                let _ = std::fs::remove_file(&wal);
                continue;
            };
            match self.found(state, key, seq) {
                Found::Recorded => {
                    info!(sender = key, seq, "archiving a bundle already applied");
                    self.archive_published(&name);
                }
                Found::Published => {
                    info!(
                        sender = key,
                        seq, "recording a bundle published whole before a stop"
                    );
                    state.record_applied(key, seq);
                    state.save(state_dir)?;
                    self.archive_published(&name);
                }
                Found::Held => {
                    info!(
                        sender = key,
                        seq, "not finishing a bundle of a sender held by a rollback"
                    );
                    let _ = std::fs::remove_file(&wal);
                }
                Found::Unfinished => {
                    let prev = state.applied.get(key).copied().unwrap_or(0);
                    let applied = apply::open(&wal, &self.limits)
                        .map_err(Failed::Bundle)
                        // In place, part of it may be published already:
                        // what it replaces now is partly its own, so it
                        // keeps no record (a rollback stops above it).
                        // A snapshot starts from the tree before it.
                        .and_then(|b| {
                            self.apply_keeping(key, (seq, prev), b, self.trees.is_some())
                        });
                    match applied {
                        Ok(a) => {
                            info!(
                                sender = key,
                                seq,
                                files = a.published,
                                "finished a bundle whose publish was interrupted"
                            );
                            state.record_applied(key, seq);
                            state.save(state_dir)?;
                            self.archive_published(&name);
                        }
                        Err(e) => {
                            warn!(bundle = %wal.display(), error = %e, "could not finish an interrupted bundle; the sender will re-send it");
                            let _ = std::fs::remove_file(&wal);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What became of a bundle a stop interrupted.
enum Found {
    /// Its sequence is recorded: published whole before the stop kept it
    /// from the archive. Newer bundles may have been applied since, and
    /// applying it again would roll their files back.
    Recorded,
    /// Its record for rollback is made last, once every change is durable
    /// (and, under `publish = "tree"`, root points at its snapshot): the
    /// publish finished, only its sequence was not recorded.
    Published,
    /// Its sender is held by a rollback: root stays as it was rolled back
    /// to, and the sender sends the bundle again once released.
    Held,
    /// To be applied again.
    Unfinished,
}

impl Committer {
    fn found(&self, state: &ReceiverState, key: &str, seq: u64) -> Found {
        if state.applied.get(key).is_some_and(|&last| seq <= last) {
            return Found::Recorded;
        }
        let current = self
            .trees
            .as_ref()
            .and_then(|t| t.current().ok())
            .map(|c| c.0);
        if self.records.published(key, seq, current) {
            Found::Published
        } else if state.held.contains_key(key) {
            Found::Held
        } else {
            Found::Unfinished
        }
    }
}

/// Why applying a bundle failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failed {
    #[error(transparent)]
    Bundle(apply::BundleError),
    /// Making, or pointing root at, the snapshot it was applied in.
    #[error("{0:#}")]
    Snapshot(anyhow::Error),
}

/// Keep the applied bundle in `dir` and prune shipper's bundles there to
/// the newest `keep`; other files in `dir` are not counted or touched.
fn archive(src: &Path, dir: &Path, name: &str, keep: usize) -> anyhow::Result<()> {
    let dest = dir.join(name);
    // The archive is a convenience for replay; a copy torn by a crash is
    // refused by replay's checks, so it is not worth an fsync per bundle.
    if keep > 0 && std::fs::rename(src, &dest).is_err() {
        std::fs::copy(src, &dest).with_context(|| format!("copying to {}", dest.display()))?;
    }
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_archive_name))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    entries.sort();
    let excess = entries.len().saturating_sub(keep);
    for (_, p) in entries.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// The reason sent to the sender when the bundle at `path` cannot be
/// stored: a full disk is named as such.
pub(super) fn refusal_for_io(e: &std::io::Error, path: &Path) -> String {
    if crate::durable::is_disk_full(e) {
        format!("receiver disk full: {}: {e}", path.display())
    } else {
        format!("receiver cannot store the bundle: {}: {e}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_keeps_the_newest_bundles_and_never_touches_other_files() {
        let t = tempfile::tempdir().unwrap();
        let (publishing, dir) = (t.path().join("publishing"), t.path().join("archive"));
        std::fs::create_dir_all(&publishing).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        for seq in 1..=3 {
            let name = archive_name("cms", seq);
            std::fs::write(publishing.join(&name), "zip").unwrap();
            archive(&publishing.join(&name), &dir, &name, 2).unwrap();
        }
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                archive_name("cms", 2),
                archive_name("cms", 3),
                "notes.txt".into()
            ]
        );
    }
}
