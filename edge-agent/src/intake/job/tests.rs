use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pleura_inference::decode::dicom::parses_on_this_thread;
use pleura_shared::{AgeBand, Demographics, Sex};

use super::super::attempts::Attempts;
use super::super::tests::{intake, place_of, take_in};
use super::super::Outcome;
use super::*;
use crate::deid::dicom_identity;
use crate::outbox::Outbox;

fn fixture(rel: &str) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read(root.join("fixtures").join(rel)).unwrap()
}

/// The pool job gives each fixture the record the intake always gave it: the result
/// id v2 over (clinic, device, pseudonym, zone, bytes), the DICOM header's patient and
/// study day before the folder's and the file time, and the model's reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_job_gives_the_same_record_and_id_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let (i, _outbox) = intake(dir.path(), 1 << 20);
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 5);
    for (rel, at) in [
        ("scans/pocus_pneu_emdocs1.png", "p1/scan_R1.png"),
        ("scans/cb_patient16_R1.mp4", "clip_l2.mp4"),
        ("scans/cb_multiframe.dcm", "p2/scan_L3.dcm"),
        ("phi/synthetic_phi.dcm", "p3/exam_R4.dcm"),
    ] {
        let bytes = fixture(rel);
        let path = i.cfg.inbox.join(at);
        let facts = i.facts(&path, modified);
        let header = dicom_identity(&bytes, &i.key).unwrap_or_default();
        let folder = Path::new(at)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| i.key.pseudonym(p.to_str().unwrap()));
        let patient = header.patient_key.or(folder);
        let zone = zone_from(at);
        let (clinic, device) = (&i.cfg.clinic, &i.cfg.device);
        let want_id = result_id(clinic, device, patient.as_ref(), zone.as_deref(), &bytes);
        let want = i.pool.current().analyze(bytes.clone()).unwrap();
        let got = i
            .pool
            .current()
            .run(move |w| scan_job(w, bytes, &facts, 0, Keep::Nothing))
            .await
            .unwrap()
            .unwrap()
            .record;
        assert_eq!(got.id, want_id, "{rel}");
        assert_eq!(
            (&got.clinic[..], &got.device[..]),
            (&i.cfg.clinic[..], &i.cfg.device[..])
        );
        assert_eq!(got.patient_key, patient, "{rel}");
        assert_eq!(got.zone, zone, "{rel}");
        assert_eq!(got.scan_day, header.scan_day.unwrap_or(20_000), "{rel}");
        assert_eq!(got.analysis, want.analysis, "{rel}");
        assert_eq!(got.format, want.format.to_string());
    }
    // The header names the patient, not the folder: the same DICOM under two folders
    // is one patient.
    let bytes = fixture("phi/synthetic_phi.dcm");
    assert_eq!(
        dicom_identity(&bytes, &i.key).unwrap().patient_key,
        Some(i.key.pseudonym("MRN-4471-PHI"))
    );
}

fn zone_from(at: &str) -> Option<String> {
    super::super::zone_from_name(Path::new(at))
}

/// One parse of a DICOM file gives the identity and the frames: the whole job, on
/// its inference thread, parses it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dicom_scan_is_parsed_once() {
    let dir = tempfile::tempdir().unwrap();
    let (i, _outbox) = intake(dir.path(), 1 << 20);
    let facts = i.facts(&i.cfg.inbox.join("p1/scan_R1.dcm"), SystemTime::now());
    let bytes = fixture("phi/synthetic_phi.dcm");
    let (parses, record) = i
        .pool
        .current()
        .run(move |w| {
            let before = parses_on_this_thread();
            let r = scan_job(w, bytes, &facts, 0, Keep::Nothing);
            (parses_on_this_thread() - before, r)
        })
        .await
        .unwrap();
    let record = record.unwrap().record;
    assert_eq!(parses, 1);
    assert_eq!(record.patient_key, Some(i.key.pseudonym("MRN-4471-PHI")));
}

/// A DICOM that cannot be parsed is set aside at once, its reason naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_dicom_is_set_aside_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (i, outbox) = intake(dir.path(), 1 << 20);
    let i = Arc::new(i);
    std::fs::create_dir_all(i.cfg.inbox.join("p1")).unwrap();
    let scan = i.cfg.inbox.join("p1/scan_R1.dcm");
    let mut bytes = fixture("phi/synthetic_phi.dcm");
    bytes.truncate(700);
    std::fs::write(&scan, &bytes).unwrap();
    let r = i.scan_ref(&scan);
    let attempts = Attempts::load(i.cfg.attempts_file());
    let at = place_of(&i, &scan);
    let o = i
        .process(at, &scan, None, &r, SystemTime::now(), &attempts)
        .await;
    assert!(matches!(o, Outcome::Done));
    assert!(!scan.exists());
    let reason =
        std::fs::read_to_string(i.cfg.rejected_dir().join("p1/scan_R1.dcm.reason.txt")).unwrap();
    assert!(
        reason.contains("corrupt or truncated DICOM file"),
        "{reason}"
    );
    assert!(!reason.contains("MRN-4471"), "{reason}");
    assert_eq!(attempts.get(&r), 0);
    assert_eq!(outbox.stats().unwrap().pending, 0);
    assert_eq!(i.status.snapshot().intake.rejected, 1);
}

/// A candidate's shadow reading of a scan: the same scan, patient, zone and day, its own
/// id and release, never flagged, what it would have flagged kept apart; from the frames
/// the active model decoded or from the bytes again, the same reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_reading_is_its_own_result_and_never_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (i, _outbox) = intake(dir.path(), 1 << 20);
    let bytes = fixture("scans/cb_patient16_R1.mp4");
    let facts = i.facts(&i.cfg.inbox.join("p9/scan_R1.mp4"), SystemTime::now());
    let pool = i.pool.current();
    let mut readings = Vec::new();
    for keep in [Keep::Frames, Keep::Bytes] {
        let (b, f) = (bytes.clone(), facts.clone());
        let Analysed { record, again } = pool
            .run(move |w| scan_job(w, b, &f, 3, keep))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.release, 3);
        assert_eq!(record.id, result_id_for(&record.scan, 3, false));
        assert_ne!(record.id, record.scan, "a release's reading has its own id");
        let active = record.clone();
        let shadow = pool
            .run(move |w| shadow_job(w, again.expect("kept"), &active, 4))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shadow.id, result_id_for(&record.scan, 4, true));
        assert_eq!(
            (
                shadow.scan,
                shadow.patient_key,
                &shadow.zone,
                shadow.scan_day
            ),
            (
                record.scan,
                record.patient_key,
                &record.zone,
                record.scan_day
            )
        );
        assert_eq!(shadow.release, 4);
        assert!(!shadow.analysis.flagged && shadow.analysis.flag_reasons.is_empty());
        // The same model read the same frames: it would have flagged what the active did.
        assert_eq!(shadow.shadow.as_ref(), Some(&record.analysis.flag_reasons));
        assert_eq!(shadow.analysis.class_probs, record.analysis.class_probs);
        // And the hub takes it as a shadow result.
        let back = ScanRecord::decode(&shadow.encode()).unwrap();
        assert!(back.is_shadow() && !back.analysis.flagged);
        readings.push(shadow.analysis.severity_probs);
    }
    assert_eq!(
        readings[0], readings[1],
        "frames kept or decoded again: one reading"
    );
}

/// A result carries the age band and sex of its patient folder's `vitals.json`, and
/// nothing finer; a scan directly in the inbox, or of a patient without the file, carries
/// neither (issue #16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_carries_only_the_coarse_demographics_of_its_patients_vitals() {
    let dir = tempfile::tempdir().unwrap();
    let (i, outbox) = intake(dir.path(), 1 << 20);
    let i = Arc::new(i);
    let vitals = i.cfg.inbox.join("p1/vitals.json");
    std::fs::create_dir_all(i.cfg.inbox.join("p1")).unwrap();
    std::fs::write(&vitals, br#"{"age_years": 57, "sex": "f", "spo2": 93}"#).unwrap();
    let female_50_64 = Demographics {
        age_band: Some(AgeBand::From50To64),
        sex: Some(Sex::Female),
    };
    for (rel, patient, want) in [
        ("p1/scan_R1.png", Some(i.key.pseudonym("p1")), female_50_64),
        (
            "p2/scan_R1.png",
            Some(i.key.pseudonym("p2")),
            Demographics::default(),
        ),
        ("scan_R2.png", None, Demographics::default()),
    ] {
        assert!(matches!(take_in(&i, rel).await, Outcome::Done), "{rel}");
        let batch = outbox.next_batch(10, &|_| false).unwrap();
        let record = batch
            .iter()
            .find(|r| r.patient_key == patient)
            .expect("queued");
        assert_eq!(record.demographics, want, "{rel}");
        // As the hub receives it.
        let sent = ScanRecord::decode(&record.encode()).unwrap();
        assert_eq!(sent.demographics, want, "{rel}");
    }
    // The vitals stay where the clinic wrote them.
    assert!(vitals.exists());
}

/// A vitals file that is invalid (a value out of range, not JSON) or not a file (a link,
/// never followed) costs neither the scan nor its result: analysed, queued and moved
/// like any other, without an age band or sex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_vitals_file_never_costs_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (i, outbox) = intake(dir.path(), 1 << 20);
    let i = Arc::new(i);
    let elsewhere = dir.path().join("elsewhere.json");
    std::fs::write(&elsewhere, br#"{"age_years": 70, "sex": "m"}"#).unwrap();
    for p in ["p1", "p2", "p3"] {
        std::fs::create_dir_all(i.cfg.inbox.join(p)).unwrap();
    }
    std::fs::write(
        i.cfg.inbox.join("p1/vitals.json"),
        br#"{"age_years": 57, "sex": "f", "spo2": 130}"#,
    )
    .unwrap();
    std::fs::write(i.cfg.inbox.join("p2/vitals.json"), b"age 57, female").unwrap();
    std::os::unix::fs::symlink(&elsewhere, i.cfg.inbox.join("p3/vitals.json")).unwrap();
    for p in ["p1", "p2", "p3"] {
        let rel = format!("{p}/scan_R1.png");
        assert!(matches!(take_in(&i, &rel).await, Outcome::Done), "{rel}");
        assert!(
            !i.cfg.inbox.join(&rel).exists(),
            "{rel} moved to processed/"
        );
    }
    let batch = outbox.next_batch(10, &|_| false).unwrap();
    assert_eq!(batch.len(), 3);
    for r in &batch {
        assert_eq!(r.demographics, Demographics::default());
    }
    let s = i.status.snapshot().intake;
    assert_eq!((s.analysed, s.rejected), (3, 0));
}
