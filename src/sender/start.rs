//! Start-up: the state directory opened (`sender.json`, the ledger, what
//! is known of the receivers and of their links' rates, the outbox emptied
//! of what a restart drops),
//! the handles the packer and the transports share, one transport per
//! receiver, and the metrics endpoint.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::SenderConfig;
use crate::durable;
use crate::ledger::Ledger;
use crate::peers::Peers;
use crate::status::{LinkStatus, StatusReport};

use super::cut::Handles;
use super::link_memory::{LinkKey, Memory};
use super::link_rate::LinkRates;
use super::outbox::{Outbox, outbox_budget};
use super::report::Links;
use super::shipped::Shipped;
use super::signatures::{SignatureStore, Signer};
use super::state::SenderState;
use super::transport::{Bucket, Link, TransportEvent, transport};
use crate::state_lock::StateLock;

/// The sender's state directory, opened.
pub(super) struct Stores {
    pub(super) state_dir: PathBuf,
    outbox_dir: PathBuf,
    pub(super) state: SenderState,
    /// `sender.json` was created now: no sequence was numbered yet.
    pub(super) fresh: bool,
    ledger: Ledger,
    shipped: Shipped,
    peers: Peers,
    link_rates: LinkRates,
}

/// Check the configured directories, create the state directory, and
/// take its lock, before anything in it is read or cleaned: a second
/// sender started on it would remove the first one's bundles and files in
/// use. Held for as long as the sender runs.
pub(super) fn lock_state_dir(cfg: &SenderConfig) -> anyhow::Result<StateLock> {
    crate::places::check(&cfg.dirs())?;
    durable::private_dir(&cfg.state_dir, "sender.state_dir").map_err(anyhow::Error::msg)?;
    StateLock::acquire(&cfg.state_dir, "sender")
}

/// The state directory's canonical path (it exists once locked): what the
/// watch never reports when it lies inside the source.
pub(super) fn canonical_state_dir(cfg: &SenderConfig) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(&cfg.state_dir)
        .with_context(|| format!("sender.state_dir {}", cfg.state_dir.display()))
}

/// Open what the state directory keeps (at `state_dir`, its canonical
/// path); its lock is held. Blocking: at a million files the acknowledged
/// state takes about a second to load.
pub(super) fn open_stores(cfg: &SenderConfig, state_dir: PathBuf) -> anyhow::Result<Stores> {
    let outbox_dir = state_dir.join("outbox");
    std::fs::create_dir_all(&outbox_dir)
        .with_context(|| format!("creating {}", outbox_dir.display()))?;
    // Bundles not acknowledged before a restart are dropped: the catch-up
    // finds their changes again by comparing with the ledger.
    crate::places::remove_own(&outbox_dir, crate::bundle::pack::is_outbox_name)?;
    // What a crash left mid-write (a compaction's snapshot can be 150 MB
    // at a million files); nothing else writes here yet.
    crate::places::remove_own(&state_dir, durable::is_temp_name)?;
    let (state, fresh) = SenderState::load_or_create(&state_dir, cfg.id.as_deref())?;
    let began = std::time::Instant::now();
    let mut ledger = Ledger::open(&state_dir)
        .with_context(|| format!("reading acknowledged state in {}", state_dir.display()))?;
    let in_doubt: BTreeSet<String> = ledger.in_doubt().map(str::to_owned).collect();
    let files = ledger.take_files();
    let ms = began.elapsed().as_millis() as u64;
    info!(files = files.len(), ms, "acknowledged state loaded");
    if !in_doubt.is_empty() {
        info!(
            paths = in_doubt.len(),
            "bundles went out unacknowledged before the last stop: their paths are shipped again"
        );
    }
    let shipped = Shipped::loaded(files, in_doubt);
    // Created for a first start; once something was shipped, a missing
    // source is held, never replaced by an empty one.
    if shipped.is_empty() {
        std::fs::create_dir_all(&cfg.source)
            .with_context(|| format!("creating {}", cfg.source.display()))?;
    }
    let peers = Peers::load(&state_dir).with_context(|| {
        format!(
            "reading what is known of the receivers in {}",
            state_dir.display()
        )
    })?;
    let link_rates = remembered_rates(cfg, &state_dir);
    Ok(Stores {
        state_dir,
        outbox_dir,
        state,
        fresh,
        ledger,
        shipped,
        peers,
        link_rates,
    })
}

/// The link rates `state_dir` remembers for the configured receivers,
/// each said in the log: they decide until the link is measured anew.
fn remembered_rates(cfg: &SenderConfig, state_dir: &std::path::Path) -> LinkRates {
    let now = crate::status::unix_now();
    let (memory, links) = Memory::load(state_dir, LinkKey::of(cfg), now);
    for (receiver, link) in cfg.destinations().iter().zip(&links) {
        let Some(rate) = link.rate() else { continue };
        let hours_old = link.written.map_or(0, |w| (now - w).max(0) / 3600);
        info!(
            peer = %receiver,
            mb_per_s = (rate / 1e6).round(),
            deflate_pays = !link.stores,
            hours_old,
            "link rate remembered from an earlier run (until the link is measured again; deflate_pays says this link's)"
        );
    }
    LinkRates::remembering(Box::new(memory), links)
}

/// A receiver's TLS client config (its fingerprint pinned); none without keys.
pub(super) type TlsConfig = Option<Arc<rustls::ClientConfig>>;

/// The TLS client config for each receiver. Reads the key_dir.
fn client_configs(cfg: &SenderConfig) -> anyhow::Result<Vec<TlsConfig>> {
    let identity = match &cfg.tls {
        Some(t) => Some(crate::tls::load_identity(&t.key_dir).context("sender.key_dir")?),
        None => {
            warn!("no keys configured: sending in plaintext, allowed on loopback only");
            None
        }
    };
    let mut out = Vec::new();
    for (i, receiver) in cfg.receivers.iter().enumerate() {
        out.push(match (&identity, &cfg.tls) {
            (Some(me), Some(t)) => {
                info!(me = %me.fingerprint, receiver = %receiver, pinned = %t.receivers[i], "TLS: receiver pinned by fingerprint");
                Some(crate::tls::client_config(me, t.receivers[i])?)
            }
            _ => None,
        });
    }
    Ok(out)
}

/// One transport per receiver, and one for the bucket, each with its own
/// position, backoff and status: a slow or dead one holds back no other. Returns their
/// links, as each reports its status, their tasks, and the TLS config of
/// each (for `shipper verify`'s connections).
pub(super) fn spawn_transports(
    cfg: &SenderConfig,
    h: &Handles,
    id: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Links, Vec<JoinHandle<()>>, Vec<TlsConfig>)> {
    let configs = client_configs(cfg)?;
    // Each receiver, then the bucket, as `cfg.destinations()` numbers them.
    let mut ends: Vec<(TlsConfig, Option<Arc<Bucket>>)> =
        configs.iter().map(|tls| (tls.clone(), None)).collect();
    if let Some(b) = &cfg.bucket {
        ends.push((None, Some(open_bucket(cfg, b, h.bases.clone())?)));
    }
    let mut statuses = Vec::new();
    let mut tasks = Vec::new();
    for ((index, name), (tls, bucket)) in cfg.destinations().into_iter().enumerate().zip(ends) {
        let (status_tx, status_rx) = watch::channel(LinkStatus {
            receiver: name.clone(),
            ..LinkStatus::default()
        });
        statuses.push(status_rx);
        let link = Link {
            index,
            tls,
            receiver: name,
            id: id.to_owned(),
            ledger: h.ledger.clone(),
            outbox: h.outbox.clone(),
            events: h.events.clone(),
            status: status_tx,
            seq_floor: h.seq_floor.clone(),
            peers: h.peers.clone(),
            state_dir: h.state_dir.clone(),
            accepts: h.accepts.clone(),
            peer_timeout: cfg.peer_timeout,
            max_rate: cfg.max_rate,
            compress: cfg.compress,
            link_rates: h.link_rates.clone(),
            bucket,
        };
        tasks.push(tokio::spawn(transport(link, shutdown.clone())));
    }
    let links = Links::new(statuses, cfg.destinations(), h.peers.clone());
    Ok((links, tasks, configs))
}

/// The client for the sender's bucket, with the key pair that seals each
/// bundle. Blocking: reads the key_dir and the credentials file, at start.
fn open_bucket(
    cfg: &SenderConfig,
    b: &crate::config::BucketConfig,
    trees: Arc<Mutex<crate::sender::whole_tree::BaseTrees>>,
) -> anyhow::Result<Arc<Bucket>> {
    let key_dir = &cfg
        .tls
        .as_ref()
        .context("sender.bucket needs sender.key_dir")?
        .key_dir;
    let me = crate::tls::load_identity(key_dir).context("sender.key_dir")?;
    let sealer = crate::bucket::seal::Sealer::new(&me).context("sender.key_dir")?;
    let opened = crate::bucket::store::open(b).context("sender.bucket")?;
    info!(bucket = %b.url, me = %me.fingerprint, "bundles also go to the bucket, sealed with this sender's key");
    Ok(Arc::new(Bucket {
        opened,
        cfg: b.clone(),
        sealer,
        me: me.fingerprint,
        bases: cfg.bucket_bases,
        clock: Default::default(),
        trees,
        cursor: Default::default(),
        base_lost: Default::default(),
        kept_from: Default::default(),
    }))
}

/// The metrics endpoint, if configured: it serves the report the
/// housekeeping tick sends.
pub(super) async fn serve_metrics(
    cfg: &SenderConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<(watch::Sender<Option<StatusReport>>, Option<JoinHandle<()>>)> {
    let (report_tx, report_rx) = watch::channel(None);
    let task = match cfg.metrics {
        Some(addr) => {
            let listener = crate::metrics::bind("sender.metrics", addr).await?;
            let scrape: crate::metrics::Scrape = std::sync::Arc::new(move || {
                report_rx
                    .borrow()
                    .as_ref()
                    .map(crate::metrics::render)
                    .unwrap_or_default()
            });
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                scrape,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    Ok((report_tx, task))
}

/// Share what `stores` keeps between the packer and the transports, with
/// the outbox fitted to its budget. Returns the handles, what was shipped,
/// and the channel the transports report on.
pub(super) fn share(
    cfg: &SenderConfig,
    stores: Stores,
) -> anyhow::Result<(Handles, Shipped, mpsc::UnboundedReceiver<TransportEvent>)> {
    let outbox_max = outbox_budget(cfg, &stores.state_dir)?;
    let (events, events_rx) = mpsc::unbounded_channel();
    let signatures = SignatureStore::open(&stores.state_dir.join("signatures"))?;
    let pruned = signatures.prune(|path| stores.shipped.has(path));
    let signatures = Arc::new(signatures);
    if pruned > 0 {
        info!(
            signatures = pruned,
            "removed the signatures of files no longer shipped"
        );
    }
    let handles = Handles {
        state: Arc::new(Mutex::new(stores.state)),
        state_dir: stores.state_dir,
        outbox_dir: stores.outbox_dir,
        outbox: Arc::new(Outbox::new(cfg.destinations().len(), outbox_max)),
        ledger: Arc::new(Mutex::new(stores.ledger)),
        peers: Arc::new(Mutex::new(stores.peers)),
        accepts: Arc::new(Mutex::new(vec![None; cfg.destinations().len()])),
        seq_floor: Arc::new(AtomicU64::new(0)),
        events,
        receivers: cfg.destinations(),
        link_rates: Arc::new(stores.link_rates),
        compress: cfg.compress,
        signer: Arc::new(
            Signer::spawn(signatures.clone(), cfg.source.clone())
                .context("starting the thread that signs large files")?,
        ),
        signatures,
        bases: Default::default(),
    };
    Ok((handles, stores.shipped, events_rx))
}
