//! What became of the receiver's `on_apply` hook for a bundle it
//! acknowledges (see [`crate::hook`]): plain data that the `Ack` frame
//! carries and the sender's status shows. A hook never decides whether a
//! bundle is applied; this only reports.

/// The hook's outcome for one acknowledged bundle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HookOutcome {
    /// No hook ran: none is configured, the bundle changed nothing in root,
    /// or it was applied before and only acknowledged again.
    #[default]
    NotRun,
    /// The hook ran and exited 0.
    Ran,
    /// The hook failed, timed out or could not start: why, naming it.
    Failed(String),
}
