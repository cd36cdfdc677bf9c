//! `shipper rollback`: ask the receiver running on the config's state_dir
//! to roll root back or release a sender, or, with none running, do it
//! here (see `receiver::operate_offline`); then say what was done.

use std::path::Path;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::control::{self, Request, Response};

/// How long `shipper rollback` waits for a running receiver: undoing
/// bundles of many files takes a while, and the receiver always answers.
const ROLLBACK_LIMIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// `--to SEQ` (`to`), else `--release`.
pub(super) fn rollback_command(
    config: &Path,
    to: Option<u64>,
    sender: Option<String>,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let receiver = config
        .receiver
        .as_ref()
        .with_context(|| format!("{}: no [receiver] table", config.file.display()))?;
    let req = match to {
        Some(to) => Request::Rollback { sender, to },
        None => Request::Release { sender },
    };
    let sock = control::socket_path(&receiver.state_dir);
    let running =
        super::runtime()?.block_on(control::call_receiver(&sock, &req, ROLLBACK_LIMIT))?;
    let answer = match running {
        Some(answer) => answer,
        None => crate::receiver::operate_offline(receiver, req)?,
    };
    match answer {
        Response::RolledBack {
            sender,
            from,
            to,
            bundles,
            left,
        } => {
            println!(
                "rolled back sender {sender} from sequence {from} to {to}: {bundles} bundles undone; its bundles are held until `shipper rollback --release`"
            );
            for why in left {
                println!("  left as it is: {why}");
            }
            Ok(())
        }
        Response::Released {
            sender,
            held_at: Some(at),
        } => {
            println!(
                "released sender {sender} (held at sequence {at}): its bundles are taken again, and it compares its source with root when it next connects"
            );
            Ok(())
        }
        Response::Released {
            sender,
            held_at: None,
        } => {
            println!("sender {sender} was not held");
            Ok(())
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the receiver: {other:?}"),
    }
}
