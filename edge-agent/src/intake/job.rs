//! The pool job: a scan file's bytes and what the intake knows of it in, its
//! `ScanRecord` out, all on an inference thread. The file is decoded once: for DICOM
//! that one parse gives both the frames and the header's pseudonym and study day. The
//! bytes are hashed for the result id and dropped before the model runs.

use std::time::{SystemTime, UNIX_EPOCH};

use pleura_inference::decode::{detect, DecodeError, Format};
use pleura_inference::pool::Worker;
use pleura_inference::AnalyzeError;
use pleura_shared::{result_id_for, PseudonymKey, ResultId, ScanRecord};

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
    /// The coarse age band and sex the clinic recorded for the patient (vitals.json).
    pub demographics: pleura_shared::Demographics,
    pub zone: Option<String>,
    /// Its modification time: the scan day when no DICOM header names one.
    pub modified: SystemTime,
}

/// What the shadow model needs to read the scan again: the frames already decoded (its
/// input matches the active model's), or the file's bytes (it samples differently).
pub enum Again {
    Frames(pleura_inference::decode::DecodedScan),
    Bytes(Vec<u8>),
}

/// What the job keeps for a shadow reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Nothing,
    Frames,
    Bytes,
}

impl Keep {
    /// What to keep for `candidate` (none: nothing): the decoded frames when it samples
    /// the scan as the `active` pool does, else the bytes to decode again.
    pub fn for_shadow(
        active: &pleura_inference::InferencePool,
        candidate: Option<&pleura_inference::InferencePool>,
    ) -> Self {
        let Some(c) = candidate else {
            return Keep::Nothing;
        };
        let (a, c) = (&active.info().input, &c.info().input);
        if (a.size, a.max_frames) == (c.size, c.max_frames) {
            Keep::Frames
        } else {
            Keep::Bytes
        }
    }
}

/// The active reading of a scan, and what a shadow reading of it needs.
pub struct Analysed {
    pub record: ScanRecord,
    pub again: Option<Again>,
}

/// Decodes, identifies, hashes and analyses one scan with release `release`; runs on an
/// inference thread (`InferencePool::run`). A file that cannot be decoded (or whose
/// decoding crashes) is `AnalyzeError::Decode`: the file's fault, never the model's.
pub fn scan_job(
    w: &mut Worker<'_>,
    bytes: Vec<u8>,
    facts: &ScanFacts,
    release: u64,
    keep: Keep,
) -> Result<Analysed, AnalyzeError> {
    let decoded = decode_guarded(w, &bytes)?;
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
    let scan = id_of(facts, patient.as_ref(), &bytes);
    let again = match keep {
        Keep::Nothing => None,
        Keep::Frames => Some(Again::Frames(decoded.scan.clone())),
        Keep::Bytes => Some(Again::Bytes(bytes)),
    };
    let report = w.analyze(decoded.scan)?;
    let record = ScanRecord {
        id: result_id_for(&scan, release, false),
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
        scan,
        release,
        shadow: None,
        demographics: facts.demographics,
    };
    Ok(Analysed { record, again })
}

/// The candidate release `release` reads the scan the active model read as `active`:
/// same scan, patient, zone and day; its own id, reading and localisation; never
/// flagged (what it would have flagged is kept apart, for the hub's comparison).
pub fn shadow_job(
    w: &mut Worker<'_>,
    again: Again,
    active: &ScanRecord,
    release: u64,
) -> Result<ScanRecord, AnalyzeError> {
    let scan = match again {
        Again::Frames(scan) => scan,
        Again::Bytes(bytes) => decode_guarded(w, &bytes)?.scan,
    };
    let report = w.analyze(scan)?;
    let mut analysis = report.analysis;
    let would_flag = std::mem::take(&mut analysis.flag_reasons);
    analysis.flagged = false;
    Ok(ScanRecord {
        id: result_id_for(&active.scan, release, true),
        analysed_at_ms: now_ms(),
        analysis,
        localisation: ScanRecord::quantise_map(&report.localisation),
        localisation_size: report.localisation_size as u32,
        release,
        shadow: Some(would_flag),
        ..active.clone()
    })
}

/// Decodes on this inference thread; a decoder panic is the file's fault (a corrupt
/// file), reported as a decode error so that it never counts against a model release.
fn decode_guarded(
    w: &Worker<'_>,
    bytes: &[u8],
) -> Result<pleura_inference::decode::Decoded, AnalyzeError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.decode(bytes))) {
        Ok(res) => Ok(res?),
        Err(_) => Err(AnalyzeError::Decode(DecodeError::Corrupt {
            format: detect(bytes).unwrap_or(Format::Dicom),
            reason: "the decoder crashed on this file".into(),
        })),
    }
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
