//! The link rates a sender remembers across restarts, in
//! `state_dir/link-rates.json`: each receiver's two measures (the sender's
//! and the receiver's, see [`super::link_rate`]), each with when it was
//! taken, and whether the link stored (under `compress = "auto"`: a rate
//! between the two lines of [`super::link_rate::stores_at`] does not say),
//! under the receiver as configured (its address and its pinned
//! fingerprint). A restarted sender so neither deflates for a link it knows
//! is fast nor holds its first bundle small to measure it. Both measures
//! are kept, not the one that decides: behind a TCP-terminating proxy the
//! sender's measure is fast and the receiver's slow, and a restart that
//! kept only the slower would let the sender's next measure alone decide.
//!
//! A measure older than [`FORGET_AFTER`] is not remembered (links change);
//! a receiver whose address or fingerprint changed is measured anew; the
//! entries of receivers no longer configured are dropped at the next write.
//! A missing file is a first start; an unreadable or corrupt one is warned
//! of once and ignored: a link not remembered is measured again, nothing
//! worse. A link's measures are written again only when a measure is news
//! (see `super::link_rate::Measured`). [`decode`] and [`encode`] are pure,
//! the time handed in; [`Memory::load`] and its [`Remember::remember`] are
//! the only I/O (blocking).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::link_rate::{Link, Rate, Remember};
use crate::config::SenderConfig;
use crate::durable;

/// The file in the sender's state_dir.
pub(super) const FILE: &str = "link-rates.json";

/// A remembered measure older than this (seconds) is ignored: a link can
/// change (a new route, a moved receiver), and a week-old rate that is
/// wrong costs a whole first run packed for the wrong link. A measure
/// stamped this far in the future (a clock set back) is ignored too.
pub(super) const FORGET_AFTER: i64 = 7 * 24 * 3600;

/// A receiver as configured: a different address or fingerprint is a
/// different link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LinkKey {
    /// Its `sender.receiver` entry (`host:port`), as `receivers.json` names it.
    pub(super) receiver: String,
    /// Its pinned `sender.receiver_fingerprint`; `None` in plaintext.
    pub(super) fingerprint: Option<String>,
}

impl LinkKey {
    /// Each configured receiver's key, in the order of `sender.receiver`.
    pub(super) fn of(cfg: &SenderConfig) -> Vec<Self> {
        let pinned = |i: usize| cfg.tls.as_ref()?.receivers.get(i).map(|f| f.to_string());
        cfg.destinations()
            .iter()
            .enumerate()
            .map(|(i, receiver)| Self {
                receiver: receiver.clone(),
                fingerprint: pinned(i),
            })
            .collect()
    }
}

/// One measure as the file holds it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Kept {
    bytes_per_s: f64,
    /// Unix seconds.
    at: i64,
}

/// One link as the file holds it.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: LinkKey,
    sent: Option<Kept>,
    received: Option<Kept>,
    /// Whether the link stored when written; absent in files written
    /// before it was kept (then the rate alone decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stores: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RatesFile {
    links: Vec<Entry>,
}

/// The links the file's `bytes` remember for each of `keys` at `now`
/// (unix seconds): measures of other receivers, older than
/// [`FORGET_AFTER`] or not a rate at all are left out.
pub(super) fn decode(bytes: &[u8], keys: &[LinkKey], now: i64) -> serde_json::Result<Vec<Link>> {
    let file: RatesFile = serde_json::from_slice(bytes)?;
    let recall = |k: Option<Kept>| {
        k.filter(|k| k.bytes_per_s.is_finite() && k.bytes_per_s > 0.0)
            .filter(|k| now.abs_diff(k.at) <= FORGET_AFTER.unsigned_abs())
            .map(|k| Rate {
                bytes_per_s: k.bytes_per_s,
                at: k.at,
                fresh: false,
            })
    };
    let link = |key: &LinkKey| {
        let Some(e) = file.links.iter().find(|e| e.key == *key) else {
            return Link::default();
        };
        Link::remembered(recall(e.sent), recall(e.received), e.stores)
    };
    Ok(keys.iter().map(link).collect())
}

/// The file remembering `links`, each under its receiver's key in `keys`
/// (the same order); a link never measured is left out.
pub(super) fn encode(keys: &[LinkKey], links: &[Link]) -> Vec<u8> {
    let keep = |r: Option<Rate>| {
        r.map(|r| Kept {
            bytes_per_s: r.bytes_per_s,
            at: r.at,
        })
    };
    let links = keys
        .iter()
        .zip(links)
        .filter(|(_, l)| l.sent.is_some() || l.received.is_some())
        .map(|(key, l)| Entry {
            key: key.clone(),
            sent: keep(l.sent),
            received: keep(l.received),
            stores: Some(l.stores),
        })
        .collect();
    serde_json::to_vec_pretty(&RatesFile { links }).expect("link rates serialize")
}

/// Where the link rates are remembered, and for which receivers.
pub(super) struct Memory {
    path: PathBuf,
    keys: Vec<LinkKey>,
}

impl Memory {
    /// What `state_dir` remembers of the links to `keys` at `now` (unix
    /// seconds). Never fails: a file that cannot be read is warned of and
    /// every link measured anew. Blocking.
    pub(super) fn load(state_dir: &Path, keys: Vec<LinkKey>, now: i64) -> (Self, Vec<Link>) {
        let path = state_dir.join(FILE);
        let none = || vec![Link::default(); keys.len()];
        let links = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes, &keys, now).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(none()),
            Err(e) => Err(e.to_string()),
        };
        let links = links.unwrap_or_else(|error| {
            warn!(file = %path.display(), %error, "the remembered link rates cannot be read: ignored, every link is measured anew");
            none()
        });
        (Self { path, keys }, links)
    }
}

impl Remember for Memory {
    /// Replace the file with `links`, durably: a crash leaves the old
    /// rates or the new. The error names the file.
    fn remember(&self, links: &[Link]) -> std::io::Result<()> {
        let bytes = encode(&self.keys, links);
        durable::write_atomic(&self.path, &bytes)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const DAY: i64 = 24 * 3600;

    fn key(receiver: &str, fingerprint: Option<&str>) -> LinkKey {
        LinkKey {
            receiver: receiver.to_owned(),
            fingerprint: fingerprint.map(str::to_owned),
        }
    }

    fn measured(bytes_per_s: f64, at: i64) -> Option<Rate> {
        Some(Rate {
            bytes_per_s,
            at,
            fresh: true,
        })
    }

    #[test]
    fn both_measures_come_back_remembered_not_fresh() {
        let keys = [key("a:1", Some("fp-a")), key("b:1", None)];
        let links = [
            Link {
                sent: measured(1e9, NOW - DAY),
                received: measured(12e6, NOW),
                written: Some(NOW),
                stores: false,
                ..Link::default()
            },
            Link::default(),
        ];
        let back = decode(&encode(&keys, &links), &keys, NOW + DAY).unwrap();
        let a = back[0];
        assert_eq!(
            (a.sent.unwrap().bytes_per_s, a.sent.unwrap().at),
            (1e9, NOW - DAY)
        );
        assert_eq!(a.received.unwrap().bytes_per_s, 12e6);
        assert!(!a.sent.unwrap().fresh && !a.received.unwrap().fresh);
        assert_eq!(a.rate(), Some(12e6), "the slower still decides");
        assert_eq!(a.written, Some(NOW), "written at its newest measure");
        assert!(!a.stores, "remembered at 12 MB/s: deflates");
        assert_eq!(back[1], Link::default(), "never measured: not remembered");
    }

    #[test]
    fn a_receiver_with_another_address_or_fingerprint_is_measured_anew() {
        let was = [key("a:1", Some("fp-a"))];
        let links = [Link {
            sent: measured(1e9, NOW),
            ..Link::default()
        }];
        let bytes = encode(&was, &links);
        for now in [
            key("a:2", Some("fp-a")),
            key("a:1", Some("fp-b")),
            key("a:1", None),
        ] {
            let back = decode(&bytes, std::slice::from_ref(&now), NOW).unwrap();
            assert_eq!(back[0].rate(), None, "{now:?}");
        }
        let back = decode(&bytes, &[key("b:1", None), was[0].clone()], NOW).unwrap();
        assert_eq!(back[1].rate(), Some(1e9), "found by key, not by place");
    }

    /// A link that stores keeps storing after a restart at a rate between
    /// the lines (150-200 MB/s), and one that deflates keeps deflating; a
    /// file written before the choice was kept decides by the rate alone.
    #[test]
    fn the_choice_between_the_lines_survives_a_restart() {
        let keys = [key("a:1", None)];
        let at = |stores| Link {
            sent: measured(180e6, NOW),
            received: None,
            written: Some(NOW),
            stores,
            ..Link::default()
        };
        for stores in [true, false] {
            let back = decode(&encode(&keys, &[at(stores)]), &keys, NOW).unwrap()[0];
            assert_eq!(back.stores, stores, "at 180 MB/s");
        }
        let old = br#"{"links":[{"receiver":"a:1","fingerprint":null,"sent":{"bytes_per_s":180e6,"at":1700000000},"received":null}]}"#;
        assert!(!decode(old, &keys, NOW).unwrap()[0].stores);
        let old = br#"{"links":[{"receiver":"a:1","fingerprint":null,"sent":{"bytes_per_s":250e6,"at":1700000000},"received":null}]}"#;
        assert!(decode(old, &keys, NOW).unwrap()[0].stores);
    }

    #[test]
    fn a_measure_older_than_a_week_is_forgotten() {
        let keys = [key("a:1", None)];
        let links = [Link {
            sent: measured(1e9, NOW - FORGET_AFTER - 1),
            received: measured(5e8, NOW - FORGET_AFTER),
            written: None,
            stores: true,
            ..Link::default()
        }];
        let back = decode(&encode(&keys, &links), &keys, NOW).unwrap()[0];
        assert_eq!(back.sent, None, "a week and a second old");
        assert_eq!(back.rate(), Some(5e8), "a week old, just");
        assert!(back.stores, "remembered at 500 MB/s: stores");
        let future = [Link {
            sent: measured(1e9, NOW + FORGET_AFTER + 1),
            ..Link::default()
        }];
        let back = decode(&encode(&keys, &future), &keys, NOW).unwrap()[0];
        assert_eq!(back.rate(), None, "stamped by a clock far ahead");
    }

    #[test]
    fn receivers_no_longer_configured_are_dropped_when_written() {
        let old = [key("gone:1", None), key("kept:1", None)];
        let links = [Link {
            sent: measured(1e9, NOW),
            ..Link::default()
        }; 2];
        let kept = [key("kept:1", None)];
        let remembered = decode(&encode(&old, &links), &kept, NOW).unwrap();
        let text = String::from_utf8(encode(&kept, &remembered)).unwrap();
        assert!(
            !text.contains("gone:1") && text.contains("kept:1"),
            "{text}"
        );
    }

    #[test]
    fn a_file_that_is_not_rates_is_an_error_and_nonsense_rates_are_left_out() {
        let keys = [key("a:1", None)];
        assert!(decode(b"{\"links\": [", &keys, NOW).is_err());
        assert!(decode(b"[]", &keys, NOW).is_err());
        let odd = br#"{"links": [{"receiver": "a:1", "fingerprint": null,
            "sent": {"bytes_per_s": -5.0, "at": 1700000000},
            "received": {"bytes_per_s": 0.0, "at": 1700000000}}]}"#;
        assert_eq!(decode(odd, &keys, NOW).unwrap()[0].rate(), None);
    }

    /// Loading never fails a start: a missing file is nothing remembered,
    /// a corrupt one is warned of (naming it) and ignored; a write brings
    /// the rates back.
    #[test]
    fn a_missing_or_corrupt_file_remembers_nothing_and_a_write_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let keys = vec![key("a:1", None)];
        let (memory, links) = Memory::load(dir.path(), keys.clone(), NOW);
        assert_eq!(links, [Link::default()]);
        std::fs::write(dir.path().join(FILE), b"\0garbage").unwrap();
        let (_, links) = Memory::load(dir.path(), keys.clone(), NOW);
        assert_eq!(links, [Link::default()]);
        let measured = Link {
            received: measured(3e8, NOW),
            ..Link::default()
        };
        memory.remember(&[measured]).unwrap();
        let (_, links) = Memory::load(dir.path(), keys, NOW + DAY);
        assert_eq!(links[0].rate(), Some(3e8));
    }
}
