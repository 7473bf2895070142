//! The shadow comparison over hand-built examinations, and the promotion gate.

use pleura_shared::record::sample_record;
use pleura_shared::{result_id_for, FlagReason, ScanRecord, Severity};

use super::shadow::{compare, quadratic_kappa, Gate, Rate};
use crate::store::exams::{Exam, Impression, Read, Reads, Recommendation, ZoneRead};

fn active(severity: u8, flagged: bool) -> ScanRecord {
    let mut r = sample_record("c1", "d1", severity, flagged);
    r.analysis.flag_reasons = if flagged {
        vec![FlagReason::HighSeverity]
    } else {
        Vec::new()
    };
    r
}

fn shadow_of(a: &ScanRecord, v: u64, severity: u8, would_flag: bool) -> ScanRecord {
    let mut s = a.clone();
    s.id = result_id_for(&a.scan, v, true);
    s.release = v;
    s.analysis.flagged = false;
    s.analysis.flag_reasons.clear();
    s.analysis.severity = Severity::new(severity).unwrap();
    s.analysis.model_version = format!("pleura-lite r{v}");
    s.shadow = Some(if would_flag {
        vec![FlagReason::HighSeverity]
    } else {
        Vec::new()
    });
    s
}

/// An examination of `records` read with `impression`, the zone score of each record
/// given in `scores` (by position).
fn reviewed(records: &[ScanRecord], impression: Impression, scores: &[u8]) -> (Exam, Reads) {
    let mut e = Exam::empty_for(&records[0]);
    for r in records {
        e.add(r, 10, false);
    }
    let zones = records
        .iter()
        .zip(scores)
        .map(|(r, s)| ZoneRead {
            result_id: r.id,
            zone: "L1".into(),
            model_score: r.analysis.severity.score(),
            score: *s,
            overridden: false,
        })
        .collect();
    let read = Read {
        reviewer: "ana".into(),
        at_ms: 20,
        zones,
        impression,
        recommendation: Recommendation::Refer,
        rescan_reason: String::new(),
        comment: String::new(),
        second_read: false,
    };
    (
        e,
        Reads {
            first: read,
            second: None,
            later: Vec::new(),
        },
    )
}

#[test]
fn candidates_are_compared_with_the_active_model_on_the_same_reviewed_scans() {
    let a1 = active(3, true);
    let a2 = active(1, true);
    let a3 = active(2, true);
    let a4 = active(0, false);
    let a5 = active(2, true);
    let exams = vec![
        // positive: both flag
        reviewed(
            &[a1.clone(), shadow_of(&a1, 5, 3, true)],
            Impression::CovidCompatible,
            &[3],
        ),
        // negative: active flags (false positive), candidate does not
        reviewed(
            &[a2.clone(), shadow_of(&a2, 5, 0, false)],
            Impression::Normal,
            &[0],
        ),
        // positive: the candidate misses it
        reviewed(
            &[a3.clone(), shadow_of(&a3, 5, 1, false)],
            Impression::OtherPneumonia,
            &[2],
        ),
        // non-diagnostic: scans compared, no truth
        reviewed(
            &[a4.clone(), shadow_of(&a4, 5, 0, false)],
            Impression::NonDiagnostic,
            &[],
        ),
        // another candidate on another exam
        reviewed(
            &[a5.clone(), shadow_of(&a5, 6, 2, true)],
            Impression::CovidCompatible,
            &[2],
        ),
    ];
    // A shadow reading of a scan with no active reading in the exam compares nothing.
    let lone = active(2, true);
    let mut orphan = reviewed(std::slice::from_ref(&lone), Impression::Normal, &[]);
    orphan.0 = Exam::empty_for(&lone);
    orphan.0.add(&shadow_of(&lone, 5, 2, true), 10, false);
    let mut all = exams.clone();
    all.push(orphan);

    let report = compare(&all, &|_, _, _| true, 99);
    assert_eq!(report.generated_at_ms, 99);
    assert_eq!(
        report.candidates.keys().copied().collect::<Vec<_>>(),
        vec![5, 6]
    );
    let c = &report.candidates[&5];
    assert_eq!(c.model_versions, vec!["pleura-lite r5".to_string()]);
    assert_eq!((c.exams_compared, c.scans_compared), (3, 4));
    assert_eq!(c.active.sensitivity, Rate { hits: 2, of: 2 });
    assert_eq!(c.candidate.sensitivity, Rate { hits: 1, of: 2 });
    assert_eq!(c.active.specificity, Rate { hits: 0, of: 1 });
    assert_eq!(c.candidate.specificity, Rate { hits: 1, of: 1 });
    // flags agree on a1 and a4; severities on a1 and a4
    assert_eq!(c.flag_agreement, Rate { hits: 2, of: 4 });
    assert_eq!(c.severity_agreement, Rate { hits: 2, of: 4 });
    assert_eq!((c.active.scored_scans, c.candidate.scored_scans), (3, 3));
    assert_eq!(
        c.active.severity_kappa,
        quadratic_kappa(&[(3, 3), (1, 0), (2, 2)])
    );
    assert_eq!(
        c.candidate.severity_kappa,
        quadratic_kappa(&[(3, 3), (0, 0), (1, 2)])
    );
    let six = &report.candidates[&6];
    assert_eq!(six.candidate.sensitivity, Rate { hits: 1, of: 1 });
    assert_eq!(six.exams_compared, 1);
    let text = super::shadow::render(c);
    assert!(text.contains("candidate 50.0% (1/2)"), "{text}");

    // shadow.json round-trips.
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(
        serde_json::from_str::<super::shadow::ShadowReport>(&json).unwrap(),
        report
    );
}

#[test]
fn the_comparison_uses_the_current_reading_of_a_reanalysed_scan() {
    let old = active(1, false);
    let mut again = old.clone();
    again.id = result_id_for(&old.scan, 4, false);
    again.release = 4;
    again.analysed_at_ms = old.analysed_at_ms + 1000;
    again.analysis.severity = Severity::new(3).unwrap();
    again.analysis.flagged = true;
    again.analysis.flag_reasons = vec![FlagReason::HighSeverity];
    let report = compare(
        &[reviewed(
            &[old.clone(), again, shadow_of(&old, 5, 3, true)],
            Impression::CovidCompatible,
            &[3],
        )],
        &|_, _, _| true,
        0,
    );
    let c = &report.candidates[&5];
    assert_eq!(c.scans_compared, 1);
    assert_eq!(
        c.active.sensitivity,
        Rate { hits: 1, of: 1 },
        "the re-analysis flags"
    );
    assert_eq!(c.severity_agreement, Rate { hits: 1, of: 1 });
    // The zone read named the superseded reading: still the scan's specialist score.
    assert_eq!(c.active.scored_scans, 1);
}

#[test]
fn quadratic_kappa_is_one_for_agreement_and_penalises_distance() {
    assert_eq!(quadratic_kappa(&[]), None);
    assert_eq!(quadratic_kappa(&[(1, 1), (2, 2), (0, 0)]), Some(1.0));
    let near = quadratic_kappa(&[(0, 1), (1, 2), (2, 3), (3, 3), (0, 0)]).unwrap();
    let far = quadratic_kappa(&[(0, 3), (1, 3), (2, 0), (3, 0), (0, 0)]).unwrap();
    assert!(near > far && near < 1.0 && far < 0.0, "{near} {far}");
    assert_eq!(
        quadratic_kappa(&[(2, 2), (2, 2)]),
        None,
        "one category: undefined"
    );
}

#[test]
fn the_promotion_gate_names_the_numbers_it_refuses_on() {
    let a1 = active(3, true);
    let a3 = active(2, true);
    let report = compare(
        &[
            reviewed(
                &[a1.clone(), shadow_of(&a1, 5, 3, true)],
                Impression::CovidCompatible,
                &[3],
            ),
            reviewed(
                &[a3.clone(), shadow_of(&a3, 5, 1, false)],
                Impression::CovidCompatible,
                &[2],
            ),
        ],
        &|_, _, _| true,
        0,
    );
    let c = report.candidates.get(&5);
    assert_eq!(Gate::default().check(5, None), Ok(()), "no gate: as before");
    let e = Gate {
        min_reviewed: Some(50),
        not_worse: false,
    }
    .check(5, c)
    .unwrap_err();
    assert!(
        e.contains("2 reviewed examination(s) compared, fewer than the 50 required"),
        "{e}"
    );
    let e = Gate {
        min_reviewed: Some(2),
        not_worse: true,
    }
    .check(5, c)
    .unwrap_err();
    assert!(
        e.contains("candidate sensitivity 50.0% (1/2) is below the active model's 100.0% (2/2)"),
        "{e}"
    );
    assert!(!e.contains("fewer than"), "{e}");
    let e = Gate {
        min_reviewed: Some(1),
        not_worse: false,
    }
    .check(7, None)
    .unwrap_err();
    assert!(e.contains("release 7 has no shadow comparison"), "{e}");

    // Not worse: equal sensitivity passes.
    let a = active(3, true);
    let report = compare(
        &[reviewed(
            &[a.clone(), shadow_of(&a, 5, 2, true)],
            Impression::CovidCompatible,
            &[3],
        )],
        &|_, _, _| true,
        0,
    );
    let gate = Gate {
        min_reviewed: Some(1),
        not_worse: true,
    };
    assert_eq!(gate.check(5, report.candidates.get(&5)), Ok(()));
    // Only negatives compared: sensitivity unknown, refused.
    let a = active(0, false);
    let report = compare(
        &[reviewed(
            &[a.clone(), shadow_of(&a, 5, 0, false)],
            Impression::Normal,
            &[0],
        )],
        &|_, _, _| true,
        0,
    );
    let e = gate.check(5, report.candidates.get(&5)).unwrap_err();
    assert!(e.contains("sensitivity unknown"), "{e}");
}

#[test]
fn shadow_readings_the_hub_never_asked_for_do_not_count() {
    // d1 was offered release 5 in shadow; a second device of the clinic sends release 5
    // shadow readings it was never offered (faulty or hostile), all "would flag".
    let a = active(3, true);
    let other = sample_record("c1", "d2", 3, false);
    let exams = [
        reviewed(
            &[a.clone(), shadow_of(&a, 5, 3, true)],
            Impression::CovidCompatible,
            &[3],
        ),
        reviewed(
            &[other.clone(), shadow_of(&other, 5, 3, true)],
            Impression::CovidCompatible,
            &[3],
        ),
    ];
    let only_d1 = |v: u64, clinic: &str, device: &str| v == 5 && clinic == "c1" && device == "d1";
    let report = compare(&exams, &only_d1, 0);
    let c = &report.candidates[&5];
    assert_eq!((c.exams_compared, c.scans_compared, c.unoffered), (1, 1, 1));
    assert_eq!(c.candidate.sensitivity, Rate { hits: 1, of: 1 });
    // Counted, the unasked readings would have made the candidate look better.
    let all = compare(&exams, &|_, _, _| true, 0);
    assert_eq!(
        all.candidates[&5].candidate.sensitivity,
        Rate { hits: 2, of: 2 }
    );
    assert_eq!(
        all.candidates[&5].active.sensitivity,
        Rate { hits: 1, of: 2 }
    );
    assert!(super::shadow::render(c).contains("1 shadow reading(s) from devices not offered"));
}
