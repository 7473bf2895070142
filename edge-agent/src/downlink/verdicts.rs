//! Verdicts the hub sent, kept durably at the clinic (one sled tree). Key: exam id
//! (16) ‖ received_at_ms (8, big-endian) ‖ message id (16); value: the encoded Verdict.

use pleura_shared::wire::Verdict;
use pleura_shared::ExamId;
use prost::Message;
use serde::Serialize;

use super::DownlinkError;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredVerdict {
    pub message_id: [u8; 16],
    pub received_at_ms: u64,
    pub verdict: Verdict,
}

#[derive(Clone)]
pub struct VerdictStore {
    tree: sled::Tree,
}

pub(crate) fn key(exam: &[u8; 16], received_at_ms: u64, message_id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(40);
    k.extend_from_slice(exam);
    k.extend_from_slice(&received_at_ms.to_be_bytes());
    k.extend_from_slice(message_id);
    k
}

fn decode(k: &[u8], v: &[u8]) -> Result<StoredVerdict, DownlinkError> {
    let bad = || DownlinkError::Corrupt(format!("verdict key of {} bytes", k.len()));
    if k.len() != 40 {
        return Err(bad());
    }
    let received_at_ms = u64::from_be_bytes(k[16..24].try_into().map_err(|_| bad())?);
    let message_id: [u8; 16] = k[24..40].try_into().map_err(|_| bad())?;
    let verdict = Verdict::decode(v).map_err(|e| DownlinkError::Corrupt(e.to_string()))?;
    Ok(StoredVerdict {
        message_id,
        received_at_ms,
        verdict,
    })
}

impl VerdictStore {
    pub fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// The verdicts on one examination, oldest first (a second reading follows the first).
    pub fn for_exam(&self, exam: &ExamId) -> Result<Vec<StoredVerdict>, DownlinkError> {
        self.tree
            .scan_prefix(exam.as_bytes())
            .map(|r| {
                let (k, v) = r?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Verdicts received after `received_after_ms`, oldest first.
    pub fn since(&self, received_after_ms: u64) -> Result<Vec<StoredVerdict>, DownlinkError> {
        let mut out = Vec::new();
        for r in self.tree.iter() {
            let (k, v) = r?;
            let sv = decode(&k, &v)?;
            if sv.received_at_ms > received_after_ms {
                out.push(sv);
            }
        }
        out.sort_by_key(|v| (v.received_at_ms, v.message_id));
        Ok(out)
    }

    pub fn count(&self) -> usize {
        self.tree.len()
    }
}

/// A verdict as `edge-agent verdicts` prints it (JSON, one object per verdict).
#[derive(Debug, Serialize)]
pub struct VerdictView {
    pub message_id: String,
    pub received_at_ms: u64,
    pub exam_id: String,
    /// The clinic's own pseudonym of the patient (hex; never a name).
    pub patient_key: String,
    pub scan_day: u32,
    pub impression: String,
    pub recommendation: String,
    pub rescan_reason: String,
    pub comment: String,
    pub reviewer: String,
    pub given_at_ms: u64,
    pub second_read: bool,
    pub zones: Vec<ZoneView>,
}

#[derive(Debug, Serialize)]
pub struct ZoneView {
    pub zone: String,
    pub result_id: String,
    pub model_score: u32,
    pub score: u32,
    pub overridden: bool,
}

impl From<&StoredVerdict> for VerdictView {
    fn from(s: &StoredVerdict) -> Self {
        let v = &s.verdict;
        Self {
            message_id: hex::encode(s.message_id),
            received_at_ms: s.received_at_ms,
            exam_id: hex::encode(&v.exam_id),
            patient_key: hex::encode(&v.patient_key),
            scan_day: v.scan_day,
            impression: v.impression().as_str_name().to_string(),
            recommendation: v.recommendation().as_str_name().to_string(),
            rescan_reason: v.rescan_reason.clone(),
            comment: v.comment.clone(),
            reviewer: v.reviewer.clone(),
            given_at_ms: v.given_at_ms,
            second_read: v.second_read,
            zones: v
                .zones
                .iter()
                .map(|z| ZoneView {
                    zone: z.zone.clone(),
                    result_id: hex::encode(&z.result_id),
                    model_score: z.model_score,
                    score: z.score,
                    overridden: z.overridden,
                })
                .collect(),
        }
    }
}
