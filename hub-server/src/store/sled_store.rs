//! sled backend: `cases` maps result id → received-at (8 bytes BE) + encoded record;
//! `devices` maps "clinic/device" → JSON stats. One transaction and one flush per batch.

use std::collections::HashMap;
use std::path::Path;

use pleura_shared::{ResultId, ScanRecord};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{CaseFilter, Commit, DeviceStats, HubStore, StoreError, StoredCase};

pub struct SledStore {
    db: sled::Db,
    cases: sled::Tree,
    devices: sled::Tree,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("cases.sled"))
            .open()
            .map_err(backend)?;
        Ok(Self {
            cases: db.open_tree("cases").map_err(backend)?,
            devices: db.open_tree("devices").map_err(backend)?,
            db,
        })
    }

    fn decode(key: &[u8], v: &[u8]) -> Result<StoredCase, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: hex::encode(key),
            reason,
        };
        if v.len() < 8 {
            return Err(corrupt("shorter than its header".into()));
        }
        let received_at_ms = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        let record = ScanRecord::decode(&v[8..]).map_err(|e| corrupt(e.to_string()))?;
        Ok(StoredCase {
            record,
            received_at_ms,
        })
    }
}

impl HubStore for SledStore {
    fn commit(
        &self,
        records: &[ScanRecord],
        received_at_ms: u64,
    ) -> Result<Vec<Commit>, StoreError> {
        let result = (&self.cases, &self.devices).transaction(|(cases, devices)| {
            let mut outcome = Vec::with_capacity(records.len());
            let mut stats: HashMap<String, DeviceStats> = HashMap::new();
            for r in records {
                let dev_key = format!("{}/{}", r.clinic, r.device);
                if !stats.contains_key(&dev_key) {
                    let s = match devices.get(dev_key.as_bytes())? {
                        Some(v) => serde_json::from_slice(&v).unwrap_or_default(),
                        None => DeviceStats {
                            clinic: r.clinic.clone(),
                            device: r.device.clone(),
                            ..Default::default()
                        },
                    };
                    stats.insert(dev_key.clone(), s);
                }
                let s = stats.get_mut(&dev_key).expect("inserted above");
                s.last_received_ms = received_at_ms;
                let encoded = r.encode();
                if let Some(old) = cases.get(r.id.as_bytes())? {
                    // Same bytes means same clinic, device and content.
                    if old.get(8..) == Some(encoded.as_slice()) {
                        s.duplicates += 1;
                        outcome.push(Commit::Duplicate);
                    } else {
                        s.conflicts += 1;
                        outcome.push(Commit::Conflict);
                    }
                    continue;
                }
                let mut v = received_at_ms.to_be_bytes().to_vec();
                v.extend_from_slice(&encoded);
                cases.insert(r.id.as_bytes(), v)?;
                s.results += 1;
                outcome.push(Commit::New);
            }
            for (k, s) in stats {
                let v = serde_json::to_vec(&s)
                    .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                devices.insert(k.as_bytes(), v)?;
            }
            Ok(outcome)
        });
        let outcome = result.map_err(|e: TransactionError<String>| backend(e))?;
        // Durable before anyone is told it is committed.
        self.db.flush().map_err(backend)?;
        Ok(outcome)
    }

    fn get(&self, id: &ResultId) -> Result<Option<StoredCase>, StoreError> {
        match self.cases.get(id.as_bytes()).map_err(backend)? {
            Some(v) => Self::decode(id.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    fn list(&self, filter: &CaseFilter) -> Result<Vec<StoredCase>, StoreError> {
        let mut out = Vec::new();
        for kv in self.cases.iter() {
            let (k, v) = kv.map_err(backend)?;
            let case = Self::decode(&k, &v)?;
            if filter.matches(&case.record) {
                out.push(case);
            }
        }
        out.sort_by(|a, b| {
            (b.record.scan_day, b.received_at_ms).cmp(&(a.record.scan_day, a.received_at_ms))
        });
        if filter.limit > 0 {
            out.truncate(filter.limit);
        }
        Ok(out)
    }

    fn devices(&self) -> Result<Vec<DeviceStats>, StoreError> {
        self.devices
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    id: String::from_utf8_lossy(&k).into_owned(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    fn count(&self) -> Result<u64, StoreError> {
        Ok(self.cases.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sled_store_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        super::super::suite::run(|| super::SledStore::open(dir.path()).unwrap());
    }
}
