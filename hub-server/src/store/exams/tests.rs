use super::*;

#[test]
fn uncertainty_is_the_models_own_flag_with_the_old_cut_for_old_records() {
    let r = |uncertainty, uncertain| ExamResult {
        id: ResultId::from_slice(&[1; 16]).unwrap(),
        device: "d".into(),
        zone: None,
        severity: 1,
        flagged: true,
        uncertainty,
        uncertain,
        received_at_ms: 0,
        retracted: false,
        after_read: false,
        scan: None,
        release: 0,
        model_version: String::new(),
        analysed_at_ms: 0,
        shadow: false,
        would_flag: false,
        superseded: false,
        covid: false,
        class: None,
        demographics: Demographics::default(),
    };
    // a v2 model spreads its probabilities: 0.95 entropy is ordinary for it
    assert!(!r(0.95, Some(false)).is_uncertain());
    assert!(r(0.2, Some(true)).is_uncertain());
    // indexed before the flag was kept
    assert!(r(0.6, None).is_uncertain());
    assert!(!r(0.4, None).is_uncertain());
    let old: ExamResult = serde_json::from_value(serde_json::json!({
        "id": ResultId::from_slice(&[2; 16]).unwrap(), "device": "d", "zone": null,
        "severity": 0, "flagged": false, "uncertainty": 0.7, "received_at_ms": 5
    }))
    .unwrap();
    assert_eq!(old.uncertain, None);
    assert!(old.is_uncertain());
}

#[test]
fn tiers_follow_severity_flags_and_uncertainty() {
    let t = |s, f, u: f32| Priority::of(s, f, u >= HIGH_UNCERTAINTY, 1000);
    assert_eq!(
        t(3, true, 0.1),
        Priority {
            tier: 0,
            deadline_ms: 1000 + HOUR_MS
        }
    );
    assert_eq!(t(2, false, 0.1).tier, 1);
    assert_eq!(t(1, true, 0.1).tier, 2);
    assert_eq!(t(0, false, 0.1).tier, 3);
    assert_eq!(t(1, true, 0.9).tier, 1, "uncertain: one tier up");
    assert_eq!(t(3, true, 0.9).tier, 0);
    assert_eq!(t(0, false, 0.9).deadline_ms, 1000 + 12 * HOUR_MS);
    assert_eq!(
        t(3, true, 0.1).time_left_ms(1000 + 2 * HOUR_MS),
        -(HOUR_MS as i64)
    );
}

#[test]
fn an_exam_whose_results_all_arrived_withdrawn_has_no_overflowing_priority() {
    let r = pleura_shared::record::sample_record("c1", "d1", 3, true);
    let mut e = Exam::empty_for(&r);
    e.add(&r, 10, true);
    assert_eq!(e.first_received_ms, u64::MAX);
    assert_eq!(e.priority().deadline_ms, u64::MAX, "saturates");
    assert_eq!(Priority::of(3, true, false, u64::MAX).deadline_ms, u64::MAX);
    assert_eq!(e.worklist_key(), None);
}
