//! The receiver: accept senders, take bundles, verify, apply, archive, ack.
//!
//! A bundle is streamed into `state_dir/incoming` while its BLAKE3 is
//! computed; its size and hash must match the trailer before it is opened.
//! Bundles are applied one at a time, in sequence order per sender; a
//! sequence already applied is acknowledged again without being applied.
//! The applied sequence is stored durably before the acknowledgement. One
//! process at a time uses a state_dir ([`StateLock`]).
//!
//! With keys a sender *is* its certificate fingerprint: its applied
//! sequence, part sets and bundle file names are keyed by it, and the id it
//! sends in Hello is a label (which its manifests must repeat). Two senders
//! configured with one id are still two senders. Without keys (loopback
//! only) the id is all there is and keys that state.
//!
//! A session pings its sender while a bundle is applied and answers the
//! sender's pings between bundles; one the sender leaves silent for
//! [`SESSION_IDLE`] is ended (see [`crate::proto`]'s liveness rules).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bundle::apply::{self, Target};
use crate::bundle::manifest::{next_seq, valid_sender_id};
use crate::config::ReceiverConfig;
use crate::durable;
use crate::places;
use crate::proto::connection::{Stream, set_liveness};
use crate::proto::frame::PROTOCOL_VERSION;
use crate::proto::frame::{Accepts, Refusal, RefusalKind};
use crate::proto::{APPLY_PING, Connection, Frame, SESSION_IDLE};
use crate::tls::Fingerprint;

/// A new connection has this long for its TLS handshake and `Hello`
/// together; a silent one does not hold a slot longer.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections not yet identified (in their handshake or before `Hello`)
/// at once; past this, new connections are closed as soon as accepted, so
/// idle or slow clients cannot run the receiver out of file descriptors.
const MAX_UNIDENTIFIED: usize = 64;
/// Identified sessions at once (there is one per sender identity).
const MAX_SESSIONS: usize = 256;
/// Numbers sessions, so two sessions never share a file name.
static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the receiver keeps across restarts: the last sequence applied per
/// sender by [`Sender::key`], and the instance this state belongs to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReceiverState {
    pub applied: BTreeMap<String, u64>,
    /// Made when the state is first written; a wiped or rebuilt receiver
    /// has a new one, which tells senders to bring it the whole tree.
    #[serde(default)]
    pub instance: String,
}

/// Who sent a session's bundles.
#[derive(Debug, Clone)]
struct Sender {
    /// The id from Hello.
    id: String,
    fingerprint: Option<Fingerprint>,
    /// Keys all per-sender state: the fingerprint with keys, the id without.
    key: String,
}

impl Sender {
    fn new(id: String, fingerprint: Option<Fingerprint>) -> Self {
        let key = fingerprint.map_or_else(|| id.clone(), |f| f.to_string());
        Self {
            id,
            fingerprint,
            key,
        }
    }
}

impl std::fmt::Display for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fingerprint {
            Some(fp) => write!(f, "{} (fingerprint {fp})", self.id),
            None => f.write_str(&self.id),
        }
    }
}

impl ReceiverState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("receiver.json")
    }

    /// Load, giving the state an instance id (saved) if it has none yet.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let mut state = Self::load(state_dir)?;
        if instance_bytes(&state.instance).is_none() {
            let mut h = blake3::Hasher::new();
            h.update(
                format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes(),
            );
            h.update(state_dir.as_os_str().as_encoded_bytes());
            state.instance = h.finalize().to_hex()[..32].to_string();
            state.save(state_dir)?;
        }
        Ok(state)
    }

    /// `seq` of the sender keyed `key` is applied: keep the highest.
    pub fn record_applied(&mut self, key: &str, seq: u64) {
        let e = self.applied.entry(key.to_owned()).or_default();
        *e = (*e).max(seq);
    }

    /// The instance id as sent in `Welcome`.
    pub fn instance(&self) -> [u8; 16] {
        instance_bytes(&self.instance).unwrap_or_default()
    }

    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{}: corrupt receiver state", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(state_dir);
        durable::write_atomic(&path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Removes its session from the table when the session ends (unless a
/// newer one took the place already).
struct SessionGuard {
    receiver: Arc<Receiver>,
    key: String,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut table = self
            .receiver
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if table.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            table.remove(&self.key);
        }
    }
}

/// One process at a time writes a receiver's state_dir and the root it
/// serves: held by a running receiver for as long as it runs, and by
/// `shipper replay --config`. An advisory lock (flock) on
/// `state_dir/receiver.lock`, released by the kernel when its holder
/// exits, however it exits; the file holds the holder's pid for the
/// message of the one refused.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("receiver.lock")
    }

    /// Take the lock of `state_dir`, or refuse at once naming its holder.
    pub fn acquire(state_dir: &Path) -> anyhow::Result<Self> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path(state_dir);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                anyhow::bail!(
                    "{}: a receiver is running with this state_dir (pid {})",
                    state_dir.display(),
                    pid.trim()
                );
            }
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("locking {}", path.display()));
            }
        }
        // Only informs whoever is refused next: no fsync.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { _file: file })
    }
}

pub struct Receiver {
    cfg: ReceiverConfig,
    /// Mutual TLS with the allowed senders; `None` for plaintext on loopback.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The blocking half: verify, publish, archive.
    committer: Arc<Committer>,
    incoming: PathBuf,
    /// Held while a bundle is applied: one at a time, state and root agree.
    state: Mutex<ReceiverState>,
    /// The live session of each sender (by key): its id and stop token.
    sessions: std::sync::Mutex<std::collections::HashMap<String, (u64, CancellationToken)>>,
    /// No other receiver or replay writes state_dir while this one lives.
    _lock: StateLock,
}

/// The target a receiver config describes, directories created. Refused,
/// before anything is created, when two of its directories overlap.
pub fn target_for(cfg: &ReceiverConfig) -> anyhow::Result<Target> {
    places::check(&cfg.dirs(cfg.staging_dir.as_deref()))?;
    durable::private_dir(&cfg.state_dir, "receiver.state_dir").map_err(anyhow::Error::msg)?;
    // Whoever can write the archive chooses what a replay rebuilds root from.
    durable::private_dir(&cfg.archive_dir, "receiver.archive_dir").map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&cfg.root)
        .with_context(|| format!("creating {}", cfg.root.display()))?;
    let staging = match &cfg.staging_dir {
        Some(s) => s.clone(),
        None => {
            // The default depends on where the created directories landed.
            let s = apply::default_staging(&cfg.root, &cfg.state_dir);
            places::check(&cfg.dirs(Some(&s)))?;
            s
        }
    };
    let target = Target {
        root: cfg.root.clone(),
        staging,
        parts: cfg.state_dir.join("parts"),
    };
    target.prepare().context("preparing receiver directories")?;
    Ok(target)
}

impl Receiver {
    /// Prepare directories and bind the listening socket. The bound address
    /// is written to `state_dir/listen.addr` (useful with port 0).
    pub async fn bind(cfg: ReceiverConfig) -> anyhow::Result<(Arc<Self>, TcpListener)> {
        let target = target_for(&cfg)?;
        // Before anything in state_dir or root is cleaned, finished or served.
        let lock = StateLock::acquire(&cfg.state_dir)?;
        let incoming = cfg.state_dir.join("incoming");
        std::fs::create_dir_all(&incoming)
            .with_context(|| format!("creating {}", incoming.display()))?;
        // Half-received bundles from an earlier run are useless: the sender re-sends.
        places::remove_own(&incoming, is_incoming_name)?;
        let mut state = ReceiverState::load_or_create(&cfg.state_dir)?;
        target.clean_staging().context("cleaning staging")?;
        let publishing = cfg.state_dir.join("publishing");
        std::fs::create_dir_all(&publishing)
            .with_context(|| format!("creating {}", publishing.display()))?;
        let committer = Arc::new(Committer::new(&cfg, &target));
        committer.recover(&mut state, &cfg.state_dir)?;
        committer.expire_part_sets();
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("receiver.listen: cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        durable::write_atomic(
            &cfg.state_dir.join("listen.addr"),
            addr.to_string().as_bytes(),
        )
        .context("writing listen.addr")?;
        let tls = match &cfg.tls {
            Some(t) => {
                let me = crate::tls::load_identity(&t.key_dir).context("receiver.key_dir")?;
                info!(me = %me.fingerprint, allowed = t.allowed.len(), "TLS: only the allowed senders may connect");
                Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                    &me,
                    t.allowed.clone(),
                )?))
            }
            None => {
                warn!(%addr, "no keys configured: plaintext, allowed on loopback only");
                None
            }
        };
        info!(%addr, root = %cfg.root.display(), "receiver listening");
        Ok((
            Arc::new(Self {
                tls,
                cfg,
                committer,
                incoming,
                state: Mutex::new(state),
                sessions: Default::default(),
                _lock: lock,
            }),
            listener,
        ))
    }

    /// Accept senders until `shutdown`; returns once every session has
    /// ended, so the receiver (and its [`StateLock`]) is let go with it.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let unidentified = Arc::new(tokio::sync::Semaphore::new(MAX_UNIDENTIFIED));
        let mut turned_away: u64 = 0;
        let mut reported = Instant::now() - Duration::from_secs(3600);
        let tracker = tokio_util::task::TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = unidentified.clone().try_acquire_owned() else {
                // Closed at once: its descriptor is freed now, not after a timeout.
                drop(stream);
                turned_away += 1;
                if reported.elapsed() > Duration::from_secs(60) {
                    warn!(%peer, turned_away, limit = MAX_UNIDENTIFIED, "too many connections still in their handshake: closing new ones until some finish or time out");
                    reported = Instant::now();
                }
                continue;
            };
            let me = self.clone();
            let stop = shutdown.child_token();
            tracker.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = me.clone().session(stream, peer, slot, stop.clone()) => if let Err(e) = r {
                        warn!(%peer, error = format!("{e:#}"), "session ended");
                    },
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Serve one connection. `slot` is held until the peer has said who it
    /// is; `stop` ends this session (a newer one from the same sender
    /// replaces it).
    async fn session(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: tokio::sync::OwnedSemaphorePermit,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let identify = tokio::time::Instant::now() + HELLO_TIMEOUT;
        let _ = stream.set_nodelay(true);
        if let Err(e) = set_liveness(&stream, SESSION_IDLE) {
            warn!(%peer, error = %e, "cannot set TCP keepalive; relying on the idle limit alone");
        }
        // An unknown or wrong peer is turned away here, before any frame.
        let (stream, fingerprint): (Stream, _) = match &self.tls {
            Some(acceptor) => {
                match tokio::time::timeout_at(identify, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        // The allowed certificate it presented is who it is.
                        let Some(cert) =
                            tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                        else {
                            anyhow::bail!("{peer} presented no certificate");
                        };
                        let fp = Fingerprint::of(cert);
                        (Box::new(tls), Some(fp))
                    }
                    Ok(Err(e)) => anyhow::bail!("TLS handshake refused: {e}"),
                    Err(_) => anyhow::bail!("TLS handshake timed out"),
                }
            }
            None => (Box::new(stream), None),
        };
        let mut conn = Connection::new(stream).with_peer_timeout(SESSION_IDLE);
        let left = identify.saturating_duration_since(tokio::time::Instant::now());
        let sender = match conn.expect_frame_within(left).await? {
            Frame::Hello { version, sender }
                if version == PROTOCOL_VERSION && valid_sender_id(&sender) =>
            {
                Sender::new(sender, fingerprint)
            }
            Frame::Hello { version, sender } => {
                let reason = if version != PROTOCOL_VERSION {
                    format!(
                        "protocol version {version} not supported (this receiver speaks {PROTOCOL_VERSION})"
                    )
                } else {
                    format!("sender id {sender:?} is not valid")
                };
                conn.write_frame(&Refusal::permanent(None, reason.clone()).frame(0))
                    .await?;
                anyhow::bail!("refused {peer}: {reason}");
            }
            other => anyhow::bail!("{peer} did not start with hello: {other:?}"),
        };
        drop(slot);
        let registered = self.register(&sender, peer, stop)?;
        let (last, instance) = {
            let state = self.state.lock().await;
            let last = state.applied.get(&sender.key).copied().unwrap_or(0);
            (last, state.instance())
        };
        conn.write_frame(&Frame::Welcome {
            last_applied: last,
            instance,
            accepts: Accepts {
                max_entries: self.cfg.limits.max_entries as u64,
                max_bundle_size: self.cfg.max_bundle_size,
                max_file_size: self.cfg.limits.max_file_size,
                max_unpacked: self.cfg.limits.max_unpacked,
            },
        })
        .await?;
        info!(%peer, %sender, last_applied = last, "sender connected");
        let session = registered.id;
        while let Some(frame) = conn.read_frame().await? {
            if frame == Frame::Ping {
                conn.write_frame(&Frame::Ping).await?;
                continue;
            }
            let Frame::Bundle { seq, size } = frame else {
                anyhow::bail!("{peer}: expected a bundle, got {frame:?}");
            };
            if size > self.cfg.max_bundle_size {
                let reason = format!(
                    "bundle of {size} bytes exceeds receiver.max_bundle_size ({} bytes)",
                    self.cfg.max_bundle_size
                );
                conn.write_frame(&Refusal::permanent(None, reason.clone()).frame(seq))
                    .await?;
                anyhow::bail!("{peer}: {reason}");
            }
            let started = Instant::now();
            // Named for this session too: a session whose sender vanished
            // mid-bundle may still hold its file when the re-send arrives.
            let received = self.incoming.join(incoming_name(&sender.key, seq, session));
            let (answer, alive) = match self.receive(&mut conn, seq, size, &received).await {
                Ok(Ok(())) => {
                    // Applying can take long: ping meanwhile, so the sender
                    // can tell a busy receiver from a dead connection.
                    let apply = self.apply_received(&sender, seq, &received);
                    conn.ping_while(APPLY_PING, apply).await
                }
                Ok(Err(reason)) => (Ok(Err(reason)), Ok(())),
                Err(e) => (Err(e), Ok(())),
            };
            let _ = tokio::fs::remove_file(&received).await;
            alive?;
            match answer? {
                Ok(applied) => {
                    if let Some(a) = applied {
                        info!(%sender, seq, files = a.summary.files, deletions = a.summary.deletions, bytes = a.summary.bytes, ms = started.elapsed().as_millis() as u64, "bundle applied");
                    }
                    conn.write_frame(&Frame::Ack { seq }).await?;
                }
                Err(refusal) => {
                    let permanent = refusal.kind == RefusalKind::Permanent;
                    warn!(%peer, %sender, seq, reason = %refusal, path = refusal.path.as_deref().unwrap_or(""), permanent, "bundle refused");
                    conn.write_frame(&refusal.frame(seq)).await?;
                }
            }
        }
        info!(%peer, %sender, "sender disconnected");
        Ok(())
    }

    /// Receive one bundle body and its trailer into `received` and check them.
    /// The outer error ends the session (stream out of step); the inner one
    /// is a refusal.
    async fn receive(
        &self,
        conn: &mut Connection<Stream>,
        seq: u64,
        size: u64,
        received: &Path,
    ) -> anyhow::Result<Result<(), Refusal>> {
        let started = std::time::Instant::now();
        let (hash, write_error) = conn.recv_body(size, received).await?;
        tracing::debug!(
            seq,
            size,
            ms = started.elapsed().as_millis() as u64,
            "bundle received"
        );
        let Frame::Trailer {
            size: t_size,
            hash: t_hash,
        } = conn.expect_frame().await?
        else {
            anyhow::bail!("expected a trailer after bundle {seq}");
        };
        if let Some(e) = write_error {
            return Ok(Err(Refusal::retry(refusal_for_io(&e, received))));
        }
        if t_size != size || t_hash != *hash.as_bytes() {
            // Damaged on the way: the next copy may arrive whole.
            return Ok(Err(Refusal::retry(format!(
                "bundle {seq} failed its trailer check (size {size} vs {t_size}, hash {} vs {})",
                hash.to_hex(),
                blake3::Hash::from_bytes(t_hash).to_hex()
            ))));
        }
        Ok(Ok(()))
    }

    /// Apply the received bundle at `received`, in sequence order, unless it
    /// already was. The outer error ends the session; the inner one is a
    /// refusal.
    async fn apply_received(
        &self,
        sender: &Sender,
        seq: u64,
        received: &Path,
    ) -> anyhow::Result<Result<Option<apply::Applied>, Refusal>> {
        let mut state = self.state.lock().await;
        let last = state.applied.get(&sender.key).copied().unwrap_or(0);
        if seq <= last {
            info!(%sender, seq, "already applied; acknowledging again");
            return Ok(Ok(None));
        }
        if next_seq(last) != Ok(seq) && last > 0 {
            // Normal when a sender ships a whole tree to another receiver.
            tracing::debug!(
                %sender,
                seq,
                last,
                "sequence gap: bundles in between were not for this receiver or never arrived"
            );
        }
        let me = self.committer.clone();
        let (sender_owned, received_path) = (sender.clone(), received.to_path_buf());
        let started = std::time::Instant::now();
        let result =
            tokio::task::spawn_blocking(move || me.commit(&received_path, &sender_owned, seq))
                .await
                .context("apply task")?;
        tracing::debug!(
            seq,
            ms = started.elapsed().as_millis() as u64,
            "bundle verified and applied"
        );
        match result {
            Ok(applied) => {
                state.applied.insert(sender.key.clone(), seq);
                // Durable before the acknowledgement; the fsync runs off the
                // runtime, the lock held so states are saved in order.
                let (snapshot, dir) = (state.clone(), self.cfg.state_dir.clone());
                let saved = tokio::task::spawn_blocking(move || snapshot.save(&dir))
                    .await
                    .context("state task")?;
                if let Err(e) = saved {
                    return Ok(Err(Refusal::retry(format!("{e:#}"))));
                }
                // Still under the state lock: publishing/ holds at most the
                // bundle being applied, so a crash never leaves an older
                // bundle there behind a newer one.
                let me = self.committer.clone();
                let name = archive_name(&sender.key, seq);
                tokio::task::spawn_blocking(move || me.archive_published(&name))
                    .await
                    .context("archive task")?;
                drop(state);
                Ok(Ok(Some(applied)))
            }
            Err(reason) => Ok(Err(reason)),
        }
    }

    /// Make this the one session of `sender`, ending an older one (a
    /// sender that reconnected after a connection went silent). Refused
    /// past [`MAX_SESSIONS`]. The session leaves the table when the returned
    /// guard drops.
    fn register(
        self: &Arc<Self>,
        sender: &Sender,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> anyhow::Result<SessionGuard> {
        let mut table = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if !table.contains_key(&sender.key) && table.len() >= MAX_SESSIONS {
            anyhow::bail!("{peer}: {MAX_SESSIONS} sessions already open; refusing {sender}");
        }
        let id = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((_, old)) = table.insert(sender.key.clone(), (id, stop)) {
            info!(%peer, %sender, "a newer session from this sender replaces the older one");
            old.cancel();
        }
        Ok(SessionGuard {
            receiver: self.clone(),
            key: sender.key.clone(),
            id,
        })
    }
}

fn instance_bytes(hex: &str) -> Option<[u8; 16]> {
    let bytes = data_encoding::HEXLOWER.decode(hex.as_bytes()).ok()?;
    bytes.try_into().ok()
}

/// How a bundle is named in `publishing/` and the archive: by the key of
/// its sender ([`Sender::key`]) and its sequence.
pub fn archive_name(key: &str, seq: u64) -> String {
    format!("{key}-{seq:020}.zip")
}

/// The sender key and sequence in a name made by [`archive_name`]; `None`
/// for any other name, or a key that is not safe in a file name.
pub fn parse_archive_name(name: &str) -> Option<(&str, u64)> {
    let (key, seq) = name.strip_suffix(".zip")?.rsplit_once('-')?;
    if seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) || !valid_sender_id(key) {
        return None;
    }
    Some((key, seq.parse().ok()?))
}

/// True for names [`archive_name`] gives: only these are pruned from the
/// archive or finished from `publishing`.
fn is_archive_name(name: &str) -> bool {
    parse_archive_name(name).is_some()
}

fn incoming_name(sender: &str, seq: u64, session: u64) -> String {
    format!("{sender}-{seq}-{session}.zip.part")
}

/// True for names [`incoming_name`] gives, and for the session-less
/// `{sender}-{seq}.zip.part` of earlier versions.
fn is_incoming_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".zip.part") else {
        return false;
    };
    let with_session = stem
        .rsplit_once('-')
        .filter(|(_, s)| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|(stem, _)| sender_and_seq(stem));
    with_session.is_some() || sender_and_seq(stem).is_some()
}

/// Split `{sender}-{digits}` into a valid sender id and its digits.
fn sender_and_seq(stem: &str) -> Option<(&str, &str)> {
    let (sender, seq) = stem.rsplit_once('-')?;
    let digits = !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit());
    (digits && valid_sender_id(sender)).then_some((sender, seq))
}

fn refusal_for_io(e: &std::io::Error, path: &Path) -> String {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    if matches!(e.kind(), StorageFull | QuotaExceeded) {
        format!("receiver disk full: {}: {e}", path.display())
    } else {
        format!("receiver cannot store the bundle: {}: {e}", path.display())
    }
}

/// The blocking half of applying: the write-ahead record, the apply itself,
/// and the archive.
struct Committer {
    target: Target,
    /// Holds the bundle being published: found here at start, it is
    /// applied again before anything newer is taken, or only archived if
    /// its sequence was recorded before the crash.
    publishing: PathBuf,
    archive_dir: PathBuf,
    archive_keep: usize,
    limits: apply::Limits,
    part_ttl: Duration,
}

impl Committer {
    fn new(cfg: &ReceiverConfig, target: &Target) -> Self {
        Self {
            target: target.clone(),
            publishing: cfg.state_dir.join("publishing"),
            archive_dir: cfg.archive_dir.clone(),
            archive_keep: cfg.archive_keep,
            limits: cfg.limits,
            part_ttl: cfg.part_ttl,
        }
    }

    /// Verify and apply the received bundle at `received`.
    fn commit(
        &self,
        received: &Path,
        sender: &Sender,
        seq: u64,
    ) -> Result<apply::Applied, Refusal> {
        let mut opened = apply::open(received, &self.limits).map_err(|e| e.refusal())?;
        if opened.manifest.sender != sender.id || opened.manifest.seq != seq {
            return Err(Refusal::permanent(
                None,
                format!(
                    "manifest says sender {:?} sequence {}, the stream said {:?} {seq}",
                    opened.manifest.sender, opened.manifest.seq, sender.id
                ),
            ));
        }
        // Record what is about to be published before root changes, so a
        // crash part-way is finished at the next start. (The opened bundle
        // follows its file to the new name: it is not opened again.)
        let wal = self.publishing.join(archive_name(&sender.key, seq));
        let io = |e: std::io::Error| Refusal::retry(refusal_for_io(&e, &wal));
        // Not fsynced: if a crash tears it, recovery refuses it and the
        // sender, never having had an acknowledgement, sends it again.
        std::fs::rename(received, &wal).map_err(io)?;
        durable::sync_dir(&self.publishing).map_err(io)?;
        let target = self.target.for_sender(&sender.key);
        opened.path = wal.clone();
        let result = apply::apply(&target, opened);
        // After the apply, which refreshed the sets this bundle continued.
        self.expire_part_sets();
        result.map_err(|e| {
            // apply put root back as it was: nothing is left to finish.
            let _ = std::fs::remove_file(&wal);
            e.refusal()
        })
    }

    /// Remove the part sets of every sender that no bundle added to for
    /// `part_ttl` (each removal is logged with its set).
    fn expire_part_sets(&self) {
        let now = std::time::SystemTime::now();
        apply::expire_part_sets(&self.target.parts, self.part_ttl, now);
    }

    /// Move the published bundle from the write-ahead slot to the archive.
    fn archive_published(&self, name: &str) {
        let src = self.publishing.join(name);
        if let Err(e) = archive(&src, &self.archive_dir, name, self.archive_keep) {
            warn!(error = format!("{e:#}"), "archiving the bundle failed");
        }
        let _ = std::fs::remove_file(&src);
    }

    /// Finish bundles whose publish a crash interrupted. Blocking; run at
    /// start before any sender is accepted. A crash is finished, not
    /// undone: what the interrupted publish kept aside went with staging,
    /// and applying again is what the sender, never acknowledged, asks for.
    fn recover(&self, state: &mut ReceiverState, state_dir: &Path) -> anyhow::Result<()> {
        let mut pending: Vec<PathBuf> = std::fs::read_dir(&self.publishing)?
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_archive_name))
            .map(|e| e.path())
            .collect();
        pending.sort();
        for wal in pending {
            let name = wal
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            // Named by commit() after the sender it came from.
            let Some((key, seq)) = parse_archive_name(&name) else {
                warn!(bundle = %wal.display(), "not a bundle name this receiver writes; removed");
                let _ = std::fs::remove_file(&wal);
                continue;
            };
            // Recorded, so published whole before a crash kept it from the
            // archive; newer bundles may have been applied since, and
            // applying this one again would roll their files back.
            if state.applied.get(key).is_some_and(|&last| seq <= last) {
                info!(sender = key, seq, "archiving a bundle already applied");
                self.archive_published(&name);
                continue;
            }
            match apply::open(&wal, &self.limits).and_then(|b| {
                let seq = b.manifest.seq;
                apply::apply(&self.target.for_sender(key), b).map(|a| (seq, a))
            }) {
                Ok((seq, a)) => {
                    info!(
                        sender = key,
                        seq,
                        files = a.published,
                        "finished a bundle whose publish was interrupted"
                    );
                    state.record_applied(key, seq);
                    state.save(state_dir)?;
                    self.archive_published(&name);
                }
                Err(e) => {
                    warn!(bundle = %wal.display(), error = %e, "could not finish an interrupted bundle; the sender will re-send it");
                    let _ = std::fs::remove_file(&wal);
                }
            }
        }
        Ok(())
    }
}

/// Keep the applied bundle in `dir` and prune shipper's bundles there to
/// the newest `keep`; other files in `dir` are not counted or touched.
fn archive(src: &Path, dir: &Path, name: &str, keep: usize) -> anyhow::Result<()> {
    let dest = dir.join(name);
    // The archive is a convenience for replay; a copy torn by a crash is
    // refused by replay's checks, so it is not worth an fsync per bundle.
    if keep > 0 && std::fs::rename(src, &dest).is_err() {
        std::fs::copy(src, &dest).with_context(|| format!("copying to {}", dest.display()))?;
    }
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_archive_name))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    entries.sort();
    let excess = entries.len().saturating_sub(keep);
    for (_, p) in entries.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Run the receiver until `shutdown`.
pub async fn run(cfg: ReceiverConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (r, listener) = Receiver::bind(cfg).await?;
    r.serve(listener, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_keys_a_sender_is_its_fingerprint_whatever_its_id() {
        let (fa, fb) = (Fingerprint::of(b"cert a"), Fingerprint::of(b"cert b"));
        let (a, b) = (
            Sender::new("cms".into(), Some(fa)),
            Sender::new("cms".into(), Some(fb)),
        );
        assert_ne!(a.key, b.key);
        assert_eq!(a.key, fa.to_string());
        assert_eq!(a.to_string(), format!("cms (fingerprint {fa})"));
        // Without keys the id is all there is, as receiver.json always had it.
        let plain = Sender::new("cms".into(), None);
        assert_eq!(
            (plain.key.as_str(), plain.to_string()),
            ("cms", "cms".into())
        );
    }

    #[test]
    fn archive_names_give_back_their_sender_and_sequence() {
        let fp = Fingerprint::of(b"cert").to_string();
        for (key, seq) in [("cms", 1), ("a-b.c", 42), (fp.as_str(), u64::MAX)] {
            assert_eq!(
                parse_archive_name(&archive_name(key, seq)),
                Some((key, seq))
            );
        }
        for name in [
            "cms-1.zip",
            "cms-00000000000000000001.zip.part",
            "00000000000000000001.zip",
            "-00000000000000000001.zip",
            "a/b-00000000000000000001.zip",
            "cms-0000000000000000000x.zip",
            "cms-99999999999999999999.zip",
        ] {
            assert_eq!(parse_archive_name(name), None, "{name}");
        }
    }

    #[test]
    fn only_names_shipper_gives_are_its_own() {
        assert!(is_archive_name(&archive_name("web-1.example", 7)));
        assert!(is_incoming_name(&incoming_name("web-1", 7, 3)));
        for other in [
            "backup-2019.zip",
            "web-00000000000000000007.zip.bak",
            "has space-00000000000000000007.zip",
            "-00000000000000000007.zip",
            "web-0000000000000000000x.zip",
        ] {
            assert!(!is_archive_name(other), "{other}");
        }
        for other in [
            "notes.zip.part",
            "web-.zip.part",
            "web-7.zip",
            "web-7-.zip.part",
        ] {
            assert!(!is_incoming_name(other), "{other}");
        }
    }
}
