//! `shipper rollback` on a receiver: to a running receiver over its
//! control socket, where each request runs holding the state lock (so no
//! bundle is applied meanwhile) off the async runtime; or, with no
//! receiver running, in the command itself, holding the state_dir lock
//! after finishing what a stop interrupted, as a receiver's start does.
//! Both answer through [`handle`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};
use tracing::info;

use super::commit::Committer;
use super::records::Records;
use super::rollback::{self, RootAt, which_sender};
use super::state::ReceiverState;
use super::trees::Trees;
use crate::config::ReceiverConfig;
use crate::control::{Call, Request, Response};
use crate::metrics::ReceiverMetrics;
use crate::state_lock::StateLock;

/// What a running receiver answers `shipper rollback` with.
pub(super) struct Operator {
    /// Ends a sender's live session (see `Sessions::end_session`).
    pub(super) end_session: Arc<dyn Fn(&str) + Send + Sync>,
    pub(super) state: Arc<Mutex<ReceiverState>>,
    pub(super) root: PathBuf,
    pub(super) state_dir: PathBuf,
    pub(super) records: Records,
    pub(super) trees: Option<Trees>,
}

impl Operator {
    /// Answer each call until the control socket stops.
    pub(super) async fn answer(self: Arc<Self>, mut calls: mpsc::Receiver<Call>) {
        while let Some((req, reply)) = calls.recv().await {
            let mut state = self.state.clone().lock_owned().await;
            let me = self.clone();
            let answer = tokio::task::spawn_blocking(move || {
                let at = root_at(&me.root, me.trees.as_ref());
                handle(at, &me.records, &mut state, &me.state_dir, req)
            })
            .await
            .unwrap_or_else(|e| Response::Error {
                message: format!("the request failed: {e}"),
            });
            // Its next session starts with what it must hear: held, or
            // released from a rollback and to compare.
            if let Response::RolledBack { sender, .. } | Response::Released { sender, .. } = &answer
            {
                (self.end_session)(sender);
            }
            let _ = reply.send(answer);
        }
    }
}

/// Answer one request. Blocking.
fn handle(
    at: RootAt,
    records: &Records,
    state: &mut ReceiverState,
    state_dir: &Path,
    req: Request,
) -> Response {
    let error = |message: String| Response::Error { message };
    match req {
        Request::Rollback { sender, to } => {
            let key = match which_sender(
                state.applied.keys(),
                sender.as_deref(),
                "that applied bundles here",
            ) {
                Ok(k) => k,
                Err(e) => return error(e),
            };
            match rollback::roll_back(at, records, state, state_dir, (&key, to)) {
                Ok(r) => {
                    info!(sender = %key, from = r.from, to = r.to, bundles = r.bundles, left = r.left.len(), "root rolled back; the sender's bundles are held until `shipper rollback --release`");
                    Response::RolledBack {
                        sender: key,
                        from: r.from,
                        to: r.to,
                        bundles: r.bundles,
                        left: r.left,
                    }
                }
                Err(e) => error(format!("rolling back sender {key} to sequence {to}: {e}")),
            }
        }
        Request::Release { sender } => {
            let key = match which_sender(state.held.keys(), sender.as_deref(), "held by a rollback")
            {
                Ok(k) => k,
                Err(e) => return error(e),
            };
            match rollback::release(state, state_dir, &key) {
                Ok(held_at) => {
                    info!(sender = %key, held_at, "released: the sender's bundles are taken again; it compares its source with root when it next connects");
                    Response::Released {
                        sender: key,
                        held_at,
                    }
                }
                Err(e) => error(format!("releasing sender {key}: {e:#}")),
            }
        }
        other => error(format!(
            "a receiver does not answer {other:?}: send it to the sender"
        )),
    }
}

/// `shipper rollback` with no receiver running on `cfg`'s state_dir.
pub fn operate_offline(cfg: &ReceiverConfig, req: Request) -> anyhow::Result<Response> {
    let _lock = StateLock::acquire(&cfg.state_dir, "receiver")?;
    let target = super::target_for(cfg)?;
    let mut state = ReceiverState::load_or_create(&cfg.state_dir)?;
    let committer = Committer::new(cfg, &target, Arc::new(ReceiverMetrics::new(&cfg.root)));
    std::fs::create_dir_all(cfg.state_dir.join("publishing"))?;
    committer.recover(&mut state, &cfg.state_dir)?;
    let at = root_at(&cfg.root, committer.trees.as_ref());
    rollback::finish_interrupted(at, &committer.records, &mut state, &cfg.state_dir);
    Ok(handle(
        at,
        &committer.records,
        &mut state,
        &cfg.state_dir,
        req,
    ))
}

/// Where a rollback puts `root` back: its snapshots, if it has them.
pub(super) fn root_at<'a>(root: &'a Path, trees: Option<&'a Trees>) -> RootAt<'a> {
    match trees {
        Some(t) => RootAt::Trees(t),
        None => RootAt::Dir(root),
    }
}
