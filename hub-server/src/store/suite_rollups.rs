//! The roll-up part of the backend suite: after any history of commits (re-analyses,
//! shadow readings, duplicates), retractions (before and after their result) and
//! verdicts, the maintained roll-ups equal (1) the scan counts of the listed current,
//! unretracted readings, worked out here from the listing, and (2) roll-ups rebuilt from
//! scratch from the examinations.

use std::collections::BTreeMap;

use pleura_shared::record::sample_record;
use pleura_shared::{AgeBand, Demographics, FlagReason, ScanRecord, Sex};

use super::exams::{Exam, Impression, Read, Recommendation};
use super::rollup::{demographic_slot, Rollup};
use super::{AggregateQuery, CaseFilter, HubStore, Retraction};

/// One step of a history, by index into a pool of scans and readings.
#[derive(Debug, Clone)]
pub enum Op {
    /// Commits these pool readings in one batch.
    Commit(Vec<usize>),
    /// The reading's device withdraws it (before or after it arrived).
    Retract(usize),
    /// A specialist reads the examination of this reading.
    Read(usize, u8),
}

/// The pool: 24 scans over two clinics, two patients, two days and two zones, each read
/// by release 0, re-read by release 2 (later, so current) and shadowed by release 3.
pub fn pool() -> Vec<ScanRecord> {
    let mut out = Vec::new();
    for i in 0..24u32 {
        let clinic = if i % 2 == 0 { "ca" } else { "cb" };
        let mut r = sample_record(clinic, "d1", (i % 4) as u8, i % 3 == 0);
        r.patient_key = Some([(i / 2 % 2) as u8; 16]);
        r.scan_day = 100 + (i / 4 % 2);
        r.zone = Some(if i / 8 % 2 == 0 { "R1" } else { "L2" }.into());
        if i % 5 == 0 && r.analysis.flagged {
            r.analysis.flag_reasons = vec![FlagReason::CovidSuspected];
        }
        r.demographics = Demographics {
            age_band: AgeBand::ALL.get(i as usize % 6).copied(),
            sex: Sex::ALL.get(i as usize % 3).copied(),
        };
        let again = |release: u64, shadow: bool, sev: u8| {
            let mut a = r.clone();
            a.id = pleura_shared::result_id_for(&r.scan, release, shadow);
            a.release = release;
            a.analysed_at_ms = r.analysed_at_ms + release;
            a.analysis.model_version = format!("m{release}");
            a.analysis.severity = pleura_shared::Severity::new(sev).unwrap();
            if shadow {
                a.analysis.flagged = false;
                a.analysis.flag_reasons.clear();
                a.shadow = Some(Vec::new());
            }
            a
        };
        out.push(again(2, false, (i as u8 + 1) % 4));
        out.push(again(3, true, 3));
        out.push(r);
    }
    out
}

fn read(impression: u8) -> Read {
    Read {
        reviewer: "dr".into(),
        at_ms: 9_000,
        zones: Vec::new(),
        impression: match impression % 4 {
            0 => Impression::CovidCompatible,
            1 => Impression::OtherPneumonia,
            2 => Impression::Normal,
            _ => Impression::NonDiagnostic,
        },
        recommendation: Recommendation::TreatLocally,
        rescan_reason: String::new(),
        comment: String::new(),
        second_read: false,
    }
}

/// Plays `ops` on an empty store and checks the roll-ups against both references.
pub fn history<S: HubStore>(store: &S, ops: &[Op], rebuild: impl Fn(&S) -> Vec<Rollup>) {
    let pool = pool();
    for op in ops {
        match op {
            Op::Commit(ix) => {
                let batch: Vec<_> = ix.iter().map(|i| pool[i % pool.len()].clone()).collect();
                store.commit(&batch, 1_000).unwrap();
            }
            Op::Retract(i) => {
                let r = &pool[i % pool.len()];
                store
                    .retract(&[Retraction {
                        id: r.id,
                        clinic: r.clinic.clone(),
                        device: r.device.clone(),
                        reason: "wrong patient".into(),
                        at_ms: 2_000,
                    }])
                    .unwrap();
            }
            Op::Read(i, impression) => {
                let exam = Exam::id_of(&pool[i % pool.len()]);
                store.record_read(&exam, read(*impression)).unwrap();
            }
        }
    }
    let rows = store.rollups(&AggregateQuery::everything()).unwrap();
    let kept: BTreeMap<(String, u32), Rollup> = rows
        .iter()
        .map(|r| ((r.clinic.clone(), r.day), r.rollup.clone()))
        .collect();

    // (1) Scan counts from the listing: current, not withdrawn.
    let mut expected: BTreeMap<(String, u32), Rollup> = BTreeMap::new();
    for case in store.list(&CaseFilter::everything()).unwrap().cases {
        if case.retraction.is_some() {
            continue;
        }
        let r = &case.record;
        let sev = r.analysis.severity.score();
        let e = expected.entry((r.clinic.clone(), r.scan_day)).or_default();
        e.scans += 1;
        e.flagged += u64::from(r.analysis.flagged);
        e.covid += u64::from(
            r.analysis
                .flag_reasons
                .contains(&FlagReason::CovidSuspected),
        );
        e.by_severity[usize::from(sev)] += 1;
        e.by_model
            .entry(r.analysis.model_version.clone())
            .or_default()[usize::from(sev)] += 1;
        *e.by_demographic
            .entry(demographic_slot(sev, r.demographics))
            .or_default() += 1;
    }
    let scan_part = |r: &Rollup| {
        (
            r.scans,
            r.flagged,
            r.covid,
            r.by_severity,
            r.by_model.clone(),
            r.by_demographic.clone(),
        )
    };
    let got: BTreeMap<_, _> = kept
        .iter()
        .map(|(k, r)| (k.clone(), scan_part(r)))
        .collect();
    let want: BTreeMap<_, _> = expected
        .iter()
        .filter(|(_, r)| r.scans > 0)
        .map(|(k, r)| (k.clone(), scan_part(r)))
        .collect();
    assert_eq!(
        got, want,
        "roll-up scan counts differ from the listing after {ops:?}"
    );
    for r in kept.values() {
        assert!(r.exams > 0 && r.reviewed <= r.exams && r.confirmed <= r.reviewed_flagged);
        assert_eq!(r.lung_score.iter().sum::<u64>(), r.exams);
    }

    // (2) What a rebuild from the examinations gives.
    let mut rebuilt = rebuild(store);
    rebuilt.sort_by_key(|r| r.scans);
    let mut maintained: Vec<Rollup> = kept.into_values().collect();
    maintained.sort_by_key(|r| r.scans);
    assert_eq!(maintained.len(), rebuilt.len(), "after {ops:?}");
    let canon = |v: &mut Vec<Rollup>| {
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    };
    canon(&mut maintained);
    canon(&mut rebuilt);
    assert_eq!(maintained, rebuilt, "maintained ≠ rebuilt after {ops:?}");
}
