//! When the sender ships, checked against the promise that every change is
//! on the receivers within [`WINDOW`]: `settle`, `max_delay`, the
//! `interval` or cron `schedule` that cuts bundles, and `peer_timeout`
//! (how soon a dead connection is noticed). Each error names the key.
//!
//! No I/O; the cron check takes the wall-clock time as `now`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::values::{duration, fmt_dur};
use crate::schedule::Schedule;

/// The promise shipper makes: every change is on the receiver within this.
pub const WINDOW: Duration = Duration::from_secs(300);

/// How often a bundle is cut unless `sender.interval` or `sender.schedule`
/// says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Quiet time before a path is packed unless `sender.settle` says otherwise.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// The shortest `sender.interval` accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Long enough for TCP to ride out a few lost packets (its retransmissions
/// back off from 200 ms: five tries fit in 30 s), short enough that a dead
/// connection costs half a minute of the five-minute window.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// How far ahead a cron schedule's gaps are checked: over a week, so a
/// pattern by weekday is seen whole.
const CRON_CHECK_HORIZON: Duration = Duration::from_secs(8 * 86400);
/// The most ticks examined in [`CRON_CHECK_HORIZON`]: a schedule that dense
/// repeats well within them.
const CRON_CHECK_MAX_TICKS: usize = 200_000;

/// `sender.settle` and `sender.max_delay`: a change settles, and ships at
/// the latest, within the window.
pub(super) fn settle_and_max_delay(
    settle: Option<&str>,
    max_delay: Option<&str>,
) -> Result<(Duration, Duration), String> {
    let settle = duration("sender.settle", settle, DEFAULT_SETTLE)?;
    let max_delay = duration("sender.max_delay", max_delay, WINDOW)?;
    if max_delay > WINDOW {
        return Err(format!(
            "sender.max_delay = {}: over the five-minute window ({})",
            fmt_dur(max_delay),
            fmt_dur(WINDOW)
        ));
    }
    if settle >= max_delay {
        return Err(format!(
            "sender.settle = {} is not below sender.max_delay = {}: a busy file could wait past the window",
            fmt_dur(settle),
            fmt_dur(max_delay)
        ));
    }
    Ok((settle, max_delay))
}

/// `sender.interval` or `sender.schedule` (one of them), ticking at least
/// every `max_delay`; a cron schedule's gaps are measured from `now`.
pub(super) fn schedule(
    interval: Option<&str>,
    cron: Option<&str>,
    max_delay: Duration,
    now: DateTime<Utc>,
) -> Result<Schedule, String> {
    match (interval, cron) {
        (Some(_), Some(_)) => {
            Err("sender.interval and sender.schedule are both set: choose one".into())
        }
        (_, Some(expr)) => cron_schedule(expr, max_delay, now),
        (interval, None) => interval_schedule(interval, max_delay),
    }
}

fn cron_schedule(expr: &str, max_delay: Duration, now: DateTime<Utc>) -> Result<Schedule, String> {
    let sched = Schedule::cron(expr).map_err(|e| {
        format!("sender.schedule = {expr:?}: not a cron expression with seconds: {e}")
    })?;
    let gap = sched
        .longest_gap(now, CRON_CHECK_HORIZON, CRON_CHECK_MAX_TICKS)
        .ok_or_else(|| format!("sender.schedule = {expr:?}: never ticks"))?;
    if gap > max_delay {
        return Err(format!(
            "sender.schedule = {expr:?}: ticks up to {} apart, over sender.max_delay = {}",
            fmt_dur(gap),
            fmt_dur(max_delay)
        ));
    }
    Ok(sched)
}

fn interval_schedule(interval: Option<&str>, max_delay: Duration) -> Result<Schedule, String> {
    let d = duration("sender.interval", interval, DEFAULT_INTERVAL)?;
    if d < MIN_INTERVAL || d > WINDOW {
        return Err(format!(
            "sender.interval = {}: must be between 1s and 5m",
            fmt_dur(d)
        ));
    }
    if d > max_delay {
        return Err(format!(
            "sender.interval = {} is over sender.max_delay = {}",
            fmt_dur(d),
            fmt_dur(max_delay)
        ));
    }
    Ok(Schedule::Every(d))
}

/// `sender.peer_timeout`, within what the protocol's pings allow.
pub(super) fn peer_timeout(value: Option<&str>) -> Result<Duration, String> {
    let peer_timeout = duration("sender.peer_timeout", value, DEFAULT_PEER_TIMEOUT)?;
    let (min, max) = (
        crate::proto::MIN_PEER_TIMEOUT,
        crate::proto::MAX_PEER_TIMEOUT,
    );
    if peer_timeout < min || peer_timeout > max {
        return Err(format!(
            "sender.peer_timeout = {}: must be between {} (a receiver pings every {} while it applies) and {} (noticing a dead connection and re-sending must fit the five-minute window)",
            fmt_dur(peer_timeout),
            fmt_dur(min),
            fmt_dur(crate::proto::APPLY_PING),
            fmt_dur(max)
        ));
    }
    Ok(peer_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 1, 0, 0).unwrap()
    }

    #[test]
    fn a_cron_schedule_is_checked_from_the_time_given() {
        let now = now();
        let e = cron_schedule("0 0-29 * * * *", WINDOW, now).unwrap_err();
        assert!(e.contains("ticks up to 31m apart"), "{e}");
        // Its last tick (a year field) lies before `now`.
        let e = cron_schedule("0 0 0 1 1 * 2020", WINDOW, now).unwrap_err();
        assert!(e.ends_with("never ticks"), "{e}");
        let ok = cron_schedule("*/30 * * * * *", Duration::from_secs(30), now);
        assert!(matches!(ok, Ok(Schedule::Cron(_))));
    }

    #[test]
    fn settle_stays_below_max_delay_and_max_delay_within_the_window() {
        assert_eq!(
            settle_and_max_delay(None, None),
            Ok((DEFAULT_SETTLE, WINDOW))
        );
        let e = settle_and_max_delay(None, Some("6m")).unwrap_err();
        assert!(e.starts_with("sender.max_delay = 6m: over"), "{e}");
        let e = settle_and_max_delay(Some("1m"), Some("1m")).unwrap_err();
        assert!(e.starts_with("sender.settle = 1m is not below"), "{e}");
    }

    #[test]
    fn an_interval_or_a_schedule_never_both() {
        let e = schedule(Some("5s"), Some("*/5 * * * * *"), WINDOW, now()).unwrap_err();
        assert!(e.contains("choose one"), "{e}");
        let every = schedule(None, None, WINDOW, now());
        assert!(matches!(every, Ok(Schedule::Every(d)) if d == DEFAULT_INTERVAL));
        let e = schedule(Some("1m"), None, Duration::from_secs(30), now()).unwrap_err();
        assert!(e.contains("over sender.max_delay = 30s"), "{e}");
    }

    #[test]
    fn peer_timeout_keeps_within_what_the_protocol_pings_allow() {
        assert_eq!(peer_timeout(None), Ok(DEFAULT_PEER_TIMEOUT));
        assert_eq!(
            peer_timeout(Some("60s")),
            Ok(crate::proto::MAX_PEER_TIMEOUT)
        );
        let e = peer_timeout(Some("61s")).unwrap_err();
        assert!(
            e.starts_with("sender.peer_timeout = 1m 1s: must be between"),
            "{e}"
        );
    }
}
