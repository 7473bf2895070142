use super::*;

#[test]
fn records_round_trip_and_stay_small() {
    let r = sample_record("clinic-a", "pi-1", 3, true);
    let bytes = r.encode();
    assert!(bytes.len() < 300, "{} bytes", bytes.len());
    assert_eq!(ScanRecord::decode(&bytes).unwrap(), r);
    assert_eq!(r.priority(), 7);
    assert_eq!(sample_record("c", "d", 0, false).priority(), 0);
}

#[test]
fn shadow_results_round_trip_and_can_never_flag() {
    let mut r = sample_record("clinic-a", "pi-1", 3, false);
    let scan = r.id;
    r.release = 7;
    r.id = result_id_for(&scan, 7, true);
    r.shadow = Some(vec![FlagReason::HighSeverity]);
    let w = r.to_wire();
    assert!(w.shadow && !w.flagged && w.flag_reasons.is_empty());
    assert_eq!(w.scan_id, scan.0.to_vec());
    assert_eq!(ScanRecord::decode(&r.encode()).unwrap(), r);

    // A shadow result claiming a flag is refused, whatever the sender meant.
    let mut bad = r.to_wire();
    bad.flagged = true;
    let e = ScanRecord::from_wire(bad).unwrap_err().to_string();
    assert!(e.contains("shadow result never flags"), "{e}");
    let mut bad = r.to_wire();
    bad.flag_reasons = vec![pb::FlagReason::HighSeverity as i32];
    assert!(ScanRecord::from_wire(bad).is_err());
    // Candidate flags on an active result, and a shadow of the built-in model, too.
    let mut bad = sample_record("c", "d", 1, false).to_wire();
    bad.shadow_flag_reasons = vec![pb::FlagReason::HighSeverity as i32];
    assert!(ScanRecord::from_wire(bad).is_err());
    let mut bad = r.to_wire();
    bad.model_release = 0;
    assert!(ScanRecord::from_wire(bad).is_err());
    let mut bad = r.to_wire();
    bad.scan_id = vec![1; 5];
    assert!(ScanRecord::from_wire(bad).is_err());
    assert_eq!(r.priority(), 0, "a shadow reading is sent last");
}

#[test]
fn a_result_id_must_derive_from_its_scan_release_and_role() {
    let r = sample_record("c", "d", 3, true);
    // Another scan's id claimed for this result (e.g. to supersede that scan's reading).
    let mut forged = r.to_wire();
    forged.scan_id = ResultId::random().0.to_vec();
    let e = ScanRecord::from_wire(forged).unwrap_err().to_string();
    assert!(e.contains("does not derive"), "{e}");
    // A release's reading under the built-in model's id, and the reverse.
    let mut forged = r.to_wire();
    forged.model_release = 4;
    assert!(ScanRecord::from_wire(forged).is_err());
    let mut ok = r.clone();
    ok.release = 4;
    ok.id = result_id_for(&r.scan, 4, false);
    assert_eq!(ScanRecord::decode(&ok.encode()).unwrap(), ok);
    let mut forged = ok.to_wire();
    forged.model_release = 0;
    assert!(ScanRecord::from_wire(forged).is_err());
}

#[test]
fn a_result_from_an_older_agent_names_its_scan_by_its_id() {
    let r = sample_record("c", "d", 1, true);
    let w = r.to_wire();
    assert!(w.scan_id.is_empty() && w.model_release == 0 && !w.shadow);
    assert_eq!(ScanRecord::from_wire(w).unwrap().scan, r.id);
}

#[test]
fn each_release_and_role_reads_a_scan_under_its_own_id() {
    let scan = ResultId::random();
    assert_eq!(result_id_for(&scan, 0, false), scan, "built-in: unchanged");
    let ids = [
        result_id_for(&scan, 3, false),
        result_id_for(&scan, 3, true),
        result_id_for(&scan, 4, false),
        result_id_for(&scan, 0, true),
    ];
    for (i, a) in ids.iter().enumerate() {
        assert_ne!(*a, scan);
        for b in &ids[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert_eq!(ids[0], result_id_for(&scan, 3, false), "stable");
}

#[test]
fn findings_round_trip_and_their_absence_stays_absent() {
    let mut r = sample_record("clinic-a", "pi-1", 2, true);
    assert!(r.to_wire().finding_probs.is_empty());
    r.analysis.findings = Some(Findings::from_array([0.1, 0.87, 0.3, 0.0, 1.0]));
    let w = r.to_wire();
    assert_eq!(w.finding_probs, vec![0.1, 0.87, 0.3, 0.0, 1.0]);
    let back = ScanRecord::decode(&r.encode()).unwrap();
    assert_eq!(back, r);
    assert_eq!(
        back.analysis.findings.unwrap().present(&[]),
        [false, true, false, false, true]
    );
}

#[test]
fn batches_are_cut_to_the_byte_and_count_limits_both_paths_enforce() {
    let recs: Vec<ScanRecord> = (0..MAX_BATCH_RECORDS + 20)
        .map(|i| sample_record("clinic-with-a-long-name", "pi-1", (i % 4) as u8, i % 2 == 0))
        .collect();
    let n = batch_fit(&recs, "clinic-with-a-long-name", "pi-1");
    assert!(n > 0 && n < MAX_BATCH_RECORDS, "{n} fit");
    let batch = pb::ResultBatch {
        schema_version: u32::MAX,
        clinic_id: "clinic-with-a-long-name".into(),
        device_id: "pi-1".into(),
        results: recs[..n].iter().map(ScanRecord::to_wire).collect(),
        // The largest queue report an edge can add to every batch.
        queue: Some(pb::QueueReport {
            pending: u64::MAX,
            oldest_pending_ms: u64::MAX,
            reported_at_ms: u64::MAX,
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let signed = pb::SignedBatch {
        batch,
        signature: vec![0xa5; 64],
    }
    .encode_to_vec();
    assert!(signed.len() <= MAX_BATCH_BYTES, "{} bytes", signed.len());
    // tight: one more record would not fit
    assert!(
        signed.len() + 260 > MAX_BATCH_BYTES,
        "{} bytes",
        signed.len()
    );
    // small records: the count limit binds
    assert!(batch_fit(&recs[..10], "c", "d") == 10);
    assert_eq!(batch_fit(&[], "c", "d"), 0);
}

#[test]
fn invalid_wire_records_name_the_field() {
    let good = sample_record("c", "d", 1, false).to_wire();
    type Mutation = fn(&mut pb::ScanResult);
    let cases: Vec<(Mutation, &str)> = vec![
        (|w| w.result_id.truncate(3), "16 bytes"),
        (|w| w.clinic_id = "a/#".into(), "clinic"),
        (|w| w.severity = 9, "severity"),
        (|w| w.class_probs = vec![0.9, 0.9, 0.9], "class_probs"),
        (
            |w| w.severity_probs.pop().map(drop).unwrap_or(()),
            "severity_probs",
        ),
        (|w| w.zone = "Z9".into(), "zone"),
        (|w| w.flag_reasons = vec![42], "flag_reasons"),
        (|w| w.localisation.push(1), "localisation"),
        (|w| w.uncertainty = f32::NAN, "uncertainty"),
        (|w| w.finding_probs = vec![0.5; 4], "finding_probs"),
        (
            |w| w.finding_probs = vec![0.5, 0.5, 1.5, 0.5, 0.5],
            "finding_probs",
        ),
        (
            |w| w.finding_probs = vec![0.5, f32::NAN, 0.5, 0.5, 0.5],
            "finding_probs",
        ),
        (
            |w| w.finding_probs = vec![0.5, 0.5, 0.5, f32::INFINITY, 0.5],
            "finding_probs",
        ),
    ];
    for (mutate, expect) in cases {
        let mut w = good.clone();
        mutate(&mut w);
        let err = ScanRecord::from_wire(w).unwrap_err().to_string();
        assert!(err.contains(expect), "{err} should mention {expect}");
    }
    assert!(matches!(
        ScanRecord::decode(&[0xff; 10]),
        Err(RecordError::Decode(_))
    ));
    assert!(matches!(
        ScanRecord::decode(&vec![0; MAX_RECORD_BYTES + 1]),
        Err(RecordError::TooLarge(_))
    ));
}

#[test]
fn demographics_travel_coarse_and_bad_values_are_named() {
    use crate::demographics::{AgeBand, Sex};
    let mut r = sample_record("c", "d", 1, false);
    r.demographics = Demographics {
        age_band: Some(AgeBand::From50To64),
        sex: Some(Sex::Female),
    };
    assert_eq!(ScanRecord::decode(&r.encode()).unwrap(), r);
    let mut bad = r.to_wire();
    bad.age_band = 42;
    let e = ScanRecord::from_wire(bad).unwrap_err().to_string();
    assert!(e.contains("age_band"), "{e}");
    let mut bad = r.to_wire();
    bad.sex = -1;
    let e = ScanRecord::from_wire(bad).unwrap_err().to_string();
    assert!(e.contains("sex"), "{e}");
}
