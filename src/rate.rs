//! A byte rate limit (`sender.max_rate`), as rsync's `--bwlimit` and
//! Syncthing's per-device limits give: a token bucket that says how long
//! to wait before more bytes may go. Pure: the caller passes the clock
//! and does the waiting, so the arithmetic is tested without sleeping.

use std::time::{Duration, Instant};

/// The most a link may send at once after being idle, in seconds of its
/// rate: short enough that a shared link never sees more than a fraction
/// of a second at full speed, long enough that one read chunk is not
/// split into many waits.
const BURST: Duration = Duration::from_millis(250);

/// Bytes per second for one connection, and what it may still send now.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: f64,
    /// Bytes that may go without waiting; below zero, bytes already sent
    /// ahead of the rate that must be waited off first.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket allowing `rate` bytes per second on average (at least 1),
    /// full at `now`.
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1);
        let burst = rate as f64 * BURST.as_secs_f64();
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// The configured rate, bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The most bytes that go at once after an idle spell: a writer
    /// slicing its sends no larger keeps the link evenly paced.
    pub fn burst(&self) -> u64 {
        (self.burst as u64).max(1)
    }

    /// Count `n` bytes about to go at `now` and say how long to wait
    /// before sending them so the average stays at the rate. A chunk
    /// larger than the burst is allowed: it is paid for by waiting.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }
}

/// How long `bytes` take at `rate` bytes per second, the way the config
/// check reckons it.
pub fn time_for(rate: u64, bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Send `total` bytes in `chunk`s, waiting as told, on a simulated
    /// clock; return the simulated time taken.
    fn simulate(rate: u64, total: u64, chunk: u64) -> Duration {
        let start = Instant::now();
        let mut now = start;
        let mut b = TokenBucket::new(rate, now);
        let mut left = total;
        while left > 0 {
            let n = chunk.min(left);
            now += b.take(n, now);
            left -= n;
        }
        now - start
    }

    #[test]
    fn a_long_transfer_averages_the_rate() {
        // 10 MiB at 1 MiB/s in 64 KiB chunks: 10 s less the initial burst.
        let took = simulate(1 << 20, 10 << 20, 64 << 10);
        let expected = 10.0 - BURST.as_secs_f64();
        assert!(
            (took.as_secs_f64() - expected).abs() < 0.1,
            "took {took:?}, expected about {expected} s"
        );
    }

    #[test]
    fn chunks_larger_than_the_burst_are_paid_for_by_waiting() {
        let took = simulate(1000, 10_000, 4_000);
        assert!((took.as_secs_f64() - 9.75).abs() < 0.01, "took {took:?}");
    }

    #[test]
    fn an_idle_link_may_burst_but_not_more() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        // Idle for an hour: still only the burst (250 bytes) goes at once.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.burst(), 250);
        assert_eq!(b.take(250, later), Duration::ZERO);
        let wait = b.take(500, later);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn a_clock_that_goes_backwards_never_adds_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1000, t0);
        assert_eq!(b.take(250, t0), Duration::ZERO);
        let wait = b.take(100, t0 - Duration::from_secs(5));
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn time_for_is_bytes_over_rate() {
        assert_eq!(time_for(10 << 20, 100 << 20), Duration::from_secs(10));
    }
}
