//! How fast each receiver's link carries bundles, measured on the bundles
//! themselves, and whether deflate pays for itself on links that fast
//! (`sender.compress`). The transports record what they measure; the
//! packer asks before each run. The decision is pure ([`deflate_pays`]).

use std::sync::Mutex;
use std::time::Duration;

use crate::config::Compress;

/// A link carrying at least this many bytes per second gets stored
/// entries under `compress = "auto"`. zlib-rs at level 3 deflates CMS pages
/// at about 150 MB/s per core (to 22% of their size, measured on bench.py's
/// corpus): on two cores, about 300 MB/s goes in. A link faster than what
/// deflate saves on it (78% of that) waits for the CPU: 10 Gbit/s and
/// loopback store, 1 Gbit/s and slower deflate.
pub const STORE_FROM: f64 = 200e6;
/// Only bodies this large are measured: a smaller one fits mostly in the
/// socket buffers, and its time says more about them than about the link.
pub const MEASURE_FROM: u64 = 32 << 20;

/// Whether to deflate what is worth deflating, under `mode`, given the
/// measured rate of each receiver's link (bytes per second; `None`: not
/// measured yet). Every receiver gets the same bundles: the slowest link
/// decides, and one not measured yet counts as slow.
pub fn deflate_pays(mode: Compress, rates: &[Option<f64>]) -> bool {
    match mode {
        Compress::Always => true,
        Compress::Never => false,
        Compress::Auto => rates.iter().any(|r| r.is_none_or(|r| r < STORE_FROM)),
    }
}

/// Each receiver's measured link rate, shared by its transport and the packer.
pub(super) struct LinkRates {
    rates: Mutex<Vec<Option<f64>>>,
}

impl LinkRates {
    pub(super) fn new(receivers: usize) -> Self {
        Self {
            rates: Mutex::new(vec![None; receivers]),
        }
    }

    /// Receiver `index` took `took` to be sent a body of `bytes`: if it was
    /// large enough to say something of the link, fold it into the rate
    /// (half the old, half the new, so a link that changes is followed
    /// within a few bundles).
    pub(super) fn record(&self, index: usize, bytes: u64, took: Duration) {
        if bytes < MEASURE_FROM || took.is_zero() {
            return;
        }
        let sample = bytes as f64 / took.as_secs_f64();
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let rate = &mut rates[index];
        *rate = Some(rate.map_or(sample, |old| (old + sample) / 2.0));
    }

    /// Whether the next packing run deflates, under `mode`.
    pub(super) fn deflate(&self, mode: Compress) -> bool {
        deflate_pays(mode, &self.rates.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_stores_only_when_every_link_is_measured_fast() {
        let fast = Some(STORE_FROM * 3.0);
        let slow = Some(12.5e6);
        assert!(!deflate_pays(Compress::Auto, &[fast, fast]));
        assert!(
            deflate_pays(Compress::Auto, &[fast, slow]),
            "the slowest decides"
        );
        assert!(
            deflate_pays(Compress::Auto, &[fast, None]),
            "unmeasured counts as slow"
        );
        assert!(deflate_pays(Compress::Always, &[fast]));
        assert!(!deflate_pays(Compress::Never, &[slow, None]));
    }

    #[test]
    fn only_large_bodies_are_measured_and_a_change_is_followed() {
        let r = LinkRates::new(1);
        r.record(0, MEASURE_FROM - 1, Duration::from_micros(1));
        assert!(r.deflate(Compress::Auto), "a small body measured nothing");
        // 1 GB/s: stores.
        r.record(
            0,
            1 << 30,
            Duration::from_secs_f64((1u64 << 30) as f64 / 1e9),
        );
        assert!(!r.deflate(Compress::Auto));
        // The link drops to 10 MB/s: three bundles later it deflates again.
        for _ in 0..3 {
            r.record(
                0,
                100 << 20,
                Duration::from_secs_f64((100u64 << 20) as f64 / 1e7),
            );
        }
        assert!(r.deflate(Compress::Auto));
    }
}
