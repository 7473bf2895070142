//! Opening a sled store whose lock a just-ended holder may still have.
//!
//! sled 0.34 can release its advisory lock a few milliseconds after the last `Db` is
//! dropped (its I/O threads finish lazily; spacejam/sled#1234), and the kernel releases a
//! SIGKILLed process's lock only once its descriptors are reaped. An open in that window
//! fails with "could not acquire lock". Waiting briefly separates that from a second live
//! process holding the store, which still fails after `LOCK_WAIT`.

use std::time::{Duration, Instant};

/// How long an open waits for a lock a just-ended holder may still have.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Whether `e` is sled failing to take its file lock (another holder), not damage.
pub fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// `config.open()`, retried while the store's lock is held, for at most `LOCK_WAIT`.
pub fn open(config: &sled::Config) -> sled::Result<sled::Db> {
    open_within(config, LOCK_WAIT)
}

pub fn open_within(config: &sled::Config, wait: Duration) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + wait;
    loop {
        match config.open() {
            Err(e) if is_lock_error(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// `sled::open(path)` with the same wait (tools and tests that tamper with a store).
pub fn open_path(path: impl AsRef<std::path::Path>) -> sled::Result<sled::Db> {
    open(&sled::Config::new().path(path.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_held_open_is_refused_after_the_wait_and_opens_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sled::Config::new().path(dir.path().join("s.sled"));
        let held = cfg.open().unwrap();
        let t0 = Instant::now();
        let err = open_within(&cfg, Duration::from_millis(200)).unwrap_err();
        assert!(is_lock_error(&err), "{err}");
        assert!(t0.elapsed() >= Duration::from_millis(200));

        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        let db = open_within(&cfg, Duration::from_secs(10)).unwrap();
        release.join().unwrap();
        drop(db);
    }

    #[test]
    fn errors_other_than_the_lock_are_returned_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let t0 = Instant::now();
        let err = open_within(&sled::Config::new().path(&file), Duration::from_secs(5));
        assert!(err.is_err());
        assert!(!is_lock_error(&err.unwrap_err()));
        assert!(t0.elapsed() < Duration::from_secs(4));
    }
}
