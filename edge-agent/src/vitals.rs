//! Clinic vitals: `inbox/<patient>/vitals.json`, written by the clinic next to a
//! patient's scans (README "Clinic vitals"). They feed only the local patient summary
//! (the v2 model's vitals combiner); nothing of them goes into a result or any message
//! that leaves the clinic. The file is not a scan: intake leaves it where it is.
//!
//! A bad file (unreadable, too large, not JSON of the documented form, a value out of
//! range) is an error in the log, and the patient is summarised from the images alone;
//! it never costs a scan.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

use pleura_inference::aggregate::summarize_patient_with;
use pleura_inference::patient::VitalsError;
use pleura_inference::{ModelInfo, Vitals};
use pleura_shared::{PatientSummary, ScanAnalysis};

/// The vitals file's name in a patient folder.
pub const VITALS_FILE: &str = "vitals.json";

/// Larger vitals files are refused unread (a real one is ~200 bytes).
pub const MAX_VITALS_BYTES: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VitalsFileError {
    #[error("reading the vitals file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the vitals file is not a regular file")]
    NotAFile,
    #[error("the vitals file exceeds {MAX_VITALS_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Invalid(#[from] VitalsError),
}

/// Whether an inbox entry named `name` inside a patient folder is the vitals file.
pub fn is_vitals_file(name: &OsStr) -> bool {
    name == VITALS_FILE
}

/// The vitals of the patient whose inbox folder is `patient`: `Ok(None)` when there is
/// no such file (or `patient` is not a plain folder name). Links are never followed.
pub fn read_vitals(inbox: &Path, patient: &str) -> Result<Option<Vitals>, VitalsFileError> {
    let mut parts = Path::new(patient).components();
    if !matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) {
        return Ok(None);
    }
    let folder = inbox.join(patient);
    match std::fs::symlink_metadata(&folder) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(folder.join(VITALS_FILE))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // O_NOFOLLOW on a link.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(VitalsFileError::NotAFile),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(VitalsFileError::NotAFile);
    }
    if meta.len() > MAX_VITALS_BYTES {
        return Err(VitalsFileError::TooLarge);
    }
    let mut bytes = Vec::new();
    file.take(MAX_VITALS_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_VITALS_BYTES {
        return Err(VitalsFileError::TooLarge);
    }
    Ok(Some(Vitals::from_json(&bytes)?))
}

/// The local summary of one patient's videos (`(zone, analysis)`), with the patient's
/// vitals when the inbox has a valid file for them. A bad file is logged (without the
/// folder's name: it identifies the patient) and the summary is image-only.
pub fn patient_summary(
    videos: &[(String, ScanAnalysis)],
    info: &ModelInfo,
    inbox: &Path,
    patient: Option<&str>,
) -> PatientSummary {
    let vitals = match patient.map(|p| read_vitals(inbox, p)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(v))) => Some(v),
        Some(Err(e)) => {
            tracing::error!(
                error = %e,
                "a patient's vitals file is invalid and was ignored; the patient is summarised \
                 from the images only"
            );
            None
        }
    };
    summarize_patient_with(videos, info, vitals.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox_with(patient: &str, body: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(patient)).unwrap();
        std::fs::write(dir.path().join(patient).join(VITALS_FILE), body).unwrap();
        dir
    }

    #[test]
    fn a_valid_file_is_read_and_a_missing_one_is_none() {
        let dir = inbox_with("P-1", br#"{"spo2": 92, "sex": "f", "symptoms": ["cough"]}"#);
        let v = read_vitals(dir.path(), "P-1").unwrap().unwrap();
        assert_eq!(v.spo2, Some(92.0));
        assert!(read_vitals(dir.path(), "P-2").unwrap().is_none());
        // never outside the inbox
        for odd in ["..", "../P-1", "P-1/../P-1", "/etc", ""] {
            assert!(read_vitals(dir.path(), odd).unwrap().is_none(), "{odd}");
        }
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        for (body, expect) in [
            (&br#"{"spo2": 130}"#[..], "spo2"),
            (br#"{"temperature_c": 98.6}"#, "temperature_c"),
            (br#"{"respiratory_rate": 0}"#, "respiratory_rate"),
            (b"\xff\xfe", "JSON"),
            (br#"{"symptoms": "fever"}"#, "invalid type"),
        ] {
            let dir = inbox_with("P", body);
            let e = read_vitals(dir.path(), "P").unwrap_err().to_string();
            assert!(e.contains(expect), "{e} should mention {expect}");
        }
        let dir = inbox_with("P", &vec![b' '; MAX_VITALS_BYTES as usize + 1]);
        assert!(matches!(
            read_vitals(dir.path(), "P"),
            Err(VitalsFileError::TooLarge)
        ));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("P")).unwrap();
        std::fs::write(dir.path().join("secret.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("secret.json"),
            dir.path().join("P").join(VITALS_FILE),
        )
        .unwrap();
        assert!(matches!(
            read_vitals(dir.path(), "P"),
            Err(VitalsFileError::NotAFile)
        ));
    }

    #[test]
    fn a_bad_file_leaves_an_image_only_summary() {
        let info = ModelInfo::from_json(
            br#"{"name": "t", "version": "1", "sha256": "", "classes": [],
                 "covid_threshold": 0.5, "parameters": 0, "macs_per_frame": 0}"#,
        )
        .unwrap();
        let dir = inbox_with("P", br#"{"spo2": 12}"#);
        let s = patient_summary(&[], &info, dir.path(), Some("P"));
        assert!(!s.vitals_used);
        assert_eq!(s.zones, 0);
    }
}
