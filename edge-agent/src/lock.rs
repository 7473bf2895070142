//! One process at a time owns an agent's data folder (sled allows one opener). The
//! daemon holds `agent.lock` while it runs; `status` only opens the outbox itself
//! when it can take the lock, so it never races a starting daemon.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    /// Takes the lock without waiting; None if another process holds it.
    pub fn try_take(data_dir: &Path) -> std::io::Result<Option<Self>> {
        std::fs::create_dir_all(data_dir)?;
        use std::os::unix::fs::OpenOptionsExt;
        let f = File::options()
            .mode(0o600)
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("agent.lock"))?;
        // SAFETY: flock on a descriptor we own; released when the file closes.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok((r == 0).then_some(Self(f)))
    }

    /// Waits up to `within` for the lock (a `status` reader holds it briefly).
    pub fn take(data_dir: &Path, within: Duration) -> std::io::Result<Self> {
        let end = Instant::now() + within;
        loop {
            if let Some(l) = Self::try_take(data_dir)? {
                return Ok(l);
            }
            if Instant::now() > end {
                return Err(std::io::Error::other(format!(
                    "another edge-agent is already running on {}",
                    data_dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
