//! The sender's figures: those of `shipper status`, each a gauge or
//! counter labelled with the sender's id or with the receiver it concerns,
//! built afresh from the latest [`StatusReport`] at each scrape. Pure.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::status::{LinkStatus, StatusReport};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BySender {
    sender: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByReceiver {
    receiver: String,
}

/// A figure's value: whole numbers are shown as such.
enum Value {
    Whole(u64),
    Real(f64),
}

/// Prometheus' number for a yes/no figure.
fn flag(on: bool) -> Value {
    Value::Whole(u64::from(on))
}

/// A gauge holds an i64; no figure of the sender comes near its end.
fn whole(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The sender's figures: name, help (prometheus-client adds the final
/// period), value; each a gauge labelled with the sender's id.
fn sender_figures(r: &StatusReport) -> [(&'static str, &'static str, Value); 10] {
    use Value::{Real, Whole};
    [
        (
            "shipper_paused",
            "1 while cutting bundles is paused",
            flag(r.paused),
        ),
        (
            "shipper_pending_paths",
            "Paths changed and not yet shipped",
            Whole(r.pending_paths),
        ),
        (
            "shipper_pending_bytes",
            "Bytes of the files changed and not yet shipped (estimated from a sample of 10,000 beyond that many)",
            Whole(r.pending_bytes),
        ),
        (
            "shipper_oldest_pending_seconds",
            "Age of the oldest change not yet shipped (0 when none)",
            Real(r.oldest_pending_secs.unwrap_or(0.0)),
        ),
        (
            "shipper_window_seconds",
            "The promised bound on change-to-ship time (max_delay)",
            Whole(r.window_secs),
        ),
        (
            "shipper_held_deletions",
            "Deletions held by the mass-deletion guard",
            Whole(r.held_deletions),
        ),
        (
            "shipper_failing_paths",
            "Paths that cannot be shipped now (unreadable, or a name that cannot travel)",
            Whole(r.failing_paths),
        ),
        (
            "shipper_unsettled_paths",
            "Paths last shipped as a snapshot while still being written",
            Whole(r.unsettled.len() as u64),
        ),
        (
            "shipper_packing_failing",
            "1 while packing fails as a whole (e.g. the sender's disk is full)",
            flag(r.pack_error.is_some()),
        ),
        (
            "shipper_source_missing",
            "1 while no directory is at the source path (nothing ships)",
            flag(r.source_missing.is_some()),
        ),
    ]
}

/// A receiver's figure: `None` leaves the receiver out of the family.
type ReceiverValue = fn(&LinkStatus) -> Option<u64>;

/// Each receiver's gauges: name, help, value; labelled with the receiver.
const RECEIVER_GAUGES: [(&str, &str, ReceiverValue); 4] = [
    (
        "shipper_receiver_connected",
        "1 while connected to the receiver",
        |l| Some(u64::from(l.connected)),
    ),
    (
        "shipper_receiver_last_ack_sequence",
        "Last sequence the receiver acknowledged",
        |l| l.last_ack_seq,
    ),
    (
        "shipper_receiver_last_ack_timestamp_seconds",
        "Unix time of the last acknowledgement",
        |l| l.last_ack_at.and_then(|t| u64::try_from(t).ok()),
    ),
    (
        "shipper_receiver_last_error_timestamp_seconds",
        "Unix time of the last error talking to the receiver",
        |l| l.last_error_at.and_then(|t| u64::try_from(t).ok()),
    ),
];

/// Each receiver's counters: name (prometheus-client adds `_total`), help,
/// value.
const RECEIVER_COUNTERS: [(&str, &str, ReceiverValue); 3] = [
    (
        "shipper_receiver_bundles_shipped",
        "Bundles acknowledged since start",
        |l| Some(l.bundles_shipped),
    ),
    (
        "shipper_receiver_bundles_streamed",
        "Bundles acknowledged since start that were sent while they were packed",
        |l| Some(l.bundles_streamed),
    ),
    (
        "shipper_receiver_bytes_shipped",
        "Bundle bytes acknowledged since start",
        |l| Some(l.bytes_shipped),
    ),
];

/// The report as OpenMetrics text.
pub fn render(r: &StatusReport) -> String {
    let mut registry = Registry::default();
    let sender = BySender {
        sender: r.sender_id.clone(),
    };
    for (name, help, value) in sender_figures(r) {
        match value {
            Value::Whole(v) => {
                let family = Family::<BySender, Gauge>::default();
                family.get_or_create(&sender).set(whole(v));
                registry.register(name, help, family);
            }
            Value::Real(v) => {
                let family =
                    Family::<BySender, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
                family.get_or_create(&sender).set(v);
                registry.register(name, help, family);
            }
        }
    }
    let receivers = || {
        r.receivers.iter().map(|l| {
            let labels = ByReceiver {
                receiver: l.receiver.clone(),
            };
            (labels, l)
        })
    };
    for (name, help, value) in RECEIVER_GAUGES {
        let family = Family::<ByReceiver, Gauge>::default();
        for (labels, v) in receivers().filter_map(|(k, l)| Some((k, value(l)?))) {
            family.get_or_create(&labels).set(whole(v));
        }
        registry.register(name, help, family);
    }
    for (name, help, value) in RECEIVER_COUNTERS {
        let family = Family::<ByReceiver, Counter>::default();
        for (labels, v) in receivers().filter_map(|(k, l)| Some((k, value(l)?))) {
            family.get_or_create(&labels).inc_by(v);
        }
        registry.register(name, help, family);
    }
    super::encode(&registry)
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
                bundles_streamed: 6,
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
            "shipper_receiver_bundles_streamed_total{receiver=\"web1:7700\"} 6",
            "# TYPE shipper_receiver_bytes_shipped counter",
            "shipper_receiver_bytes_shipped_total{receiver=\"web1:7700\"} 0",
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
        // With no receiver to report, its families are left out (as
        // prometheus-client leaves out a family without series) and the
        // text is still whole.
        assert!(!text.contains("shipper_receiver_connected"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
