//! When the sender ships, checked against the promise that every change is
//! on the receivers within [`WINDOW`]: `settle`, `max_delay`, the
//! `interval` or cron `schedule` that cuts bundles, `peer_timeout` (how
//! soon a dead connection is noticed), and `max_rate` (how long a full
//! bundle takes on the wire). Each error names the key.
//!
//! No I/O; the cron check takes the wall-clock time as `now`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::values::{duration, fmt_dur, size};
use crate::rate::time_for;
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
/// the latest, within the window, less `after` (what may pass once it
/// shipped before it is taken: a bucket's receivers look every
/// `bucket_poll`, at most [`super::MAX_BUCKET_POLL`]).
pub(super) fn settle_and_max_delay(
    settle: Option<&str>,
    max_delay: Option<&str>,
    after: Duration,
) -> Result<(Duration, Duration), String> {
    let settle = duration("sender.settle", settle, DEFAULT_SETTLE)?;
    let window = WINDOW - after;
    let max_delay = duration("sender.max_delay", max_delay, window)?;
    if max_delay > window {
        let why = if after.is_zero() {
            String::new()
        } else {
            format!(
                ", less the {} a bucket's receivers may take to look",
                fmt_dur(after)
            )
        };
        return Err(format!(
            "sender.max_delay = {}: over the five-minute window ({}{why})",
            fmt_dur(max_delay),
            fmt_dur(window)
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
/// every `max_delay`, with the longest gap between its ticks; a cron
/// schedule's gaps are measured from `now`.
pub(super) fn schedule(
    interval: Option<&str>,
    cron: Option<&str>,
    max_delay: Duration,
    now: DateTime<Utc>,
) -> Result<(Schedule, Duration), String> {
    match (interval, cron) {
        (Some(_), Some(_)) => {
            Err("sender.interval and sender.schedule are both set: choose one".into())
        }
        (_, Some(expr)) => cron_schedule(expr, max_delay, now),
        (interval, None) => interval_schedule(interval, max_delay),
    }
}

fn cron_schedule(
    expr: &str,
    max_delay: Duration,
    now: DateTime<Utc>,
) -> Result<(Schedule, Duration), String> {
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
    Ok((sched, gap))
}

fn interval_schedule(
    interval: Option<&str>,
    max_delay: Duration,
) -> Result<(Schedule, Duration), String> {
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
    Ok((Schedule::Every(d), d))
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

/// `sender.max_rate`, bytes per second on each connection (`None`:
/// unlimited). A change can wait up to one tick (`gap`) before it is cut,
/// so a bundle of `max_bundle_size` must pass at the rate within what is
/// left of `max_delay`.
pub(super) fn max_rate(
    value: Option<&str>,
    max_bundle_size: u64,
    max_delay: Duration,
    gap: Duration,
) -> Result<Option<u64>, String> {
    let Some(written) = value else {
        return Ok(None);
    };
    let rate = size("sender.max_rate", Some(written), 0)?;
    if rate == 0 {
        return Err(format!(
            "sender.max_rate = {written:?}: must be above 0 (leave it out for no limit)"
        ));
    }
    let budget = max_delay.saturating_sub(gap);
    let takes = time_for(rate, max_bundle_size);
    if takes <= budget {
        return Ok(Some(rate));
    }
    let secs = |d: Duration| fmt_dur(Duration::from_secs(d.as_secs_f64().ceil() as u64));
    let fix = if budget.is_zero() {
        "no time is left to send in: lower sender.interval or sender.schedule's longest gap".into()
    } else {
        let min_rate = (max_bundle_size as f64 / budget.as_secs_f64()).ceil() as u64;
        let max_bundle = (rate as f64 * budget.as_secs_f64()) as u64;
        format!(
            "raise sender.max_rate to at least \"{}\" or lower sender.max_bundle_size to at most \"{}\"",
            whole_units(min_rate, true),
            whole_units(max_bundle, false)
        )
    };
    Err(format!(
        "sender.max_rate = {written:?} cannot keep the five-minute promise: a full bundle (sender.max_bundle_size = {}) takes {} at that rate, over sender.max_delay ({}) less one interval ({}), {}; {fix}",
        bytesize::ByteSize(max_bundle_size),
        secs(takes),
        fmt_dur(max_delay),
        fmt_dur(gap),
        fmt_dur(budget),
    ))
}

/// `bytes` in whole MiB (or KiB below one MiB) as a key takes them,
/// rounded `up` or down so the figure still keeps what it is offered for.
fn whole_units(bytes: u64, up: bool) -> String {
    let unit = if bytes >= 1 << 20 { 1 << 20 } else { 1 << 10 };
    let n = if up {
        bytes.div_ceil(unit)
    } else {
        bytes / unit
    };
    format!("{n}{}", if unit == 1 << 20 { "MiB" } else { "KiB" })
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
        assert!(matches!(ok, Ok((Schedule::Cron(_), gap)) if gap == Duration::from_secs(30)));
    }

    #[test]
    fn settle_stays_below_max_delay_and_max_delay_within_the_window() {
        let none = Duration::ZERO;
        assert_eq!(
            settle_and_max_delay(None, None, none),
            Ok((DEFAULT_SETTLE, WINDOW))
        );
        let e = settle_and_max_delay(None, Some("6m"), none).unwrap_err();
        assert!(e.starts_with("sender.max_delay = 6m: over"), "{e}");
        // A bucket's receivers may take up to a minute more.
        let minute = Duration::from_secs(60);
        assert_eq!(
            settle_and_max_delay(None, None, minute),
            Ok((DEFAULT_SETTLE, WINDOW - minute))
        );
        let e = settle_and_max_delay(None, Some("5m"), minute).unwrap_err();
        assert!(e.contains("a bucket's receivers may take to look"), "{e}");
        let e = settle_and_max_delay(Some("1m"), Some("1m"), none).unwrap_err();
        assert!(e.starts_with("sender.settle = 1m is not below"), "{e}");
    }

    #[test]
    fn an_interval_or_a_schedule_never_both() {
        let e = schedule(Some("5s"), Some("*/5 * * * * *"), WINDOW, now()).unwrap_err();
        assert!(e.contains("choose one"), "{e}");
        let every = schedule(None, None, WINDOW, now());
        assert!(
            matches!(every, Ok((Schedule::Every(d), gap)) if d == DEFAULT_INTERVAL && gap == d)
        );
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

    #[test]
    fn max_rate_must_pass_a_full_bundle_within_max_delay_less_one_interval() {
        let ten = Duration::from_secs(10);
        assert_eq!(max_rate(None, 256 << 20, WINDOW, ten), Ok(None));
        // 256 MiB at 1 MiB/s: 4m 16s, within 5m less 10s.
        assert_eq!(
            max_rate(Some("1MiB"), 256 << 20, WINDOW, ten),
            Ok(Some(1 << 20))
        );
        let e = max_rate(Some("512KiB"), 256 << 20, WINDOW, ten).unwrap_err();
        assert!(
            e.starts_with("sender.max_rate = \"512KiB\" cannot keep the five-minute promise: a full bundle (sender.max_bundle_size = 256.0 MiB) takes 8m 32s at that rate, over sender.max_delay (5m) less one interval (10s), 4m 50s; raise sender.max_rate to at least \"904KiB\" or lower sender.max_bundle_size to at most \"145MiB\""),
            "{e}"
        );
        // The same rate refused once the interval leaves too little time.
        let e = max_rate(Some("1MiB"), 256 << 20, WINDOW, Duration::from_secs(60)).unwrap_err();
        assert!(e.contains("less one interval (1m), 4m"), "{e}");
        let e = max_rate(Some("1MiB"), 1 << 20, WINDOW, WINDOW).unwrap_err();
        assert!(
            e.ends_with(
                "no time is left to send in: lower sender.interval or sender.schedule's longest gap"
            ),
            "{e}"
        );
        let e = max_rate(Some("0"), 1 << 20, WINDOW, ten).unwrap_err();
        assert!(
            e.starts_with("sender.max_rate = \"0\": must be above 0"),
            "{e}"
        );
        let e = max_rate(Some("fast"), 1 << 20, WINDOW, ten).unwrap_err();
        assert!(
            e.starts_with("sender.max_rate = \"fast\": not a size"),
            "{e}"
        );
    }
}
