//! The optional Prometheus endpoint: the figures of `shipper status` in the
//! text exposition format, served over plain HTTP on the address in
//! `sender.metrics`. [`render`] is pure; [`serve`] answers every request
//! with the latest report.

use std::fmt::Write as _;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::status::StatusReport;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The report as Prometheus text.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let sender = format!("{{sender=\"{}\"}}", escape(&r.sender_id));
    metric(
        "shipper_paused",
        "gauge",
        "1 while cutting bundles is paused.",
        vec![(sender.clone(), f64::from(u8::from(r.paused)))],
    );
    metric(
        "shipper_pending_paths",
        "gauge",
        "Paths changed and not yet shipped.",
        vec![(sender.clone(), r.pending_paths as f64)],
    );
    metric(
        "shipper_pending_bytes",
        "gauge",
        "Bytes of the files changed and not yet shipped.",
        vec![(sender.clone(), r.pending_bytes as f64)],
    );
    metric(
        "shipper_oldest_pending_seconds",
        "gauge",
        "Age of the oldest change not yet shipped (0 when none).",
        vec![(sender.clone(), r.oldest_pending_secs.unwrap_or(0.0))],
    );
    metric(
        "shipper_window_seconds",
        "gauge",
        "The promised bound on change-to-ship time (max_delay).",
        vec![(sender.clone(), r.window_secs as f64)],
    );
    metric(
        "shipper_held_deletions",
        "gauge",
        "Deletions held by the mass-deletion guard.",
        vec![(sender.clone(), r.held_deletions as f64)],
    );
    metric(
        "shipper_failing_paths",
        "gauge",
        "Paths that cannot be shipped now (unreadable, or a name that cannot travel).",
        vec![(sender.clone(), r.failing_paths as f64)],
    );
    metric(
        "shipper_unsettled_paths",
        "gauge",
        "Paths last shipped as a snapshot while still being written.",
        vec![(sender.clone(), r.unsettled.len() as f64)],
    );
    metric(
        "shipper_packing_failing",
        "gauge",
        "1 while packing fails as a whole (e.g. the sender's disk is full).",
        vec![(sender.clone(), f64::from(u8::from(r.pack_error.is_some())))],
    );
    metric(
        "shipper_source_missing",
        "gauge",
        "1 while no directory is at the source path (nothing ships).",
        vec![(sender, f64::from(u8::from(r.source_missing.is_some())))],
    );
    let per = |f: &dyn Fn(&crate::status::LinkStatus) -> Option<f64>| -> Vec<(String, f64)> {
        r.receivers
            .iter()
            .filter_map(|l| f(l).map(|v| (format!("{{receiver=\"{}\"}}", escape(&l.receiver)), v)))
            .collect()
    };
    metric(
        "shipper_receiver_connected",
        "gauge",
        "1 while connected to the receiver.",
        per(&|l| Some(f64::from(u8::from(l.connected)))),
    );
    metric(
        "shipper_receiver_last_ack_sequence",
        "gauge",
        "Last sequence the receiver acknowledged.",
        per(&|l| l.last_ack_seq.map(|s| s as f64)),
    );
    metric(
        "shipper_receiver_last_ack_timestamp_seconds",
        "gauge",
        "Unix time of the last acknowledgement.",
        per(&|l| l.last_ack_at.map(|t| t as f64)),
    );
    metric(
        "shipper_receiver_bundles_shipped_total",
        "counter",
        "Bundles acknowledged since start.",
        per(&|l| Some(l.bundles_shipped as f64)),
    );
    metric(
        "shipper_receiver_bytes_shipped_total",
        "counter",
        "Bundle bytes acknowledged since start.",
        per(&|l| Some(l.bytes_shipped as f64)),
    );
    metric(
        "shipper_receiver_last_error_timestamp_seconds",
        "gauge",
        "Unix time of the last error talking to the receiver.",
        per(&|l| l.last_error_at.map(|t| t as f64)),
    );
    out
}

/// Bind the endpoint; done at start so a bad address stops the sender at once.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("sender.metrics: cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "metrics endpoint listening");
    Ok(listener)
}

/// Serve the latest report until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    report: watch::Receiver<Option<StatusReport>>,
    shutdown: CancellationToken,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let body = report.borrow().as_ref().map(render).unwrap_or_default();
        tokio::spawn(async move {
            // Read the request head (bounded); any path gets the metrics.
            let mut buf = vec![0u8; 8192];
            let mut got = 0;
            while got < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[got..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        got += n;
                        if buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::LinkStatus;

    #[test]
    fn renders_every_figure_with_labels() {
        let r = StatusReport {
            sender_id: "app1".into(),
            paused: true,
            pending_paths: 3,
            pending_bytes: 300,
            oldest_pending_secs: Some(1.5),
            window_secs: 300,
            held_deletions: 0,
            failing_paths: 2,
            pack_error: Some("disk full".into()),
            source_missing: None,
            receivers: vec![LinkStatus {
                receiver: "web1:7700".into(),
                connected: true,
                last_ack_seq: Some(42),
                bundles_shipped: 7,
                ..LinkStatus::default()
            }],
            ..StatusReport::default()
        };
        let text = render(&r);
        for line in [
            "shipper_paused{sender=\"app1\"} 1",
            "shipper_pending_paths{sender=\"app1\"} 3",
            "shipper_failing_paths{sender=\"app1\"} 2",
            "shipper_packing_failing{sender=\"app1\"} 1",
            "shipper_source_missing{sender=\"app1\"} 0",
            "shipper_oldest_pending_seconds{sender=\"app1\"} 1.5",
            "shipper_receiver_connected{receiver=\"web1:7700\"} 1",
            "shipper_receiver_last_ack_sequence{receiver=\"web1:7700\"} 42",
            "shipper_receiver_bundles_shipped_total{receiver=\"web1:7700\"} 7",
            "# TYPE shipper_receiver_bytes_shipped_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            !text.contains("last_ack_timestamp_seconds{"),
            "absent values must not be rendered"
        );
    }
}
