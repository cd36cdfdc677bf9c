//! When the sender cuts bundles: every `interval`, or at the ticks of a cron
//! `schedule` (with a seconds field). Pure: it reads no clock; the caller
//! passes the wall-clock time.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    pub fn cron(expr: &str) -> Result<Self, cron::error::Error> {
        Ok(Self::Cron(Box::new(cron::Schedule::from_str(expr)?)))
    }

    /// The first tick strictly after `now`; `None` when a cron schedule has
    /// no tick left (a year field in the past).
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Every(d) => Some(now + chrono::Duration::from_std(*d).ok()?),
            Self::Cron(s) => s.after(&now).next(),
        }
    }

    /// The longest wait between ticks from `from` over the next `horizon`,
    /// counting the wait for the first tick. Examines at most `max_ticks`
    /// ticks: a schedule that dense repeats well within them. `None` when the
    /// schedule stops ticking within the horizon.
    pub fn longest_gap(
        &self,
        from: DateTime<Utc>,
        horizon: Duration,
        max_ticks: usize,
    ) -> Option<Duration> {
        match self {
            Self::Every(d) => Some(*d),
            Self::Cron(s) => {
                let end = from + chrono::Duration::from_std(horizon).ok()?;
                let mut prev = from;
                let mut longest = Duration::ZERO;
                for tick in s.after(&from).take(max_ticks) {
                    longest = longest.max((tick - prev).to_std().ok()?);
                    prev = tick;
                    if tick >= end {
                        return Some(longest);
                    }
                }
                if prev == from { None } else { Some(longest) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, h, m, s).unwrap()
    }

    #[test]
    fn every_interval_adds_the_interval() {
        let s = Schedule::Every(Duration::from_secs(10));
        assert_eq!(s.next_after(t(1, 0, 0)), Some(t(1, 0, 10)));
    }

    #[test]
    fn cron_with_seconds_ticks_on_its_fields() {
        let s = Schedule::cron("*/15 * * * * *").unwrap();
        assert_eq!(s.next_after(t(1, 0, 1)), Some(t(1, 0, 15)));
        let gap = s.longest_gap(t(1, 0, 0), Duration::from_secs(86400 * 8), 200_000);
        assert_eq!(gap, Some(Duration::from_secs(15)));
    }

    #[test]
    fn a_cron_gap_longer_than_five_minutes_is_seen() {
        // Every minute, but only during the first half of each hour.
        let s = Schedule::cron("0 0-29 * * * *").unwrap();
        let gap = s
            .longest_gap(t(1, 0, 0), Duration::from_secs(86400 * 8), 200_000)
            .unwrap();
        assert_eq!(gap, Duration::from_secs(31 * 60));
    }
}
