//! `shipper replay --config R --from-bucket [--first N] [--last M]`: the
//! sealed bundles of a range of sequences, downloaded from the config's
//! `receiver.bucket` into a directory of its own in `state_dir`, each
//! checked as the receiver checks it (its seal opened for one of
//! `allowed_senders`, the zip matching the seal), named as the archive
//! names bundles so replay keys them by sender, then replayed as files.
//! A seal that does not open is passed over with a warning (it carries no
//! authority; the receiver passes it over too); a zip that is not the one
//! sealed stops the replay before anything is applied.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use tracing::warn;

use crate::bucket::fetch::BucketReader;
use crate::bucket::names::zip_name;
use crate::cli::ReplayTarget;
use crate::config::{Config, ReceiverConfig};

/// Replay the bundles numbered `first..=last` from the bucket of the
/// receiver config in `target`.
pub(super) fn replay(
    target: ReplayTarget,
    hooks: bool,
    (first, last): (Option<u64>, Option<u64>),
) -> anyhow::Result<()> {
    let file = target
        .config
        .clone()
        .context("--from-bucket takes the bucket from --config")?;
    let config = Config::load(&file)?;
    let r = config.receiver.with_context(|| {
        format!(
            "{}: no [receiver] table to take a bucket from",
            file.display()
        )
    })?;
    std::fs::create_dir_all(&r.state_dir)
        .with_context(|| format!("creating {}", r.state_dir.display()))?;
    let dir = tempfile::Builder::new()
        .prefix(".shipper-from-bucket-")
        .tempdir_in(&r.state_dir)
        .with_context(|| format!("making a directory in {}", r.state_dir.display()))?;
    let bundles = download(&r, (first.unwrap_or(1), last), dir.path())?;
    super::replay_command(target, hooks, &bundles)
}

/// Download and check the bundles sealed in `r`'s bucket numbered
/// `first..=last` into `dir`.
fn download(
    r: &ReceiverConfig,
    (first, last): (u64, Option<u64>),
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let bucket = r
        .bucket
        .as_ref()
        .context("receiver.bucket is not set: --from-bucket has nowhere to take bundles from")?;
    let allowed: Vec<_> = r.tls.iter().flat_map(|t| t.allowed.clone()).collect();
    let opened = crate::bucket::store::open(bucket).context("receiver.bucket")?;
    let reader = BucketReader {
        opened: &opened,
        url: &bucket.url,
    };
    let url = bucket.url.to_string();
    super::runtime()?.block_on(async {
        let mut out = Vec::new();
        for sender in &allowed {
            let seals = reader
                .seals_after(sender, first.saturating_sub(1), usize::MAX)
                .await
                .map_err(|e| anyhow!("{url}: {e}"))?;
            for listed in seals.into_iter().filter(|l| last.is_none_or(|to| l.seq <= to)) {
                let seq = listed.seq;
                let opened = reader.open_seal(sender, &listed).await;
                let sealed = match opened.map_err(|e| anyhow!("{url}: {e}"))? {
                    Ok(s) => s,
                    Err(why) => {
                        warn!(bucket = %url, %sender, seq, reason = %why, "passed over: not a bundle this sender sealed");
                        continue;
                    }
                };
                let dest = dir.join(crate::receiver::archive_name(&sender.to_string(), seq));
                let zip = reader.object(&zip_name(sender, seq));
                let got = reader
                    .download(&zip, &dest, sealed.size.min(r.max_bundle_size))
                    .await
                    .map_err(|e| anyhow!("{url}: {e}"))?
                    .map_err(|why| anyhow!("{url}: {zip}: {why}"))?;
                sealed
                    .check_zip(got.size, &got.hash)
                    .map_err(|e| anyhow!("{url}: {zip}: not the zip sealed: {e}"))?;
                out.push(dest);
            }
        }
        if out.is_empty() {
            let range = last.map_or(format!("from {first}"), |l| format!("{first} to {l}"));
            bail!("{url}: no bundle sealed by an allowed sender numbered {range}");
        }
        Ok(out)
    })
}
