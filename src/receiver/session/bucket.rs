//! Bundles taken from a bucket (`receiver.bucket`) instead of a
//! connection. Every `bucket_poll`, each allowed sender's folder is listed
//! past this receiver's position for that sender, and each seal its
//! course takes (the chain, or a base and the chain: see
//! [`crate::bucket::follow`]) is taken in sequence order: opened (made
//! with that sender's key, its signature holding), the bundle sealed
//! before it the last of its kind applied here, its course recorded
//! durably, its zip downloaded into `incoming/` and checked against the
//! seal; then it is applied, archived and hooked as a session's bundle is.
//! A receiver starting empty, or whose next bundle the sender let go,
//! takes the newest complete base. Nothing is acknowledged: the sender
//! counts a bundle shipped once it is in the bucket.
//!
//! What the bucket holds is not trusted. A seal that does not hold is
//! passed over, and read again only once it changes; a zip that is not
//! the one sealed, or a bundle refused for good, is downloaded again only
//! once its objects change (by their entity tags; at every poll where the
//! store gives none); what may pass
//! without them changing (a hold, a full disk, a zip not there yet) is
//! looked at again at every poll. Nothing of a sender after a bundle not
//! taken is applied meanwhile: the next seal names it as the one before.
//! Each reason is logged once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::halves::Taken as InIncoming;
use super::{SESSIONS, Sessions};
use crate::bucket::fetch::{BucketReader, Listed, SealNotHeld};
use crate::bucket::follow::{Base, Course, Start, Verdict, start};
use crate::bucket::names::{Kind, zip_name};
use crate::bucket::seal::{Belongs, Sealed};
use crate::bucket::store::Opened;
use crate::config::BucketConfig;
use crate::proto::refusal::RefusalKind;
use crate::receiver::identity::Sender;
use crate::receiver::names::incoming_name;
use crate::tls::Fingerprint;

/// Seals looked at per sender and poll; more wait for the next.
const SEALS_PER_POLL: usize = 1000;

/// A receiver's bucket: the client, where it is, how often to look.
pub(in crate::receiver) struct Relay {
    pub(in crate::receiver) opened: Opened,
    pub(in crate::receiver) cfg: BucketConfig,
    pub(in crate::receiver) poll: Duration,
}

impl Relay {
    fn reader(&self) -> BucketReader<'_> {
        BucketReader {
            opened: &self.opened,
            url: &self.cfg.url,
        }
    }
}

/// Why a bundle in the bucket was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Why {
    /// Its seal does not hold: it carries no authority, so it holds back
    /// nothing (the next genuine seal names the bundle sealed before it).
    Seal(SealNotHeld),
    /// A genuine bundle not taken (yet): nothing of its sender after it is.
    Bundle(String),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Seal(s) => s.fmt(f),
            Why::Bundle(s) => f.write_str(s),
        }
    }
}

/// A bundle not taken: why, and the entity tags of its seal and zip then
/// (`None` where the store gave none, or where the reason may pass without
/// the objects changing: looked at again at every poll).
struct NotTaken {
    why: Why,
    tags: (Option<String>, Option<String>),
}

impl NotTaken {
    /// Whether its objects are as they were when it was not taken: the
    /// seal alone for a seal that did not hold, seal and zip for a genuine
    /// bundle (never, where the store gives no tags).
    fn unchanged(&self, tags: &(Option<String>, Option<String>)) -> bool {
        let seal = self.tags.0.is_some() && self.tags.0 == tags.0;
        match &self.why {
            Why::Seal(_) => seal,
            Why::Bundle(_) => seal && self.tags.1.is_some() && self.tags.1 == tags.1,
        }
    }

    /// Whether the bundles of its sender after it wait for it.
    fn holds_back(&self) -> bool {
        matches!(self.why, Why::Bundle(_))
    }

    /// A seal `listed` that does not hold: opened again only once it
    /// changes (or at every poll, where the store gives no tags).
    fn seal(not: SealNotHeld, listed: &Listed) -> Self {
        let tag = listed.tag.clone().filter(|_| not.lasting());
        NotTaken {
            why: Why::Seal(not),
            tags: (tag, None),
        }
    }

    /// A genuine bundle not taken for what may change without its objects
    /// changing (a bundle uploaded, a release, disk freed): looked at
    /// again at every poll.
    fn every_poll(why: String) -> Self {
        NotTaken {
            why: Why::Bundle(why),
            tags: (None, None),
        }
    }
}

/// Whether the members of `base` this receiver still needs (past the
/// last it applied, on `course`) are gone from the bucket (a newer base
/// let them go): none of them among the `seals` listed, and the listing
/// reaches past the base's last member or is whole.
fn members_gone(seals: &[Listed], base: Base, course: Course) -> bool {
    let from = course.taking.map_or(0, |t| t.member).max(base.first - 1);
    let whole = seals.len() < SEALS_PER_POLL || seals.last().is_some_and(|l| l.seq >= base.last);
    from < base.last
        && whole
        && !seals
            .iter()
            .any(|l| l.kind == Kind::Member && (from + 1..=base.last).contains(&l.seq))
}

/// Why `sealed`, listed among the members of the `base` being taken,
/// belongs to another base (which an honest sender never makes).
fn of_another_base(base: Option<Base>, sealed: &Sealed) -> Option<String> {
    match (base, sealed.belongs) {
        (Some(b), Belongs::Base { first, .. }) if first != b.first => Some(format!(
            "a member of the base from {first}, inside the base from {} this receiver takes",
            b.first
        )),
        _ => None,
    }
}

/// What became of a listed seal.
enum Outcome {
    /// Its bundle is applied: the course from there.
    Applied(Course),
    /// Not taken (said why).
    NotTaken,
    /// A bundle of its kind before it is not here (why): sealed after
    /// `prev`, the bucket keeping every bundle from `kept_from` on, as it
    /// says.
    Missing {
        why: String,
        kind: Kind,
        prev: u64,
        kept_from: u64,
    },
}

/// What passes over the bucket found wrong, each said once until it
/// changes.
#[derive(Default)]
struct Said {
    /// The bucket itself could not be listed or read.
    bucket: Option<String>,
    /// Per sender and sequence, a bundle not taken.
    objects: HashMap<(Fingerprint, u64), NotTaken>,
}

impl Said {
    fn object(&mut self, key: (Fingerprint, u64), not: NotTaken, url: &str) {
        let said = self.objects.get(&key).is_some_and(|n| n.why == not.why);
        if !said {
            warn!(bucket = url, sender = %key.0, seq = key.1, reason = %not.why, "bundle in the bucket not taken; looked at again at the next poll, or once its objects change");
        }
        self.objects.insert(key, not);
    }

    /// Forget what is behind each sender's position now.
    fn prune(&mut self, position: impl Fn(&Fingerprint) -> u64) {
        self.objects.retain(|(f, seq), _| *seq > position(f));
    }
}

/// Why a pass over the bucket stopped short.
enum Stop {
    /// The bucket could not be listed or read: the next poll tries again.
    Bucket(String),
    /// Applying failed past a refusal (its task died): logged, and the
    /// next poll tries again.
    Apply(anyhow::Error),
}

impl Sessions {
    /// Take bundles from `relay` until `stop`.
    pub(in crate::receiver) async fn poll_bucket(
        self: Arc<Self>,
        relay: Relay,
        stop: CancellationToken,
    ) {
        let url = relay.cfg.url.to_string();
        let mut said = Said::default();
        info!(bucket = %url, poll = %crate::config::fmt_dur(relay.poll), "taking bundles from the bucket");
        loop {
            let pass = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.take_from_bucket(&relay, &mut said) => r,
            };
            match pass {
                Ok(()) => {
                    if said.bucket.take().is_some() {
                        info!(bucket = %url, "bucket readable again");
                    }
                }
                Err(Stop::Bucket(why)) => {
                    if said.bucket.as_ref() != Some(&why) {
                        warn!(bucket = %url, error = %why, "cannot read the bucket; trying again at each poll");
                        said.bucket = Some(why);
                    }
                }
                Err(Stop::Apply(e)) => {
                    warn!(bucket = %url, error = format!("{e:#}"), "applying a bundle from the bucket failed; trying again at the next poll");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(relay.poll) => {}
            }
        }
    }

    /// This receiver's course in each allowed sender's folder, at the
    /// last of its bundles applied here.
    async fn positions(&self) -> HashMap<Fingerprint, Course> {
        let allowed = self.cfg.tls.iter().flat_map(|t| t.allowed.clone());
        let state = self.state.lock().await;
        allowed
            .map(|f| {
                let key = f.to_string();
                let at = state.applied.get(&key).copied().unwrap_or(0);
                let log = state.course_logs.get(&key).map_or(&[][..], Vec::as_slice);
                let course = state.courses.get(&key).copied();
                (f, course.map_or(Course::at(at), |c| c.resume(at, log)))
            })
            .collect()
    }

    /// One pass: each allowed sender's seals past its position, in order.
    async fn take_from_bucket(&self, relay: &Relay, said: &mut Said) -> Result<(), Stop> {
        let positions = self.positions().await;
        said.prune(|f| positions.get(f).map_or(0, |c| c.at));
        for (sender, mut course) in positions {
            // Once more after starting from a base: it is taken at once.
            for _ in 0..2 {
                match self.take_course(relay, said, sender, course).await? {
                    Some(next) => course = next,
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Take `sender`'s seals past `course.at` that its course takes, in
    /// order; `Some`: it now starts from a base, from there.
    async fn take_course(
        &self,
        relay: &Relay,
        said: &mut Said,
        sender: Fingerprint,
        mut course: Course,
    ) -> Result<Option<Course>, Stop> {
        let reader = relay.reader();
        // Taking a base, nothing below its first member is needed.
        let base = course.base();
        let after = base.map_or(course.at, |b| course.at.max(b.first - 1));
        let seals = reader.seals_after(&sender, after, SEALS_PER_POLL).await;
        let seals = seals.map_err(Stop::Bucket)?;
        if base.is_none() && course.at == 0 {
            let first = seals.first().map(|l| l.kind);
            let newest = self.newest_base(relay, sender).await?;
            match self
                .start_at(relay, sender, (course, newest), (first, false))
                .await
            {
                Some(started) => return Ok(Some(started)),
                None if first == Some(Kind::Member) => return Ok(None),
                None => {}
            }
        }
        if let Some(b) = base
            && members_gone(&seals, b, course)
        {
            // Let go while this receiver took it: the newest, if newer.
            let newest = self.newest_base(relay, sender).await?;
            return Ok(self
                .start_at(relay, sender, (course, newest), (None, true))
                .await);
        }
        for listed in &seals {
            if !course.takes(listed.seq, listed.kind) {
                continue;
            }
            let key = (sender, listed.seq);
            match self
                .take_listed(relay, said, (sender, course), listed)
                .await?
            {
                Outcome::Applied(next) => course = next,
                Outcome::Missing {
                    why,
                    kind,
                    prev,
                    kept_from,
                } => {
                    // Let go by the sender (as this seal or the newest
                    // base's end says): a base. Else deleted by someone
                    // else, or not listed yet: waited for, never skipped.
                    let newest = self.newest_base(relay, sender).await?;
                    let kept_from = kept_from.max(newest.map_or(0, |(_, k)| k));
                    if course.let_go(kind, prev, kept_from) {
                        let started = self.start_at(relay, sender, (course, newest), (None, true));
                        if let Some(started) = started.await {
                            return Ok(Some(started));
                        }
                    }
                    said.object(key, NotTaken::every_poll(why), &relay.cfg.url.to_string());
                    break;
                }
                // Not taken: nothing of this sender after it is.
                Outcome::NotTaken if self.waits_on(said, sender, listed.seq) => break,
                Outcome::NotTaken => {}
            }
        }
        Ok(None)
    }

    /// Where a receiver on `course`, not taking a base, starts (see
    /// [`start`]), the newest complete base being `newest`: `Some` when
    /// from a base, recorded as its course.
    async fn start_at(
        &self,
        relay: &Relay,
        sender: Fingerprint,
        (course, newest): (Course, Option<(Base, u64)>),
        (first, behind): (Option<Kind>, bool),
    ) -> Option<Course> {
        let position = course.at;
        match start(position, newest.map(|(b, _)| b), first, behind) {
            Start::Base(b) => {
                info!(bucket = %relay.cfg.url, %sender, first = b.first, last = b.last, position, "taking this sender's newest base from the bucket, then its bundles after it");
                let mut course = course;
                course.take_base(b);
                self.set_course(&sender, course).await;
                Some(course)
            }
            Start::WaitForBase => {
                tracing::debug!(bucket = %relay.cfg.url, %sender, "waiting for this sender's first base to be complete in the bucket");
                None
            }
            Start::Chain => None,
        }
    }

    /// `sender`'s newest complete base in the bucket, the newest whose end
    /// holds (an end that does not is passed over), with what its end
    /// says the bucket keeps.
    async fn newest_base(
        &self,
        relay: &Relay,
        sender: Fingerprint,
    ) -> Result<Option<(Base, u64)>, Stop> {
        let reader = relay.reader();
        let bases = reader.bases(&sender).await.map_err(Stop::Bucket)?;
        for listed in bases.iter().rev() {
            let end = reader.open_base_end(&sender, listed).await;
            match end.map_err(Stop::Bucket)? {
                Ok(sealed) => {
                    let base = Base {
                        first: listed.first,
                        last: sealed.seq,
                    };
                    return Ok(Some((base, sealed.kept_from)));
                }
                Err(why) => {
                    tracing::debug!(%sender, first = listed.first, reason = %why, "a base's end in the bucket passed over");
                }
            }
        }
        Ok(None)
    }

    /// Save the state durably, off the runtime, the lock held so states
    /// are saved in order.
    async fn save_state(&self) -> anyhow::Result<()> {
        let state = self.state.lock().await;
        let (snapshot, dir) = (state.clone(), self.cfg.state_dir.clone());
        let saved = tokio::task::spawn_blocking(move || snapshot.save(&dir)).await?;
        drop(state);
        saved
    }

    /// Log `sender`'s `course` after a bundle applied, for a rollback to
    /// it: as many as a rollback can reach back (`rollback_keep`), at
    /// least one.
    async fn log_course(&self, sender: &Fingerprint, course: Course) {
        let keep = self.cfg.rollback_keep.max(1);
        let mut state = self.state.lock().await;
        let log = state.course_logs.entry(sender.to_string()).or_default();
        log.push(course);
        let over = log.len().saturating_sub(keep);
        log.drain(..over);
    }

    /// Record `sender`'s `course` in the state (saved with the next bundle
    /// applied, or by [`Self::save_state`]).
    async fn set_course(&self, sender: &Fingerprint, course: Course) {
        self.state
            .lock()
            .await
            .courses
            .insert(sender.to_string(), course);
    }

    /// Whether the bundle `seq` of `sender`, not taken, holds back the
    /// ones after it: a seal that did not open does not (it carries no
    /// authority, and the next genuine seal names the one before it).
    fn waits_on(&self, said: &Said, sender: Fingerprint, seq: u64) -> bool {
        said.objects
            .get(&(sender, seq))
            .is_some_and(NotTaken::holds_back)
    }

    /// Take the listed seal of `sender`, on `course` in its folder.
    async fn take_listed(
        &self,
        relay: &Relay,
        said: &mut Said,
        (sender, course): (Fingerprint, Course),
        listed: &Listed,
    ) -> Result<Outcome, Stop> {
        let base = course.base();
        let url = relay.cfg.url.to_string();
        let key = (sender, listed.seq);
        let reader = relay.reader();
        if self.not_taken_before(relay, said, sender, listed).await? {
            return Ok(Outcome::NotTaken);
        }
        let every_poll = NotTaken::every_poll;
        let opened = reader.open_seal(&sender, listed).await;
        let sealed = match opened.map_err(Stop::Bucket)? {
            Ok(s) => s,
            Err(not) => {
                said.object(key, NotTaken::seal(not, listed), &url);
                return Ok(Outcome::NotTaken);
            }
        };
        if let Some(why) = of_another_base(base, &sealed) {
            said.object(key, every_poll(why), &url);
            return Ok(Outcome::NotTaken);
        }
        let missing = || {
            format!(
                "bundle {} of this sender comes first and is not in the bucket",
                sealed.prev
            )
        };
        if course.verdict(listed.kind, sealed.prev) == Verdict::Wait {
            return Ok(Outcome::Missing {
                why: missing(),
                kind: listed.kind,
                prev: sealed.prev,
                kept_from: sealed.kept_from,
            });
        }
        // Recorded durably before the bundle is applied: a stop after it
        // is applied (or finished at the next start) resumes past it.
        let pending = Course {
            pending: Some((listed.seq, listed.kind)),
            ..course
        };
        self.set_course(&sender, pending).await;
        self.save_state().await.map_err(Stop::Apply)?;
        let taken = self.take_sealed(relay, &sealed).await;
        let mut course = course;
        let applied = matches!(taken, Ok(Taken::Applied));
        if applied {
            course.applied(listed.seq, listed.kind);
        }
        self.set_course(&sender, course).await;
        if applied {
            self.log_course(&sender, course).await;
        }
        let not = match taken? {
            Taken::Applied => {
                said.objects.remove(&key);
                return Ok(Outcome::Applied(course));
            }
            Taken::Not { why, lasting: None } => every_poll(why),
            Taken::Not {
                why,
                lasting: Some(zip_tag),
            } => NotTaken {
                why: Why::Bundle(why),
                tags: (listed.tag.clone(), zip_tag),
            },
        };
        said.object(key, not, &url);
        Ok(Outcome::NotTaken)
    }

    /// Whether the listed seal of `sender` was not taken before, for a
    /// reason that holds while its objects are unchanged, and they are.
    async fn not_taken_before(
        &self,
        relay: &Relay,
        said: &Said,
        sender: Fingerprint,
        listed: &Listed,
    ) -> Result<bool, Stop> {
        let Some(not) = said.objects.get(&(sender, listed.seq)) else {
            return Ok(false);
        };
        let zip_tag = match &not.why {
            Why::Seal(_) => None,
            // A HEAD only where the answer may matter.
            Why::Bundle(_) if not.tags.0.is_some() && not.tags.1.is_some() => {
                let reader = relay.reader();
                let zip = reader.object(&zip_name(&sender, listed.seq));
                reader.tag(&zip).await.map_err(Stop::Bucket)?
            }
            Why::Bundle(_) => None,
        };
        Ok(not.unchanged(&(listed.tag.clone(), zip_tag)))
    }

    /// Download, check and apply the bundle `sealed` names.
    async fn take_sealed(&self, relay: &Relay, sealed: &Sealed) -> Result<Taken, Stop> {
        let seq = sealed.seq;
        let reader = relay.reader();
        let zip = reader.object(&zip_name(&sealed.fingerprint, seq));
        if sealed.size > self.cfg.max_bundle_size {
            let why = format!(
                "bundle of {} bytes exceeds receiver.max_bundle_size ({} bytes)",
                sealed.size, self.cfg.max_bundle_size
            );
            // As lasting as the seal: its size is signed.
            let tag = reader.tag(&zip).await.map_err(Stop::Bucket)?;
            return Ok(Taken::Not {
                why,
                lasting: Some(tag),
            });
        }
        let sender = Sender::new(sealed.sender.clone(), Some(sealed.fingerprint));
        if let Some(hold) = self.state.lock().await.held.get(&sender.key) {
            // Not downloaded while it could not be applied.
            let why = super::super::rollback::held_reason(hold);
            return Ok(Taken::Not { why, lasting: None });
        }
        let session = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = InIncoming(self.incoming.join(incoming_name(&sender.key, seq, session)));
        let started = Instant::now();
        let downloaded = reader.download(&zip, &file.0, sealed.size).await;
        let got = match downloaded.map_err(Stop::Bucket)? {
            Ok(got) => got,
            Err(not) => {
                let lasting = not.lasting().then_some(None);
                return Ok(Taken::Not {
                    why: not.to_string(),
                    lasting,
                });
            }
        };
        if let Err(mismatch) = sealed.check_zip(got.size, &got.hash) {
            let why = format!("not the zip sealed: {mismatch}");
            return Ok(Taken::Not {
                why,
                lasting: Some(got.tag),
            });
        }
        let applied = self
            .apply_then_hook(&sender, seq, got.size, &file.0, started)
            .await
            .map_err(Stop::Apply)?;
        Ok(match applied {
            Ok(_) => Taken::Applied,
            Err(refusal) => Taken::Not {
                why: format!("refused: {refusal}"),
                // A refusal to ask again (a full disk, a hold) may pass.
                lasting: (refusal.kind != RefusalKind::Retry).then_some(got.tag),
            },
        })
    }
}

/// What became of a sealed bundle.
enum Taken {
    Applied,
    Not {
        why: String,
        /// `Some(zip's tag)`: not taken for as long as its objects are
        /// unchanged; `None`: looked at again at every poll.
        lasting: Option<Option<String>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_not_taken_waits_for_its_objects_to_change_only_when_both_are_tagged() {
        let tag = |t: &str| Some(t.to_owned());
        let not = |tags| NotTaken {
            why: Why::Bundle("not the zip sealed".into()),
            tags,
        };
        let lasting = not((tag("s1"), tag("z1")));
        assert!(lasting.unchanged(&(tag("s1"), tag("z1"))));
        assert!(
            !lasting.unchanged(&(tag("s1"), tag("z2"))),
            "the zip replaced"
        );
        assert!(
            !lasting.unchanged(&(tag("s2"), tag("z1"))),
            "the seal replaced"
        );
        assert!(!lasting.unchanged(&(tag("s1"), None)), "the zip gone");
        // Held, a full disk, a zip not there yet: at every poll.
        let every_poll = not((None, None));
        assert!(!every_poll.unchanged(&(None, None)));
        assert!(!not((tag("s1"), None)).unchanged(&(tag("s1"), None)));
    }

    #[test]
    fn a_seal_that_does_not_hold_holds_nothing_back_and_is_read_again_only_once_it_changes() {
        let tag = |t: &str| Some(t.to_owned());
        let refused = NotTaken {
            why: Why::Seal(SealNotHeld::Oversized(1 << 20)),
            tags: (tag("s1"), None),
        };
        assert!(!refused.holds_back(), "it carries no authority");
        assert!(refused.unchanged(&(tag("s1"), None)));
        assert!(
            refused.unchanged(&(tag("s1"), tag("z9"))),
            "its zip is not its concern"
        );
        assert!(!refused.unchanged(&(tag("s2"), None)), "the seal replaced");
        // A seal gone is not remembered by a tag: looked at every poll.
        assert!(!SealNotHeld::Gone.lasting());
        let bundle = NotTaken {
            why: Why::Bundle("refused: a full disk".into()),
            tags: (None, None),
        };
        assert!(bundle.holds_back(), "a genuine bundle keeps the order");
        assert_eq!(
            Why::Seal(SealNotHeld::Gone).to_string(),
            "seal refused: it is gone"
        );
    }
}
