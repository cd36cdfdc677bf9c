//! Following a bundle as it is packed ([`Growing`]), to send it before it
//! is sealed: a blocking thread reads its final bytes in chunks, hashes
//! them, and hands them to the session's task, then its end. What to do
//! next at each step is pure ([`plan`]); the session's side is
//! `exchange::send_growing`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::bundle::growing::{Growing, Progress};

/// Chunks are as large as a sealed body's when the packer is ahead;
/// smaller when the follower caught up with it and waited [`LINGER`].
const CHUNK: u64 = crate::proto::connection::CHUNK as u64;
/// Once some bytes are final, how long the follower waits for a whole
/// chunk before it sends what there is: the packer writes a megabyte in a
/// few milliseconds, so chunks stay whole, yet a slow packer's bytes still
/// flow.
const LINGER: Duration = Duration::from_millis(10);
/// How long the follower waits for the packer before it looks again
/// whether the session still wants its chunks.
const RECHECK: Duration = Duration::from_secs(1);

/// What the follower hands the session, in order.
#[derive(Debug)]
pub(super) enum Piece {
    /// The next bytes of the body; `paced`: they were final before the
    /// follower asked for them (it did not wait on the packer).
    Chunk(Vec<u8>, bool),
    /// The bundle was sealed as `seq` of `size` bytes, all of them handed
    /// on, whose BLAKE3 is `hash`.
    End { seq: u64, size: u64, hash: [u8; 32] },
    /// The packer gave the bundle up.
    Abandoned,
    /// Reading the bundle's file failed.
    Failed(std::io::Error),
}

/// The next step for a follower that handed on `sent` bytes of a bundle
/// standing at `p`; `whole`: only a whole chunk is worth sending while the
/// bundle is packed.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Send(u64),
    Wait,
    End { seq: u64, size: u64 },
    Abandon,
}

fn plan(p: Progress, sent: u64, whole: bool) -> Plan {
    match p {
        Progress::Packing { final_len } if final_len >= sent + CHUNK => Plan::Send(CHUNK),
        Progress::Packing { final_len } if final_len > sent && !whole => {
            Plan::Send(final_len - sent)
        }
        Progress::Packing { .. } => Plan::Wait,
        Progress::Sealed { size, .. } if size > sent => Plan::Send(CHUNK.min(size - sent)),
        Progress::Sealed { seq, size } if size == sent => Plan::End { seq, size },
        // Sent more than it came to: what was sent was not this bundle.
        Progress::Sealed { .. } | Progress::Abandoned => Plan::Abandon,
    }
}

/// Follow `g` on a blocking thread, handing its pieces to the returned
/// channel until its end (or until the channel is dropped). Read buffers
/// come back through `spent`.
pub(super) fn follow(
    g: Arc<Growing>,
    spent: std::sync::mpsc::Receiver<Vec<u8>>,
) -> mpsc::Receiver<Piece> {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let mut sent = 0u64;
        // Whether the follower waited on the packer since the last piece.
        let mut waited = false;
        while !tx.is_closed() {
            let (step, paced) = match plan(g.progress(), sent, true) {
                Plan::Wait => {
                    // Wait for anything new (nothing yet: look at the
                    // channel again), then a little for a whole chunk.
                    waited = true;
                    let p = g.wait_past(sent, Instant::now() + RECHECK);
                    if plan(p, sent, false) == Plan::Wait {
                        continue;
                    }
                    let p = g.wait_past(sent + CHUNK - 1, Instant::now() + LINGER);
                    (plan(p, sent, false), false)
                }
                step => (step, !waited),
            };
            waited = false;
            let piece = match step {
                Plan::Wait => continue,
                Plan::Send(len) => {
                    let mut buf = spent.try_recv().unwrap_or_default();
                    buf.resize(len as usize, 0);
                    if let Err(e) = g.read_at(&mut buf, sent) {
                        let _ = tx.blocking_send(Piece::Failed(e));
                        return;
                    }
                    hasher.update(&buf);
                    sent += len;
                    Piece::Chunk(buf, paced)
                }
                Plan::End { seq, size } => {
                    let hash = *hasher.finalize().as_bytes();
                    let _ = tx.blocking_send(Piece::End { seq, size, hash });
                    return;
                }
                Plan::Abandon => {
                    let _ = tx.blocking_send(Piece::Abandoned);
                    return;
                }
            };
            if tx.blocking_send(piece).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packing(final_len: u64) -> Progress {
        Progress::Packing { final_len }
    }

    #[test]
    fn whole_chunks_while_the_packer_is_ahead_and_what_there_is_after_waiting() {
        assert_eq!(plan(packing(3 * CHUNK), CHUNK, true), Plan::Send(CHUNK));
        assert_eq!(plan(packing(CHUNK + 5), CHUNK, true), Plan::Wait);
        assert_eq!(plan(packing(CHUNK + 5), CHUNK, false), Plan::Send(5));
        assert_eq!(plan(packing(CHUNK), CHUNK, false), Plan::Wait);
    }

    #[test]
    fn a_sealed_bundle_is_sent_to_its_size_then_ended_and_an_abandoned_one_given_up() {
        let sealed = Progress::Sealed {
            seq: 4,
            size: 2 * CHUNK + 3,
        };
        assert_eq!(plan(sealed, 0, true), Plan::Send(CHUNK));
        assert_eq!(plan(sealed, 2 * CHUNK, true), Plan::Send(3));
        assert_eq!(
            plan(sealed, 2 * CHUNK + 3, true),
            Plan::End {
                seq: 4,
                size: 2 * CHUNK + 3
            }
        );
        assert_eq!(plan(sealed, 3 * CHUNK, true), Plan::Abandon);
        assert_eq!(plan(Progress::Abandoned, 7, false), Plan::Abandon);
    }

    /// A packer thread writing a file and publishing what is final as it
    /// goes, then sealing: the follower hands on exactly the file's bytes,
    /// in order, then its end with their hash.
    #[tokio::test]
    async fn a_follower_hands_on_every_byte_of_a_growing_file_then_its_end() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.zip");
        let mut file = std::fs::File::create(&path).unwrap();
        let g = Growing::new(std::fs::File::open(&path).unwrap(), 1 << 30);
        let body = crate::bundle::noise(3 * CHUNK as usize + 12345, 9);
        let (_spent_tx, spent) = std::sync::mpsc::channel();
        let mut rx = follow(g.clone(), spent);
        let publisher = crate::bundle::growing::Publisher::new(g.clone());
        let writer = {
            let body = body.clone();
            std::thread::spawn(move || {
                for piece in body.chunks(300_001) {
                    file.write_all(piece).unwrap();
                    publisher.growing().publish(file.metadata().unwrap().len());
                    std::thread::sleep(Duration::from_millis(3));
                }
                publisher.seal(12, body.len() as u64);
            })
        };
        let mut got = Vec::new();
        let end = loop {
            match rx.recv().await.expect("the follower ended without its end") {
                Piece::Chunk(b, _) => got.extend(b),
                other => break other,
            }
        };
        writer.join().unwrap();
        assert_eq!(got, body);
        match end {
            Piece::End { seq, size, hash } => {
                assert_eq!((seq, size), (12, body.len() as u64));
                assert_eq!(hash, *blake3::hash(&body).as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
}
