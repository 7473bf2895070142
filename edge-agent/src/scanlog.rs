//! The clinic's own log of analysed scans: one entry per settled result, with the
//! patient's LOCAL identifier (the DICOM PatientID, else the inbox folder the scan was
//! exported into). It is what the clinic page (`clinic`) shows; it never leaves the
//! device (nothing here is synced) and is pruned after `KEEP_DAYS`.
//!
//! A sled tree in the outbox's store (`SledOutbox::tree`), keyed by result id: writing
//! the same result again (a scan analysed twice after a failed move) keeps the first.

use std::io::Read;
use std::path::Path;

use pleura_shared::exam::ExamId;
use pleura_shared::holdings::day_of_ms;
use pleura_shared::{ResultId, ScanAnalysis, ScanRecord};
use serde::{Deserialize, Serialize};

use crate::outbox::{OutboxError, SledOutbox};

pub const TREE: &str = "clinic_scan_log";
/// Entries older than this (by day of analysis) are pruned.
pub const KEEP_DAYS: u32 = 30;
/// At most this much of a DICOM file is read for its PatientID (the header only).
const HEADER_LIMIT: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanEntry {
    pub result_id: ResultId,
    pub exam_id: [u8; 16],
    /// The clinic's identifier of the patient; None for a scan exported with neither a
    /// DICOM PatientID nor a patient folder.
    pub patient: Option<String>,
    pub zone: Option<String>,
    pub scan_day: u32,
    pub analysed_at_ms: u64,
    pub format: String,
    pub analysis: ScanAnalysis,
}

impl ScanEntry {
    pub fn of(record: &ScanRecord, patient: Option<String>) -> Self {
        let key = record.patient_key.map(|k| k.to_vec()).unwrap_or_default();
        Self {
            result_id: record.id,
            exam_id: ExamId::of(&record.clinic, &key, record.scan_day, &record.scan).0,
            patient,
            zone: record.zone.clone(),
            scan_day: record.scan_day,
            analysed_at_ms: record.analysed_at_ms,
            format: record.format.clone(),
            analysis: record.analysis.clone(),
        }
    }

    pub fn exam(&self) -> ExamId {
        ExamId(self.exam_id)
    }

    /// The day (since the epoch, UTC) the scan was analysed here.
    pub fn day(&self) -> u32 {
        day_of_ms(self.analysed_at_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanLogError {
    #[error("scan log storage: {0}")]
    Store(String),
}

impl From<sled::Error> for ScanLogError {
    fn from(e: sled::Error) -> Self {
        ScanLogError::Store(e.to_string())
    }
}

impl From<OutboxError> for ScanLogError {
    fn from(e: OutboxError) -> Self {
        ScanLogError::Store(e.to_string())
    }
}

#[derive(Clone)]
pub struct ScanLog {
    tree: sled::Tree,
}

impl ScanLog {
    pub fn open(outbox: &SledOutbox) -> Result<Self, ScanLogError> {
        Ok(Self {
            tree: outbox.tree(TREE)?,
        })
    }

    pub fn from_tree(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// Logs `entry` unless its result is logged already. Flushed: the page must not
    /// lose a scan the outbox holds.
    pub fn put(&self, entry: &ScanEntry) -> Result<(), ScanLogError> {
        let value = serde_json::to_vec(entry).map_err(|e| ScanLogError::Store(e.to_string()))?;
        let fresh = self
            .tree
            .compare_and_swap(entry.result_id.as_bytes(), None::<&[u8]>, Some(value))?
            .is_ok();
        if fresh {
            self.tree.flush()?;
        }
        Ok(())
    }

    /// The hook intake calls once a result is settled (stored, its scan moved to
    /// `processed`): logs it with the local patient identifier. Never fails intake; a
    /// failure is logged (without the patient).
    pub fn settled(&self, record: &ScanRecord, inbox: &Path, scan: &Path, processed: &Path) {
        let stored = scan.strip_prefix(inbox).map(|rel| processed.join(rel)).ok();
        let patient = local_patient(record, inbox, scan, stored.as_deref());
        if let Err(e) = self.put(&ScanEntry::of(record, patient)) {
            tracing::warn!(result_id = %record.id, error = %e, "scan not written to the clinic's scan log");
        }
    }

    /// Entries analysed on `day` (UTC days since the epoch), oldest first.
    pub fn day(&self, day: u32) -> Result<Vec<ScanEntry>, ScanLogError> {
        let mut out: Vec<ScanEntry> = self.all()?.into_iter().filter(|e| e.day() == day).collect();
        out.sort_by_key(|e| (e.analysed_at_ms, e.result_id));
        Ok(out)
    }

    fn all(&self) -> Result<Vec<ScanEntry>, ScanLogError> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (_, v) = kv?;
            match serde_json::from_slice::<ScanEntry>(&v) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(error = %e, "unreadable scan log entry skipped"),
            }
        }
        Ok(out)
    }

    /// Forgets entries analysed before `before_day`. Returns how many.
    pub fn prune(&self, before_day: u32) -> Result<usize, ScanLogError> {
        let mut n = 0;
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            let old =
                serde_json::from_slice::<ScanEntry>(&v).map_or(true, |e| e.day() < before_day);
            if old {
                self.tree.remove(k)?;
                n += 1;
            }
        }
        if n > 0 {
            self.tree.flush()?;
        }
        Ok(n)
    }
}

/// The patient as the clinic knows them: a DICOM file's PatientID (what its pseudonym
/// was made from), else the name of the patient folder in the inbox.
pub fn local_patient(
    record: &ScanRecord,
    inbox: &Path,
    scan: &Path,
    stored: Option<&Path>,
) -> Option<String> {
    record.patient_key?;
    if record.format == "DICOM" {
        if let Some(id) = stored.and_then(dicom_patient_id) {
            return Some(id);
        }
    }
    scan.parent()
        .filter(|p| *p != inbox)
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
}

/// The PatientID of the DICOM file at `path` (the agent's own copy in processed/),
/// read from its header only.
fn dicom_patient_id(path: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut head = std::io::BufReader::new(file.take(HEADER_LIMIT));
    let mut preamble = [0u8; 132];
    head.read_exact(&mut preamble).ok()?;
    if &preamble[128..] != b"DICM" {
        return None;
    }
    // The reader starts at the file meta group, magic code included.
    let obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Never)
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .from_reader((&b"DICM"[..]).chain(head))
        .ok()?;
    let s = obj
        .element(dicom_dictionary_std::tags::PATIENT_ID)
        .ok()?
        .to_str()
        .ok()?
        .trim()
        .to_string();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(format: &str, patient: bool, at_ms: u64) -> ScanRecord {
        let mut r = pleura_shared::record::sample_record("clinic-a", "pi-1", 2, true);
        r.format = format.into();
        r.analysed_at_ms = at_ms;
        if !patient {
            r.patient_key = None;
        } else if r.patient_key.is_none() {
            r.patient_key = Some([3; 16]);
        }
        r
    }

    #[test]
    fn entries_are_kept_once_listed_by_day_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = SledOutbox::open(dir.path(), 1 << 20).unwrap();
        let log = ScanLog::open(&outbox).unwrap();
        let day = 20_000u32;
        let ms = u64::from(day) * 86_400_000;
        let a = record("PNG", true, ms + 1000);
        let b = record("PNG", true, ms - 1000);
        log.put(&ScanEntry::of(&a, Some("P1".into()))).unwrap();
        // The same result again keeps the first entry.
        log.put(&ScanEntry::of(&a, Some("other".into()))).unwrap();
        log.put(&ScanEntry::of(&b, Some("P2".into()))).unwrap();
        let today = log.day(day).unwrap();
        assert_eq!(today.len(), 1);
        assert_eq!(today[0].patient.as_deref(), Some("P1"));
        let key = a.patient_key.unwrap();
        assert_eq!(
            today[0].exam(),
            ExamId::of("clinic-a", &key, a.scan_day, &a.id)
        );
        assert_eq!(log.day(day - 1).unwrap().len(), 1);
        assert_eq!(log.prune(day).unwrap(), 1);
        assert!(log.day(day - 1).unwrap().is_empty());
        assert_eq!(log.day(day).unwrap().len(), 1);
    }

    #[test]
    fn the_local_patient_is_the_folder_or_nobody() {
        let inbox = Path::new("/in");
        let r = record("PNG", true, 0);
        assert_eq!(
            local_patient(&r, inbox, Path::new("/in/MRN-7/scan_R1.png"), None).as_deref(),
            Some("MRN-7")
        );
        assert_eq!(
            local_patient(&r, inbox, Path::new("/in/scan_R1.png"), None),
            None
        );
        let r = record("PNG", false, 0);
        assert_eq!(
            local_patient(&r, inbox, Path::new("/in/MRN-7/scan_R1.png"), None),
            None
        );
    }

    #[test]
    fn a_dicom_files_patient_id_is_read_from_its_header() {
        use dicom_core::{DataElement, VR};
        use dicom_dictionary_std::tags;
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scans/cb_multiframe.dcm");
        let dir = tempfile::tempdir().unwrap();
        let mut obj = pleura_inference::open_dicom(&std::fs::read(&fixture).unwrap()).unwrap();
        obj.put(DataElement::new(tags::PATIENT_ID, VR::LO, " MRN^77 "));
        let with_id = dir.path().join("with_id.dcm");
        obj.write_to_file(&with_id).unwrap();
        assert_eq!(dicom_patient_id(&with_id).as_deref(), Some("MRN^77"));
        obj.remove_element(tags::PATIENT_ID);
        let without = dir.path().join("without.dcm");
        obj.write_to_file(&without).unwrap();
        assert_eq!(dicom_patient_id(&without), None);
        assert_eq!(dicom_patient_id(&dir.path().join("missing.dcm")), None);
        // The header's patient comes before the folder, for DICOM only.
        let r = record("DICOM", true, 0);
        let inbox = dir.path().join("in");
        let scan = inbox.join("folder-name").join("x.dcm");
        assert_eq!(
            local_patient(&r, &inbox, &scan, Some(&with_id)).as_deref(),
            Some("MRN^77")
        );
        assert_eq!(
            local_patient(&r, &inbox, &scan, Some(&without)).as_deref(),
            Some("folder-name")
        );
    }
}
