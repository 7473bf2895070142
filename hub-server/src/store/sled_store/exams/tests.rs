//! The examination index of the sled backend: its rebuild, and worklist timing.

use std::collections::BTreeSet;
use std::time::Instant;

use pleura_shared::record::sample_record;

use super::*;
use crate::store::HubStore;

fn exam_of(clinic: &str, patient: u32, severity: u8, flagged: bool) -> ScanRecord {
    let mut r = sample_record(clinic, "d1", severity, flagged);
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&patient.to_be_bytes());
    r.patient_key = Some(key);
    r.analysis.uncertainty = (patient % 100) as f32 / 100.0;
    r
}

#[test]
fn a_store_without_the_examination_index_builds_it_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let a = exam_of("c1", 1, 3, true);
    let b = exam_of("c1", 2, 1, true);
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.commit(&[a.clone(), b.clone()], 10).unwrap();
        for t in [
            &store.exams,
            &store.worklist,
            &store.patients,
            &store.exam_clinics,
        ] {
            t.clear().unwrap();
        }
        store.db.flush().unwrap();
    }
    let store = SledStore::open(dir.path()).unwrap();
    let q = WorklistQuery {
        scope: ClinicScope::All,
        ..Default::default()
    };
    let ids: Vec<_> = store
        .worklist(&q, 0)
        .unwrap()
        .rows
        .iter()
        .map(|r| r.exam.id)
        .collect();
    assert_eq!(ids, vec![Exam::id_of(&a), Exam::id_of(&b)]);
    assert_eq!(
        store
            .patient_exams("c1", &a.patient_key.unwrap())
            .unwrap()
            .len(),
        1
    );
}

/// `cargo test --release -p hub-server --lib worklist_timing -- --ignored --nocapture`
#[test]
#[ignore = "timing: 100,000 examinations"]
fn worklist_timing_with_100k_examinations() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let clinics: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    let t = Instant::now();
    for batch in 0..200u32 {
        let records: Vec<ScanRecord> = (0..500u32)
            .map(|i| {
                let n = batch * 500 + i;
                let sev = (n % 4) as u8;
                exam_of(&clinics[(n % 20) as usize], n, sev, sev >= 2 || n % 3 == 0)
            })
            .collect();
        store.commit(&records, 1_000 + u64::from(batch)).unwrap();
    }
    eprintln!("commit 100,000 exams: {:?}", t.elapsed());
    let region: BTreeSet<String> = clinics[..5].iter().cloned().collect();
    for (name, q) in [
        (
            "operator, all, page 1",
            WorklistQuery {
                scope: ClinicScope::All,
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "specialist, 5 clinics, flagged, page 1",
            WorklistQuery {
                scope: ClinicScope::Only(region.clone()),
                flagged: Some(true),
                read: Some(false),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "specialist, page 40",
            WorklistQuery {
                scope: ClinicScope::Only(region.clone()),
                flagged: Some(true),
                read: Some(false),
                offset: 2000,
                limit: 50,
            },
        ),
    ] {
        let t = Instant::now();
        let n = 20;
        let mut rows = 0;
        for _ in 0..n {
            rows = store.worklist(&q, 0).unwrap().rows.len();
        }
        eprintln!(
            "worklist {name}: {rows} rows, {:?} per query",
            t.elapsed() / n
        );
        assert_eq!(rows, 50);
    }
}

#[test]
fn a_rebuilt_index_marks_the_same_superseded_readings() {
    use crate::store::CaseFilter;
    let dir = tempfile::tempdir().unwrap();
    let first = exam_of("c1", 1, 1, false);
    let mut again = first.clone();
    again.id = pleura_shared::result_id_for(&first.scan, 4, false);
    again.release = 4;
    again.analysed_at_ms = first.analysed_at_ms + 1;
    let mut shadow = first.clone();
    shadow.id = pleura_shared::result_id_for(&first.scan, 5, true);
    shadow.release = 5;
    shadow.shadow = Some(Vec::new());
    let current = |store: &SledStore| {
        let ids: Vec<_> = store
            .list(&CaseFilter::everything())
            .unwrap()
            .cases
            .iter()
            .map(|c| c.record.id)
            .collect();
        let marks: Vec<_> = store.superseded.iter().keys().map(|k| k.unwrap()).collect();
        (
            ids,
            marks,
            store.exam_get(&Exam::id_of(&first)).unwrap().unwrap(),
        )
    };
    let before = {
        let store = SledStore::open(dir.path()).unwrap();
        // The later analysis arrives first: the earlier one is superseded on arrival.
        store.commit(&[again.clone(), shadow.clone()], 10).unwrap();
        store.commit(std::slice::from_ref(&first), 11).unwrap();
        let before = current(&store);
        assert_eq!(before.0, vec![again.id]);
        assert_eq!(before.1, vec![sled::IVec::from(first.id.as_bytes())]);
        for t in [
            &store.exams,
            &store.worklist,
            &store.patients,
            &store.exam_clinics,
            &store.superseded,
        ] {
            t.clear().unwrap();
        }
        store.db.flush().unwrap();
        before
    };
    let store = SledStore::open(dir.path()).unwrap();
    let after = current(&store);
    assert_eq!((&after.0, &after.1), (&before.0, &before.1));
    let flags = |e: &Exam| {
        let mut v: Vec<_> = e
            .results
            .iter()
            .map(|r| (r.id, r.shadow, r.superseded))
            .collect();
        v.sort();
        v
    };
    assert_eq!(flags(&after.2), flags(&before.2));
}
