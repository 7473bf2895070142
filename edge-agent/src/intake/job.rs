//! The pool job: a scan file's bytes and what the intake knows of it in, its
//! `ScanRecord` out, all on an inference thread. The file is decoded once: for DICOM
//! that one parse gives both the frames and the header's pseudonym and study day. The
//! bytes are hashed for the result id and dropped before the model runs.

use std::time::{SystemTime, UNIX_EPOCH};

use pleura_inference::pool::Worker;
use pleura_inference::AnalyzeError;
use pleura_shared::{PseudonymKey, ResultId, ScanRecord};

use super::result_id;
use pleura_shared::now_ms;

/// What the intake knows of a scan before reading it: whose and where it is.
#[derive(Clone)]
pub struct ScanFacts {
    pub clinic: String,
    pub device: String,
    pub key: std::sync::Arc<PseudonymKey>,
    /// The pseudonym of the patient folder it was exported into, if any (a DICOM
    /// header's PatientID comes first).
    pub folder_patient: Option<[u8; 16]>,
    pub zone: Option<String>,
    /// Its modification time: the scan day when no DICOM header names one.
    pub modified: SystemTime,
}

/// Decodes, identifies, hashes and analyses one scan; runs on an inference thread
/// (`InferencePool::run`). A file that cannot be decoded is `AnalyzeError::Decode`.
pub fn scan_job(
    w: &mut Worker<'_>,
    bytes: Vec<u8>,
    facts: &ScanFacts,
) -> Result<ScanRecord, AnalyzeError> {
    let decoded = w.decode(&bytes)?;
    let dicom = decoded
        .dicom
        .as_ref()
        .map(|obj| crate::deid::identity_of(obj, &facts.key))
        .unwrap_or_default();
    // The parsed file holds the pixel data: not kept while the model runs.
    drop(decoded.dicom);
    // A DICOM header names the patient and the study day better than the folder and
    // the file time; only the pseudonym and the day are kept.
    let patient = dicom.patient_key.or(facts.folder_patient);
    let id = id_of(facts, patient.as_ref(), &bytes);
    drop(bytes);
    let report = w.analyze(decoded.scan)?;
    Ok(ScanRecord {
        id,
        clinic: facts.clinic.clone(),
        device: facts.device.clone(),
        patient_key: patient,
        zone: facts.zone.clone(),
        scan_day: dicom.scan_day.unwrap_or_else(|| day_of(facts.modified)),
        analysed_at_ms: now_ms(),
        format: report.format.to_string(),
        analysis: report.analysis,
        localisation: ScanRecord::quantise_map(&report.localisation),
        localisation_size: report.localisation_size as u32,
    })
}

fn id_of(facts: &ScanFacts, patient: Option<&[u8; 16]>, bytes: &[u8]) -> ResultId {
    result_id(
        &facts.clinic,
        &facts.device,
        patient,
        facts.zone.as_deref(),
        bytes,
    )
}

fn day_of(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
