//! Capped exponential backoff: how long to wait before the next attempt
//! (reconnecting to a receiver, packing again). Pure: it hands out delays
//! and never sleeps.

use std::time::Duration;

/// The first delay, and the one after a success.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest delay: a receiver back after an outage is found this soon.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Capped exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let ds: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        assert_eq!(ds[0], BACKOFF_MIN);
        assert_eq!(ds[1], BACKOFF_MIN * 2);
        assert_eq!(*ds.last().unwrap(), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
