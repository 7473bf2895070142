//! The delivery outbox: one entry per read whose verdict is not yet queued to every
//! device of its examination. `exam_record_read` writes it in the read's transaction, so
//! a read stored is a read delivered eventually (the case service's sweeper queues what
//! is left here and removes the entry once every device has it queued).

use pleura_shared::ExamId;

use super::{backend, SledStore};
use crate::store::exams::Undelivered;
use crate::store::StoreError;

impl SledStore {
    pub(super) fn outbox_list(
        &self,
        exam: Option<&ExamId>,
    ) -> Result<Vec<Undelivered>, StoreError> {
        let prefix: &[u8] = exam.map_or(&[], |e| e.as_bytes());
        let mut out = Vec::new();
        for kv in self.outbox.scan_prefix(prefix) {
            let (k, _) = kv.map_err(backend)?;
            match Undelivered::from_key(&k) {
                Some(u) => out.push(u),
                None => tracing::warn!("an undecodable delivery outbox entry was skipped"),
            }
        }
        Ok(out)
    }

    pub(super) fn outbox_remove(&self, read: &Undelivered) -> Result<(), StoreError> {
        if self.outbox.remove(read.key()).map_err(backend)?.is_some() {
            self.db.flush().map_err(backend)?;
        }
        Ok(())
    }
}
