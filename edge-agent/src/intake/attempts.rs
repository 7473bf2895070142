//! How many times each inbox file has been taken up for analysis, on disk, so a file
//! that crashes the agent or gets it killed for memory is counted across restarts and
//! eventually set aside instead of being retried forever.
//!
//! An attempt is written (and fsynced) before the file is read; it is removed when the
//! file leaves the inbox, and given back when the failure was not the file's (queue
//! full, disk full, shutdown). Keys are keyed digests of inbox paths, never the paths.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// The counts, shared by the intake loop and its blocking steps (one scan at a time:
/// the lock is never contended, it only lets the steps run off the async workers).
#[derive(Clone)]
pub struct Attempts(Arc<Mutex<Counts>>);

struct Counts {
    path: PathBuf,
    counts: BTreeMap<String, u32>,
}

impl Attempts {
    /// Loads the counts; a missing or unreadable file starts empty (a corrupt file
    /// costs at most one extra round of attempts).
    pub fn load(path: PathBuf) -> Self {
        let counts = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self(Arc::new(Mutex::new(Counts { path, counts })))
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // A step that panicked leaves the counts as they were: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &str) -> u32 {
        self.lock().get(key)
    }

    /// Records one more attempt durably and returns the count including it.
    pub fn begin(&self, key: &str) -> std::io::Result<u32> {
        let mut c = self.lock();
        let n = c.get(key).saturating_add(1);
        c.counts.insert(key.to_string(), n);
        if let Err(e) = c.save() {
            c.set(key, n - 1);
            return Err(e);
        }
        Ok(n)
    }

    /// Gives back an attempt that failed for a reason not the file's own.
    pub fn undo(&self, key: &str) {
        let mut c = self.lock();
        let n = c.get(key).saturating_sub(1);
        c.set(key, n);
        let _ = c.save();
    }

    /// The file left the inbox (analysed or rejected).
    pub fn clear(&self, key: &str) {
        let mut c = self.lock();
        if c.counts.remove(key).is_some() {
            let _ = c.save();
        }
    }

    /// Forgets files no longer in the inbox.
    pub fn retain(&self, present: impl Fn(&str) -> bool) {
        let mut c = self.lock();
        let before = c.counts.len();
        c.counts.retain(|k, _| present(k));
        if c.counts.len() != before {
            let _ = c.save();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lock().counts.is_empty()
    }
}

impl Counts {
    fn get(&self, key: &str) -> u32 {
        self.counts.get(key).copied().unwrap_or(0)
    }

    fn set(&mut self, key: &str, n: u32) {
        if n == 0 {
            self.counts.remove(key);
        } else {
            self.counts.insert(key.to_string(), n);
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let json = serde_json::to_vec(&self.counts)?;
        pleura_shared::fsutil::write_atomic(&self.path, &json, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_survive_a_restart_and_undo_gives_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        let a = Attempts::load(p.clone());
        assert_eq!(a.begin("k").unwrap(), 1);
        assert_eq!(a.begin("k").unwrap(), 2);
        // A crash here: the next process still sees both.
        let b = Attempts::load(p.clone());
        assert_eq!(b.get("k"), 2);
        b.undo("k");
        assert_eq!(Attempts::load(p.clone()).get("k"), 1);
        b.begin("gone").unwrap();
        b.retain(|k| k == "k");
        b.clear("k");
        assert!(Attempts::load(p).is_empty());
    }
}
