//! Faults for tests: the changes to root made on this thread are counted,
//! and the one numbered `at` (from 1) fails, or with `sticky` that one and
//! every one after it, roll-back included, as if the process had died there.
//! And [`snapshot`], to tell whether root is exactly as it was.

use std::cell::Cell;

use rustix::io::Errno;

pub use super::snapshot::snapshot;

#[derive(Clone, Copy)]
struct Plan {
    done: usize,
    at: Option<usize>,
    sticky: bool,
    errno: Errno,
}

thread_local! {
    static PLAN: Cell<Plan> = const {
        Cell::new(Plan { done: 0, at: None, sticky: false, errno: Errno::IO })
    };
}

/// Start counting from zero, failing change `at` with `errno`.
pub fn arm(at: Option<usize>, errno: Errno, sticky: bool) {
    PLAN.set(Plan {
        done: 0,
        at,
        sticky,
        errno,
    });
}

/// Changes attempted since [`arm`].
pub fn count() -> usize {
    PLAN.get().done
}

/// Count one change; fail it if the plan says so.
pub(super) fn check() -> rustix::io::Result<()> {
    let mut p = PLAN.get();
    p.done += 1;
    PLAN.set(p);
    match p.at {
        Some(at) if p.done == at || (p.sticky && p.done > at) => Err(p.errno),
        _ => Ok(()),
    }
}
