//! The optional Prometheus endpoint: the figures of `shipper status` in the
//! text exposition format, served over plain HTTP on the address in
//! `sender.metrics`. [`render`] is pure; [`serve`] answers every request
//! with the latest report.

use std::fmt::Write as _;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::status::{LinkStatus, StatusReport};

/// A label value as the exposition format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus' number for a yes/no figure.
fn flag(on: bool) -> f64 {
    f64::from(u8::from(on))
}

/// The sender's figures: name, help, value; each a gauge labelled with the
/// sender's id.
fn sender_figures(r: &StatusReport) -> [(&'static str, &'static str, f64); 10] {
    [
        (
            "shipper_paused",
            "1 while cutting bundles is paused.",
            flag(r.paused),
        ),
        (
            "shipper_pending_paths",
            "Paths changed and not yet shipped.",
            r.pending_paths as f64,
        ),
        (
            "shipper_pending_bytes",
            "Bytes of the files changed and not yet shipped.",
            r.pending_bytes as f64,
        ),
        (
            "shipper_oldest_pending_seconds",
            "Age of the oldest change not yet shipped (0 when none).",
            r.oldest_pending_secs.unwrap_or(0.0),
        ),
        (
            "shipper_window_seconds",
            "The promised bound on change-to-ship time (max_delay).",
            r.window_secs as f64,
        ),
        (
            "shipper_held_deletions",
            "Deletions held by the mass-deletion guard.",
            r.held_deletions as f64,
        ),
        (
            "shipper_failing_paths",
            "Paths that cannot be shipped now (unreadable, or a name that cannot travel).",
            r.failing_paths as f64,
        ),
        (
            "shipper_unsettled_paths",
            "Paths last shipped as a snapshot while still being written.",
            r.unsettled.len() as f64,
        ),
        (
            "shipper_packing_failing",
            "1 while packing fails as a whole (e.g. the sender's disk is full).",
            flag(r.pack_error.is_some()),
        ),
        (
            "shipper_source_missing",
            "1 while no directory is at the source path (nothing ships).",
            flag(r.source_missing.is_some()),
        ),
    ]
}

/// A receiver's figure: `None` leaves the receiver out of the family.
type ReceiverValue = fn(&LinkStatus) -> Option<f64>;

/// Each receiver's figures: name, type, help, value; labelled with the
/// receiver.
const RECEIVER_FIGURES: [(&str, &str, &str, ReceiverValue); 6] = [
    (
        "shipper_receiver_connected",
        "gauge",
        "1 while connected to the receiver.",
        |l| Some(flag(l.connected)),
    ),
    (
        "shipper_receiver_last_ack_sequence",
        "gauge",
        "Last sequence the receiver acknowledged.",
        |l| l.last_ack_seq.map(|s| s as f64),
    ),
    (
        "shipper_receiver_last_ack_timestamp_seconds",
        "gauge",
        "Unix time of the last acknowledgement.",
        |l| l.last_ack_at.map(|t| t as f64),
    ),
    (
        "shipper_receiver_bundles_shipped_total",
        "counter",
        "Bundles acknowledged since start.",
        |l| Some(l.bundles_shipped as f64),
    ),
    (
        "shipper_receiver_bytes_shipped_total",
        "counter",
        "Bundle bytes acknowledged since start.",
        |l| Some(l.bytes_shipped as f64),
    ),
    (
        "shipper_receiver_last_error_timestamp_seconds",
        "gauge",
        "Unix time of the last error talking to the receiver.",
        |l| l.last_error_at.map(|t| t as f64),
    ),
];

/// Write one metric family: its HELP and TYPE lines, then a line per
/// labelled value.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// The report as Prometheus text.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let sender = format!("{{sender=\"{}\"}}", escape(&r.sender_id));
    for (name, help, value) in sender_figures(r) {
        family(&mut out, name, "gauge", help, [(sender.clone(), value)]);
    }
    for (name, kind, help, value) in RECEIVER_FIGURES {
        let rows = r.receivers.iter().filter_map(|l| {
            let labels = format!("{{receiver=\"{}\"}}", escape(&l.receiver));
            value(l).map(|v| (labels, v))
        });
        family(&mut out, name, kind, help, rows);
    }
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

/// The most of a request head read before answering anyway.
const HEAD_MAX: usize = 8192;
/// How long one read of a request head may take: a client that sends
/// nothing is answered, not waited on.
const HEAD_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serve the latest report until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    report: watch::Receiver<Option<StatusReport>>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let body = report.borrow().as_ref().map(render).unwrap_or_default();
        tokio::spawn(answer(stream, body));
    }
}

/// Read the request head (bounded) and answer with `body`: any path gets
/// the metrics.
async fn answer(mut stream: TcpStream, body: String) {
    let mut buf = vec![0u8; HEAD_MAX];
    let mut got = 0;
    while got < buf.len() {
        match tokio::time::timeout(HEAD_READ_WAIT, stream.read(&mut buf[got..])).await {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn label_values_are_quoted_so_no_name_can_break_a_line() {
        let r = StatusReport {
            sender_id: "a\"b\\c\nd".into(),
            ..StatusReport::default()
        };
        let text = render(&r);
        assert!(
            text.lines()
                .any(|l| l == r#"shipper_paused{sender="a\"b\\c\nd"} 0"#),
            "{text}"
        );
        // Every family is announced even with no receiver to report.
        assert!(text.contains("# TYPE shipper_receiver_connected gauge\n"));
    }
}
