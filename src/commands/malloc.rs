//! The allocator's settings for a running daemon (`shipper run`): how many
//! arenas glibc's malloc keeps. Nothing else belongs here.

/// Arenas glibc's malloc may keep for a running sender or receiver.
const MALLOC_ARENAS: i32 = 2;

/// Before any thread starts: let glibc's malloc keep [`MALLOC_ARENAS`]
/// arenas, not its default of eight per core. Memory freed in one arena is
/// not reused by a thread allocating from another, and a sender walks,
/// packs, records and acknowledges on different threads: at a million
/// files its peak RSS was 472 MiB with the default, 340 MiB with two
/// (`bench/tree.py`; the receiver's 58 and 35 MiB). An operator's own
/// `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` is left to decide. Returns
/// whether the limit was set.
pub(super) fn limit_arenas() -> bool {
    if ["MALLOC_ARENA_MAX", "GLIBC_TUNABLES"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets a tunable of glibc's allocator; it is
        // called before the runtime's threads exist.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arena_limit_is_set_unless_the_environment_says_otherwise() {
        let operator = ["MALLOC_ARENA_MAX", "GLIBC_TUNABLES"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        assert_eq!(limit_arenas(), glibc && !operator);
    }
}
