//! Fleet health in the sled store (`store::fleet`): `note_contact` read-modify-writes
//! the device's `devices` entry inside a transaction on that tree, as `commit` does, so
//! neither loses the other's update (sled reruns a transaction that conflicts).
//!
//! Not flushed here, on purpose: the record is advisory (the device's next batch, at
//! most a reconcile interval away, restores it), sled writes it out within its flush
//! interval (`flush_every_ms`, 500 ms by default) and the next commit's flush makes it
//! durable with the results. An fsync for every MQTT message would cost the group
//! commit its throughput.

use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{backend, SledStore};
use crate::store::{Contact, DeviceStats, StoreError};

impl SledStore {
    pub(super) fn fleet_note_contact(
        &self,
        clinic: &str,
        device: &str,
        c: &Contact,
    ) -> Result<(), StoreError> {
        let key = format!("{clinic}/{device}");
        let result = self.devices.transaction(|t| {
            // A value that no longer decodes starts afresh, as a commit would.
            let mut s: DeviceStats = t
                .get(key.as_bytes())?
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_default();
            if s.clinic.is_empty() && s.device.is_empty() {
                s.clinic = clinic.to_string();
                s.device = device.to_string();
            }
            s.note(c);
            let v = serde_json::to_vec(&s)
                .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
            t.insert(key.as_bytes(), v)?;
            Ok(())
        });
        result.map_err(|e: TransactionError<String>| backend(e))
    }
}

#[cfg(test)]
mod tests {
    use super::SledStore;

    #[test]
    fn sled_store_records_fleet_health_like_every_backend() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::suite::fleet(|| SledStore::open(dir.path()).unwrap());
    }
}
