//! sled backend. `queue` is keyed by (255 - priority, analysed-at, id) so that a plain
//! scan yields the most urgent, then oldest, result first; `index` maps id → queue key.
//! The oldest queued result is the oldest of each priority's first key (a few seeks),
//! and the queued count is kept beside the byte count (sled's `len` reads the tree).
//! Acknowledged results stay in `acked` (day ‖ id → record; `acked_ix` id → day) for
//! anti-entropy until pruned. Every change is also written to the ledger (journal),
//! which is compared with the store at open: see `ledger`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use pleura_shared::holdings::{day_of_ms, Holdings};
use pleura_shared::record::MAX_RECORD_BYTES;
use pleura_shared::{ResultId, ScanRecord};

use super::ledger::{Ledger, Line, State};
use super::{Held, Outbox, OutboxError, OutboxStats, Put, QueueDepth};

pub struct SledOutbox {
    db: sled::Db,
    queue: sled::Tree,
    index: sled::Tree,
    parked: sled::Tree,
    corrupt: sled::Tree,
    acked: sled::Tree,
    acked_ix: sled::Tree,
    retract: sled::Tree,
    quota_bytes: u64,
    pending_bytes: AtomicU64,
    /// Entries in `queue`, kept with `pending_bytes` (counted at open).
    pending_count: AtomicU64,
    /// Serialises writers; holds the journal.
    ledger: Mutex<Ledger>,
    damage: Option<String>,
}

fn backend(e: impl std::fmt::Display) -> OutboxError {
    OutboxError::Backend(e.to_string())
}

fn sled_err(e: sled::Error) -> OutboxError {
    match e {
        sled::Error::Io(io) => OutboxError::from_io(&io),
        other => backend(other),
    }
}

fn io_err(e: std::io::Error) -> OutboxError {
    OutboxError::from_io(&e)
}

fn queue_key(r: &ScanRecord) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = 255 - r.priority();
    k[1..9].copy_from_slice(&r.analysed_at_ms.to_be_bytes());
    k[9..].copy_from_slice(r.id.as_bytes());
    k
}

fn acked_key(day: u32, id: &ResultId) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&day.to_be_bytes());
    k[4..].copy_from_slice(id.as_bytes());
    k
}

impl SledOutbox {
    /// Another tree in the outbox's store (media items, verdicts, the clinic's scan log):
    /// one sled database per agent, so one lock, one cache and one flush.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, OutboxError> {
        self.db.open_tree(name).map_err(sled_err)
    }

    pub fn open(dir: &Path, quota_bytes: u64) -> Result<Self, OutboxError> {
        let path = dir.join("outbox.sled");
        // Case data: the store's folder is the agent's alone, whatever the umask.
        pleura_shared::fsutil::private_dir(&path).map_err(io_err)?;
        let mut ledger = Ledger::open(&dir.join("outbox.journal")).map_err(io_err)?;
        let (trees, reset) = match open_caught(&path) {
            Ok(t) => (t, None),
            Err(Damaged::Io(e)) => return Err(io_err(e)),
            Err(Damaged::Corrupt(why)) => {
                let aside = set_aside(&path).map_err(io_err)?;
                tracing::error!(store = %path.display(), moved_to = %aside.display(), reason = %why,
                    "the outbox store is damaged; set aside, starting a fresh one and rebuilding from the journal and processed/");
                let t = match open_caught(&path) {
                    Ok(t) => t,
                    Err(Damaged::Io(e)) => return Err(io_err(e)),
                    Err(Damaged::Corrupt(w)) => return Err(backend(w)),
                };
                (
                    t,
                    Some(format!(
                        "store damaged ({why}), set aside as {}",
                        aside.display()
                    )),
                )
            }
        };
        let (check, lost_retractions) = ledger.reconcile(&trees.held).map_err(io_err)?;
        for id in &lost_retractions {
            // The reason went with the store; the retraction itself must not be lost.
            trees
                .retract
                .insert(
                    id.as_bytes(),
                    &b"retraction (reason lost with a damaged store)"[..],
                )
                .map_err(sled_err)?;
        }
        if let Err(e) = trees.db.flush() {
            // Nothing new is claimed by it; a full disk must not stop the agent.
            tracing::warn!(error = %e, "flushing the outbox after its check");
        }
        let damage = damage_record(dir, describe(&check, reset));
        match &damage {
            Some(d) => tracing::error!(damage = %d, "the outbox store holds less than its journal"),
            None if check.adopted > 0 => {
                tracing::info!(
                    adopted = check.adopted,
                    "outbox journal rebuilt from the store"
                )
            }
            None => {}
        }
        Ok(Self {
            db: trees.db,
            queue: trees.queue,
            index: trees.index,
            parked: trees.parked,
            corrupt: trees.corrupt,
            acked: trees.acked,
            acked_ix: trees.acked_ix,
            retract: trees.retract,
            quota_bytes,
            pending_bytes: AtomicU64::new(trees.pending_bytes),
            pending_count: AtomicU64::new(trees.pending_count),
            ledger: Mutex::new(ledger),
            damage,
        })
    }

    fn flush(&self) -> Result<(), OutboxError> {
        self.db.flush().map(drop).map_err(sled_err)
    }

    fn ledger(&self) -> Result<std::sync::MutexGuard<'_, Ledger>, OutboxError> {
        self.ledger.lock().map_err(|_| backend("poisoned lock"))
    }

    /// Sets an undecodable entry aside so it neither blocks the queue nor is lost; its
    /// result is rebuilt from its scan.
    fn quarantine(&self, key: &[u8], value: &[u8], why: &str) -> Result<(), OutboxError> {
        tracing::error!(key = %hex::encode(key), reason = why, "corrupt outbox record set aside");
        self.corrupt.insert(key, value).map_err(sled_err)?;
        // Counted out once, even if an ack took it out meanwhile.
        if self.queue.remove(key).map_err(sled_err)?.is_some() {
            self.unqueued(value.len());
        }
        if let Some(id) = key.get(9..).and_then(|b| ResultId::from_slice(b).ok()) {
            self.index.remove(id.as_bytes()).map_err(sled_err)?;
            self.ledger()?.record(&[Line::Lost(id)]).map_err(io_err)?;
        }
        Ok(())
    }

    /// One entry of `n` bytes left the queue.
    fn unqueued(&self, n: usize) {
        let sub = |by: u64| move |b: u64| Some(b.saturating_sub(by));
        let _ =
            self.pending_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, sub(n as u64));
        let _ = self
            .pending_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, sub(1));
    }

    /// Counts the queue again (after damage: an entry that was never counted must not
    /// leave the counts short). Under the writers' lock, so no write is half counted.
    fn recount(&self) -> Result<(), OutboxError> {
        let _writers = self.ledger()?;
        let (mut count, mut bytes) = (0u64, 0u64);
        for kv in self.queue.iter() {
            let (_, v) = kv.map_err(sled_err)?;
            count += 1;
            bytes += v.len() as u64;
        }
        self.pending_count.store(count, Ordering::Relaxed);
        self.pending_bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// `count` entries of `bytes` in all joined the queue.
    fn queued(&self, count: usize, bytes: u64) {
        self.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.pending_count
            .fetch_add(count as u64, Ordering::Relaxed);
    }

    /// `analysed_at_ms` of the oldest queued result: the queue is ordered by priority,
    /// then time, so it is the oldest of each priority's first entry, found by one seek
    /// per priority present (at most 256, in practice 8) rather than a scan.
    fn oldest_queued(&self) -> Result<Option<u64>, OutboxError> {
        let mut oldest: Option<u64> = None;
        let mut from: Vec<u8> = Vec::new();
        while let Some(kv) = self.queue.range(from.as_slice()..).next() {
            let (k, _) = kv.map_err(sled_err)?;
            if k.len() == 25 {
                let t = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
                // The rest of this priority is younger: on to the next one.
                match k[0].checked_add(1) {
                    Some(next) => from = vec![next],
                    None => break,
                }
            } else {
                // A malformed key (the next batch sets it aside): the key after it.
                from = k.to_vec();
                from.push(0);
            }
        }
        Ok(oldest)
    }

    /// Queues `record` in the trees and flushes; on any failure takes it out again, so
    /// nothing in memory claims a record the disk does not hold.
    fn enqueue(&self, record: &ScanRecord, value: &[u8]) -> Result<(), OutboxError> {
        let key = queue_key(record);
        let done = self
            .queue
            .insert(key, value)
            .and_then(|_| self.index.insert(record.id.as_bytes(), &key[..]))
            .map_err(sled_err)
            .and_then(|_| self.flush());
        if let Err(e) = done {
            let _ = self.queue.remove(key);
            let _ = self.index.remove(record.id.as_bytes());
            let _ = self.db.flush();
            return Err(e);
        }
        Ok(())
    }
}

impl Outbox for SledOutbox {
    fn put(&self, record: &ScanRecord) -> Result<Put, OutboxError> {
        let mut ledger = self.ledger()?;
        let id = record.id.as_bytes();
        let known = self.index.contains_key(id).map_err(sled_err)?
            || self.acked_ix.contains_key(id).map_err(sled_err)?
            || self.parked.contains_key(id).map_err(sled_err)?;
        if known {
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
        self.enqueue(record, &value)?;
        // The journal line after the store: a crash in between leaves a stored result
        // the journal adopts at open, never a false "lost".
        if let Err(e) = ledger.record(&[Line::Queued(record.id)]) {
            let _ = self.queue.remove(queue_key(record));
            let _ = self.index.remove(id);
            let _ = self.db.flush();
            return Err(io_err(e));
        }
        self.queued(1, value.len() as u64);
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
            let (k, v) = kv.map_err(sled_err)?;
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
            self.recount()?;
        }
        Ok(out)
    }

    fn remove(&self, ids: &[ResultId]) -> Result<usize, OutboxError> {
        let mut ledger = self.ledger()?;
        let mut lines = Vec::new();
        for id in ids {
            let Some(key) = self.index.remove(id.as_bytes()).map_err(sled_err)? else {
                continue;
            };
            if let Some(v) = self.queue.remove(&key).map_err(sled_err)? {
                self.unqueued(v.len());
                let day = ScanRecord::decode(&v)
                    .map(|r| day_of_ms(r.analysed_at_ms))
                    .unwrap_or_else(|_| day_of_ms(pleura_shared::now_ms()));
                self.acked.insert(acked_key(day, id), v).map_err(sled_err)?;
                self.acked_ix
                    .insert(id.as_bytes(), &day.to_be_bytes())
                    .map_err(sled_err)?;
                lines.push(Line::Acked(*id, day));
            }
        }
        if !lines.is_empty() {
            self.flush()?;
            ledger.record(&lines).map_err(io_err)?;
            ledger.compact_if_large().map_err(io_err)?;
        }
        Ok(lines.len())
    }

    fn park(&self, id: &ResultId, reason: &str) -> Result<(), OutboxError> {
        let mut ledger = self.ledger()?;
        if let Some(key) = self.index.remove(id.as_bytes()).map_err(sled_err)? {
            if let Some(v) = self.queue.remove(&key).map_err(sled_err)? {
                self.unqueued(v.len());
                let mut entry = reason.as_bytes().to_vec();
                entry.push(0);
                entry.extend_from_slice(&v);
                self.parked.insert(id.as_bytes(), entry).map_err(sled_err)?;
            }
            self.flush()?;
            ledger.record(&[Line::Parked(*id)]).map_err(io_err)?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let q = self.queue_depth()?;
        let lost_pending = self.ledger()?.lost_count() as u64;
        Ok(OutboxStats {
            pending: q.pending,
            pending_bytes: self.pending_bytes.load(Ordering::Relaxed),
            quota_bytes: self.quota_bytes,
            oldest_pending_ms: q.oldest_pending_ms,
            parked: self.parked.len() as u64,
            corrupt: self.corrupt.len() as u64,
            acked: self.acked_ix.len() as u64,
            retractions_pending: self.retract.len() as u64,
            lost_pending,
            damage: self.damage.clone(),
        })
    }

    fn queue_depth(&self) -> Result<QueueDepth, OutboxError> {
        Ok(QueueDepth {
            pending: self.pending_count.load(Ordering::Relaxed),
            oldest_pending_ms: self.oldest_queued()?,
        })
    }

    fn has_room(&self) -> bool {
        self.pending_bytes.load(Ordering::Relaxed) + MAX_RECORD_BYTES as u64 <= self.quota_bytes
    }

    fn held(&self, id: &ResultId) -> Result<Option<Held>, OutboxError> {
        let k = id.as_bytes();
        Ok(if self.index.contains_key(k).map_err(sled_err)? {
            Some(Held::Queued)
        } else if self.acked_ix.contains_key(k).map_err(sled_err)? {
            Some(Held::Acked)
        } else if self.parked.contains_key(k).map_err(sled_err)? {
            Some(Held::Parked)
        } else {
            match self.ledger()?.state.get(id) {
                Some(State::Lost) => Some(Held::Lost),
                Some(State::Gone(_)) => Some(Held::Acked),
                _ => None,
            }
        })
    }

    fn lost(&self) -> Vec<ResultId> {
        self.ledger().map(|l| l.lost()).unwrap_or_default()
    }

    fn holdings(&self) -> Result<Holdings, OutboxError> {
        let mut h = Holdings::default();
        for kv in self.acked_ix.iter() {
            let (k, v) = kv.map_err(sled_err)?;
            if let (Ok(id), Ok(day)) = (ResultId::from_slice(&k), <[u8; 4]>::try_from(&v[..])) {
                h.add(u32::from_be_bytes(day), &id);
            }
        }
        Ok(h)
    }

    fn requeue_days(&self, days: &[u32]) -> Result<usize, OutboxError> {
        let mut ledger = self.ledger()?;
        let mut lines = Vec::new();
        let mut added = 0u64;
        let days: HashSet<u32> = days.iter().copied().collect();
        for day in days {
            for kv in self.acked.scan_prefix(day.to_be_bytes()) {
                let (_, v) = kv.map_err(sled_err)?;
                let Ok(r) = ScanRecord::decode(&v) else {
                    continue;
                };
                if self.index.contains_key(r.id.as_bytes()).map_err(sled_err)? {
                    continue;
                }
                let key = queue_key(&r);
                self.queue.insert(key, v.clone()).map_err(sled_err)?;
                self.index
                    .insert(r.id.as_bytes(), &key[..])
                    .map_err(sled_err)?;
                added += v.len() as u64;
                lines.push(Line::Queued(r.id));
            }
        }
        if !lines.is_empty() {
            // Counted before the flush: the tree holds them whether or not it succeeds.
            self.queued(lines.len(), added);
            self.flush()?;
            ledger.record(&lines).map_err(io_err)?;
        }
        Ok(lines.len())
    }

    fn prune_acked(&self, before_day: u32) -> Result<usize, OutboxError> {
        let mut ledger = self.ledger()?;
        let mut lines = Vec::new();
        for kv in self.acked.range(..before_day.to_be_bytes()) {
            let (k, _) = kv.map_err(sled_err)?;
            self.acked.remove(&k).map_err(sled_err)?;
            if let Some(id) = k.get(4..).and_then(|b| ResultId::from_slice(b).ok()) {
                self.acked_ix.remove(id.as_bytes()).map_err(sled_err)?;
                lines.push(Line::Pruned(id));
            }
        }
        let stored = lines.len();
        lines.extend(ledger.gone_before(before_day).into_iter().map(Line::Pruned));
        if !lines.is_empty() {
            self.flush()?;
            ledger.record(&lines).map_err(io_err)?;
            ledger.compact_if_large().map_err(io_err)?;
        }
        Ok(stored)
    }

    fn retract(&self, id: &ResultId, reason: &str) -> Result<(), OutboxError> {
        let mut ledger = self.ledger()?;
        self.retract
            .insert(id.as_bytes(), reason.as_bytes())
            .map_err(sled_err)?;
        self.flush()?;
        ledger.record(&[Line::RetractAsked(*id)]).map_err(io_err)
    }

    fn retractions(&self) -> Result<Vec<(ResultId, String)>, OutboxError> {
        let mut out = Vec::new();
        for kv in self.retract.iter() {
            let (k, v) = kv.map_err(sled_err)?;
            if let Ok(id) = ResultId::from_slice(&k) {
                out.push((id, String::from_utf8_lossy(&v).into_owned()));
            }
        }
        Ok(out)
    }

    fn retracted(&self, ids: &[ResultId]) -> Result<usize, OutboxError> {
        let mut ledger = self.ledger()?;
        let mut lines = Vec::new();
        for id in ids {
            if self
                .retract
                .remove(id.as_bytes())
                .map_err(sled_err)?
                .is_some()
            {
                lines.push(Line::RetractDone(*id));
            }
        }
        if !lines.is_empty() {
            self.flush()?;
            ledger.record(&lines).map_err(io_err)?;
        }
        Ok(lines.len())
    }
}

mod open;
#[cfg(test)]
mod tests;

use open::{damage_record, describe, open_caught, set_aside, Damaged};
