//! The local control socket: typed requests from `shipper flush`, `status`,
//! `pause`, `resume` and `verify` to a running sender, and from `shipper
//! rollback` to a running receiver, one JSON line each way. The socket
//! lives in the process's state_dir with mode 0600. What a request does is
//! the process's business: [`serve`] hands each one over with a channel
//! for its answer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::bundle::Summary;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Report the sender's and each receiver's state.
    Status,
    /// Stop cutting bundles; changes keep accumulating.
    Pause,
    Resume,
    /// Cut a bundle with everything pending now and answer once the receiver
    /// acknowledged it (or `timeout_ms` passed).
    Flush {
        timeout_ms: u64,
        /// Ship deletions the mass-deletion guard holds back.
        #[serde(default)]
        allow_mass_delete: bool,
    },
    /// Compare the source with each receiver's root (`shipper verify`);
    /// `repair`: ship again what is missing or different there and wait for
    /// its acknowledgement; `delete_extra`: delete the extras too.
    Verify {
        repair: bool,
        delete_extra: bool,
    },
    /// To a receiver: put root back to right after bundle `to` of `sender`
    /// (the only one that applied bundles there, if `None`) and hold that
    /// sender's bundles.
    Rollback {
        sender: Option<String>,
        to: u64,
    },
    /// To a receiver: take the held sender's bundles again.
    Release {
        sender: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Status(Box<crate::status::StatusReport>),
    Paused {
        paused: bool,
    },
    Flushed {
        first_seq: u64,
        last_seq: u64,
        bundles: u64,
        summary: Summary,
        /// Deletions still held by the mass-deletion guard.
        held_deletions: u64,
    },
    NothingToShip {
        held_deletions: u64,
    },
    Verified(Box<crate::drift::VerifyReport>),
    /// Root went back from sequence `from` to `to` of `sender`, undoing
    /// `bundles` bundles; `left`: changes left as they are, and why.
    RolledBack {
        sender: String,
        from: u64,
        to: u64,
        bundles: u64,
        left: Vec<String>,
    },
    /// `sender`'s bundles are taken again; it was held at `held_at`
    /// (`None`: it was not held).
    Released {
        sender: String,
        held_at: Option<u64>,
    },
    Error {
        message: String,
    },
}

pub type Call = (Request, oneshot::Sender<Response>);

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Listen on the control socket until `shutdown`, handing each request to
/// `tx` with a channel for its answer.
pub async fn serve(
    (path, role): (PathBuf, &'static str),
    tx: mpsc::Sender<Call>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if UnixStream::connect(&path).await.is_ok() {
        anyhow::bail!(
            "{}: another {role} is already running with this state_dir",
            path.display()
        );
    }
    // Bind under a temporary name and make it private before it appears
    // under the name clients use: no moment where others could connect.
    let tmp = path.with_extension("sock.new");
    let _ = tokio::fs::remove_file(&tmp).await;
    let listener = UnixListener::bind(&tmp)
        .with_context(|| format!("binding control socket {}", tmp.display()))?;
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .await
        .with_context(|| format!("setting mode 0600 on {}", tmp.display()))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .with_context(|| format!("placing control socket at {}", path.display()))?;
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => { tracing::warn!(error = %e, "control socket accept failed"); continue }
            },
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tx).await {
                tracing::debug!(error = %e, "control client");
            }
        });
    }
    let _ = tokio::fs::remove_file(&path).await;
    Ok(())
}

/// The most of a request read from a client.
const REQUEST_MAX: u64 = 64 * 1024;

/// Answer one client: read its request, hand it to the sender, write the
/// sender's answer (or why the request was bad).
async fn handle(stream: UnixStream, tx: mpsc::Sender<Call>) -> anyhow::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    // A request is a short line; never buffer more from a local client.
    BufReader::new(r.take(REQUEST_MAX))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let (otx, orx) = oneshot::channel();
            tx.send((req, otx))
                .await
                .map_err(|_| anyhow::anyhow!("stopped"))?;
            orx.await.unwrap_or(Response::Error {
                message: "stopped before answering".into(),
            })
        }
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(())
}

/// Send one request to the sender whose state_dir holds `path`.
pub async fn call(path: &Path, req: &Request, wait: Duration) -> anyhow::Result<Response> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "no sender is running (cannot connect to control socket {})",
            path.display()
        )
    })?;
    exchange(stream, req, wait).await
}

/// Send one request to the receiver whose state_dir holds `path`; `None`
/// when no receiver is running there.
pub async fn call_receiver(
    path: &Path,
    req: &Request,
    wait: Duration,
) -> anyhow::Result<Option<Response>> {
    match UnixStream::connect(path).await {
        Ok(stream) => exchange(stream, req, wait).await.map(Some),
        Err(_) => Ok(None),
    }
}

async fn exchange(stream: UnixStream, req: &Request, wait: Duration) -> anyhow::Result<Response> {
    let (r, mut w) = stream.into_split();
    let mut out = serde_json::to_vec(req)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    let mut line = String::new();
    tokio::time::timeout(wait, BufReader::new(r).read_line(&mut line))
        .await
        .context("no answer in time")??;
    serde_json::from_str(&line).with_context(|| format!("unreadable answer: {line:?}"))
}
