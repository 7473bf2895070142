//! The page's view of the media outbox and the verdict store, and opening all of its
//! sources in the agent's one sled database.

use std::sync::Arc;

use pleura_shared::exam::ExamId;
use pleura_shared::ResultId;

use super::view::{MediaSent, MediaView, PatientSource, ReceivedVerdict, Sources, VerdictView};
use crate::downlink::VerdictStore;
use crate::media::{MediaOutbox, UploadState};
use crate::outbox::{Outbox, SledOutbox};
use crate::scanlog::{ScanLog, ScanLogError};

impl MediaView for MediaOutbox {
    fn sent(&self, id: &ResultId) -> Option<MediaSent> {
        match self.media_of(id) {
            Ok(m) => Some(MediaSent {
                preview_at_hub: m.preview == Some(UploadState::AtHub),
                clip_at_hub: m.clip == Some(UploadState::AtHub),
            }),
            Err(e) => {
                tracing::warn!(result_id = %id, error = %e, "clinic page: reading media state");
                None
            }
        }
    }
}

impl VerdictView for VerdictStore {
    fn verdicts(&self, exam: &ExamId) -> Vec<ReceivedVerdict> {
        match self.for_exam(exam) {
            Ok(v) => v.into_iter().map(received).collect(),
            Err(e) => {
                tracing::warn!(exam = %exam, error = %e, "clinic page: reading verdicts");
                Vec::new()
            }
        }
    }

    fn since(&self, received_after_ms: u64) -> Vec<ReceivedVerdict> {
        match VerdictStore::since(self, received_after_ms) {
            Ok(v) => v.into_iter().map(received).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "clinic page: reading recent verdicts");
                Vec::new()
            }
        }
    }
}

fn received(s: crate::downlink::StoredVerdict) -> ReceivedVerdict {
    ReceivedVerdict {
        received_at_ms: s.received_at_ms,
        verdict: s.verdict,
    }
}

/// The page's sources over the agent's store: the scan log, `outbox` (the same store,
/// shared), the media outbox and verdicts the media and downlink modules keep, and the
/// model and inbox for the patient summaries.
pub fn open(
    store: &SledOutbox,
    outbox: Arc<dyn Outbox>,
    media: Arc<MediaOutbox>,
    verdicts: Arc<VerdictStore>,
    patients: PatientSource,
) -> Result<Sources, ScanLogError> {
    Ok(Sources {
        scans: ScanLog::open(store)?,
        outbox,
        media: Some(media),
        verdicts: Some(verdicts),
        patients: Some(patients),
    })
}
