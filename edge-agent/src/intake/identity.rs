//! Who and what a scan is: its result id (content, clinic, device, patient, zone),
//! the facts known of it before it is read (folder pseudonym, zone, the coarse
//! demographics of the folder's `vitals.json`), and the keyed digest that names its
//! inbox entry in logs. The record itself is built by the pool job (`job`).

use std::path::Path;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use pleura_shared::record::is_zone;
use pleura_shared::{Demographics, PseudonymKey, ResultId};
use sha2::{Digest, Sha256};

use super::job::ScanFacts;
use super::Intake;

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

impl Intake {
    /// What is known of the scan at `path` (its place in the inbox) before it is read.
    /// Blocking: reads the patient folder's vitals file (`demographics`).
    pub(super) fn facts(&self, path: &Path, modified: SystemTime) -> ScanFacts {
        ScanFacts {
            clinic: self.cfg.clinic.clone(),
            device: self.cfg.device.clone(),
            key: self.key.clone(),
            folder_patient: self.folder_patient(path),
            demographics: self.demographics(path),
            zone: zone_from_name(path),
            modified,
        }
    }

    /// The age band and sex the clinic recorded in the vitals file of the patient folder
    /// the scan was exported into (`vitals::coarse`). None for a scan directly in the
    /// inbox or a patient without the file; a bad file is logged (by the scan's keyed
    /// digest: the folder's name identifies the patient) and never costs the scan.
    /// Blocking.
    fn demographics(&self, path: &Path) -> Demographics {
        let Some(folder) = self.patient_folder(path) else {
            return Demographics::default();
        };
        // A folder name that is not UTF-8 cannot be named to `read_vitals`: no vitals.
        let Some(folder) = folder.to_str() else {
            return Demographics::default();
        };
        match crate::vitals::read_vitals(&self.cfg.inbox, folder) {
            Ok(Some(v)) => crate::vitals::coarse(&v),
            Ok(None) => Demographics::default(),
            Err(e) => {
                tracing::warn!(
                    scan = %entry_ref(&self.key, &self.cfg.inbox, path),
                    error = %e,
                    "the patient's vitals file is unreadable or invalid and was ignored; \
                     the result carries no age band or sex"
                );
                Demographics::default()
            }
        }
    }

    /// The name of the patient folder the scan was exported into, if it was
    /// (`inbox/<patient>/<file>`).
    fn patient_folder<'a>(&self, path: &'a Path) -> Option<&'a std::ffi::OsStr> {
        path.parent()
            .filter(|p| *p != self.cfg.inbox)
            .and_then(|p| p.file_name())
    }

    /// The pseudonym of the patient folder the scan was exported into
    /// (`inbox/<patient>/<file>`); a DICOM header's patient comes first (`job`).
    fn folder_patient(&self, path: &Path) -> Option<[u8; 16]> {
        self.patient_folder(path).map(|n| match n.to_str() {
            Some(name) => self.key.pseudonym(name),
            // Not UTF-8 (e.g. Latin-1 from the device): the raw bytes, so two
            // such folders never share a pseudonym (no lossy U+FFFD merge).
            None => self
                .key
                .pseudonym(&format!("\u{1}{}", hex::encode(n.as_encoded_bytes()))),
        })
    }
}
