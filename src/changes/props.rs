//! Property tests of the change set: whatever events come at whatever
//! times, every change is taken within max_delay and none is lost.

use std::time::{Duration, Instant};

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Ev {
    Changed(u8, bool),
    Closed(u8),
    Removed(u8),
}

fn ev() -> impl Strategy<Value = (u64, Ev)> {
    let path = 0u8..4;
    (
        0u64..3000,
        prop_oneof![
            (path.clone(), any::<bool>()).prop_map(|(p, w)| Ev::Changed(p, w)),
            path.clone().prop_map(Ev::Closed),
            path.prop_map(Ev::Removed),
        ],
    )
}

proptest! {
    /// For any events at any times and any tick phase, every path with
    /// an event is taken by a cut no later than max_delay after its
    /// first unshipped event, and the last op taken is the latest one.
    #[test]
    fn every_change_ships_within_max_delay(
        events in proptest::collection::vec(ev(), 0..40),
        tick_ms in 1000u64..10_000,
        phase_ms in 0u64..10_000,
    ) {
        let settle = Duration::from_millis(250);
        let max = Duration::from_secs(30);
        let tick = Duration::from_millis(tick_ms);
        let t0 = Instant::now();
        let mut events = events;
        events.sort_by_key(|(t, _)| *t);
        let mut cs = ChangeSet::new(settle, max);
        // path -> (time of first unshipped event, latest op)
        let mut owed: std::collections::BTreeMap<String, (Instant, Op)> = Default::default();
        let mut cut = t0 + Duration::from_millis(phase_ms);
        let mut i = 0;
        let end = t0 + Duration::from_secs(200);
        while cut < end {
            while i < events.len() && t0 + Duration::from_millis(events[i].0 * 10) <= cut {
                let at = t0 + Duration::from_millis(events[i].0 * 10);
                let (p, op) = match &events[i].1 {
                    Ev::Changed(p, w) => { cs.changed(&p.to_string(), *w, at); (p.to_string(), Op::Upsert) }
                    Ev::Closed(p) => {
                        cs.closed(&p.to_string(), at);
                        // A close does not change what happened to the path.
                        let op = owed.get(&p.to_string()).map_or(Op::Upsert, |o| o.1);
                        (p.to_string(), op)
                    }
                    Ev::Removed(p) => { cs.removed(&p.to_string(), at); (p.to_string(), Op::Delete) }
                };
                let e = owed.entry(p).or_insert((at, op));
                e.1 = op;
                i += 1;
            }
            for c in cs.take_due(cut, cut + tick, false) {
                if let Some((first, op)) = owed.remove(&c.path) {
                    prop_assert!(cut <= first + max, "{} taken {:?} after its change", c.path, cut - first);
                    prop_assert_eq!(c.op, op);
                }
            }
            for (p, (first, _)) in &owed {
                prop_assert!(cut + tick <= *first + max + tick, "{p} overdue");
            }
            cut += tick;
        }
    }
}
