//! `shipper verify`: ask the running sender to compare the source with each
//! receiver's root (and repair), then print its report as text or JSON and
//! give the exit code: 0 in step, 1 drift, 2 error.

use std::fmt::Write as _;
use std::path::Path;

use crate::control::{Request, Response};
use crate::drift::{Drift, VerifyReport};

/// How long `shipper verify` waits for the sender's report: hashing a
/// large tree for the first time and a repair's acknowledgement both take
/// a while, and the sender always answers.
const VERIFY_LIMIT: std::time::Duration = std::time::Duration::from_secs(3 * 3600);

/// Run `shipper verify`; the exit code it ends with. An error is printed
/// here (exit 2), not returned: 1 means drift.
pub(super) fn verify_command(
    config: &Path,
    repair: bool,
    delete_extra: bool,
    json: bool,
) -> std::process::ExitCode {
    let req = Request::Verify {
        repair,
        delete_extra,
    };
    let report = match super::call_sender(config, req, VERIFY_LIMIT) {
        Ok(Response::Verified(r)) => r,
        Ok(Response::Error { message }) => return failed(&message),
        Ok(other) => return failed(&format!("unexpected answer from the sender: {other:?}")),
        Err(e) => return failed(&format!("{e:#}")),
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => return failed(&e.to_string()),
        }
    } else {
        print!("{}", describe(&report));
    }
    std::process::ExitCode::from(report.exit_code())
}

fn failed(message: &str) -> std::process::ExitCode {
    eprintln!("shipper: {message}");
    std::process::ExitCode::from(2)
}

/// The report as text: one paragraph per receiver, each path on a line.
pub fn describe(r: &VerifyReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "source: {} files ({} read)",
        r.source_files, r.source_hashed
    );
    for rd in &r.receivers {
        if let Some(e) = &rd.error {
            let _ = writeln!(out, "{}: ERROR: {e}", rd.receiver);
            continue;
        }
        let d = &rd.drift;
        let state = if d.in_step() {
            "in step".to_owned()
        } else {
            format!(
                "DRIFT: {} missing, {} different, {} extra",
                d.missing.len(),
                d.different.len(),
                d.extra.len()
            )
        };
        let others = match rd.other_senders {
            0 => String::new(),
            n => format!("; root shared with {n} other sender(s)"),
        };
        let _ = writeln!(
            out,
            "{}: {state} ({} files, {} read{others})",
            rd.receiver, rd.files, rd.hashed
        );
        paths(&mut out, d);
    }
    if let Some(repair) = &r.repair {
        let what = format!(
            "{} files shipped again, {} extras deleted",
            repair.files, repair.deletions
        );
        match &repair.error {
            Some(e) => _ = writeln!(out, "repair FAILED ({what}): {e}"),
            None => _ = writeln!(out, "repair: {what}: {}", repair.outcome),
        }
    }
    out
}

fn paths(out: &mut String, d: &Drift) {
    for (label, list) in [
        ("missing", &d.missing),
        ("different", &d.different),
        ("extra", &d.extra),
        ("pending", &d.pending),
    ] {
        for p in list {
            let _ = writeln!(out, "  {label:<9} {p}");
        }
    }
    if !d.pending.is_empty() {
        let _ = writeln!(
            out,
            "  ({} pending: changed in the source, not shipped yet; not drift)",
            d.pending.len()
        );
    }
}
