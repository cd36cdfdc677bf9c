//! The human text of `shipper status`: the sender's figures, then each
//! receiver's. Pure: the time the report is read at is passed in, so "ago"
//! is tested without a clock.

use std::fmt::Write as _;
use std::time::Duration;

use crate::status::{LinkStatus, StatusReport, unix_now};

/// Human text for `shipper status`, read now.
pub fn describe_status(r: &StatusReport) -> String {
    status_text(r, unix_now())
}

/// Human text for `shipper status`, read at `now` (unix seconds).
fn status_text(r: &StatusReport, now: i64) -> String {
    let mut s = String::new();
    sender_lines(&mut s, r, now);
    for l in &r.receivers {
        receiver_lines(&mut s, l, now);
    }
    s
}

/// Unix time `t` as a UTC date and how long before `now` it was.
fn ago(t: i64, now: i64) -> String {
    let secs = (now - t).max(0) as u64;
    let when = chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default();
    format!(
        "{when} ({} ago)",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// The sender's state: running or paused, its source, what is pending or
/// held, and what cannot be shipped.
fn sender_lines(s: &mut String, r: &StatusReport, now: i64) {
    let _ = writeln!(
        s,
        "sender {}: {}",
        r.sender_id,
        if r.paused {
            "PAUSED (shipper resume to continue)"
        } else {
            "running"
        }
    );
    if let Some(m) = &r.source_missing {
        let _ = writeln!(
            s,
            "  source missing since {}: {}; holding, nothing is shipped or deleted until it is back",
            ago(m.since, now),
            m.reason
        );
    }
    let oldest = match r.oldest_pending_secs {
        Some(age) => format!(
            "oldest {:.1} s old, {:.0}% of the {} s window",
            age,
            100.0 * age / r.window_secs.max(1) as f64,
            r.window_secs
        ),
        None => "nothing pending".into(),
    };
    let _ = writeln!(
        s,
        "  pending: {} paths, {} bytes; {oldest}",
        r.pending_paths, r.pending_bytes
    );
    if let Some(rate) = r.max_rate {
        let _ = writeln!(s, "  rate limit: {} per receiver", per_second(rate));
    }
    if r.held_deletions > 0 {
        let _ = writeln!(
            s,
            "  held by the mass-deletion guard: {} deletions (shipper flush --allow-mass-delete)",
            r.held_deletions
        );
    }
    if let Some(e) = &r.pack_error {
        let _ = writeln!(
            s,
            "  PACKING FAILS: {e} (changes stay pending; retried with backoff)"
        );
    }
    failing_lines(s, r);
    for p in &r.unsettled {
        let _ = writeln!(
            s,
            "  shipped unsettled (still being written at max_delay; ships again once settled): {p}"
        );
    }
    for l in &r.skipped_links {
        let _ = writeln!(
            s,
            "  symlink not shipped ({}): {} -> {}",
            l.why, l.path, l.target
        );
    }
}

/// A rate as the config writes it: whole KiB or MiB where it is one.
fn per_second(rate: u64) -> String {
    match rate {
        r if r >= 1 << 20 && r % (1 << 20) == 0 => format!("{} MiB/s", r >> 20),
        r if r >= 1 << 10 && r % (1 << 10) == 0 => format!("{} KiB/s", r >> 10),
        r => format!("{r} bytes/s"),
    }
}

/// The paths that cannot be shipped now: how many, and the first of them
/// with why.
fn failing_lines(s: &mut String, r: &StatusReport) {
    if r.failing_paths == 0 {
        return;
    }
    let _ = writeln!(
        s,
        "  cannot ship {} path{} (retried with backoff):",
        r.failing_paths,
        if r.failing_paths == 1 { "" } else { "s" }
    );
    for f in &r.failing {
        let _ = writeln!(s, "    {}: {} ({} attempts)", f.path, f.error, f.attempts);
    }
    if r.failing_paths as usize > r.failing.len() {
        let _ = writeln!(
            s,
            "    … and {} more",
            r.failing_paths as usize - r.failing.len()
        );
    }
}

/// One receiver: connected or not since when, what it acknowledged, what
/// was shipped to it, its last error, its hook's last failure.
fn receiver_lines(s: &mut String, l: &LinkStatus, now: i64) {
    let state = match (l.connected, l.since) {
        (true, Some(t)) => format!("connected since {}", ago(t, now)),
        (false, Some(t)) => format!("NOT connected since {}", ago(t, now)),
        (true, None) => "connected".into(),
        (false, None) => "not connected yet".into(),
    };
    let _ = writeln!(s, "receiver {}: {state}", l.receiver);
    if l.whole_tree_pending {
        let _ = writeln!(
            s,
            "  receiving the whole tree (new, rebuilt or restored receiver)"
        );
    }
    if l.missed_deletions > 0 {
        let _ = writeln!(
            s,
            "  {} paths deleted while its backlog was dropped: its whole tree deletes those not shipped again",
            l.missed_deletions
        );
    }
    match (l.last_ack_seq, l.last_ack_at) {
        (Some(seq), Some(t)) => {
            let _ = writeln!(s, "  last acknowledged: sequence {seq} at {}", ago(t, now));
        }
        _ => {
            let _ = writeln!(s, "  last acknowledged: none since start");
        }
    }
    let streamed = match l.bundles_streamed {
        0 => String::new(),
        n => format!(" ({n} sent while they were packed)"),
    };
    let _ = writeln!(
        s,
        "  shipped since start: {} bundles{streamed}, {} bytes",
        l.bundles_shipped, l.bytes_shipped
    );
    if let (Some(e), Some(t)) = (&l.last_error, l.last_error_at) {
        let _ = writeln!(s, "  last error: {e} at {}", ago(t, now));
    }
    if let (Some(e), Some(t)) = (&l.hook_failure, l.hook_failure_at) {
        let _ = writeln!(
            s,
            "  on_apply hook FAILED: {e} at {} (bundles are applied; cleared when it next succeeds)",
            ago(t, now)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{FailingPath, SourceMissing};

    /// When the reports below are read.
    const NOW: i64 = 1_700_000_000;

    /// Reports that between them reach every line the text can have.
    fn reports(now: i64) -> Vec<StatusReport> {
        let busy = StatusReport {
            sender_id: "app1".into(),
            paused: true,
            pending_paths: 3,
            pending_bytes: 300,
            oldest_pending_secs: Some(45.25),
            window_secs: 300,
            held_deletions: 12,
            failing_paths: 3,
            failing: vec![FailingPath {
                path: "a/b.txt".into(),
                error: "a/b.txt: permission denied".into(),
                since: now - 50,
                attempts: 4,
            }],
            unsettled: vec!["logs/app.log".into()],
            max_rate: Some(10 << 20),
            pack_error: Some("disk full".into()),
            source_missing: Some(SourceMissing {
                reason: "no directory at /srv/src".into(),
                since: now - 90,
            }),
            receivers: vec![
                LinkStatus {
                    receiver: "web1:7700".into(),
                    connected: true,
                    since: Some(now - 3600),
                    last_ack_seq: Some(42),
                    last_ack_at: Some(now - 5),
                    bundles_shipped: 7,
                    bytes_shipped: 7000,
                    bundles_streamed: 5,
                    last_error: Some("sequence 40: refused for now: busy".into()),
                    last_error_at: Some(now - 4000),
                    whole_tree_pending: true,
                    missed_deletions: 3,
                    hook_failure: Some(
                        "sequence 41: on_apply hook /usr/local/bin/purge-cache: exit status: 1: 503"
                            .into(),
                    ),
                    hook_failure_at: Some(now - 6),
                },
                LinkStatus {
                    receiver: "web2:7700".into(),
                    connected: false,
                    since: Some(now - 61),
                    ..LinkStatus::default()
                },
                LinkStatus {
                    receiver: "web3:7700".into(),
                    ..LinkStatus::default()
                },
                LinkStatus {
                    receiver: "web4:7700".into(),
                    connected: true,
                    ..LinkStatus::default()
                },
            ],
            ..StatusReport::default()
        };
        let quiet = StatusReport {
            sender_id: "app2".into(),
            window_secs: 0,
            failing_paths: 1,
            failing: vec![FailingPath {
                path: "x".into(),
                error: "x: bad name".into(),
                since: now,
                attempts: 1,
            }],
            ..StatusReport::default()
        };
        vec![busy, quiet]
    }

    #[test]
    fn every_line_of_the_status_text_reads_as_before() {
        let texts: Vec<String> = reports(NOW).iter().map(|r| status_text(r, NOW)).collect();
        assert_eq!(
            texts[0],
            "\
sender app1: PAUSED (shipper resume to continue)
  source missing since 2023-11-14 22:11:50Z (1m 30s ago): no directory at /srv/src; holding, nothing is shipped or deleted until it is back
  pending: 3 paths, 300 bytes; oldest 45.2 s old, 15% of the 300 s window
  rate limit: 10 MiB/s per receiver
  held by the mass-deletion guard: 12 deletions (shipper flush --allow-mass-delete)
  PACKING FAILS: disk full (changes stay pending; retried with backoff)
  cannot ship 3 paths (retried with backoff):
    a/b.txt: a/b.txt: permission denied (4 attempts)
    … and 2 more
  shipped unsettled (still being written at max_delay; ships again once settled): logs/app.log
receiver web1:7700: connected since 2023-11-14 21:13:20Z (1h ago)
  receiving the whole tree (new, rebuilt or restored receiver)
  3 paths deleted while its backlog was dropped: its whole tree deletes those not shipped again
  last acknowledged: sequence 42 at 2023-11-14 22:13:15Z (5s ago)
  shipped since start: 7 bundles (5 sent while they were packed), 7000 bytes
  last error: sequence 40: refused for now: busy at 2023-11-14 21:06:40Z (1h 6m 40s ago)
  on_apply hook FAILED: sequence 41: on_apply hook /usr/local/bin/purge-cache: exit status: 1: 503 at 2023-11-14 22:13:14Z (6s ago) (bundles are applied; cleared when it next succeeds)
receiver web2:7700: NOT connected since 2023-11-14 22:12:19Z (1m 1s ago)
  last acknowledged: none since start
  shipped since start: 0 bundles, 0 bytes
receiver web3:7700: not connected yet
  last acknowledged: none since start
  shipped since start: 0 bundles, 0 bytes
receiver web4:7700: connected
  last acknowledged: none since start
  shipped since start: 0 bundles, 0 bytes
"
        );
        assert_eq!(
            texts[1],
            "\
sender app2: running
  pending: 0 paths, 0 bytes; nothing pending
  cannot ship 1 path (retried with backoff):
    x: x: bad name (1 attempts)
"
        );
    }

    #[test]
    fn a_rate_reads_in_the_largest_whole_unit() {
        assert_eq!(per_second(10 << 20), "10 MiB/s");
        assert_eq!(per_second(1536 << 10), "1536 KiB/s");
        assert_eq!(per_second(1000), "1000 bytes/s");
    }

    #[test]
    fn a_time_after_now_is_zero_seconds_ago() {
        // A clock set back since the event must not print a negative age.
        assert_eq!(ago(NOW + 10, NOW), "2023-11-14 22:13:30Z (0s ago)");
    }
}
