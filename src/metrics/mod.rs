//! The optional Prometheus endpoints of both roles, on the address in
//! `sender.metrics` or `receiver.metrics`. Each role's figures live in a
//! prometheus-client [`Registry`]: the sender's are read from its latest
//! status report at each scrape, the receiver's are counted as bundles
//! are applied or refused. [`serve`] answers every HTTP request, whatever
//! its path, with the OpenMetrics text of the figures; gathering them may
//! read the disk (the free space under root), so it runs off the async
//! runtime. Nothing here decides anything: it only shows.
//!
//! # Layout
//! - this file: bind, serve over HTTP/1.1 (hyper), encode a registry.
//! - `sender`: the sender's figures, from a [`crate::status::StatusReport`].
//! - `receiver`: the receiver's counters per sender and the free space
//!   under root.

mod receiver;
mod sender;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use receiver::{ReceiverMetrics, RefusedFor};
pub use sender::render;

/// What a scrape answers: the figures as exposition text. Called off the
/// runtime, so it may block briefly (a statvfs).
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

/// The content type of [`encode`]'s text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How long a client may take to send its request head: one that sends
/// nothing is dropped, not waited on.
const HEAD_READ_WAIT: Duration = Duration::from_secs(5);

/// The registry's figures as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // A String takes every write; an error would come from a collector.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "metrics: encoding failed; the scrape is incomplete");
    }
    out
}

/// Bind the endpoint configured under `key`; done at start so a bad
/// address stops the role at once.
pub async fn bind(key: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{key}: cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "metrics endpoint listening");
    Ok(listener)
}

/// Answer each request on `listener` with a fresh [`Scrape`] until
/// `shutdown`; returns once every connection has ended. One request per
/// connection, as Prometheus scrapes, so nothing lingers between scrapes.
pub async fn serve(listener: TcpListener, scrape: Scrape, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (scrape, stop) = (scrape.clone(), shutdown.clone());
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |_request| answer(scrape.clone()));
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEAD_READ_WAIT)
                .keep_alive(false);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "metrics: connection ended");
                },
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// One scrape, gathered on a blocking thread.
async fn answer(scrape: Scrape) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match tokio::task::spawn_blocking(move || scrape()).await {
        Ok(text) => Response::builder()
            .header(CONTENT_TYPE, OPENMETRICS)
            .body(Full::new(Bytes::from(text))),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: gathering the figures failed");
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Full::new(Bytes::from_static(
                    b"metrics could not be gathered\n",
                )))
        }
    };
    // Only a bad header could fail the builder, and the ones above are fixed.
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
