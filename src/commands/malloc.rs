//! The allocator's settings for a running daemon (`shipper run`): how many
//! arenas glibc's malloc keeps. Nothing else belongs here.

/// Arenas glibc's malloc may keep for a running sender or receiver.
const MALLOC_ARENAS: i32 = 2;

/// Whether the operator chose the arena limit: `MALLOC_ARENA_MAX`, or
/// `glibc.malloc.arena_max` among `GLIBC_TUNABLES` (any other tunable
/// leaves the limit to shipper). `var` reads the environment.
fn operator_chose(var: impl Fn(&str) -> Option<String>) -> bool {
    var("MALLOC_ARENA_MAX").is_some()
        || var("GLIBC_TUNABLES").is_some_and(|t| t.contains("glibc.malloc.arena_max"))
}

/// Let glibc's malloc keep [`MALLOC_ARENAS`] arenas, not its default of
/// eight per core. Memory freed in one arena is not reused by a thread
/// allocating from another, and a sender walks, packs, records and
/// acknowledges on different threads: at a million files its peak RSS
/// was 472 MiB with the default, 340 MiB with two (`bench/tree.py`; the
/// receiver's 58 and 35 MiB). An operator's own choice is left alone.
/// Returns whether the limit was set.
///
/// # Safety
/// No other thread may exist yet: glibc's `mallopt` is not thread-safe.
pub(super) unsafe fn limit_arenas() -> bool {
    if operator_chose(|v| std::env::var(v).ok()) {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets a tunable of glibc's allocator, and
        // the caller promises no other thread runs.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_arena_limit_wins_and_other_tunables_do_not_count() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |v: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == v)
                    .map(|(_, x)| x.to_string())
            }
        };
        assert!(!operator_chose(env(&[])));
        assert!(operator_chose(env(&[("MALLOC_ARENA_MAX", "4")])));
        assert!(operator_chose(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=8"
        )])));
        assert!(!operator_chose(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.tcache_count=0"
        )])));
    }
}
