//! Which readings are current: the `superseded` tree the commits keep (listings and
//! aggregates skip its results without loading examinations), and the examinations with
//! a verdict the shadow comparison reads.

use std::collections::HashSet;

use pleura_shared::{ExamId, ResultId};

use super::{backend, SledStore};
use crate::store::exams::{Exam, Reads};
use crate::store::StoreError;

impl SledStore {
    /// Every result another analysis of its scan superseded.
    pub(super) fn superseded_ids(&self) -> Result<HashSet<ResultId>, StoreError> {
        let mut out = HashSet::new();
        for k in self.superseded.iter().keys() {
            if let Ok(id) = ResultId::from_slice(&k.map_err(backend)?) {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// Every examination with a verdict, with its reads; one that no longer decodes is
    /// skipped (logged where it is decoded).
    pub(super) fn exams_with_reads(&self) -> Result<Vec<(Exam, Reads)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.reads.iter() {
            let (k, v) = kv.map_err(backend)?;
            let Ok(reads) = serde_json::from_slice::<Reads>(&v) else {
                tracing::warn!(exam = %hex::encode(&k), "stored reads no longer decode; skipped");
                continue;
            };
            let Some(id) = ExamId::from_slice(&k) else {
                continue;
            };
            if let Some(exam) = self.exam_get(&id)? {
                out.push((exam, reads));
            }
        }
        Ok(out)
    }
}
