//! Who and what a scan is: its result id (content, clinic, device, patient, zone),
//! its patient pseudonym and zone, the record built from its analysis, and the keyed
//! digest that names its inbox entry in logs.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use pleura_inference::ScanReport;
use pleura_shared::record::is_zone;
use pleura_shared::{PseudonymKey, ResultId, ScanRecord};
use sha2::{Digest, Sha256};

use super::Intake;
use crate::status::now_ms;

/// The result id: the scan's content *and* whose it is and where it was taken. The same
/// scan re-analysed after a crash keeps its id; byte-identical files exported under two
/// patients (or two zones) are two results, never merged. (For DICOM the patient is
/// the header's PatientID, so identical DICOM bytes are the same patient.)
pub fn result_id(
    clinic: &str,
    device: &str,
    patient: Option<&[u8; 16]>,
    zone: Option<&str>,
    bytes: &[u8],
) -> ResultId {
    let mut h = Sha256::new();
    h.update(b"pleura-result-v2\0");
    for part in [
        clinic.as_bytes(),
        device.as_bytes(),
        zone.unwrap_or("").as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    match patient {
        Some(p) => {
            h.update([1]);
            h.update(p);
        }
        None => h.update([0]),
    }
    h.update(bytes);
    ResultId::from_slice(&h.finalize()[..16]).expect("16 bytes")
}

/// "L1".."R6" from the file name (e.g. `scan_R2.mp4`), if present.
pub fn zone_from_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_string_lossy().to_uppercase();
    stem.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|t| is_zone(t))
        .map(str::to_string)
}

/// A keyed digest of an entry's path below the inbox: how logs, status and the
/// attempts file name it (a plain hash of a folder named by an MRN could be reversed).
pub fn entry_ref(key: &PseudonymKey, inbox: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(inbox).unwrap_or(path);
    // HMAC accepts keys of any length.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()) else {
        unreachable!("HMAC-SHA256 takes keys of any length")
    };
    mac.update(b"pleura-inbox-entry-v1\0");
    mac.update(rel.as_os_str().as_encoded_bytes());
    hex::encode(&mac.finalize().into_bytes()[..8])
}

fn day_of(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as u32)
        .unwrap_or(0)
}

impl Intake {
    /// The patient pseudonym: from the DICOM header, else the patient folder the scan
    /// was exported into (`inbox/<patient>/<file>`).
    pub fn patient_key(&self, path: &Path, dicom: &crate::deid::DicomIdentity) -> Option<[u8; 16]> {
        dicom.patient_key.or_else(|| {
            path.parent()
                .filter(|p| *p != self.cfg.inbox)
                .and_then(|p| p.file_name())
                .map(|n| match n.to_str() {
                    Some(name) => self.key.pseudonym(name),
                    // Not UTF-8 (e.g. Latin-1 from the device): the raw bytes, so two
                    // such folders never share a pseudonym (no lossy U+FFFD merge).
                    None => self
                        .key
                        .pseudonym(&format!("\u{1}{}", hex::encode(n.as_encoded_bytes()))),
                })
        })
    }

    /// The id a scan at `path` (its place in the inbox) with these bytes gets.
    pub fn identify(&self, path: &Path, bytes: &[u8]) -> (ResultId, crate::deid::DicomIdentity) {
        let dicom = (pleura_inference::decode::detect(bytes).ok()
            == Some(pleura_inference::Format::Dicom))
        .then(|| crate::deid::dicom_identity(bytes, &self.key).ok())
        .flatten()
        .unwrap_or_default();
        let patient = self.patient_key(path, &dicom);
        let zone = zone_from_name(path);
        let id = result_id(
            &self.cfg.clinic,
            &self.cfg.device,
            patient.as_ref(),
            zone.as_deref(),
            bytes,
        );
        (id, dicom)
    }

    pub fn build_record(
        &self,
        path: &Path,
        id: ResultId,
        dicom: crate::deid::DicomIdentity,
        report: &ScanReport,
        modified: SystemTime,
    ) -> ScanRecord {
        // A DICOM header names the patient and the study day better than the folder
        // and the file time; only the pseudonym and the day are kept.
        ScanRecord {
            id,
            clinic: self.cfg.clinic.clone(),
            device: self.cfg.device.clone(),
            patient_key: self.patient_key(path, &dicom),
            zone: zone_from_name(path),
            scan_day: dicom.scan_day.unwrap_or_else(|| day_of(modified)),
            analysed_at_ms: now_ms(),
            format: report.format.to_string(),
            analysis: report.analysis.clone(),
            localisation: ScanRecord::quantise_map(&report.localisation),
            localisation_size: report.localisation_size as u32,
        }
    }
}
