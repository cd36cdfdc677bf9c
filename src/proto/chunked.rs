//! A bundle body as a receiver takes it in, pure (no socket, time
//! injected): its running size against the receiver's limit when it comes
//! in chunks of sizes known one at a time ([`Tally`]), and the time the
//! link took to bring it ([`PaceClock`]), which leaves out the waits the
//! sender spent packing.

use std::time::{Duration, Instant};

/// A read of a body that waited this long found the socket's buffers
/// empty: from then on, bytes come at the link's pace, and timing them
/// measures it. (Timing from the first byte would count what the buffers
/// held, megabytes on a link behind a proxy, as if it came at once.) A
/// body that never waits came faster than it could be timed.
pub const PACED_WAIT: Duration = Duration::from_millis(1);

/// The bytes a streamed body announced so far, within a limit.
#[derive(Debug)]
pub struct Tally {
    limit: u64,
    size: u64,
}

/// A chunk would take a streamed body past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a streamed bundle passed {limit} bytes (at least {at} bytes)")]
pub struct OverLimit {
    pub limit: u64,
    pub at: u64,
}

impl Tally {
    pub fn new(limit: u64) -> Self {
        Self { limit, size: 0 }
    }

    /// A chunk of `len` more bytes announced: refused before any of it is
    /// read when the body would pass the limit.
    pub fn chunk(&mut self, len: u32) -> Result<(), OverLimit> {
        let at = self.size.saturating_add(u64::from(len));
        if at > self.limit {
            return Err(OverLimit {
                limit: self.limit,
                at,
            });
        }
        self.size = at;
        Ok(())
    }

    /// The bytes announced so far.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// How long the link took to bring a body. A run opens at the first read
/// that waited ([`PACED_WAIT`]) and takes in every byte after it, across
/// the chunks of a stream, until a chunk the sender did not have yet when
/// it sent the one before (not paced): the wait before that chunk was the
/// sender's packer, not the link, so it closes the run. Within that chunk
/// (its bytes follow its header at once) a new run may open. The runs add
/// up. A body of known size is one run.
#[derive(Debug, Default)]
pub struct PaceClock {
    bytes: u64,
    took: Duration,
    run: Option<Run>,
}

#[derive(Debug)]
struct Run {
    from: Instant,
    bytes: u64,
    last: Instant,
}

impl PaceClock {
    /// A chunk of a stream begins; `paced` as its frame says.
    pub fn chunk(&mut self, paced: bool) {
        if !paced {
            self.close();
        }
    }

    /// A read of `n` body bytes, asked for at `asked` and done at `done`.
    pub fn read(&mut self, n: u64, asked: Instant, done: Instant) {
        match &mut self.run {
            Some(run) => {
                run.bytes += n;
                run.last = done;
            }
            None if done.saturating_duration_since(asked) >= PACED_WAIT => {
                self.run = Some(Run {
                    from: asked,
                    bytes: n,
                    last: done,
                });
            }
            None => {}
        }
    }

    fn close(&mut self) {
        if let Some(run) = self.run.take() {
            self.bytes += run.bytes;
            self.took += run.last.saturating_duration_since(run.from);
        }
    }

    /// The bytes timed and the time they took, once the body is whole;
    /// `None` when no read waited.
    pub fn timed(mut self) -> Option<(u64, Duration)> {
        self.close();
        (self.bytes > 0).then_some((self.bytes, self.took))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        static ZERO: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *ZERO.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn a_tally_refuses_the_chunk_that_would_pass_the_limit_and_keeps_the_rest() {
        let mut t = Tally::new(10);
        assert_eq!(t.chunk(4), Ok(()));
        assert_eq!(t.chunk(6), Ok(()));
        assert_eq!(t.size(), 10);
        assert_eq!(t.chunk(1), Err(OverLimit { limit: 10, at: 11 }));
        assert_eq!(t.size(), 10);
        let mut t = Tally::new(u64::MAX - 1);
        t.size = u64::MAX - 2;
        assert!(t.chunk(u32::MAX).is_err(), "no overflow past the limit");
    }

    #[test]
    fn reads_that_never_wait_time_nothing() {
        let mut c = PaceClock::default();
        c.read(100, at(0), at(0));
        c.read(100, at(0), at(0));
        assert_eq!(c.timed(), None);
    }

    /// As a body of known size is timed: from the first read that waited,
    /// every byte after it, to the last.
    #[test]
    fn a_run_opens_at_the_first_read_that_waited_and_ends_at_the_last_byte() {
        let mut c = PaceClock::default();
        c.read(1000, at(0), at(0));
        c.read(10, at(0), at(5));
        c.read(10, at(5), at(5));
        c.read(30, at(6), at(20));
        assert_eq!(c.timed(), Some((50, Duration::from_millis(20))));
    }

    /// The wait before a chunk the sender did not have yet is the
    /// packer's: it ends the run and is not counted; the link's time to
    /// bring that chunk's own bytes is, and paced chunks after it go on
    /// the same run.
    #[test]
    fn a_chunk_not_paced_closes_the_run_and_the_wait_before_it_is_not_counted() {
        let mut c = PaceClock::default();
        c.chunk(true);
        c.read(10, at(0), at(10));
        c.read(10, at(10), at(20));
        // The sender waited on its packer for a second before this chunk;
        // its header came at 1020, its bytes in 5 ms after.
        c.chunk(false);
        c.read(10, at(1020), at(1025));
        c.chunk(true);
        c.read(40, at(1025), at(1040));
        c.read(40, at(1040), at(1060));
        assert_eq!(c.timed(), Some((110, Duration::from_millis(20 + 40))));
    }

    #[test]
    fn chunks_whose_bytes_never_wait_time_nothing_whatever_the_gaps_between() {
        let mut c = PaceClock::default();
        c.chunk(false);
        c.read(10, at(500), at(500));
        c.chunk(false);
        c.read(10, at(900), at(900));
        assert_eq!(c.timed(), None);
    }
}
