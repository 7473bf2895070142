//! Inbox entries that were copied out (to processed/ or rejected/) but could not be
//! removed from the inbox (a read-only share). Each is taken in once: the list, on
//! disk, is keyed by the entry's keyed digest and holds what identifies its content
//! (device, inode, size, mtime), so the same file is skipped at every later poll and
//! after restarts, while a new file under the same name is taken in.

use std::collections::BTreeMap;
use std::path::Path;

use super::super::inbox::Stamp;

/// Most entries remembered; the oldest are forgotten first.
const MAX_KEPT: usize = 4096;

/// The alarm raised while such entries are seen (no prefix the intake's own status
/// round clears).
pub(crate) fn alarm(n: usize) -> String {
    format!(
        "{n} inbox entr{} cannot be removed after being copied out (read-only share?): each was taken in once and is skipped; remove them on the share",
        if n == 1 { "y" } else { "ies" }
    )
}

pub(crate) const ALARM_MARK: &str = "cannot be removed after being copied out";

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Kept {
    /// entry ref -> (when recorded, ms; its stamp)
    entries: BTreeMap<String, (u64, Stamp)>,
}

impl Kept {
    /// The list at `path`; None when there is none (the usual case: one stat).
    pub(crate) fn load(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// `load`, parsed again only when the file changed (it is asked for every inbox
    /// entry at every poll; on a read-only share it may list thousands).
    pub(crate) fn load_cached(path: &Path) -> Option<std::sync::Arc<Self>> {
        use std::os::unix::fs::MetadataExt;
        type Cache = Option<(
            std::path::PathBuf,
            (i64, i64, u64, u64),
            std::sync::Arc<Kept>,
        )>;
        static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(None);
        let m = std::fs::metadata(path).ok()?;
        let key = (m.mtime(), m.mtime_nsec(), m.len(), m.ino());
        let mut c = CACHE.lock().ok()?;
        if let Some((p, k, kept)) = c.as_ref() {
            if p == path && *k == key {
                return Some(kept.clone());
            }
        }
        let kept = std::sync::Arc::new(Self::load(path)?);
        *c = Some((path.to_path_buf(), key, kept.clone()));
        Some(kept)
    }

    pub(crate) fn holds(&self, r: &str, stamp: &Stamp) -> bool {
        self.entries.get(r).is_some_and(|(_, s)| s == stamp)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds an entry and writes the list atomically.
    pub(crate) fn record(path: &Path, r: &str, stamp: Stamp) -> std::io::Result<usize> {
        let mut k = Self::load(path).unwrap_or_default();
        k.entries
            .insert(r.to_string(), (pleura_shared::now_ms(), stamp));
        while k.entries.len() > MAX_KEPT {
            let oldest = k
                .entries
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(r, _)| r.clone());
            match oldest {
                Some(o) => k.entries.remove(&o),
                None => break,
            };
        }
        let json = serde_json::to_vec(&k)?;
        pleura_shared::fsutil::write_atomic(path, &json, 0o600)?;
        Ok(k.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_kept_by_its_stamp_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kept.json");
        assert!(Kept::load(&p).is_none());
        let s = Stamp {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
        };
        assert_eq!(Kept::record(&p, "abc", s).unwrap(), 1);
        let k = Kept::load(&p).unwrap();
        assert!(k.holds("abc", &s));
        // Another file under the same name (new inode or new content) is taken in.
        assert!(!k.holds("abc", &Stamp { ino: 9, ..s }));
        assert!(!k.holds("abc", &Stamp { size: 9, ..s }));
        assert!(!k.holds("other", &s));
    }
}
