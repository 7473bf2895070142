//! sled backend. `queue` is keyed by (255 - priority, analysed-at, id) so that a plain
//! scan yields the most urgent, then oldest, result first; `index` maps id → queue key.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use pleura_shared::{ResultId, ScanRecord};

use super::{Outbox, OutboxError, OutboxStats, Put};

pub struct SledOutbox {
    db: sled::Db,
    queue: sled::Tree,
    index: sled::Tree,
    parked: sled::Tree,
    corrupt: sled::Tree,
    quota_bytes: u64,
    pending_bytes: AtomicU64,
    // Serialises put's quota check with its insert.
    write: std::sync::Mutex<()>,
}

fn backend(e: impl std::fmt::Display) -> OutboxError {
    OutboxError::Backend(e.to_string())
}

fn queue_key(r: &ScanRecord) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = 255 - r.priority();
    k[1..9].copy_from_slice(&r.analysed_at_ms.to_be_bytes());
    k[9..].copy_from_slice(r.id.as_bytes());
    k
}

impl SledOutbox {
    pub fn open(dir: &Path, quota_bytes: u64) -> Result<Self, OutboxError> {
        // Case data: the store's folder is the agent's alone, whatever the umask.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir.join("outbox.sled"))
                .map_err(backend)?;
        }
        let db = sled::Config::new()
            .path(dir.join("outbox.sled"))
            .open()
            .map_err(backend)?;
        let queue = db.open_tree("queue").map_err(backend)?;
        let mut bytes = 0u64;
        for kv in queue.iter() {
            let (_, v) = kv.map_err(backend)?;
            bytes += v.len() as u64;
        }
        Ok(Self {
            index: db.open_tree("index").map_err(backend)?,
            parked: db.open_tree("parked").map_err(backend)?,
            corrupt: db.open_tree("corrupt").map_err(backend)?,
            queue,
            db,
            quota_bytes,
            pending_bytes: AtomicU64::new(bytes),
            write: std::sync::Mutex::new(()),
        })
    }

    fn flush(&self) -> Result<(), OutboxError> {
        self.db.flush().map(drop).map_err(backend)
    }

    /// Sets an undecodable entry aside so it neither blocks the queue nor is lost.
    fn quarantine(&self, key: &[u8], value: &[u8], why: &str) -> Result<(), OutboxError> {
        tracing::error!(key = %hex::encode(key), reason = why, "corrupt outbox record set aside");
        self.corrupt.insert(key, value).map_err(backend)?;
        self.queue.remove(key).map_err(backend)?;
        self.sub_bytes(value.len());
        Ok(())
    }

    fn sub_bytes(&self, n: usize) {
        let _ = self
            .pending_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n as u64))
            });
    }
}

impl Outbox for SledOutbox {
    fn put(&self, record: &ScanRecord) -> Result<Put, OutboxError> {
        let _guard = self.write.lock().map_err(|_| backend("poisoned lock"))?;
        if self
            .index
            .contains_key(record.id.as_bytes())
            .map_err(backend)?
        {
            return Ok(Put::AlreadyQueued);
        }
        let value = record.encode();
        let pending = self.pending_bytes.load(Ordering::Relaxed);
        if pending + value.len() as u64 > self.quota_bytes {
            return Err(OutboxError::QuotaExceeded {
                pending_bytes: pending,
                quota_bytes: self.quota_bytes,
            });
        }
        let key = queue_key(record);
        // Queue entry first: after a crash between the two inserts, the entry is
        // still sent (and reindexed on ack by id scan), never lost.
        self.queue.insert(key, value.as_slice()).map_err(backend)?;
        self.index
            .insert(record.id.as_bytes(), &key[..])
            .map_err(backend)?;
        self.flush()?;
        self.pending_bytes
            .fetch_add(value.len() as u64, Ordering::Relaxed);
        Ok(Put::Stored)
    }

    fn next_batch(
        &self,
        limit: usize,
        skip: &dyn Fn(&ResultId) -> bool,
    ) -> Result<Vec<ScanRecord>, OutboxError> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for kv in self.queue.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(backend)?;
            if k.len() != 25 {
                bad.push((k, v, "bad key length".to_string()));
                continue;
            }
            let id = ResultId::from_slice(&k[9..]).expect("length checked");
            if skip(&id) {
                continue;
            }
            match ScanRecord::decode(&v) {
                Ok(r) if r.id == id => out.push(r),
                Ok(_) => bad.push((k, v, "id does not match its key".into())),
                Err(e) => bad.push((k, v, e.to_string())),
            }
        }
        if !bad.is_empty() {
            for (k, v, why) in &bad {
                self.quarantine(k, v, why)?;
            }
            self.flush()?;
        }
        Ok(out)
    }

    fn remove(&self, ids: &[ResultId]) -> Result<usize, OutboxError> {
        let mut removed = 0;
        for id in ids {
            let key = match self.index.remove(id.as_bytes()).map_err(backend)? {
                Some(k) => k,
                None => continue,
            };
            if let Some(v) = self.queue.remove(&key).map_err(backend)? {
                self.sub_bytes(v.len());
                removed += 1;
            }
        }
        if removed > 0 {
            self.flush()?;
        }
        Ok(removed)
    }

    fn park(&self, id: &ResultId, reason: &str) -> Result<(), OutboxError> {
        if let Some(key) = self.index.remove(id.as_bytes()).map_err(backend)? {
            if let Some(v) = self.queue.remove(&key).map_err(backend)? {
                self.sub_bytes(v.len());
                let mut entry = reason.as_bytes().to_vec();
                entry.push(0);
                entry.extend_from_slice(&v);
                self.parked.insert(id.as_bytes(), entry).map_err(backend)?;
            }
            self.flush()?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let mut oldest: Option<u64> = None;
        for kv in self.queue.iter() {
            let (k, _) = kv.map_err(backend)?;
            if k.len() == 25 {
                let t = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        Ok(OutboxStats {
            pending: self.queue.len() as u64,
            pending_bytes: self.pending_bytes.load(Ordering::Relaxed),
            quota_bytes: self.quota_bytes,
            oldest_pending_ms: oldest,
            parked: self.parked.len() as u64,
            corrupt: self.corrupt.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_outbox_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        super::super::suite::run(|quota| SledOutbox::open(dir.path(), quota).unwrap());
    }

    #[test]
    fn a_corrupt_entry_is_set_aside_and_the_rest_still_flows() {
        let dir = tempfile::tempdir().unwrap();
        let ob = SledOutbox::open(dir.path(), 1 << 20).unwrap();
        let good = pleura_shared::record::sample_record("c", "d", 1, false);
        ob.put(&good).unwrap();
        let mut bad_key = [0u8; 25];
        bad_key[0] = 0; // sorts first
        ob.queue
            .insert(bad_key, &b"\xff\xfenot a record"[..])
            .unwrap();
        let batch = ob.next_batch(10, &|_| false).unwrap();
        assert_eq!(batch, vec![good]);
        let s = ob.stats().unwrap();
        assert_eq!((s.pending, s.corrupt), (1, 1));
    }
}
