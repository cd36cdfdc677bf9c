//! How fast each receiver's link carries bundles, measured on the bundles
//! themselves, and whether deflate pays for itself on links that fast
//! (`sender.compress`). Two measures per link, the slower deciding, each
//! the best of its kind's recent ones ([`RECENT`]; never above
//! `sender.max_rate`): the sender's own, by the bytes the peer's TCP
//! acknowledged while a bundle went out ([`Delivered`], read from the
//! kernel) where it tells, else by the bundle's size; and the receiver's,
//! how fast the bundle's body came as it saw it (`Frame::Received`), which
//! no TCP-terminating proxy on the sender's side can make look faster than
//! the link. The sender's counts
//! only once the receiver has spoken of the same bundle ([`Unheard`]), so
//! a receiver's measure on its way is folded first. The packer asks
//! before each file. While a link is not measured, a run's first bundle is
//! kept small so it soon is (and stored, [`UNMEASURED_FIRST_BUNDLE`] bytes
//! per process in all; the packer waits once for its measure, up to
//! [`FIRST_MEASURE_WAIT`], before it reads on). The decisions are pure
//! ([`deflate_pays`], [`first_bundle_max`], [`first_stored`],
//! [`measure_awaited`], [`stores_at`]). What a link was measured at is
//! remembered across restarts ([`super::link_memory`]): a remembered
//! measure counts until the link is measured anew, and is written again
//! only when a measure is news (see [`Measured`]), never once per bundle.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::bundle::pack::FirstBundle;
use crate::config::Compress;

/// A link carrying at least this many bytes per second gets stored
/// entries under `compress = "auto"`. zlib-rs at level 3 deflates CMS pages
/// at about 150 MB/s per core (to 22% of their size, measured on bench.py's
/// corpus): on two cores, about 300 MB/s goes in. A link faster than what
/// deflate saves on it (78% of that) waits for the CPU: 10 Gbit/s and
/// loopback store, 1 Gbit/s and slower deflate.
pub const STORE_FROM: f64 = 200e6;
/// A link that stores deflates again only once measured slower than this:
/// a link measured near [`STORE_FROM`] does not turn deflate on and off
/// bundle after bundle (a loopback whose receiver was busy applying
/// measured 182-269 MB/s in one run of bench/tree.py, and turned it 6
/// times).
pub const DEFLATE_BELOW: f64 = 150e6;
/// Only bodies this large are measured by their size: a smaller one fits
/// mostly in the socket buffers, and its time says more about them than
/// about the link.
pub const MEASURE_FROM: u64 = 32 << 20;
/// Bytes the peer must have acknowledged during one bundle's sending for
/// them to measure the link: acknowledged bytes left the buffers, so far
/// fewer tell. (TCP's slow start makes the first megabytes of a new
/// connection look slower than the link: a slow link never looks fast.)
pub const DELIVERED_FROM: u64 = 1 << 20;
// A hold the packer waits for carries enough for both measures, and fits
// in a first bundle.
const _: () = assert!(
    crate::bundle::pack::HOLD_MEASURES_FROM >= DELIVERED_FROM
        && crate::bundle::pack::HOLD_MEASURES_FROM <= UNMEASURED_FIRST_BUNDLE
);
/// A run's first bundle grows no larger than this while some link under
/// `compress = "auto"` is not measured: it is sent, and the link measured,
/// before the rest of the run is deflated (a link not measured counts as
/// slow). A process's first such bundles store this many bytes in all
/// ([`first_stored`]), and the packer waits for the measure of one that
/// stored enough to measure by ([`FIRST_MEASURE_WAIT`]): a fast link is
/// spared the CPU of
/// deflating it (with 32 MiB deflated first, deflate was the sender's
/// largest work in bench.py's first ship on loopback, 0.36-0.41 CPU s:
/// BENCHMARKS.md, "Where the time goes"), and a slow link pays at most
/// this much more than deflated. 8 MiB stored are more bytes to measure
/// by than the 32 MiB of pages deflate to (about 7 MiB).
pub const UNMEASURED_FIRST_BUNDLE: u64 = 8 << 20;
/// How long a packing run waits, once its stored first bundle is out, for
/// the links to be measured by it ([`measure_awaited`]) before it reads on.
/// Deflating the files after that bundle while it was measured took one
/// of the two cores the loopback's ends share: bench.py's first ship then
/// measured 101-161 MB/s where the link carried 280-344, and deflated its
/// big bundle (3.7-3.9 s against 2.5-3.2 stored); waiting, it measured
/// 401 MB/s 19 ms after the bundle was packed. 8 MiB cross a link at
/// [`DEFLATE_BELOW`] in 56 ms; the rest is for the receiver's word of it.
/// A slower link is not waited for longer: deflate pays on it anyway, and
/// its packer's wait is its link's idle time (250 ms cost bench.py's
/// 100 Mbit/s first ship 0.3 s of its 20). Once per process at most
/// ([`LinkRates::await_measures`]), for a first bundle that stored enough
/// to measure by (`pack::HOLD_MEASURES_FROM`).
pub const FIRST_MEASURE_WAIT: Duration = Duration::from_millis(100);
/// How many of a kind's latest measures of a link decide its rate: the
/// best of them. A busy endpoint (a receiver applying the bundle before,
/// a sender packing the next) reads or writes more slowly than the link
/// could carry, so the receiver's measure can fall short of the link but
/// never pass it (the sender's may count what buffers held; the slower
/// kind deciding, the receiver's keeps it from passing the link): on
/// bench.py's loopback, one run measured 218, 149, then 298 MB/s, and the
/// 149 turned deflate on for the bundles packed meanwhile. A link that
/// really slowed is followed within this many. A remembered measure
/// counts as one of them, taken at the first measure of its kind.
pub const RECENT: usize = 3;
/// A measure counts among the recent ones for this long (seconds) after
/// the newest of its kind: a quiet sender's bundles may be hours apart.
pub const RECENT_FOR: i64 = 300;
/// A link measured steadily has its measures remembered again once what
/// was last remembered of it is this old (seconds), though no measure was
/// news: it would be forgotten a week after its last news otherwise.
pub(super) const REFRESH_AFTER: i64 = 24 * 3600;

/// Whether to deflate what is worth deflating, under `mode`, given the
/// choice of each receiver's link ([`Link::stores_if_measured`]; `None`:
/// not measured yet). Every receiver gets the same bundles: one link that
/// deflates decides, and one not measured yet counts as slow.
pub fn deflate_pays(mode: Compress, stores: impl IntoIterator<Item = Option<bool>>) -> bool {
    match mode {
        Compress::Always => true,
        Compress::Never => false,
        Compress::Auto => stores.into_iter().any(|s| s != Some(true)),
    }
}

/// Whether bundles may go to a receiver as they are packed, under `mode`,
/// given its link's choice (as for [`deflate_pays`]): under `auto` only
/// once the link stores, so the choice to deflate never rests on a bundle
/// that went as the packer gave it (a sealed bundle measures the link
/// again); under `always` and `never` no measure decides what is packed.
pub fn streams(mode: Compress, stores: Option<bool>) -> bool {
    mode != Compress::Auto || stores == Some(true)
}

/// How many bytes of a run's first bundle, held small
/// ([`first_bundle_max`]), are stored, under `mode`, given the choice of
/// each receiver's link (as for [`deflate_pays`]) and how many of the
/// process's [`UNMEASURED_FIRST_BUNDLE`] bytes are left to store (`left`):
/// under `auto`, while some link is not measured and no link measured
/// deflates, what is left. A process stores no more than that in all (and
/// one small file: its packing runs one at a time): a link may stay
/// unmeasured for long (a receiver away, a bucket, which only bodies of
/// [`MEASURE_FROM`] measure, runs too small to measure by), and each run's
/// first 8 MiB would go stored to all. Counted in bytes, not runs, so a
/// first run of a few pages leaves the rest to the next.
pub fn first_stored(
    mode: Compress,
    stores: impl IntoIterator<Item = Option<bool>>,
    left: u64,
) -> u64 {
    if measure_awaited(mode, stores) {
        left
    } else {
        0
    }
}

/// Whether a measure is still to come before it is known whether deflate
/// pays, under `mode`, given the choice of each receiver's link (as for
/// [`deflate_pays`]): under `auto`, while some link is not measured and
/// no link measured deflates (one that does decides already).
pub fn measure_awaited(mode: Compress, stores: impl IntoIterator<Item = Option<bool>>) -> bool {
    let stores: Vec<Option<bool>> = stores.into_iter().collect();
    mode == Compress::Auto && stores.contains(&None) && !stores.contains(&Some(false))
}

/// Whether a link measured at `rate` stores, given whether it stored
/// before: it stops deflating at [`STORE_FROM`] and starts again only
/// below [`DEFLATE_BELOW`].
pub fn stores_at(rate: f64, stored: bool) -> bool {
    rate >= if stored { DEFLATE_BELOW } else { STORE_FROM }
}

/// How large a run's first bundle may be, under `mode`, given each link's
/// rate: [`UNMEASURED_FIRST_BUNDLE`] while `auto` has a link to measure.
pub fn first_bundle_max(mode: Compress, rates: &[Option<f64>]) -> Option<u64> {
    (mode == Compress::Auto && rates.iter().any(Option::is_none)).then_some(UNMEASURED_FIRST_BUNDLE)
}

/// A link's rate after a measure (bytes per second), whether it is news
/// (the link's first measure in this process, or one that changes whether
/// deflate pays: the log says so), and whether the link's measures are to
/// be written to `link-rates.json` ([`LinkRates::keep`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    pub(super) rate: f64,
    /// Whether the link now stores ([`Link::stores`]).
    pub(super) stores: bool,
    pub(super) news: bool,
    /// News, the first measure of its kind in this process (it replaces a
    /// remembered one), or what the file holds of the link is older than
    /// [`REFRESH_AFTER`].
    pub(super) keep: bool,
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

/// One measure of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rate {
    pub(super) bytes_per_s: f64,
    /// When it was last measured (unix seconds).
    pub(super) at: i64,
    /// Measured by this process; `false`: remembered from an earlier one,
    /// replaced (not averaged) by the next measure.
    pub(super) fresh: bool,
}

/// One kind's latest measures of a link, oldest first (see [`RECENT`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Recent {
    samples: [Option<(f64, i64)>; RECENT],
}

impl Recent {
    /// Add `sample` (bytes per second) taken at `now`: the best of the
    /// measures still recent.
    fn push(&mut self, sample: f64, now: i64) -> f64 {
        self.samples.rotate_left(1);
        self.samples[RECENT - 1] = Some((sample, now));
        // A measure from a clock set back since is as good as gone.
        for s in &mut self.samples {
            if s.is_some_and(|(_, at)| !(0..=RECENT_FOR).contains(&(now - at))) {
                *s = None;
            }
        }
        self.samples
            .iter()
            .flatten()
            .map(|s| s.0)
            .fold(sample, f64::max)
    }

    fn is_empty(&self) -> bool {
        self.samples.iter().all(Option::is_none)
    }
}

/// One link's two measures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Link {
    pub(super) sent: Option<Rate>,
    pub(super) received: Option<Rate>,
    /// When `link-rates.json` last had this link's measures written (unix
    /// seconds); `None`: never.
    pub(super) written: Option<i64>,
    /// Whether deflate is off on this link under `compress = "auto"`
    /// ([`stores_at`], given whether it stored before: a remembered link as
    /// it was remembered; a link never measured as not).
    pub(super) stores: bool,
    /// This process's latest measures of each kind, of which the best is
    /// the link's ([`RECENT`]); never remembered.
    pub(super) recent_sent: Recent,
    pub(super) recent_received: Recent,
}

impl Link {
    /// A link with the measures an earlier run remembered, and whether it
    /// stored then (`None`: not remembered, as if it did not).
    pub(super) fn remembered(
        sent: Option<Rate>,
        received: Option<Rate>,
        stored: Option<bool>,
    ) -> Self {
        let mut link = Self {
            sent,
            received,
            written: [sent, received].iter().flatten().map(|r| r.at).max(),
            ..Self::default()
        };
        link.stores = link
            .rate()
            .is_some_and(|r| stores_at(r, stored.unwrap_or(false)));
        link
    }

    /// The rate that decides: the slower measure, or the one there is.
    pub(super) fn rate(&self) -> Option<f64> {
        match (self.sent, self.received) {
            (Some(a), Some(b)) => Some(a.bytes_per_s.min(b.bytes_per_s)),
            (a, b) => a.or(b).map(|r| r.bytes_per_s),
        }
    }

    /// Whether it stores ([`Link::stores`]), `None` while it was never
    /// measured (when `stores` is false for want of a measure).
    pub(super) fn stores_if_measured(&self) -> Option<bool> {
        self.rate().map(|_| self.stores)
    }

    /// Whether a measure of it was taken by this process.
    fn fresh(&self) -> bool {
        [self.sent, self.received]
            .iter()
            .any(|m| m.is_some_and(|m| m.fresh))
    }

    /// Take `sample` (bytes per second), measured `by` at `now`, under a
    /// `cap` in bytes per second (`sender.max_rate`): the best of its
    /// kind's recent measures ([`Recent`]), each held to the cap, becomes
    /// this link's measure of that kind, in place of the one before. A
    /// remembered measure counts as one of the recent ones, taken at the
    /// first measure of its kind: a dip just after a restart turns
    /// nothing, and a link that slowed meanwhile is followed within
    /// [`RECENT`] measures, as one measured in this run. A link's first
    /// measure stores only from [`STORE_FROM`].
    fn fold(&mut self, (sample, by): (f64, By), (now, cap): (i64, Option<u64>)) -> Measured {
        let old = self.rate();
        let was_fresh = self.fresh();
        let (measure, recent) = match by {
            By::Sender => (&mut self.sent, &mut self.recent_sent),
            By::Receiver => (&mut self.received, &mut self.recent_received),
        };
        let capped = |r: f64| cap.map_or(r, |c| r.min(c as f64));
        if let Some(r) = measure.filter(|r| !r.fresh && recent.is_empty()) {
            recent.push(capped(r.bytes_per_s), now);
        }
        let best = recent.push(capped(sample), now);
        let first_of_kind = !measure.is_some_and(|m| m.fresh);
        *measure = Some(Rate {
            bytes_per_s: best,
            at: now,
            fresh: true,
        });
        let rate = self.rate().expect("just measured");
        let stored = self.stores;
        self.stores = stores_at(rate, stored);
        let turns = old.is_none() || self.stores != stored;
        let news = !was_fresh || turns;
        let stale = self.written.is_none_or(|w| now - w >= REFRESH_AFTER);
        let keep = news || first_of_kind || stale;
        if keep {
            self.written = Some(now);
        }
        Measured {
            rate,
            stores: self.stores,
            news,
            keep,
        }
    }
}

/// The sender's measures of the bundles a receiver has not yet said how
/// it took, oldest first. A sender's measure counts only once the receiver
/// has spoken of the same bundle: told how it came (`Frame::Received`, a
/// measure folded first, or none where no read waited) or answered it (a
/// receiver that tells nothing); a receiver tells of a bundle once it
/// answered the one before. Behind a proxy that ends the sender's TCP
/// connection, the sender's measure is the proxy's buffers, taking a slow
/// link for a fast one; counted alone until the receiver's came, it
/// stored every file packed meanwhile (a first ship over bench.py's slow
/// link took 25 s instead of 19.5).
#[derive(Debug)]
pub(super) struct Unheard<T> {
    held: std::collections::VecDeque<(u64, T)>,
}

impl<T> Default for Unheard<T> {
    fn default() -> Self {
        Self {
            held: Default::default(),
        }
    }
}

impl<T> Unheard<T> {
    /// Bundle `seq` was measured as `measure`; it waits for the receiver.
    pub(super) fn hold(&mut self, seq: u64, measure: T) {
        self.held.push_back((seq, measure));
    }

    /// The receiver spoke of bundle `seq`: the measures of it and of the
    /// bundles sent before it (which it took first), oldest first.
    pub(super) fn heard(&mut self, seq: u64) -> Vec<T> {
        let n = self.held.iter().take_while(|(s, _)| *s <= seq).count();
        self.held.drain(..n).map(|(_, m)| m).collect()
    }
}

/// Where links' measures are remembered across restarts
/// ([`super::link_memory::Memory`]).
pub(super) trait Remember: Send + Sync {
    /// Remember `links` (one per receiver) in place of what was. Blocking.
    fn remember(&self, links: &[Link]) -> std::io::Result<()>;
}

/// Each receiver's measured link rate, shared by its transport and the
/// packer, and where it is remembered across restarts.
pub(super) struct LinkRates {
    links: Mutex<Vec<Link>>,
    /// Told of each measure taken, for a packer awaiting one
    /// ([`LinkRates::await_measures`]).
    measured: Condvar,
    /// Bytes of first bundles this process may still store
    /// ([`first_stored`]).
    stored_left: AtomicU64,
    /// A packer waited for a first bundle's measure in this process
    /// ([`LinkRates::await_measures`]).
    awaited: AtomicBool,
    /// `None`: remembered nowhere (tests).
    memory: Option<Box<dyn Remember>>,
    /// One [`LinkRates::keep`] at a time, each of the links as they stand
    /// when it begins: one that began earlier never lands last.
    keeping: Mutex<()>,
}

impl LinkRates {
    /// For `receivers` links, none measured, remembered nowhere.
    #[cfg(test)]
    pub(super) fn new(receivers: usize) -> Self {
        Self {
            links: Mutex::new(vec![Link::default(); receivers]),
            measured: Condvar::new(),
            memory: None,
            keeping: Mutex::new(()),
            stored_left: AtomicU64::new(UNMEASURED_FIRST_BUNDLE),
            awaited: AtomicBool::new(false),
        }
    }

    /// The `links` remembered in `memory` (one per receiver), to be
    /// remembered there again.
    pub(super) fn remembering(memory: Box<dyn Remember>, links: Vec<Link>) -> Self {
        Self {
            links: Mutex::new(links),
            measured: Condvar::new(),
            memory: Some(memory),
            keeping: Mutex::new(()),
            stored_left: AtomicU64::new(UNMEASURED_FIRST_BUNDLE),
            awaited: AtomicBool::new(false),
        }
    }

    /// Receiver `index`'s link carried `bytes` in `took`, as `how` says,
    /// at `now` (unix seconds), under a `cap` in bytes per second
    /// (`sender.max_rate`): if that is enough bytes to say something of
    /// the link (`how`'s least), take it into the link ([`Link::fold`]).
    /// A measure is never taken as faster than the cap: the rate's
    /// allowance starts full, so a bundle that fits in it crosses faster
    /// than the cap lets the link carry for long.
    pub(super) fn record(
        &self,
        index: usize,
        how: Measure,
        (bytes, took): (u64, Duration),
        (now, cap): (i64, Option<u64>),
    ) -> Option<Measured> {
        if bytes < how.least() || took.is_zero() {
            return None;
        }
        let sample = bytes as f64 / took.as_secs_f64();
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let measured = links[index].fold((sample, how.by()), (now, cap));
        drop(links);
        self.measured.notify_all();
        Some(measured)
    }

    /// Wait, at most `bound`, until the links are measured enough to say
    /// whether deflate pays under `mode` ([`measure_awaited`]); whether
    /// they were. Once per process: `None`, without waiting, after the
    /// first call (a link a first bundle did not measure, such as a
    /// receiver away or a bucket, is not waited for run after run).
    /// Blocking.
    pub(super) fn await_measures(&self, mode: Compress, bound: Duration) -> Option<bool> {
        if self.awaited.swap(true, Ordering::Relaxed) {
            return None;
        }
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let awaited = |links: &mut Vec<Link>| {
            measure_awaited(mode, links.iter().map(Link::stores_if_measured))
        };
        let (_links, waited) = self
            .measured
            .wait_timeout_while(links, bound, awaited)
            .unwrap_or_else(|e| e.into_inner());
        Some(!waited.timed_out())
    }

    /// Each link as it stands.
    pub(super) fn links(&self) -> Vec<Link> {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether receiver `index`'s link stores ([`Link::stores_if_measured`]),
    /// read in place: asked on each turn of its transport's loop.
    pub(super) fn stores(&self, index: usize) -> Option<bool> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(index).and_then(Link::stores_if_measured)
    }

    /// Whether the next file packed is deflated (if worth it), under `mode`.
    /// Asked for every file packed: the links are read in place, not copied.
    pub(super) fn deflate(&self, mode: Compress) -> bool {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        deflate_pays(mode, links.iter().map(Link::stores_if_measured))
    }

    /// How the next run's first bundle is held, under `mode`: as large as
    /// [`first_bundle_max`] says, stored as [`first_stored`] says (a run
    /// tells what it stored: [`LinkRates::spend_stored`]).
    pub(super) fn first_bundle(&self, mode: Compress) -> Option<FirstBundle> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let rates: Vec<Option<f64>> = links.iter().map(Link::rate).collect();
        let max = first_bundle_max(mode, &rates)?;
        let stores = links.iter().map(Link::stores_if_measured);
        let left = self.stored_left.load(Ordering::Relaxed);
        let stored = first_stored(mode, stores, left);
        Some(FirstBundle { max, stored })
    }

    /// A run stored `bytes` of its first bundle: so many fewer are left to
    /// store ([`first_stored`]).
    pub(super) fn spend_stored(&self, bytes: u64) {
        let spend = |left: u64| Some(left.saturating_sub(bytes));
        let _ = self
            .stored_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, spend);
    }

    /// Write every link's measures where they are remembered (after a
    /// measure to [`Measured::keep`]). Blocking: fsync.
    pub(super) fn keep(&self) -> std::io::Result<()> {
        let Some(memory) = &self.memory else {
            return Ok(());
        };
        let _turn = self.keeping.lock().unwrap_or_else(|e| e.into_inner());
        memory.remember(&self.links())
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

    /// A time (unix seconds) measures are taken at.
    const T0: i64 = 1_700_000_000;
    /// Too short a time to measure anything in.
    const TINY: Duration = Duration::from_micros(1);

    /// `mb` megabytes in one second: a measure of `mb` MB/s.
    fn at(mb: u64) -> (u64, Duration) {
        (mb * 1_000_000, Duration::from_secs(1))
    }

    #[test]
    fn auto_stores_only_when_every_link_is_measured_fast() {
        let (fast, slow) = (Some(true), Some(false));
        assert!(!deflate_pays(Compress::Auto, [fast, fast]));
        assert!(
            deflate_pays(Compress::Auto, [fast, slow]),
            "the slowest decides"
        );
        assert!(
            deflate_pays(Compress::Auto, [fast, None]),
            "unmeasured counts as slow"
        );
        assert!(deflate_pays(Compress::Always, [fast]));
        assert!(!deflate_pays(Compress::Never, [slow, None]));
    }

    /// A link measured near the line keeps its choice: deflate stops at
    /// STORE_FROM and starts again only below DEFLATE_BELOW; and what
    /// decides is the best of the recent measures, so a dip measured while
    /// an end was busy turns nothing, and a link that really slowed is
    /// followed within RECENT measures.
    #[test]
    fn a_link_measured_near_the_line_does_not_turn_deflate_on_and_off() {
        let r = LinkRates::new(1);
        let m = r.record(0, Measure::Acked, at(269), (T0, None)).unwrap();
        assert!(m.stores && m.news && !r.deflate(Compress::Auto));
        // What bench/tree.py's and bench.py's loopbacks measured, a busy
        // receiver's dips (149, 80) among them.
        for mb in [182, 224, 193, 189, 160, 218, 149, 80, 298] {
            let m = r.record(0, Measure::Acked, at(mb), (T0, None)).unwrap();
            assert!(m.stores && !m.news, "{mb} MB/s: {} turned it", m.rate);
        }
        for n in 1..RECENT {
            let m = r.record(0, Measure::Acked, at(100), (T0, None)).unwrap();
            assert!(m.stores && !m.news, "{n} slow measures turned it");
        }
        let m = r.record(0, Measure::Acked, at(100), (T0, None)).unwrap();
        assert!(!m.stores && m.news, "{} is below {DEFLATE_BELOW}", m.rate);
        assert!(r.deflate(Compress::Auto));
        let m = r.record(0, Measure::Acked, at(180), (T0, None)).unwrap();
        assert!(!m.stores && !m.news, "{} is below {STORE_FROM}", m.rate);
        let m = r.record(0, Measure::Acked, at(250), (T0, None)).unwrap();
        assert!(m.stores && m.news, "{}", m.rate);
        assert!(stores_at(STORE_FROM, false) && !stores_at(STORE_FROM - 1.0, false));
        assert!(stores_at(DEFLATE_BELOW, true) && !stores_at(DEFLATE_BELOW - 1.0, true));
    }

    #[test]
    fn bundles_stream_under_auto_once_the_link_stores_and_always_otherwise() {
        for stores in [None, Some(false), Some(true)] {
            assert_eq!(streams(Compress::Auto, stores), stores == Some(true));
            assert!(streams(Compress::Never, stores));
            assert!(streams(Compress::Always, stores));
        }
    }

    /// First bundles held small store 8 MiB per process in all, and only
    /// while no measured link deflates: a link that stays unmeasured (a
    /// receiver away, a bucket) does not get every run's first 8 MiB
    /// stored.
    #[test]
    fn first_bundles_store_8_mib_in_all_and_only_while_no_measured_link_deflates() {
        let (fast, slow) = (Some(true), Some(false));
        let all = UNMEASURED_FIRST_BUNDLE;
        assert_eq!(first_stored(Compress::Auto, [None], all), all);
        assert_eq!(first_stored(Compress::Auto, [fast, None], 5), 5);
        assert_eq!(
            first_stored(Compress::Auto, [slow, None], all),
            0,
            "a slow link decides"
        );
        assert_eq!(
            first_stored(Compress::Auto, [fast], all),
            0,
            "nothing to measure"
        );
        assert_eq!(first_stored(Compress::Always, [None], all), 0);
        assert_eq!(first_stored(Compress::Never, [None], all), 0);
        let r = LinkRates::new(2);
        let stored = |r: &LinkRates| r.first_bundle(Compress::Auto).unwrap().stored;
        assert_eq!(stored(&r), all, "asking spends nothing");
        assert_eq!(stored(&r), all);
        // A first run of a few pages leaves the rest to the next.
        r.spend_stored(100 << 10);
        assert_eq!(stored(&r), all - (100 << 10));
        r.spend_stored(all);
        assert_eq!(stored(&r), 0, "the next run's is deflated");
    }

    #[test]
    fn a_measure_is_awaited_only_under_auto_while_a_link_is_unmeasured_and_none_deflates() {
        let (fast, slow) = (Some(true), Some(false));
        assert!(measure_awaited(Compress::Auto, [None]));
        assert!(measure_awaited(Compress::Auto, [fast, None]));
        assert!(!measure_awaited(Compress::Auto, [slow, None]));
        assert!(!measure_awaited(Compress::Auto, [fast, fast]));
        assert!(!measure_awaited(Compress::Never, [None]));
        assert!(!measure_awaited(Compress::Always, [None]));
    }

    #[test]
    fn a_packer_awaiting_a_measure_goes_on_when_it_comes_or_the_wait_ends() {
        // Nothing measures: the wait ends unmeasured, and a process waits
        // once.
        let r = LinkRates::new(1);
        let bound = Duration::from_millis(1);
        assert_eq!(r.await_measures(Compress::Auto, bound), Some(false));
        assert_eq!(r.await_measures(Compress::Auto, bound), None, "once");
        // Under `never` nothing is awaited.
        let r = LinkRates::new(1);
        assert_eq!(
            r.await_measures(Compress::Never, Duration::ZERO),
            Some(true)
        );
        // A measure taken meanwhile ends the wait (long as it may be).
        let r = std::sync::Arc::new(LinkRates::new(1));
        let measuring = {
            let r = r.clone();
            std::thread::spawn(move || {
                let took = (8 << 20, Duration::from_millis(30));
                r.record(0, Measure::Received, took, (T0, None))
                    .expect("enough bytes to measure");
            })
        };
        let long = Duration::from_secs(30);
        assert_eq!(r.await_measures(Compress::Auto, long), Some(true));
        measuring.join().unwrap();
        assert_eq!(r.stores(0), Some(true));
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
            r.record(0, Measure::Acked, (DELIVERED_FROM - 1, TINY), (T0, None))
                .is_none()
        );
        assert!(r.deflate(Compress::Auto), "too few bytes measured nothing");
        let m = r
            .record(
                0,
                Measure::Acked,
                (DELIVERED_FROM * 1000, second),
                (T0, None),
            )
            .unwrap();
        assert!(m.news, "the first measure is news");
        assert!(!r.deflate(Compress::Auto), "1 GB/s stores");
        let m = r
            .record(
                0,
                Measure::Acked,
                (DELIVERED_FROM * 900, second),
                (T0, None),
            )
            .unwrap();
        assert!(!m.news, "still fast: no news");
    }

    /// Behind a proxy that ends the sender's TCP connection, the sender's
    /// own measure says loopback speed; the receiver's says the link's.
    #[test]
    fn the_slower_of_the_senders_and_the_receivers_measures_decides() {
        let r = LinkRates::new(1);
        let second = Duration::from_secs(1);
        let fast = r
            .record(0, Measure::Acked, (1 << 30, second), (T0, None))
            .unwrap();
        assert!(fast.news && !r.deflate(Compress::Auto), "1 GiB/s stores");
        let slow = r
            .record(0, Measure::Received, (12 << 20, second), (T0, None))
            .unwrap();
        assert!(slow.news, "the choice turned around");
        assert!(r.deflate(Compress::Auto), "the link is 12 MiB/s: deflate");
        r.record(0, Measure::Acked, (1 << 30, second), (T0, None));
        assert!(
            r.deflate(Compress::Auto),
            "the sender's measure alone never overrules"
        );
        assert!(
            r.record(0, Measure::Received, (DELIVERED_FROM - 1, TINY), (T0, None))
                .is_none(),
            "too few bytes measure nothing"
        );
    }

    /// Behind a proxy, the sender's measure of the first bundle says
    /// loopback; the receiver's, which comes after it, says the link's.
    /// Held until the receiver spoke, the sender's never decides alone,
    /// and a receiver that tells nothing still has it counted at its answer.
    #[test]
    fn a_senders_measure_counts_only_once_the_receiver_spoke_of_its_bundle() {
        let second = Duration::from_secs(1);
        let r = LinkRates::new(1);
        let mut unheard = Unheard::default();
        unheard.hold(1, (Measure::Acked, (1u64 << 30, second)));
        unheard.hold(2, (Measure::Acked, (1u64 << 30, second)));
        assert_eq!(r.stores(0), None, "held: not measured, so deflated");
        // The receiver took bundle 1 at 12 MiB/s: its measure first.
        r.record(0, Measure::Received, (12 << 20, second), (T0, None));
        for (how, m) in unheard.heard(1) {
            r.record(0, how, m, (T0, None));
        }
        assert_eq!(r.stores(0), Some(false), "the link's measure decides");
        // Bundle 2 answered with nothing told: its measure counts then.
        assert_eq!(unheard.heard(2).len(), 1);
        assert!(unheard.heard(3).is_empty(), "each measure counts once");

        // On loopback, a receiver whose reads never waited tells nothing
        // of its rate: the sender's measure, heard, stores.
        let r = LinkRates::new(1);
        let mut unheard = Unheard::default();
        unheard.hold(7, (Measure::Acked, (1u64 << 30, second)));
        assert!(unheard.heard(6).is_empty(), "an earlier bundle's word");
        for (how, m) in unheard.heard(7) {
            r.record(0, how, m, (T0, None));
        }
        assert_eq!(r.stores(0), Some(true));
    }

    /// A link as an earlier run remembered it: both measures at `bytes_per_s`.
    fn remembered(bytes_per_s: f64) -> LinkRates {
        let (at, fresh) = (T0 - 3600, false);
        let rate = Some(Rate {
            bytes_per_s,
            at,
            fresh,
        });
        let link = Link::remembered(rate, rate, None);
        LinkRates {
            links: Mutex::new(vec![link]),
            measured: Condvar::new(),
            memory: None,
            keeping: Mutex::new(()),
            stored_left: AtomicU64::new(UNMEASURED_FIRST_BUNDLE),
            awaited: AtomicBool::new(false),
        }
    }

    /// After a restart, a remembered fast link stores from the first file
    /// and cuts its first bundle at full size; the remembered measure
    /// counts as one of the recent ones, so a dip just after the restart
    /// turns nothing, and a link that slowed meanwhile is followed within
    /// RECENT measures.
    #[test]
    fn a_remembered_rate_decides_until_new_measures_replace_it() {
        let r = remembered(1e9);
        assert!(!r.deflate(Compress::Auto));
        assert_eq!(r.first_bundle(Compress::Auto), None);
        let slow = (12 << 20, Duration::from_secs(1));
        let m = r.record(0, Measure::Acked, slow, (T0, None)).unwrap();
        assert_eq!(m.rate, 1e9, "the remembered measure is still recent");
        assert!(m.news && m.keep, "the first measure of this run");
        let m = r.record(0, Measure::Received, slow, (T0, None)).unwrap();
        assert!(!m.news && m.keep, "its kind's first: the file learns it");
        assert!(!r.deflate(Compress::Auto), "one dip of each kind");
        for _ in 1..RECENT - 1 {
            r.record(0, Measure::Acked, slow, (T0, None)).unwrap();
            assert!(!r.deflate(Compress::Auto));
        }
        let m = r.record(0, Measure::Acked, slow, (T0, None)).unwrap();
        assert_eq!(m.rate, f64::from(12 << 20), "{RECENT} slow measures");
        assert!(m.news && r.deflate(Compress::Auto));
        let capped = remembered(1e9);
        let m = capped
            .record(0, Measure::Acked, slow, (T0, Some(100_000_000)))
            .unwrap();
        assert_eq!(m.rate, 1e8, "a remembered measure is held to max_rate");
        let again = remembered(1e9).record(
            0,
            Measure::Acked,
            (1 << 30, Duration::from_secs(1)),
            (T0, None),
        );
        assert!(again.unwrap().news, "said in the log once per run");
    }

    /// The file is written on news, on each kind's first measure, and once
    /// a day for a link measured steadily: never once per bundle.
    #[test]
    fn a_links_measures_are_kept_when_news_and_not_per_bundle() {
        let r = LinkRates::new(1);
        let fast = (1 << 30, Duration::from_secs(1));
        let keeps = |how, (bytes, took), at| {
            let m: Measured = r.record(0, how, (bytes, took), (at, None)).unwrap();
            (m.news, m.keep)
        };
        assert_eq!(keeps(Measure::Acked, fast, T0), (true, true), "first");
        assert_eq!(keeps(Measure::Acked, fast, T0 + 60), (false, false));
        assert_eq!(keeps(Measure::Received, fast, T0 + 70), (false, true));
        assert_eq!(keeps(Measure::Received, fast, T0 + 80), (false, false));
        let day = T0 + 70 + REFRESH_AFTER;
        assert_eq!(keeps(Measure::Acked, fast, day - 1), (false, false));
        assert_eq!(keeps(Measure::Acked, fast, day), (false, true), "a day on");
        assert_eq!(keeps(Measure::Acked, fast, day + 1), (false, false));
        let slow = (10 << 20, Duration::from_secs(1));
        // The receiver's fast measures are a day old, no longer recent:
        // its first slow one decides.
        assert_eq!(
            keeps(Measure::Received, slow, day + 2),
            (true, true),
            "turned"
        );
        assert_eq!(keeps(Measure::Received, slow, day + 3), (false, false));
    }

    #[test]
    fn a_measure_is_never_faster_than_max_rate() {
        let r = LinkRates::new(1);
        // 8 MiB in 4 ms under a 100 MB/s cap: the rate's allowance, which
        // starts full, not what the link carries for long.
        let burst = (8 << 20, Duration::from_millis(4));
        let m = r
            .record(0, Measure::Acked, burst, (T0, Some(100_000_000)))
            .unwrap();
        assert_eq!(m.rate, 1e8);
        assert!(!m.stores && r.deflate(Compress::Auto));
    }

    #[test]
    fn a_measure_from_a_clock_set_back_no_longer_counts() {
        let r = LinkRates::new(1);
        r.record(0, Measure::Acked, at(500), (T0, None)).unwrap();
        let m = r
            .record(0, Measure::Acked, at(100), (T0 - 3600, None))
            .unwrap();
        assert!(!m.stores, "500 MB/s was measured an hour 'later'");
    }

    #[test]
    fn a_fast_measure_no_longer_recent_no_longer_counts() {
        let r = LinkRates::new(1);
        r.record(0, Measure::Acked, at(500), (T0, None)).unwrap();
        let m = r
            .record(0, Measure::Acked, at(100), (T0 + RECENT_FOR, None))
            .unwrap();
        assert!(m.stores && !m.news, "500 MB/s is still recent");
        let m = r
            .record(0, Measure::Acked, at(100), (T0 + RECENT_FOR + 1, None))
            .unwrap();
        assert!(
            !m.stores && m.news,
            "500 MB/s is {RECENT_FOR} s and one old"
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
        r.record(0, Measure::Sent, (MEASURE_FROM - 1, TINY), (T0, None));
        assert!(r.deflate(Compress::Auto), "a small body measured nothing");
        // 1 GB/s: stores.
        let second_per_gb = Duration::from_secs_f64((1u64 << 30) as f64 / 1e9);
        r.record(0, Measure::Sent, (1 << 30, second_per_gb), (T0, None));
        assert!(!r.deflate(Compress::Auto));
        // The link drops to 10 MB/s: three bundles later it deflates again.
        for _ in 0..3 {
            let took = Duration::from_secs_f64((100u64 << 20) as f64 / 1e7);
            r.record(0, Measure::Sent, (100 << 20, took), (T0, None));
        }
        assert!(r.deflate(Compress::Auto));
    }
}
