//! [`Limits`]: how large a bundle, a part and a file may be, from the
//! sender's config narrowed to what each receiver accepts, and how large a
//! packing run's first bundle may grow. Pure.

use crate::proto::frame::Accepts;

/// Smallest part accepted: below this the per-part overhead dominates.
pub const MIN_CHUNK_SIZE: u64 = 4 << 10;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub chunk_size: u64,
    pub max_bundle_size: u64,
    /// Files, parts and deletions in one bundle (the receiver refuses more).
    pub max_entries: usize,
    /// Largest file a receiver accepts: a larger one cannot travel.
    pub max_file_size: u64,
    /// Content bytes one bundle may unpack to.
    pub max_unpacked: u64,
    /// How a packing run's first bundle is held while a link is not
    /// measured yet. `None`: the first is cut and packed as the others are.
    pub first_bundle: Option<FirstBundle>,
}

/// A packing run's first bundle held small, so it goes out soon and
/// measures a link not measured yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstBundle {
    /// It grows no larger than this, where it is smaller than
    /// `max_bundle_size`.
    pub max: u64,
    /// The files the run reads first, up to this many bytes (and no more
    /// than `max`), are stored, not deflated (one larger than what is left
    /// of them is deflated as usual), so a link that may not need deflate
    /// is measured before it is spent; 0: none. A hold that stored at
    /// least [`HOLD_MEASURES_FROM`] is sealed when its bytes are read, and
    /// waited for (`pack::Packer::await_measure`).
    pub stored: u64,
}

/// A first bundle held small that stored fewer bytes than this is not
/// sealed early nor waited for: too few to measure a link by. Each measure
/// needs 1 MiB (`sender::link_rate::DELIVERED_FROM`) and counts less than
/// the bundle: the sender's, only what was acknowledged before its write
/// returned (not what the socket buffers took); the receiver's, only what
/// came after its first read that had to wait.
pub const HOLD_MEASURES_FROM: u64 = 4 << 20;

impl Limits {
    /// The sender's own limits with no receiver's narrower ones applied.
    pub fn new(chunk_size: u64, max_bundle_size: u64, max_entries: usize) -> Self {
        Self {
            chunk_size,
            max_bundle_size,
            max_entries,
            max_file_size: u64::MAX,
            max_unpacked: u64::MAX,
            first_bundle: None,
        }
    }

    /// The limits a run's bundle is cut by: `first`, the run's first, may
    /// be held smaller ([`Limits::first_bundle`]).
    pub fn of_bundle(self, first: bool) -> Self {
        match self.first_bundle.filter(|_| first) {
            Some(FirstBundle { max, .. }) => Self {
                max_bundle_size: self.max_bundle_size.min(max),
                ..self
            },
            None => self,
        }
    }

    /// Narrowed to what a receiver accepts; parts shrink so two fit in one
    /// of its bundles.
    pub fn within(self, a: &Accepts) -> Self {
        let max_bundle_size = self.max_bundle_size.min(a.max_bundle_size);
        Self {
            chunk_size: self.chunk_size.min(max_bundle_size / 2).max(MIN_CHUNK_SIZE),
            max_bundle_size,
            max_entries: self
                .max_entries
                .min(usize::try_from(a.max_entries).unwrap_or(usize::MAX))
                .max(2),
            max_file_size: self.max_file_size.min(a.max_file_size),
            max_unpacked: self.max_unpacked.min(a.max_unpacked),
            first_bundle: self.first_bundle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(max_entries: u64, max_bundle_size: u64) -> Accepts {
        Accepts {
            max_entries,
            max_bundle_size,
            max_file_size: 1 << 30,
            max_unpacked: 1 << 31,
        }
    }

    #[test]
    fn a_receiver_narrows_the_limits_and_parts_fit_twice_in_its_bundles() {
        let l = Limits::new(64 << 20, 256 << 20, 10_000).within(&accepts(500, 32 << 20));
        assert_eq!(l.max_bundle_size, 32 << 20);
        assert_eq!(l.chunk_size, 16 << 20);
        assert_eq!(l.max_entries, 500);
        assert_eq!((l.max_file_size, l.max_unpacked), (1 << 30, 1 << 31));
    }

    #[test]
    fn a_wider_receiver_leaves_the_senders_limits() {
        let own = Limits::new(1 << 20, 8 << 20, 100);
        let l = own.within(&accepts(u64::MAX, u64::MAX));
        assert_eq!(
            (l.chunk_size, l.max_bundle_size, l.max_entries),
            (1 << 20, 8 << 20, 100)
        );
    }

    #[test]
    fn only_a_runs_first_bundle_is_held_to_the_first_bundle_max() {
        let held = |max| Some(FirstBundle { max, stored: 0 });
        let l = Limits {
            first_bundle: held(32 << 20),
            ..Limits::new(64 << 20, 256 << 20, 100)
        }
        .within(&accepts(u64::MAX, 128 << 20));
        assert_eq!(l.of_bundle(true).max_bundle_size, 32 << 20);
        assert_eq!(l.of_bundle(false).max_bundle_size, 128 << 20);
        assert_eq!(l.of_bundle(true).chunk_size, 64 << 20, "parts unchanged");
        let larger = Limits {
            first_bundle: held(1 << 30),
            ..l
        };
        assert_eq!(larger.of_bundle(true).max_bundle_size, 128 << 20);
        let unheld = Limits::new(64 << 20, 256 << 20, 100);
        assert_eq!(unheld.of_bundle(true).max_bundle_size, 256 << 20);
    }

    #[test]
    fn parts_and_entries_never_shrink_below_their_floors() {
        let l = Limits::new(1 << 20, 8 << 20, 100).within(&accepts(0, 1024));
        assert_eq!(l.chunk_size, MIN_CHUNK_SIZE);
        assert_eq!(l.max_entries, 2);
    }
}
