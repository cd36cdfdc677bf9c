//! What can be wrong with a received bundle, and how the sender is told.
//!
//! [`BundleError`] is the one error of the receiver's side of bundles
//! (verifying, storing parts, staging, publishing); each carries the entry
//! or path it concerns. [`BundleError::refusal`] decides whether the same
//! bundle sent again may pass. Nothing here touches a file.

use std::io;
use std::path::{Path, PathBuf};

use super::manifest::ManifestError;
use crate::beneath::BeneathError;
use crate::proto::refusal::{Refusal, RefusalKind};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a readable zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("entry {entry:?}: {reason}")]
    Entry { entry: String, reason: String },
    #[error("{0}")]
    Whole(String),
    /// Over one of the receiver's limits: the entry at fault, or `None`
    /// for the bundle as a whole.
    #[error("{}", at_entry(entry.as_deref(), reason))]
    OverLimit {
        entry: Option<String>,
        reason: String,
    },
    /// Content that does not match the hash the manifest gives it.
    #[error("entry {entry:?}: {reason}")]
    Damaged { entry: String, reason: String },
    /// A symlink inside root where the bundle writes or deletes.
    #[error("entry {entry:?}: is a symlink inside root; refusing to write or delete through it")]
    Symlink { entry: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Files whose content the bundle does not carry (kept, or copied from
    /// another path) that root does not hold as the bundle says, each with
    /// why: the sender must send them with their content.
    #[error("{}", not_held(missing))]
    NotHeld { missing: Vec<(String, String)> },
}

/// How [`BundleError::NotHeld`] reads: every path it needs, with why.
fn not_held(missing: &[(String, String)]) -> String {
    let list: Vec<String> = missing
        .iter()
        .map(|(path, why)| format!("{path:?} ({why})"))
        .collect();
    format!(
        "the bundle refers to content it does not carry for {} file(s), and root does not hold it as the bundle says; they need their content: {}",
        missing.len(),
        list.join(", ")
    )
}

pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(super) fn entry_err(entry: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Entry {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

fn at_entry(entry: Option<&str>, reason: &str) -> String {
    match entry {
        Some(entry) => format!("entry {entry:?}: {reason}"),
        None => reason.to_owned(),
    }
}

/// Over a limit at `entry` (`None`: the bundle as a whole).
pub(super) fn over_limit(entry: Option<&str>, reason: impl Into<String>) -> BundleError {
    BundleError::OverLimit {
        entry: entry.map(str::to_owned),
        reason: reason.into(),
    }
}

/// `entry`'s content does not match its hash.
pub(super) fn damaged(entry: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Damaged {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

pub(super) fn beneath_err(e: BeneathError) -> BundleError {
    match e {
        BeneathError::Symlink { path } => BundleError::Symlink { entry: path },
        BeneathError::Io { path, source } => BundleError::Io { path, source },
    }
}

impl BundleError {
    /// How to tell the sender: an I/O error (a full disk) may pass, a
    /// bundle that breaks a rule will break it every time it is sent.
    /// Parts are the exception: a set the receiver lost is dropped, so the
    /// same bundle sent again is taken. Files kept that root does not hold
    /// need their content: neither the same bundle nor one without them.
    pub fn refusal(&self) -> Refusal {
        use super::manifest::ManifestError as M;
        match self {
            BundleError::Io { .. } if self.is_disk_full() => {
                Refusal::retry(format!("receiver disk full: {self}"))
            }
            BundleError::Io { .. } => Refusal::retry(self.to_string()),
            BundleError::Entry { entry, .. } | BundleError::Damaged { entry, .. }
                if entry.starts_with(".shipper/parts/") =>
            {
                Refusal::retry(self.to_string())
            }
            BundleError::Entry { entry, .. }
            | BundleError::Damaged { entry, .. }
            | BundleError::Symlink { entry }
            | BundleError::OverLimit {
                entry: Some(entry), ..
            } => Refusal::permanent(
                crate::paths::validate(entry).is_ok().then(|| entry.clone()),
                self.to_string(),
            ),
            BundleError::Manifest(
                M::Path { path, .. } | M::Duplicate { path } | M::Part { path, .. },
            ) => Refusal::permanent(Some(path.clone()), self.to_string()),
            BundleError::Manifest(_)
            | BundleError::Zip(_)
            | BundleError::Whole(_)
            | BundleError::OverLimit { entry: None, .. } => {
                Refusal::permanent(None, self.to_string())
            }
            BundleError::NotHeld { missing } => Refusal {
                kind: RefusalKind::NeedsContent,
                path: missing.first().map(|(p, _)| p.clone()),
                reason: self.to_string(),
            },
        }
    }

    /// True when the filesystem ran out of space (or quota).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, BundleError::Io { source, .. } if crate::durable::is_disk_full(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: io::ErrorKind) -> BundleError {
        io_at(Path::new("/r/x"))(io::Error::from(kind))
    }

    #[test]
    fn io_errors_may_pass_when_sent_again_and_a_full_disk_says_so() {
        let full = io(io::ErrorKind::StorageFull);
        assert!(full.is_disk_full());
        let r = full.refusal();
        assert_eq!(r.kind, RefusalKind::Retry);
        assert!(
            r.reason.starts_with("receiver disk full: /r/x"),
            "{}",
            r.reason
        );
        let other = io(io::ErrorKind::PermissionDenied);
        assert!(!other.is_disk_full());
        assert_eq!(other.refusal().kind, RefusalKind::Retry);
    }

    #[test]
    fn a_broken_rule_is_permanent_and_names_the_entry_only_when_it_is_a_path() {
        let r = entry_err("a/b.html", "bad").refusal();
        assert_eq!(r.kind, RefusalKind::Permanent);
        assert_eq!(r.path.as_deref(), Some("a/b.html"));
        let r = entry_err("", "overlap").refusal();
        assert_eq!((r.kind, r.path), (RefusalKind::Permanent, None));
        let r = BundleError::Whole("two names".into()).refusal();
        assert_eq!((r.kind, r.path), (RefusalKind::Permanent, None));
    }

    #[test]
    fn a_part_the_receiver_cannot_take_may_pass_when_sent_again() {
        let r = entry_err(".shipper/parts/s1/3", "never arrived").refusal();
        assert_eq!((r.kind, r.path), (RefusalKind::Retry, None));
    }

    #[test]
    fn kept_files_root_lacks_are_named_and_asked_for_with_their_content() {
        let e = BundleError::NotHeld {
            missing: vec![
                ("a.html".into(), "missing".into()),
                ("b.html".into(), "content differs".into()),
            ],
        };
        let r = e.refusal();
        assert_eq!(r.kind, RefusalKind::NeedsContent);
        assert_eq!(r.path.as_deref(), Some("a.html"));
        for want in ["\"a.html\" (missing)", "\"b.html\" (content differs)"] {
            assert!(r.reason.contains(want), "{}", r.reason);
        }
    }

    #[test]
    fn a_symlink_in_root_is_refused_as_its_entry() {
        let e = beneath_err(BeneathError::Symlink {
            path: "a/link".into(),
        });
        assert!(matches!(&e, BundleError::Symlink { entry } if entry == "a/link"));
        assert_eq!(e.refusal().kind, RefusalKind::Permanent);
    }
}
