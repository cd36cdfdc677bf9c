//! An `Inquire`: root's listing for `shipper verify` (and, to the sender
//! a rollback released, the paths it brought back), hashed off the
//! runtime (see `receiver/root_hashes.rs`) and sent in `Listing` frames of
//! at most [`MAX_PAYLOAD`] each (a root can hold a million files), then
//! `Listed` (with how many other senders this root takes bundles from),
//! with pings while root is hashed. A root that cannot be listed is answered with a refusal
//! naming the path at fault. And a `Compared`: that sender compared its
//! source with root after the rollback, which is then forgotten. Nothing
//! here touches root or the sessions.

use std::net::SocketAddr;

use tracing::{info, warn};

use super::Sessions;
use crate::proto::connection::Stream;
use crate::proto::frame::{MAX_PAYLOAD, TOLD_ROLLED_BACK_FROM};
use crate::proto::hook_outcome::HookOutcome;
use crate::proto::refusal::Refusal;
use crate::proto::{APPLY_PING, Connection, Frame};
use crate::receiver::identity::Sender;
use crate::receiver::{rollback, root_hashes};

impl Sessions {
    /// The sender released from a rollback compared its source with root
    /// and shipped the difference: forget the rollback (and the paths it
    /// brought back), and say so with an `Ack` of the sequence it was
    /// rolled back to (0: there was none).
    pub(super) async fn compared(
        &self,
        conn: &mut Connection<Stream>,
        sender: &Sender,
    ) -> anyhow::Result<()> {
        let to = {
            let mut state = self.state.lock().await;
            let to = state.rolled_back.remove(&sender.key);
            if to.is_some() {
                let (snapshot, dir, key) = (
                    state.clone(),
                    self.cfg.state_dir.clone(),
                    sender.key.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    snapshot.save(&dir)?;
                    rollback::forget_restored(&dir, &key)
                })
                .await??;
                info!(%sender, to, "the sender released from a rollback compared its source with root and shipped the difference");
            }
            to
        };
        let hook = HookOutcome::NotRun;
        conn.write_frame(&Frame::Ack {
            seq: to.unwrap_or(0),
            hook,
        })
        .await?;
        Ok(())
    }

    /// Answer `sender`'s inquiry on `conn` with root's listing.
    pub(super) async fn answer_inquiry(
        &self,
        conn: &mut Connection<Stream>,
        sender: &Sender,
        (peer, speaks): (SocketAddr, u16),
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let (root, state_dir) = (self.cfg.root.clone(), self.cfg.state_dir.clone());
        let trees = self.committer.trees.clone();
        let work = tokio::task::spawn_blocking(move || {
            // Under `publish = "tree"`: the snapshot root points at now,
            // listed whole even if root moves on meanwhile.
            let root = match trees {
                Some(t) => t.current().map_err(std::io::Error::other)?.1,
                None => root,
            };
            root_hashes::list(&root, &state_dir)
        });
        // Hashing a large root for the first time takes a while: the sender
        // hears pings meanwhile, not silence.
        let (listed, pinged) = conn.ping_while(APPLY_PING, work).await;
        pinged?;
        let listed = listed?;
        let listing = match listed {
            Ok(l) => l,
            Err(e) => {
                warn!(%peer, %sender, error = %e, "cannot list root for verify");
                let reason = format!("cannot list root: {e}");
                conn.write_frame(&Frame::refuse(0, Refusal::retry(reason)))
                    .await?;
                return Ok(());
            }
        };
        let (files, hashed) = (listing.files.len() as u64, listing.hashed);
        for frame in listing_frames(listing.files) {
            conn.write_frame(&frame).await?;
        }
        if speaks >= TOLD_ROLLED_BACK_FROM {
            let (dir, key) = (self.cfg.state_dir.clone(), sender.key.clone());
            let restored =
                tokio::task::spawn_blocking(move || rollback::restored(&dir, &key)).await??;
            for frame in restored_frames(restored) {
                conn.write_frame(&frame).await?;
            }
        }
        let other_senders = {
            let state = self.state.lock().await;
            state.applied.keys().filter(|k| **k != sender.key).count() as u64
        };
        conn.write_frame(&Frame::Listed {
            files,
            hashed,
            other_senders,
        })
        .await?;
        let ms = started.elapsed().as_millis() as u64;
        info!(%peer, %sender, files, hashed, ms, "root listed for verify");
        Ok(())
    }
}

/// `paths` in `Restored` frames, each as full as [`MAX_PAYLOAD`] allows.
fn restored_frames(paths: Vec<String>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut batch = Vec::new();
    let mut used = 0;
    for path in paths {
        let len = 2 + path.len();
        if used + len > MAX_PAYLOAD {
            frames.push(Frame::Restored {
                paths: std::mem::take(&mut batch),
            });
            used = 0;
        }
        used += len;
        batch.push(path);
    }
    if !batch.is_empty() {
        frames.push(Frame::Restored { paths: batch });
    }
    frames
}

/// `files` in `Listing` frames, each as full as [`MAX_PAYLOAD`] allows.
fn listing_frames(files: Vec<(String, [u8; 32])>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut entries = Vec::new();
    let mut used = 0;
    for (path, hash) in files {
        let len = Frame::listed_len(&path);
        if used + len > MAX_PAYLOAD {
            frames.push(Frame::Listing {
                entries: std::mem::take(&mut entries),
            });
            used = 0;
        }
        used += len;
        entries.push((path, hash));
    }
    if !entries.is_empty() {
        frames.push(Frame::Listing { entries });
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root of many files goes in many frames, none over the limit
    /// (the peer would refuse it), together the whole listing in order.
    #[test]
    fn a_large_listing_goes_in_bounded_frames() {
        let files: Vec<(String, [u8; 32])> = (0..3000)
            .map(|i| (format!("{}/{i:06}.html", "d".repeat(200)), [i as u8; 32]))
            .collect();
        let frames = listing_frames(files.clone());
        assert!(frames.len() > 40, "{}", frames.len());
        let mut back = Vec::new();
        for f in frames {
            let bytes = f.to_bytes();
            assert!(bytes.len() <= crate::proto::frame::HEADER_LEN + MAX_PAYLOAD);
            assert_eq!(Frame::parse(&bytes).unwrap().unwrap().0, f);
            let Frame::Listing { entries } = f else {
                panic!("not a listing")
            };
            back.extend(entries);
        }
        assert_eq!(back, files);
        assert!(listing_frames(Vec::new()).is_empty());
    }
}
