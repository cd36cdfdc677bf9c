//! After a rollback: a receiver whose root was rolled back and released
//! (`shipper rollback` there) gets the source compared with its root and
//! the difference shipped, by the sender itself.
//!
//! Its `Welcome` says so; the transport records a `compare` mark in
//! `receivers.json` (durably, so a restart does not forget it) and the
//! loop calls [`super::Sender::maybe_compare`]: a verify of the marked
//! roots that repairs what is missing or different and deletes, of the
//! extras, only what the rollback brought back ([`Deletes::Restored`]: the
//! paths the receiver lists as `Restored`), never a file put in root by
//! hand or by another sender. Once it ran whole, each receiver is told
//! (`Compared`, which makes it forget the rollback) and its mark cleared;
//! otherwise it is tried again when a receiver next connects. One at a
//! time.

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::transport::{tell_compared, update_peer};
use super::verify::{Deletes, Scope, Verifier};
use crate::drift::VerifyReport;

impl super::Sender {
    /// Compare the source with each root marked as rolled back, and
    /// repair; unless one such compare runs already.
    pub(super) fn maybe_compare(&mut self) {
        let marked: Vec<(usize, u64)> = {
            let p = self
                .verifier
                .peers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let receivers = self.verifier.receivers.iter().enumerate();
            receivers
                .filter_map(|(i, name)| Some((i, p.receivers.get(name)?.compare?)))
                .collect()
        };
        if marked.is_empty() || self.verifier.comparing.swap(true, Ordering::SeqCst) {
            return;
        }
        let known = match self.verify_known() {
            Ok(k) => k,
            Err(why) => {
                warn!(error = %why, "comparing the source with the rolled-back roots waits");
                self.verifier.comparing.store(false, Ordering::SeqCst);
                return;
            }
        };
        let v = self.verifier.clone();
        tokio::spawn(async move {
            let scope = Scope {
                repair: true,
                deletes: Deletes::Restored,
                only: Some(marked.iter().map(|(i, _)| *i).collect()),
            };
            match v.run(known, scope).await.map(|r| compare_failed(&r)) {
                Ok(None) => {
                    for (i, to) in marked {
                        tell(&v, i, to).await;
                    }
                }
                Ok(Some(why)) | Err(why) => {
                    warn!(error = %why, "comparing the source with the rolled-back roots did not finish; tried again when a receiver next connects")
                }
            }
            v.comparing.store(false, Ordering::SeqCst);
        });
    }
}

/// Tell receiver `i` that its root, rolled back to `to`, was compared and
/// repaired, then clear its mark; a receiver not reached keeps the mark
/// (and is compared again, finding nothing to do, when it next connects).
async fn tell(v: &Verifier, i: usize, to: u64) {
    let receiver = &v.receivers[i];
    let told = tell_compared(receiver, &v.id, v.tls[i].as_ref(), v.peer_timeout).await;
    if let Err(e) = told {
        warn!(peer = %receiver, error = %e, "could not tell the receiver its rolled-back root was compared; tried again when it next connects");
        return;
    }
    let (peers, dir, name) = (v.peers.clone(), v.state_dir.clone(), receiver.clone());
    let cleared = tokio::task::spawn_blocking(move || {
        update_peer(&peers, &dir, &name, |r| {
            r.compare = r.compare.filter(|c| *c != to);
            // In step with the source from `to` on: a whole tree it had
            // after that is not missing there (`PeerRecord::tree_through`).
            r.tree_through = r.tree_through.min(to);
        })
    })
    .await;
    match cleared.map_err(std::io::Error::other).and_then(|r| r) {
        Ok(()) => {
            info!(peer = %receiver, to, "the root rolled back is in step with the source again")
        }
        Err(e) => {
            warn!(peer = %receiver, error = %e, "could not record that the rolled-back root was compared")
        }
    }
}

/// Why a compare did not run whole, if it did not: a root that could not
/// be listed, or a repair that failed.
fn compare_failed(report: &VerifyReport) -> Option<String> {
    if let Some(r) = report.receivers.iter().find(|r| r.error.is_some()) {
        let error = r.error.as_deref().unwrap_or_default();
        return Some(format!("{}: {error}", r.receiver));
    }
    report.repair.as_ref()?.error.clone()
}
