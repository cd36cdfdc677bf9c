//! `shipper verify` in the sender: the source's listing against each
//! receiver's root, and the repair.
//!
//! The loop hands a verify task what it knows ([`Known`]: what was shipped,
//! what is pending or on its way) and goes on; the task lists the source
//! off the runtime (a file's hash is read only when its stat is not the one
//! it was shipped with), asks each receiver for its root's listing over a
//! connection of its own (`Inquire`: the session carrying bundles is left
//! alone), and compares them ([`crate::drift::compare`]). A repair goes
//! back to the loop ([`RepairRequest`]), which puts the paths in doubt so
//! they ship as they are now, and flushes; the task waits for that flush.
//! Nothing is ever deleted on a receiver but an extra the operator asked to
//! delete (`--delete-extra`) and the source still lacks.
//!
//! A receiver whose root was rolled back and released (`shipper rollback`)
//! gets the same by itself (see `compare.rs`), deleting only what the
//! rollback brought back ([`Deletes::Restored`]).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::start::TlsConfig;
use super::transport::inquire;
use crate::control::Response;
use crate::drift::{self, Listing, ReceiverDrift, Repair, VerifyReport};
use crate::ledger::Files;
use crate::paths::Excludes;
use crate::proto::Frame;
use crate::proto::connection::ConnError;
use crate::source_dir::SourceDir;

/// The most files a root's listing may name: far beyond any web root, and
/// a bound on what a receiver can make the sender hold.
const MAX_LISTED: usize = 50_000_000;
/// How long a repair waits for its bundles' acknowledgement.
const REPAIR_WAIT: Duration = Duration::from_secs(300);

/// What every verify of this sender shares.
pub(super) struct Verifier {
    pub(super) id: String,
    pub(super) receivers: Vec<String>,
    pub(super) tls: Vec<TlsConfig>,
    pub(super) peer_timeout: Duration,
    pub(super) exclude: Excludes,
    /// Where a verify hands its repair to the sender's loop.
    pub(super) repairs: mpsc::Sender<RepairRequest>,
    /// Where receivers whose root was rolled back are marked.
    pub(super) peers: Arc<std::sync::Mutex<crate::peers::Peers>>,
    pub(super) state_dir: PathBuf,
    /// A compare for rolled-back roots is running.
    pub(super) comparing: std::sync::atomic::AtomicBool,
}

/// Which extras a repair deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deletes {
    /// None (`--repair`, or no repair).
    None,
    /// Every extra the source lacks (`--delete-extra`), unless a root also
    /// takes another sender's bundles or could not be listed.
    Extras,
    /// Only what a rollback brought back (the receiver's `Restored`
    /// paths, or what lies below them) that the source lacks.
    Restored,
}

/// What one verify compares and repairs.
pub(super) struct Scope {
    pub(super) repair: bool,
    pub(super) deletes: Deletes,
    /// Only these receivers (by index in `sender.receiver`); all if `None`.
    pub(super) only: Option<Vec<usize>>,
}

/// One root's listing as a receiver gave it.
#[derive(Default)]
struct RootListing {
    files: Listing,
    hashed: u64,
    other_senders: u64,
    /// What a rollback of this sender's bundles brought back there.
    restored: HashSet<String>,
}

/// What a repair ships again (missing or different anywhere) and deletes
/// (the extras `deletes` says).
fn to_repair(
    report: &VerifyReport,
    restored: &[HashSet<String>],
    deletes: Deletes,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut upserts = BTreeSet::new();
    let mut deletions = BTreeSet::new();
    for (r, restored) in report.receivers.iter().zip(restored) {
        upserts.extend(r.drift.missing.iter().chain(&r.drift.different).cloned());
        let extras = r.drift.extra.iter();
        match deletes {
            Deletes::None => {}
            Deletes::Extras => deletions.extend(extras.cloned()),
            Deletes::Restored => {
                deletions.extend(extras.filter(|p| brought_back(p, restored)).cloned())
            }
        }
    }
    (upserts, deletions)
}

/// Whether `path` is, or lies below, one of the paths in `restored`.
fn brought_back(path: &str, restored: &HashSet<String>) -> bool {
    restored.contains(path)
        || path
            .match_indices('/')
            .any(|(slash, _)| restored.contains(&path[..slash]))
}

/// What the loop knows as a verify starts.
pub(super) struct Known {
    pub(super) source: PathBuf,
    /// Never listed: the sender's state_dir, if inside the source.
    pub(super) ignore: Vec<PathBuf>,
    /// What was shipped of each path: its hash stands for the file's
    /// content while the file keeps the stat it was shipped with.
    pub(super) shipped: Files,
    /// Paths with a change not shipped yet, or not yet acknowledged.
    pub(super) pending: HashSet<String>,
}

/// A verify's repair, for the loop: ship `upserts` as they are, delete
/// `deletions` (extras) unless the source has them now, then flush and
/// answer on `reply` as a flush does.
pub(super) struct RepairRequest {
    pub(super) upserts: Vec<String>,
    pub(super) deletions: Vec<String>,
    pub(super) reply: oneshot::Sender<Response>,
    pub(super) wait: Duration,
}

impl Verifier {
    /// Verify in a task of its own, answering on `reply`.
    pub(super) fn spawn(
        self: &Arc<Self>,
        known: Known,
        repair: bool,
        delete_extra: bool,
        reply: oneshot::Sender<Response>,
    ) {
        let v = self.clone();
        let scope = Scope {
            repair: repair || delete_extra,
            deletes: if delete_extra {
                Deletes::Extras
            } else {
                Deletes::None
            },
            only: None,
        };
        tokio::spawn(async move {
            let answer = match v.run(known, scope).await {
                Ok(report) => Response::Verified(Box::new(report)),
                Err(message) => Response::Error { message },
            };
            let _ = reply.send(answer);
        });
    }

    /// Compare the source with the roots `scope` names, and repair as it
    /// says.
    pub(super) async fn run(&self, known: Known, scope: Scope) -> Result<VerifyReport, String> {
        let Known {
            source,
            ignore,
            shipped,
            pending,
        } = known;
        let exclude = self.exclude.clone();
        let (listing, source_hashed, pending) = tokio::task::spawn_blocking(move || {
            list_source(&source, &exclude, &ignore, &shipped, &pending)
                .map(|(listing, hashed)| (listing, hashed, pending))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("listing the source: {e}"))?;
        let mut report = VerifyReport {
            source_files: listing.len() as u64,
            source_hashed,
            ..VerifyReport::default()
        };
        let mut restored = Vec::new();
        for (i, receiver) in self.receivers.iter().enumerate() {
            if scope.only.as_ref().is_some_and(|only| !only.contains(&i)) {
                continue;
            }
            let mut r = ReceiverDrift {
                receiver: receiver.clone(),
                ..ReceiverDrift::default()
            };
            let mut brought_back = HashSet::new();
            match self.root_listing(i).await {
                Ok(root) => {
                    r.files = root.files.len() as u64;
                    r.hashed = root.hashed;
                    r.other_senders = root.other_senders;
                    r.drift = drift::compare(&listing, &root.files, &|p| pending.contains(p));
                    brought_back = root.restored;
                }
                Err(e) => r.error = Some(e),
            }
            info!(receiver = %receiver, in_step = r.drift.in_step(), missing = r.drift.missing.len(), different = r.drift.different.len(), extra = r.drift.extra.len(), error = r.error.as_deref().unwrap_or(""), "verified");
            report.receivers.push(r);
            restored.push(brought_back);
        }
        if scope.repair {
            report.repair = self.repair(&report, &restored, scope.deletes).await;
        }
        Ok(report)
    }

    /// Root's listing from receiver `i` (paths that cannot travel dropped:
    /// never a repair's upsert or deletion), without what this sender's
    /// excludes cover (never the source's, so never extra); with how many
    /// files the receiver read to list it, how many other senders ship to
    /// it, and what a rollback brought back there.
    async fn root_listing(&self, i: usize) -> Result<RootListing, String> {
        let receiver = &self.receivers[i];
        let tls = self.tls[i].as_ref();
        let mut conn = inquire(receiver, &self.id, tls, self.peer_timeout).await?;
        let mut root = RootListing::default();
        loop {
            let frame = conn.expect_frame().await.map_err(|e| match e {
                ConnError::Closed => "closed the connection before its listing ended (a receiver older than this sender cannot answer verify)".to_owned(),
                e => e.to_string(),
            })?;
            match frame {
                Frame::Listing { .. } | Frame::Restored { .. }
                    if root.files.len() + root.restored.len() >= MAX_LISTED =>
                {
                    return Err(format!("listed more than {MAX_LISTED} files"));
                }
                Frame::Listing { entries } => {
                    let valid = |p: &str| crate::paths::validate(p).is_ok();
                    let (listed, invalid): (Vec<_>, Vec<_>) =
                        entries.into_iter().partition(|(p, _)| valid(p));
                    if let Some((p, _)) = invalid.first() {
                        warn!(receiver = %receiver, path = ?p, paths = invalid.len(), "the receiver listed paths that cannot travel; left out of its drift");
                    }
                    let kept = listed
                        .into_iter()
                        .filter(|(p, _)| !self.exclude.is_excluded(p));
                    root.files.extend(kept);
                }
                Frame::Restored { paths } => {
                    let valid = paths
                        .into_iter()
                        .filter(|p| crate::paths::validate(p).is_ok());
                    root.restored.extend(valid);
                }
                Frame::Listed {
                    hashed,
                    other_senders,
                    ..
                } => {
                    root.hashed = hashed;
                    root.other_senders = other_senders;
                    return Ok(root);
                }
                Frame::Ping => {}
                Frame::Refuse { reason, .. } => return Err(reason),
                other => return Err(format!("unexpected answer {other:?}")),
            }
        }
    }

    /// Hand the loop what drifted on any receiver and wait for the
    /// flush that ships it, with the extras `deletes` says (`restored`:
    /// what a rollback brought back on each receiver listed, in the order
    /// of `report.receivers`). `None` when nothing is to be repaired.
    async fn repair(
        &self,
        report: &VerifyReport,
        restored: &[HashSet<String>],
        deletes: Deletes,
    ) -> Option<Repair> {
        let (upserts, mut deletions) = to_repair(report, restored, deletes);
        // A deletion goes to every receiver: with another sender's files
        // in some root, what looks extra may be its; and a root that could
        // not be listed may be such a one (found by review: it was taken
        // for one holding no other sender's files). What a rollback of this
        // sender's bundles brought back is this sender's.
        let refused = (deletes == Deletes::Extras && !deletions.is_empty())
            .then(|| extras_kept(&report.receivers))
            .flatten();
        if refused.is_some() {
            deletions.clear();
        }
        if upserts.is_empty() && deletions.is_empty() {
            return refused.map(|error| Repair {
                error: Some(error),
                ..Repair::default()
            });
        }
        let mut repair = Repair {
            files: upserts.len() as u64,
            deletions: deletions.len() as u64,
            ..Repair::default()
        };
        let (tx, rx) = oneshot::channel();
        let request = RepairRequest {
            upserts: upserts.into_iter().collect(),
            deletions: deletions.into_iter().collect(),
            reply: tx,
            wait: REPAIR_WAIT,
        };
        let answer = match self.repairs.send(request).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        match answer {
            Some(Response::Flushed {
                first_seq,
                last_seq,
                held_deletions,
                ..
            }) => {
                let seqs = if first_seq == last_seq {
                    format!("sequence {last_seq}")
                } else {
                    format!("sequences {first_seq}-{last_seq}")
                };
                repair.outcome = format!("shipped in {seqs}; acknowledged{}", held(held_deletions))
            }
            Some(Response::NothingToShip { held_deletions }) => {
                repair.outcome = format!(
                    "nothing to ship: the changes were already on their way{}",
                    held(held_deletions)
                )
            }
            Some(Response::Error { message }) => repair.error = Some(message),
            _ => repair.error = Some("the sender stopped before the repair was shipped".into()),
        }
        if let Some(why) = refused {
            repair.error = Some(match repair.error {
                Some(e) => format!("{why}; {e}"),
                None => why,
            });
        }
        Some(repair)
    }
}

/// What a repair says of the deletions the mass-deletion guard holds.
fn held(deletions: u64) -> String {
    match deletions {
        0 => String::new(),
        n => format!(
            "; {n} deletions held by the mass-deletion guard: ship them with `shipper flush --allow-mass-delete`"
        ),
    }
}

/// The source's regular files with their hashes, and how many were read:
/// a file whose stat is the one it was shipped with (not racy) has the
/// hash it was shipped with. A file gone meanwhile is left out (its
/// deletion is pending), and so is a pending one that cannot be read (it
/// is retried, and listed as failing by `shipper status`). Blocking.
fn list_source(
    dir: &Path,
    exclude: &Excludes,
    ignore: &[PathBuf],
    shipped: &Files,
    pending: &HashSet<String>,
) -> std::io::Result<(Listing, u64)> {
    let walk = crate::watch::walk(dir, dir, exclude, ignore);
    if let Some((at, e)) = walk.unreadable.first() {
        return Err(std::io::Error::other(format!("{at}: {e}")));
    }
    let source = SourceDir::open(dir)?;
    let mut listing = Listing::new();
    let mut hashed = 0;
    for (path, stamp) in walk.files {
        if !stamp.kind.is_file() {
            continue;
        }
        let known = shipped
            .meta(&path)
            .filter(|m| m.matches(&stamp) && !m.racy)
            .and_then(|m| m.hash().copied());
        let hash = match known {
            Some(h) => h,
            None => {
                hashed += 1;
                match source.hash_file(&path) {
                    Ok(h) => h,
                    Err(e) if crate::watch::is_gone(&e) || pending.contains(&path) => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        listing.insert(path, hash);
    }
    Ok((listing, hashed))
}

impl super::Sender {
    /// `shipper verify`: start a verify task with what the loop knows now.
    pub(super) fn start_verify(
        &mut self,
        repair: bool,
        delete_extra: bool,
        reply: oneshot::Sender<Response>,
    ) {
        match self.verify_known() {
            Ok(known) => self.verifier.spawn(known, repair, delete_extra, reply),
            Err(message) => {
                let _ = reply.send(Response::Error { message });
            }
        }
    }

    /// What a verify starts from: the source (refused while it is
    /// missing), what was shipped, and what is pending or on its way.
    pub(super) fn verify_known(&self) -> Result<Known, String> {
        if self.source.missing().is_some() {
            return Err(self.source.holding_message());
        }
        let changes = &self.book.changes;
        let mut pending: HashSet<String> = changes
            .pending_upserts()
            .chain(changes.pending_deletes())
            .map(str::to_owned)
            .collect();
        pending.extend(self.outbox.in_flight());
        Ok(Known {
            source: self.source.dir().to_path_buf(),
            ignore: vec![self.state_dir.clone()],
            shipped: self.book.shipped.files().clone(),
            pending,
        })
    }

    /// A verify's repair: its paths ship as they are now, in doubt (so
    /// their content travels whatever the ledger says), and a flush sends
    /// them at once. An extra is deleted only while the source lacks it.
    pub(super) fn on_repair(&mut self, r: RepairRequest, next_tick: std::time::Instant) {
        if self.paused {
            let message = "the sender is paused: the repair would not ship until `shipper resume`";
            let _ = r.reply.send(Response::Error {
                message: message.into(),
            });
            return;
        }
        let now = std::time::Instant::now();
        self.book.sources_not_held(&r.upserts, now);
        let source = &self.source;
        let gone: Vec<String> = super::source::blocking(|| {
            r.deletions
                .into_iter()
                .filter(|p| source.absent(p))
                .collect()
        });
        for path in &gone {
            self.book.shipped.doubt(path);
            self.book.changes.removed(path, now);
        }
        info!(
            files = r.upserts.len(),
            deletions = gone.len(),
            "repairing drift found by verify"
        );
        self.flushes.request(false, now + r.wait, r.reply);
        self.maybe_pack(true, next_tick);
    }
}

/// Why no extra may be deleted, if one is not: a root that also takes
/// bundles from other senders, or one that could not be listed (which may
/// be such a root).
fn extras_kept(receivers: &[ReceiverDrift]) -> Option<String> {
    if let Some(r) = receivers.iter().find(|r| r.error.is_some()) {
        return Some(format!(
            "extras not deleted: {} could not be listed, and its root may hold another sender's files",
            r.receiver
        ));
    }
    let r = receivers.iter().find(|r| r.other_senders > 0)?;
    Some(format!(
        "extras not deleted: {}'s root also takes bundles from {} other sender(s), whose files look extra from here",
        r.receiver, r.other_senders
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::Drift;

    /// After a rollback only what it brought back is deleted: a file it
    /// put back, or what lies below a directory it put back; never another
    /// extra (a file put in root by hand).
    #[test]
    fn a_compare_after_a_rollback_deletes_only_what_it_brought_back() {
        let extra = ["b.html", "dir/x.html", "dirt.html", "uploads/u.jpg"];
        let report = VerifyReport {
            receivers: vec![ReceiverDrift {
                drift: Drift {
                    missing: vec!["m.html".into()],
                    extra: extra.iter().map(|e| e.to_string()).collect(),
                    ..Drift::default()
                },
                ..ReceiverDrift::default()
            }],
            ..VerifyReport::default()
        };
        let restored = [HashSet::from(["b.html".to_string(), "dir".to_string()])];
        let (upserts, deletions) = to_repair(&report, &restored, Deletes::Restored);
        assert_eq!(upserts, BTreeSet::from(["m.html".to_string()]));
        let want = BTreeSet::from(["b.html".to_string(), "dir/x.html".to_string()]);
        assert_eq!(deletions, want);
        let (_, all) = to_repair(&report, &restored, Deletes::Extras);
        assert_eq!(all.len(), 4);
        assert!(to_repair(&report, &restored, Deletes::None).1.is_empty());
    }
}
