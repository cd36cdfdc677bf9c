//! How fast each receiver's link carries bundles, measured on the bundles
//! themselves, and whether deflate pays for itself on links that fast
//! (`sender.compress`). Two measures per link, the slower deciding: the
//! sender's own, by the bytes the peer's TCP acknowledged while a bundle
//! went out ([`Delivered`], read from the kernel) where it tells, else by
//! the bundle's size; and the receiver's, how fast the bundle's body came
//! as it saw it (`Frame::Received`), which no TCP-terminating proxy on the
//! sender's side can make look faster than the link. The packer asks
//! before each file. While a link is not measured, a run's first bundle is
//! kept small so it soon is. The decisions are pure ([`deflate_pays`],
//! [`first_bundle_max`]).

use std::os::fd::OwnedFd;
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
/// Only bodies this large are measured by their size: a smaller one fits
/// mostly in the socket buffers, and its time says more about them than
/// about the link.
pub const MEASURE_FROM: u64 = 32 << 20;
/// Bytes the peer must have acknowledged during one bundle's sending for
/// them to measure the link: acknowledged bytes left the buffers, so far
/// fewer tell. (TCP's slow start makes the first megabytes of a new
/// connection look slower than the link: a slow link never looks fast.)
pub const DELIVERED_FROM: u64 = 1 << 20;
/// A run's first bundle grows no larger than this (in bytes before
/// deflate) while some link under `compress = "auto"` is not measured: it
/// is sent, and the link measured, while the rest of the run packs.
pub const UNMEASURED_FIRST_BUNDLE: u64 = 32 << 20;

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

/// How large a run's first bundle may be, under `mode`, given each link's
/// rate: [`UNMEASURED_FIRST_BUNDLE`] while `auto` has a link to measure.
pub fn first_bundle_max(mode: Compress, rates: &[Option<f64>]) -> Option<u64> {
    (mode == Compress::Auto && rates.iter().any(Option::is_none)).then_some(UNMEASURED_FIRST_BUNDLE)
}

/// A link's rate after a measure (bytes per second), and whether it is
/// news: the link's first, or one that changes whether deflate pays.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    pub(super) rate: f64,
    pub(super) news: bool,
}

/// Who measured a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Sender,
    Receiver,
}

/// How a link was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Measure {
    /// By the sender: a bundle's size and the time it took to send
    /// (where the kernel does not count acknowledged bytes).
    Sent,
    /// By the sender: the bytes the peer's TCP acknowledged meanwhile.
    Acked,
    /// By the receiver: the bytes it took after its first wait
    /// (`Frame::Received`).
    Received,
}

impl Measure {
    /// The fewest bytes that say something of the link, measured so.
    fn least(self) -> u64 {
        match self {
            Measure::Sent => MEASURE_FROM,
            Measure::Acked | Measure::Received => DELIVERED_FROM,
        }
    }

    fn by(self) -> By {
        match self {
            Measure::Sent | Measure::Acked => By::Sender,
            Measure::Received => By::Receiver,
        }
    }
}

/// One link's two measures (bytes per second).
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    sent: Option<f64>,
    received: Option<f64>,
}

impl Link {
    /// The rate that decides: the slower measure, or the one there is.
    fn rate(&self) -> Option<f64> {
        match (self.sent, self.received) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Each receiver's measured link rate, shared by its transport and the packer.
pub(super) struct LinkRates {
    links: Mutex<Vec<Link>>,
}

impl LinkRates {
    pub(super) fn new(receivers: usize) -> Self {
        Self {
            links: Mutex::new(vec![Link::default(); receivers]),
        }
    }

    /// Receiver `index`'s link carried `bytes` in `took`, as `how` says:
    /// if that is enough bytes to say something of the link (`how`'s
    /// least), fold it into the rate.
    pub(super) fn record(
        &self,
        index: usize,
        how: Measure,
        (bytes, took): (u64, Duration),
    ) -> Option<Measured> {
        (bytes >= how.least())
            .then(|| self.sample(index, (bytes, took), how.by()))
            .flatten()
    }

    /// Fold `bytes` in `took`, measured `by`, into receiver `index`'s link
    /// (half the old, half the new, so a link that changes is followed
    /// within a few bundles).
    fn sample(&self, index: usize, (bytes, took): (u64, Duration), by: By) -> Option<Measured> {
        if took.is_zero() {
            return None;
        }
        let sample = bytes as f64 / took.as_secs_f64();
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let link = &mut links[index];
        let old = link.rate();
        let measure = match by {
            By::Sender => &mut link.sent,
            By::Receiver => &mut link.received,
        };
        *measure = Some(measure.map_or(sample, |m| (m + sample) / 2.0));
        let rate = link.rate().expect("just measured");
        // News: the first measure, or one that turns the choice around.
        let news = old.is_none_or(|old| (old < STORE_FROM) != (rate < STORE_FROM));
        Some(Measured { rate, news })
    }

    fn rates(&self) -> Vec<Option<f64>> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.iter().map(Link::rate).collect()
    }

    /// Whether the next file packed is deflated (if worth it), under `mode`.
    pub(super) fn deflate(&self, mode: Compress) -> bool {
        deflate_pays(mode, &self.rates())
    }

    /// How large the next run's first bundle may be, under `mode`.
    pub(super) fn first_bundle_max(&self, mode: Compress) -> Option<u64> {
        first_bundle_max(mode, &self.rates())
    }
}

/// The bytes a connection's peer acknowledged so far, as the kernel counts
/// them (`TCP_INFO`), through a duplicate of the connection's socket.
pub(super) struct Delivered {
    socket: OwnedFd,
}

impl Delivered {
    /// For the connection on `socket` (duplicated); `None` where the
    /// kernel does not count acknowledged bytes.
    pub(super) fn of(socket: std::os::fd::BorrowedFd<'_>) -> Option<Self> {
        let d = Self {
            socket: socket.try_clone_to_owned().ok()?,
        };
        d.acked().is_some().then_some(d)
    }

    /// Bytes acknowledged by the peer since the connection began.
    #[cfg(target_os = "linux")]
    pub(super) fn acked(&self) -> Option<u64> {
        use std::os::fd::AsRawFd;
        // SAFETY: `info` is a plain C struct, valid zeroed, and the kernel
        // writes at most `len` bytes of it; the socket is ours while the
        // call runs.
        let (rc, info, len) = unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            );
            (rc, info, len)
        };
        // Kernels before 4.1 stop short of the acknowledged-bytes count.
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
        (rc == 0 && len as usize >= needed).then_some(info.tcpi_bytes_acked)
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn acked(&self) -> Option<u64> {
        None
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
    fn a_first_bundle_is_small_only_while_auto_has_a_link_to_measure() {
        let fast = Some(STORE_FROM * 3.0);
        let max = Some(UNMEASURED_FIRST_BUNDLE);
        assert_eq!(first_bundle_max(Compress::Auto, &[fast, None]), max);
        assert_eq!(first_bundle_max(Compress::Auto, &[fast, Some(1e6)]), None);
        assert_eq!(first_bundle_max(Compress::Never, &[None]), None);
        assert_eq!(first_bundle_max(Compress::Always, &[None]), None);
    }

    #[test]
    fn delivered_bytes_measure_from_a_megabyte() {
        let r = LinkRates::new(1);
        let second = Duration::from_secs(1);
        assert!(
            r.record(
                0,
                Measure::Acked,
                (DELIVERED_FROM - 1, Duration::from_micros(1))
            )
            .is_none()
        );
        assert!(r.deflate(Compress::Auto), "too few bytes measured nothing");
        let m = r
            .record(0, Measure::Acked, (DELIVERED_FROM * 1000, second))
            .unwrap();
        assert!(m.news, "the first measure is news");
        assert!(!r.deflate(Compress::Auto), "1 GB/s stores");
        let m = r
            .record(0, Measure::Acked, (DELIVERED_FROM * 900, second))
            .unwrap();
        assert!(!m.news, "still fast: no news");
    }

    /// Behind a proxy that ends the sender's TCP connection, the sender's
    /// own measure says loopback speed; the receiver's says the link's.
    #[test]
    fn the_slower_of_the_senders_and_the_receivers_measures_decides() {
        let r = LinkRates::new(1);
        let second = Duration::from_secs(1);
        let fast = r.record(0, Measure::Acked, (1 << 30, second)).unwrap();
        assert!(fast.news && !r.deflate(Compress::Auto), "1 GiB/s stores");
        let slow = r.record(0, Measure::Received, (12 << 20, second)).unwrap();
        assert!(slow.news, "the choice turned around");
        assert!(r.deflate(Compress::Auto), "the link is 12 MiB/s: deflate");
        r.record(0, Measure::Acked, (1 << 30, second));
        assert!(
            r.deflate(Compress::Auto),
            "the sender's measure alone never overrules"
        );
        assert!(
            r.record(
                0,
                Measure::Received,
                (DELIVERED_FROM - 1, Duration::from_micros(1))
            )
            .is_none(),
            "too few bytes measure nothing"
        );
    }

    #[test]
    fn a_loopback_connection_counts_what_its_peer_acknowledged() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut out = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut into, _) = listener.accept().unwrap();
        let d = Delivered::of(std::os::fd::AsFd::as_fd(&out)).expect("TCP_INFO on Linux");
        let before = d.acked().unwrap();
        out.write_all(&[7u8; 1 << 20]).unwrap();
        let mut got = vec![0u8; 1 << 20];
        into.read_exact(&mut got).unwrap();
        // Acknowledgements follow the reads within moments.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while d.acked().unwrap() - before < 1 << 20 {
            assert!(std::time::Instant::now() < end, "never acknowledged");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn only_large_bodies_are_measured_and_a_change_is_followed() {
        let r = LinkRates::new(1);
        r.record(
            0,
            Measure::Sent,
            (MEASURE_FROM - 1, Duration::from_micros(1)),
        );
        assert!(r.deflate(Compress::Auto), "a small body measured nothing");
        // 1 GB/s: stores.
        let second_per_gb = Duration::from_secs_f64((1u64 << 30) as f64 / 1e9);
        r.record(0, Measure::Sent, (1 << 30, second_per_gb));
        assert!(!r.deflate(Compress::Auto));
        // The link drops to 10 MB/s: three bundles later it deflates again.
        for _ in 0..3 {
            let took = Duration::from_secs_f64((100u64 << 20) as f64 / 1e7);
            r.record(0, Measure::Sent, (100 << 20, took));
        }
        assert!(r.deflate(Compress::Auto));
    }
}
