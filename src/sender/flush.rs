//! Flushes: each `shipper flush` waits for the next cut, then for the last
//! bundle of that cut to be acknowledged, and is answered with what it
//! shipped, with why its pack failed, or, at its deadline, with what
//! stands in the way. Tracks the sequences packed and acknowledged, and
//! the summaries a waiting flush may still report.
//!
//! Pure, with time injected (`now`): answers go out on each flush's
//! in-memory reply channel; no clock, disk or socket is touched.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::bundle::Summary;
use crate::control::Response;

/// One `shipper flush` waiting for its answer.
struct FlushWait {
    /// Answer once this sequence is acknowledged; `None` until its pack ran.
    target: Option<u64>,
    /// First sequence cut for this flush.
    first: u64,
    allow_mass_delete: bool,
    deadline: Instant,
    reply: oneshot::Sender<Response>,
}

/// The flushes in each stage, and the sequences they wait on.
#[derive(Default)]
pub(super) struct Flushes {
    /// Waiting for the next cut.
    queued: Vec<FlushWait>,
    /// Their cut is being packed.
    packing: Vec<FlushWait>,
    /// Cut: waiting for their target to be acknowledged.
    waiting: Vec<FlushWait>,
    /// The highest sequence packed…
    packed: u64,
    /// …and acknowledged.
    acked: u64,
    /// Per sequence packed and not yet dropped: what its bundle carries.
    summaries: BTreeMap<u64, Summary>,
}

impl Flushes {
    /// A flush asked: it waits for the next cut, until `deadline`.
    pub(super) fn request(
        &mut self,
        allow_mass_delete: bool,
        deadline: Instant,
        reply: oneshot::Sender<Response>,
    ) {
        self.queued.push(FlushWait {
            target: None,
            first: 0,
            allow_mass_delete,
            deadline,
            reply,
        });
    }

    /// Whether a flush waits for the next cut.
    pub(super) fn any_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Answer every flush waiting for a cut with `message`: none can come.
    pub(super) fn refuse_queued(&mut self, message: &str) {
        for f in std::mem::take(&mut self.queued) {
            let _ = f.reply.send(Response::Error {
                message: message.to_owned(),
            });
        }
    }

    /// A cut begins: the queued flushes are its own. Returns whether any
    /// of them allows a mass deletion.
    pub(super) fn start_cut(&mut self) -> bool {
        self.packing = std::mem::take(&mut self.queued);
        self.packing.iter().any(|f| f.allow_mass_delete)
    }

    /// Where a cut starting now begins: after the last sequence packed.
    pub(super) fn cut_starts(&self) -> u64 {
        self.packed + 1
    }

    /// Bundles were packed: `(sequence, summary)` each.
    pub(super) fn bundles_packed(&mut self, bundles: &[(u64, Summary)]) {
        for (seq, summary) in bundles {
            self.packed = self.packed.max(*seq);
            self.summaries.insert(*seq, *summary);
        }
    }

    /// The cut's pack failed: its flushes are answered with `error`.
    pub(super) fn pack_failed(&mut self, error: &str) {
        let message = format!("packing failed: {error}");
        for f in std::mem::take(&mut self.packing) {
            let _ = f.reply.send(Response::Error {
                message: message.clone(),
            });
        }
    }

    /// The cut that began at `first` is packed (or had nothing to pack):
    /// its flushes wait for the last sequence packed, and those already
    /// satisfied are answered, reporting `held` deletions.
    pub(super) fn cut_done(&mut self, first: u64, held: usize) {
        self.waiting.append(&mut self.packing);
        for f in &mut self.waiting {
            if f.target.is_none() {
                f.target = Some(self.packed);
                // Nothing cut since `first`: report nothing shipped, but
                // still wait for what is in flight.
                f.first = first;
            }
        }
        self.answer(held);
    }

    /// Every receiver acknowledged up to `seq`: answer the flushes it
    /// satisfies, reporting `held` deletions.
    pub(super) fn acked(&mut self, seq: u64, held: usize) {
        self.acked = self.acked.max(seq);
        self.answer(held);
        if !self.packing.is_empty() {
            // The cut being packed (perhaps over several runs) began with
            // bundles acknowledged already: its flushes report them too.
            return;
        }
        // Keep summaries only for what a waiting flush may still report.
        let keep_from = self
            .waiting
            .iter()
            .map(|f| f.first)
            .min()
            .unwrap_or(self.acked + 1)
            .min(self.acked + 1);
        self.summaries = self.summaries.split_off(&keep_from);
    }

    /// The highest sequence every receiver acknowledged.
    pub(super) fn acked_seq(&self) -> u64 {
        self.acked
    }

    /// What bundle `seq` carries, while it is kept.
    pub(super) fn summary(&self, seq: u64) -> Option<&Summary> {
        self.summaries.get(&seq)
    }

    fn answer(&mut self, held: usize) {
        let acked = self.acked;
        for f in std::mem::take(&mut self.waiting) {
            match f.target {
                Some(target) if acked >= target => {
                    let response = self.outcome(f.first, target, held as u64);
                    let _ = f.reply.send(response);
                }
                _ => self.waiting.push(f),
            }
        }
    }

    /// What a flush whose cut ran from `first` to `target` shipped.
    fn outcome(&self, first: u64, target: u64, held_deletions: u64) -> Response {
        if first > target {
            return Response::NothingToShip { held_deletions };
        }
        let mut summary = Summary::default();
        let mut bundles = 0;
        for (_, s) in self.summaries.range(first..=target) {
            summary.add(s);
            bundles += 1;
        }
        Response::Flushed {
            first_seq: first,
            last_seq: target,
            bundles,
            summary,
            held_deletions,
        }
    }

    /// Answer flushes whose deadline is past at `now` with what stands in
    /// the way: `behind(target)` names the receivers that have not
    /// acknowledged `target` (`None`: any receiver at all), and why.
    pub(super) fn expire(&mut self, now: Instant, behind: impl Fn(Option<u64>) -> String) {
        const UNREACHED: &str = "the receivers were not reached in time";
        self.waiting = expire(std::mem::take(&mut self.waiting), now, &behind, UNREACHED);
        // A cut too large for one packing run holds its flushes here from
        // one run to the next.
        const UNPACKED: &str = "its changes were not all packed in time";
        self.packing = expire(std::mem::take(&mut self.packing), now, &behind, UNPACKED);
        self.queued = expire(std::mem::take(&mut self.queued), now, &behind, UNREACHED);
    }
}

/// Answer the flushes of `list` past their deadline, saying `uncut` of
/// those not cut yet; keep the others.
fn expire(
    list: Vec<FlushWait>,
    now: Instant,
    behind: &impl Fn(Option<u64>) -> String,
    uncut: &str,
) -> Vec<FlushWait> {
    let mut keep = Vec::new();
    for f in list {
        if now < f.deadline {
            keep.push(f);
            continue;
        }
        let what = match f.target {
            Some(t) => format!("sequence {t} was not acknowledged in time"),
            None => uncut.to_owned(),
        };
        let _ = f.reply.send(Response::Error {
            message: format!("{what}: {}", behind(f.target)),
        });
    }
    keep
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn ask(f: &mut Flushes, allow: bool, deadline: Instant) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        f.request(allow, deadline, tx);
        rx
    }

    fn summary(files: u64, bytes: u64) -> Summary {
        Summary {
            files,
            bytes,
            ..Summary::default()
        }
    }

    fn no_answer(rx: &mut oneshot::Receiver<Response>) -> bool {
        matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }

    #[test]
    fn a_flush_is_answered_once_the_last_bundle_of_its_cut_is_acked() {
        let mut f = Flushes::default();
        let mut rx = ask(&mut f, false, Instant::now() + HOUR);
        assert!(f.any_queued());
        assert!(!f.start_cut());
        let first = f.cut_starts();
        f.bundles_packed(&[(1, summary(2, 10)), (2, summary(1, 5))]);
        f.cut_done(first, 0);
        f.acked(1, 0);
        assert!(no_answer(&mut rx), "sequence 2 is not acknowledged yet");
        f.acked(2, 3);
        assert_eq!(
            rx.try_recv().unwrap(),
            Response::Flushed {
                first_seq: 1,
                last_seq: 2,
                bundles: 2,
                summary: summary(3, 15),
                held_deletions: 3,
            }
        );
    }

    #[test]
    fn a_flush_with_nothing_to_cut_still_waits_for_what_is_in_flight() {
        let mut f = Flushes::default();
        f.bundles_packed(&[(7, summary(1, 1))]);
        let mut rx = ask(&mut f, false, Instant::now() + HOUR);
        f.start_cut();
        f.cut_done(f.cut_starts(), 2);
        assert!(no_answer(&mut rx), "7 is in flight");
        f.acked(7, 2);
        assert_eq!(
            rx.try_recv().unwrap(),
            Response::NothingToShip { held_deletions: 2 }
        );
    }

    #[test]
    fn a_flush_already_satisfied_is_answered_when_its_cut_is_done() {
        let mut f = Flushes::default();
        f.bundles_packed(&[(3, summary(1, 1))]);
        f.acked(3, 0);
        let mut rx = ask(&mut f, false, Instant::now() + HOUR);
        f.start_cut();
        f.cut_done(f.cut_starts(), 0);
        assert_eq!(
            rx.try_recv().unwrap(),
            Response::NothingToShip { held_deletions: 0 }
        );
    }

    #[test]
    fn a_failed_pack_answers_its_flushes_with_the_error() {
        let mut f = Flushes::default();
        let mut rx = ask(&mut f, false, Instant::now() + HOUR);
        f.start_cut();
        let first = f.cut_starts();
        f.pack_failed("No space left on device");
        f.cut_done(first, 0);
        assert_eq!(
            rx.try_recv().unwrap(),
            Response::Error {
                message: "packing failed: No space left on device".into()
            }
        );
    }

    #[test]
    fn flushes_expire_at_their_deadline_naming_what_is_behind() {
        let now = Instant::now();
        let mut f = Flushes::default();
        let mut cut = ask(&mut f, false, now + Duration::from_secs(5));
        f.start_cut();
        f.bundles_packed(&[(4, summary(1, 1))]);
        f.cut_done(1, 0);
        let mut queued = ask(&mut f, false, now + Duration::from_secs(10));
        let behind = |t: Option<u64>| format!("receiver r: behind {t:?}");
        f.expire(now + Duration::from_secs(4), behind);
        assert!(no_answer(&mut cut) && no_answer(&mut queued));
        f.expire(now + Duration::from_secs(5), behind);
        assert_eq!(
            cut.try_recv().unwrap(),
            Response::Error {
                message: "sequence 4 was not acknowledged in time: receiver r: behind Some(4)"
                    .into()
            }
        );
        assert!(no_answer(&mut queued));
        f.expire(now + Duration::from_secs(10), behind);
        assert_eq!(
            queued.try_recv().unwrap(),
            Response::Error {
                message: "the receivers were not reached in time: receiver r: behind None".into()
            }
        );
    }

    #[test]
    fn a_flush_whose_cut_takes_several_runs_still_expires_at_its_deadline() {
        let now = Instant::now();
        let mut f = Flushes::default();
        let mut rx = ask(&mut f, false, now + Duration::from_secs(5));
        f.start_cut();
        f.bundles_packed(&[(1, summary(1, 1))]);
        // The first run ended; the next one packs the rest of the cut.
        f.expire(now + Duration::from_secs(4), |_| String::new());
        assert!(no_answer(&mut rx));
        f.expire(now + Duration::from_secs(5), |_| "receiver r".into());
        assert_eq!(
            rx.try_recv().unwrap(),
            Response::Error {
                message: "its changes were not all packed in time: receiver r".into()
            }
        );
    }

    #[test]
    fn a_flush_reports_the_bundles_of_its_cut_acknowledged_while_it_was_packed() {
        // Broke once: acknowledgements of a cut's first bundles, arriving
        // while its later ones were packed, dropped their summaries, and
        // the flush reported only the bundles after them.
        let mut f = Flushes::default();
        let mut rx = ask(&mut f, false, Instant::now() + HOUR);
        f.start_cut();
        let first = f.cut_starts();
        f.bundles_packed(&[(1, summary(2, 20))]);
        f.acked(1, 0);
        f.bundles_packed(&[(2, summary(3, 30))]);
        f.cut_done(first, 0);
        assert!(no_answer(&mut rx));
        f.acked(2, 0);
        match rx.try_recv().unwrap() {
            Response::Flushed {
                first_seq: 1,
                last_seq: 2,
                bundles: 2,
                summary,
                ..
            } => assert_eq!(summary.files, 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cut_allows_a_mass_deletion_when_any_of_its_flushes_does() {
        let mut f = Flushes::default();
        let _a = ask(&mut f, false, Instant::now() + HOUR);
        let _b = ask(&mut f, true, Instant::now() + HOUR);
        assert!(f.start_cut());
        assert!(!f.any_queued());
        let _c = ask(&mut f, false, Instant::now() + HOUR);
        assert!(!f.start_cut());
    }

    #[test]
    fn queued_flushes_are_refused_with_the_reason() {
        let mut f = Flushes::default();
        let mut rx = ask(&mut f, false, Instant::now() + HOUR);
        f.refuse_queued("the source is missing");
        assert_eq!(
            rx.try_recv().unwrap(),
            Response::Error {
                message: "the source is missing".into()
            }
        );
        assert!(!f.any_queued());
    }

    #[test]
    fn summaries_are_kept_only_while_a_waiting_flush_may_report_them() {
        let mut f = Flushes::default();
        let _rx = ask(&mut f, false, Instant::now() + HOUR);
        f.start_cut();
        let first = f.cut_starts();
        f.bundles_packed(&[(1, summary(1, 1)), (2, summary(1, 1))]);
        f.cut_done(first, 0);
        f.acked(1, 0);
        assert!(f.summary(1).is_some(), "the flush reports from 1");
        f.acked(2, 0);
        assert!(f.summary(1).is_none() && f.summary(2).is_none());
        assert_eq!(f.acked_seq(), 2);
    }
}
