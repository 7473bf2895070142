//! Clinic vitals: `inbox/<patient>/vitals.json`, written by the clinic next to a
//! patient's scans (README "Clinic vitals"). They feed the local patient summary (the
//! v2 model's vitals combiner); of them only the coarse age band and sex go into a
//! result (`coarse`, issue #16), never the age itself or a vital sign. The file is not
//! a scan: intake leaves it where it is.
//!
//! A bad file (unreadable, too large, not JSON of the documented form, a value out of
//! range) is an error in the log, and the patient is summarised from the images alone;
//! it never costs a scan.
//!
//! The clinic page's vitals form writes the same file (`write_vitals`), into a patient
//! folder that already exists, never through a link.

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

use pleura_inference::aggregate::summarize_patient_with;
use pleura_inference::patient::{Sex, Symptom, VitalsError};
use pleura_inference::{ModelInfo, Vitals};
use pleura_shared::{AgeBand, Demographics, PatientSummary, ScanAnalysis};

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
    /// Writing: the name is not a plain folder name, or no such folder (a link is not
    /// one) is in the inbox. Says nothing of the name: it identifies the patient.
    #[error("no such patient folder in the inbox")]
    NoFolder,
}

/// Whether an inbox entry named `name` inside a patient folder is the vitals file.
pub fn is_vitals_file(name: &OsStr) -> bool {
    name == VITALS_FILE
}

/// Whether `patient` can only name an entry directly in the inbox: one path component,
/// not empty, `.` or `..`, without `/` or NUL.
pub fn is_plain_name(patient: &str) -> bool {
    let mut parts = Path::new(patient).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) && !patient.contains(['/', '\0'])
}

/// The vitals of the patient whose inbox folder is `patient`: `Ok(None)` when there is
/// no such file (or `patient` is not a plain folder name, or not a folder). Links are
/// never followed, neither the folder nor the file. Blocking.
pub fn read_vitals(inbox: &Path, patient: &str) -> Result<Option<Vitals>, VitalsFileError> {
    if !is_plain_name(patient) {
        return Ok(None);
    }
    // The folder is opened without following a link, and the file through its
    // descriptor: a folder swapped for a link meanwhile is never read through.
    let dir = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(inbox.join(patient))
    {
        Ok(d) => d,
        // No such folder, or not a folder (a link is not one).
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    let name = CString::new(VITALS_FILE).map_err(std::io::Error::other)?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name; the result is
    // checked before it is owned.
    let raw = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            // O_NOFOLLOW on a link.
            Some(libc::ELOOP) => Err(VitalsFileError::NotAFile),
            _ => Err(e.into()),
        };
    }
    // SAFETY: a descriptor just opened and owned by nothing else.
    let file = unsafe { std::fs::File::from_raw_fd(raw) };
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

/// What of `v` a result may carry: the age band of the recorded age, and the sex. The
/// exact age never leaves this function.
pub fn coarse(v: &Vitals) -> Demographics {
    Demographics {
        age_band: v.age_years.and_then(AgeBand::of_years),
        sex: v.sex.map(|s| match s {
            Sex::Female => pleura_shared::Sex::Female,
            Sex::Male => pleura_shared::Sex::Male,
        }),
    }
}

/// Whether the inbox holds a patient folder `patient` that the vitals form may write
/// into: a plain, not hidden name (intake skips hidden entries) of a real folder, not a
/// link.
pub fn has_patient_folder(inbox: &Path, patient: &str) -> std::io::Result<bool> {
    if !is_plain_name(patient) || patient.starts_with('.') {
        return Ok(false);
    }
    match std::fs::symlink_metadata(inbox.join(patient)) {
        Ok(m) => Ok(m.is_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The file's JSON: the documented fields that are recorded, nothing else.
pub fn vitals_json(v: &Vitals) -> Vec<u8> {
    use serde_json::{Map, Value};
    // Through f32's shortest text, so 38.4 is written 38.4 (not 38.400001525878906).
    let num = |x: f32| {
        let shortest: f64 = x.to_string().parse().unwrap_or(f64::from(x));
        if shortest.fract() == 0.0 && shortest.abs() < 1e9 {
            Value::from(shortest as i64)
        } else {
            serde_json::Number::from_f64(shortest).map_or(Value::Null, Value::Number)
        }
    };
    let mut m = Map::new();
    for (name, value) in [
        ("age_years", v.age_years),
        ("spo2", v.spo2),
        ("respiratory_rate", v.respiratory_rate),
        ("pulse", v.pulse),
        ("temperature_c", v.temperature_c),
    ] {
        if let Some(x) = value {
            m.insert(name.into(), num(x));
        }
    }
    if let Some(sex) = v.sex {
        let s = match sex {
            Sex::Female => "f",
            Sex::Male => "m",
        };
        m.insert("sex".into(), s.into());
    }
    if let Some(list) = &v.symptoms {
        let names = list.iter().map(|s| match s {
            Symptom::Fever => "fever",
            Symptom::Cough => "cough",
            Symptom::Dyspnea => "dyspnea",
        });
        m.insert(
            "symptoms".into(),
            Value::Array(names.map(Value::from).collect()),
        );
    }
    let mut out = serde_json::to_vec_pretty(&Value::Object(m)).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Replaces `inbox/<patient>/vitals.json` with `v` (validated first): only in a patient
/// folder that exists (`has_patient_folder`), opened without following a link, so a
/// folder swapped for one after the check is refused too. Written to a hidden temporary
/// file in that folder (`.vitals.json.<random>.tmp`: intake skips it), fsynced, renamed
/// over the file through the folder's descriptor, then the folder fsynced: a reader
/// sees the old file or the new one. Mode 0600: vitals are the patient's.
pub fn write_vitals(inbox: &Path, patient: &str, v: &Vitals) -> Result<(), VitalsFileError> {
    v.validate()?;
    if !has_patient_folder(inbox, patient)? {
        return Err(VitalsFileError::NoFolder);
    }
    let dir = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(inbox.join(patient))
    {
        Ok(d) => d,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) =>
        {
            return Err(VitalsFileError::NoFolder)
        }
        Err(e) => return Err(e.into()),
    };
    let tmp = CString::new(format!(
        ".{VITALS_FILE}.{}.tmp",
        hex::encode(rand::random::<[u8; 8]>())
    ))
    .map_err(std::io::Error::other)?;
    let target = CString::new(VITALS_FILE).map_err(std::io::Error::other)?;
    let fd = dir.as_raw_fd();
    // SAFETY: a valid directory descriptor and a NUL-terminated name; the result is
    // checked before it is owned. O_EXCL|O_NOFOLLOW: never an existing entry or a link.
    let raw = unsafe {
        libc::openat(
            fd,
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a descriptor just opened and owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(raw) };
    let placed = file
        .write_all(&vitals_json(v))
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            // SAFETY: the same valid descriptor and NUL-terminated names.
            let rc = unsafe { libc::renameat(fd, tmp.as_ptr(), fd, target.as_ptr()) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    if let Err(e) = placed {
        // SAFETY: as above.
        let _ = unsafe { libc::unlinkat(fd, tmp.as_ptr(), 0) };
        return Err(e.into());
    }
    dir.sync_all()?;
    Ok(())
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
    fn a_patient_folder_that_is_a_link_is_never_read_through() {
        let elsewhere = inbox_with("Q", br#"{"age_years": 57, "sex": "f"}"#);
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("Q"), dir.path().join("P")).unwrap();
        std::fs::write(dir.path().join("F"), b"{}").unwrap();
        assert!(read_vitals(dir.path(), "P").unwrap().is_none());
        assert!(read_vitals(dir.path(), "F").unwrap().is_none());
    }

    #[test]
    fn only_the_age_band_and_sex_are_kept() {
        let v = Vitals::from_json(br#"{"age_years": 57, "sex": "f", "spo2": 93}"#).unwrap();
        let d = coarse(&v);
        assert_eq!(d.age_band, Some(AgeBand::From50To64));
        assert_eq!(d.sex, Some(pleura_shared::Sex::Female));
        let v = Vitals::from_json(br#"{"age_years": 4.5, "sex": "m"}"#).unwrap();
        assert_eq!(
            coarse(&v),
            Demographics {
                age_band: Some(AgeBand::Under5),
                sex: Some(pleura_shared::Sex::Male),
            }
        );
        assert_eq!(coarse(&Vitals::default()), Demographics::default());
    }

    #[test]
    fn written_vitals_hold_the_documented_fields_and_read_back_equal() {
        let dir = inbox_with("P-1", br#"{"spo2": 97}"#);
        let v = Vitals {
            age_years: Some(61.0),
            sex: Some(Sex::Male),
            spo2: Some(91.0),
            respiratory_rate: Some(24.0),
            pulse: Some(104.0),
            temperature_c: Some(38.4),
            symptoms: Some(vec![Symptom::Fever, Symptom::Dyspnea]),
        };
        write_vitals(dir.path(), "P-1", &v).unwrap();
        let text = std::fs::read_to_string(dir.path().join("P-1").join(VITALS_FILE)).unwrap();
        assert!(text.contains("\"temperature_c\": 38.4\n"), "{text}");
        assert!(text.contains("\"age_years\": 61,"), "{text}");
        assert_eq!(read_vitals(dir.path(), "P-1").unwrap(), Some(v));
        // Nothing recorded: `{}`; no temporary file is left behind.
        write_vitals(dir.path(), "P-1", &Vitals::default()).unwrap();
        let only: Vec<_> = std::fs::read_dir(dir.path().join("P-1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(only, [VITALS_FILE]);
        assert_eq!(
            read_vitals(dir.path(), "P-1").unwrap(),
            Some(Vitals::default())
        );
    }

    #[test]
    fn vitals_are_written_only_into_a_real_patient_folder() {
        let dir = inbox_with("P", br#"{"spo2": 97}"#);
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("L")).unwrap();
        std::fs::create_dir(dir.path().join(".hidden")).unwrap();
        let v = Vitals {
            spo2: Some(90.0),
            ..Vitals::default()
        };
        for odd in [
            "L", "..", "../P", "P/..", "P/", "P/.", "", ".", ".hidden", "Q",
        ] {
            assert!(
                matches!(
                    write_vitals(dir.path(), odd, &v),
                    Err(VitalsFileError::NoFolder)
                ),
                "{odd}"
            );
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(!dir.path().join(VITALS_FILE).exists());
        assert!(!dir.path().join("Q").exists());
        // Out of range: refused before anything is written.
        let bad = Vitals {
            spo2: Some(130.0),
            ..Vitals::default()
        };
        assert!(matches!(
            write_vitals(dir.path(), "P", &bad),
            Err(VitalsFileError::Invalid(VitalsError::Range {
                field: "spo2",
                ..
            }))
        ));
        assert_eq!(
            read_vitals(dir.path(), "P").unwrap().unwrap().spo2,
            Some(97.0)
        );
        // A vitals file that is a link is replaced, its target left alone.
        let target = outside.path().join("t.json");
        std::fs::write(&target, b"{}").unwrap();
        let file = dir.path().join("P").join(VITALS_FILE);
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&target, &file).unwrap();
        write_vitals(dir.path(), "P", &v).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"{}");
        assert_eq!(
            read_vitals(dir.path(), "P").unwrap().unwrap().spo2,
            Some(90.0)
        );
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
