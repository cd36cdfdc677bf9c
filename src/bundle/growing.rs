//! A bundle while it is packed, as a transport follows it to send it
//! before it is sealed: how many bytes of its file are final, and how it
//! ended (sealed under its sequence, or abandoned).
//!
//! Bytes are final once the zip writer will never go back before them.
//! zip goes back only to patch the local header of the entry it finishes
//! (`finish_file`, called by the next `start_file`, `add_prepared_file`
//! or `finish`) and, in `abort_file`, to the header of the entry being
//! written. The bundle's writer has zip flush at the end of every entry,
//! and its file publishes its position at each flush (`writer.rs`): every
//! byte before it belongs to finished entries. The property test below
//! checks that every prefix published is a prefix of the sealed file.
//!
//! The packer's thread publishes; a reader's thread waits with a timeout.
//! Nothing here touches the network.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where a bundle being packed stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Being packed: its first `final_len` bytes will not change.
    Packing { final_len: u64 },
    /// Sealed as bundle `seq` of `size` bytes, and recorded by the sender
    /// as on its way: every byte is final.
    Sealed { seq: u64, size: u64 },
    /// Given up (its packing failed, or nothing was left in it): it will
    /// never be sealed.
    Abandoned,
}

/// A bundle being packed, shared by its writer and those following it.
#[derive(Debug)]
pub struct Growing {
    /// The bundle's file, open for reading at any offset (a renamed or
    /// removed file stays readable through it).
    file: File,
    /// The most bytes it may come to (its run's `max_bundle_size`).
    max_size: u64,
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Growing {
    /// A bundle of at most `max_size` bytes about to be written into
    /// `file` (a handle of its own).
    pub fn new(file: File, max_size: u64) -> Arc<Self> {
        Arc::new(Self {
            file,
            max_size,
            progress: Mutex::new(Progress::Packing { final_len: 0 }),
            changed: Condvar::new(),
        })
    }

    /// The most bytes it may come to.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    pub fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, to: impl FnOnce(Progress) -> Progress) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let next = to(*p);
        if next != *p {
            *p = next;
            self.changed.notify_all();
        }
    }

    /// The writer's file is at `pos` at the end of an entry: every byte
    /// before it is final. Never moves back.
    pub(crate) fn publish(&self, pos: u64) {
        self.set(|p| match p {
            Progress::Packing { final_len } => Progress::Packing {
                final_len: final_len.max(pos),
            },
            done => done,
        });
    }

    fn end(&self, how: Progress) {
        self.set(|p| match p {
            Progress::Packing { .. } => how,
            done => done,
        });
    }

    /// Wait, up to `deadline`, until more than `have` bytes are final or
    /// the bundle ended; then (or at the deadline) where it stands.
    pub fn wait_past(&self, have: u64, deadline: Instant) -> Progress {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *p {
                Progress::Packing { final_len } if final_len <= have => {}
                other => return other,
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return *p;
            };
            p = self
                .changed
                .wait_timeout(p, left.max(Duration::from_micros(1)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Fill `buf` with the bundle's bytes from `offset`; only final bytes
    /// are worth reading. Blocking.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// The writer's hold on a [`Growing`]: it seals it, or, dropped without
/// sealing it (an error anywhere on the way), abandons it, so no
/// follower waits for a bundle that will never come.
#[derive(Debug)]
pub struct Publisher(Arc<Growing>);

impl Publisher {
    pub fn new(growing: Arc<Growing>) -> Self {
        Self(growing)
    }

    pub fn growing(&self) -> &Arc<Growing> {
        &self.0
    }

    /// The bundle is sealed as `seq`, `size` bytes, and recorded as on its
    /// way: its followers may send its end.
    pub fn seal(self, seq: u64, size: u64) {
        self.0.end(Progress::Sealed { seq, size });
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.0.end(Progress::Abandoned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn growing() -> (tempfile::NamedTempFile, Arc<Growing>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let g = Growing::new(f.reopen().unwrap(), 1 << 20);
        (f, g)
    }

    #[test]
    fn what_is_published_only_grows_and_ends_once() {
        let (_f, g) = growing();
        g.publish(10);
        g.publish(4);
        assert_eq!(g.progress(), Progress::Packing { final_len: 10 });
        let p = Publisher::new(g.clone());
        p.seal(7, 12);
        g.publish(20);
        g.end(Progress::Abandoned);
        assert_eq!(g.progress(), Progress::Sealed { seq: 7, size: 12 });
    }

    #[test]
    fn a_publisher_dropped_unsealed_abandons_its_bundle() {
        let (_f, g) = growing();
        drop(Publisher::new(g.clone()));
        assert_eq!(g.progress(), Progress::Abandoned);
    }

    #[test]
    fn a_wait_returns_at_its_deadline_or_once_bytes_come_from_another_thread() {
        let (_f, g) = growing();
        let now = Instant::now();
        assert_eq!(g.wait_past(0, now), Progress::Packing { final_len: 0 });
        let writer = {
            let g = g.clone();
            std::thread::spawn(move || g.publish(5))
        };
        let far = Instant::now() + Duration::from_secs(600);
        assert_eq!(g.wait_past(0, far), Progress::Packing { final_len: 5 });
        writer.join().unwrap();
        // Already past: no wait at all.
        assert_eq!(g.wait_past(4, far), Progress::Packing { final_len: 5 });
    }
}
