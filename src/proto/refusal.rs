//! Why a receiver did not apply a bundle, typed: the receiver's log, the
//! `Refuse` frame and the sender's handling (re-send, or re-pack without
//! the path at fault) all read the same [`Refusal`]. Plain data.

/// Why a receiver did not apply a bundle: what the log, the `Refuse`
/// frame and the sender's handling share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// The entry at fault, when one is.
    pub path: Option<String>,
    pub reason: String,
}

impl Refusal {
    pub fn retry(reason: impl Into<String>) -> Self {
        Self {
            kind: RefusalKind::Retry,
            path: None,
            reason: reason.into(),
        }
    }

    pub fn permanent(path: Option<String>, reason: impl Into<String>) -> Self {
        Self {
            kind: RefusalKind::Permanent,
            path,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Whether a refused bundle can be applied if sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not now (disk full, damaged in transit, an I/O error): send it again.
    Retry,
    /// Never, as it is (over a limit, a path the receiver cannot write):
    /// sending it again cannot help; the sender must pack it differently.
    Permanent,
    /// Not as it is: it keeps files (their content not in it) that the
    /// receiver does not hold as it says (`path`: the first of them). The
    /// sender packs its paths again, with their content.
    NeedsContent,
}
