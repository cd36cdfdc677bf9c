//! One process at a time per state_dir: a sender's or a receiver's, held
//! for as long as it runs (and by `shipper replay --config` on a
//! receiver's). An advisory lock (flock) on `state_dir/ROLE.lock`, released
//! by the kernel when its holder exits, however it exits; the file holds
//! the holder's pid for the message of the one refused. Taken before
//! anything in the state_dir is read or cleaned: a second process must
//! not remove the first one's files in use.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The lock of one state_dir, held while this lives.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// The lock file of a `role` ("sender", "receiver") in `state_dir`.
    pub fn path(state_dir: &Path, role: &str) -> PathBuf {
        state_dir.join(format!("{role}.lock"))
    }

    /// Take the lock of `state_dir` for a `role`, or refuse at once naming
    /// its holder.
    pub fn acquire(state_dir: &Path, role: &str) -> anyhow::Result<Self> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path(state_dir, role);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                anyhow::bail!(
                    "{}: a {role} is running with this state_dir (pid {})",
                    state_dir.display(),
                    pid.trim()
                );
            }
            Err(e) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("locking {}", path.display()));
            }
        }
        // Only informs whoever is refused next: no fsync.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_one_state_dir_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path(), "receiver").unwrap();
        let refused = StateLock::acquire(dir.path(), "receiver").err().unwrap();
        let pid = std::process::id().to_string();
        assert!(format!("{refused:#}").contains(&pid), "{refused:#}");
        assert!(
            format!("{refused:#}").contains("a receiver is running"),
            "{refused:#}"
        );
        drop(held);
        StateLock::acquire(dir.path(), "receiver").unwrap();
    }
}
