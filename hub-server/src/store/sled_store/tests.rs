//! The sled backend against the store suites, and its own damage handling.

use super::*;
use pleura_shared::record::sample_record;

#[test]
fn sled_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    super::super::suite::run(|| SledStore::open(dir.path()).unwrap());
}

#[test]
fn sled_store_answers_queries_like_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    super::super::suite::queries(&SledStore::open(dir.path()).unwrap());
}

#[test]
fn sled_store_keeps_current_readings_like_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    super::super::suite::current_readings(&SledStore::open(dir.path()).unwrap());
}

#[test]
fn sled_store_keeps_examinations_like_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    super::super::suite::exams(&SledStore::open(dir.path()).unwrap());
}

#[test]
fn a_case_that_no_longer_decodes_is_counted_skipped_and_can_be_resent() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let good = sample_record("c1", "d1", 2, true);
    let damaged = sample_record("c1", "d1", 1, false);
    store.commit(&[good.clone(), damaged.clone()], 5).unwrap();
    // What a damaged page looks like to the store: the value's bytes are garbage.
    let mut v = store
        .cases
        .get(damaged.id.as_bytes())
        .unwrap()
        .unwrap()
        .to_vec();
    v.truncate(20);
    store.cases.insert(damaged.id.as_bytes(), v).unwrap();

    let listing = store.list(&CaseFilter::everything()).unwrap();
    assert_eq!(listing.corrupt, 1);
    assert_eq!(listing.cases.len(), 1);
    assert_eq!(listing.cases[0].record, good);
    // Aggregates come from the roll-ups kept when the results were committed: the
    // damaged case still counts (its reading was indexed before its bytes were lost).
    let agg = store.aggregates(&AggregateQuery::everything()).unwrap();
    assert_eq!(
        (agg.corrupt, agg.rows.len(), agg.rows[0].counts.scans),
        (0, 1, 2)
    );
    assert!(store.get(&damaged.id).is_err());
    let scan = store.scan().unwrap();
    assert_eq!(scan.corrupt, vec![damaged.id]);
    assert_eq!(scan.cases, vec![CaseSummary::of(&good)]);

    // The device re-sending it repairs the case; it is not a conflict.
    assert_eq!(
        store.commit(std::slice::from_ref(&damaged), 9).unwrap(),
        vec![Commit::New]
    );
    assert_eq!(store.get(&damaged.id).unwrap().unwrap().record, damaged);
    assert_eq!(store.list(&CaseFilter::everything()).unwrap().corrupt, 0);
}

#[test]
fn a_retraction_that_no_longer_decodes_is_counted_skipped_and_recorded_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let a = sample_record("c1", "d1", 2, true);
    store.commit(std::slice::from_ref(&a), 5).unwrap();
    let retraction = |reason: &str| Retraction {
        id: a.id,
        clinic: "c1".into(),
        device: "d1".into(),
        reason: reason.into(),
        at_ms: 6,
    };
    store.retract(&[retraction("wrong patient")]).unwrap();
    // What a damaged page looks like: the value's bytes are garbage.
    store
        .retractions
        .insert(retraction_key(&a.id, "c1", "d1"), b"{\"id\":\x01".to_vec())
        .unwrap();

    assert_eq!(store.retraction(&a.id, "c1", "d1").unwrap(), None);
    assert_eq!(store.get(&a.id).unwrap().unwrap().retraction, None);
    let listing = store.list(&CaseFilter::everything()).unwrap();
    assert_eq!((listing.cases.len(), listing.corrupt), (1, 1));
    let scan = store.scan().unwrap();
    assert_eq!(scan.corrupt_retractions, 1);
    assert!(scan.retractions.is_empty());

    // The device recording it again replaces the bad value; a readable one stays.
    store.retract(&[retraction("recorded again")]).unwrap();
    store.retract(&[retraction("a third time")]).unwrap();
    let got = store.get(&a.id).unwrap().unwrap().retraction.unwrap();
    assert_eq!(got.reason, "recorded again");
    assert_eq!(store.list(&CaseFilter::everything()).unwrap().corrupt, 0);
    assert_eq!(store.scan().unwrap().corrupt_retractions, 0);
}

mod rollups {
    use super::super::super::rollup::Rollup;
    use super::super::super::suite_rollups::{history, Op};
    use super::*;
    use proptest::prelude::*;

    fn rebuilt(s: &SledStore) -> Vec<Rollup> {
        s.rebuild_rollups().unwrap();
        s.rollups(&AggregateQuery::everything())
            .unwrap()
            .into_iter()
            .map(|r| r.rollup)
            .collect()
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(0..72usize, 1..6).prop_map(Op::Commit),
            1 => (0..72usize).prop_map(Op::Retract),
            1 => (0..72usize, 0..4u8).prop_map(|(i, v)| Op::Read(i, v)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn maintained_rollups_equal_the_listing_and_a_rebuild(
            ops in proptest::collection::vec(op(), 1..30)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = SledStore::open(dir.path()).unwrap();
            history(&store, &ops, rebuilt);
        }
    }

    #[test]
    fn a_store_from_before_rollups_gets_them_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<usize> = (0..72).collect();
        {
            let store = SledStore::open(dir.path()).unwrap();
            history(&store, &[Op::Commit(all)], rebuilt);
            store.rollups.clear().unwrap();
            store.db.remove(b"rollups-built-v2").unwrap();
            store.db.flush().unwrap();
            assert!(store
                .rollups(&AggregateQuery::everything())
                .unwrap()
                .is_empty());
        }
        let store = SledStore::open(dir.path()).unwrap();
        let rows = store.rollups(&AggregateQuery::everything()).unwrap();
        assert_eq!(rows.len(), 4, "two clinics × two days");
        assert_eq!(rows.iter().map(|r| r.rollup.scans).sum::<u64>(), 24);
    }
}

#[test]
fn loaded_rollups_equal_the_ones_committed_through_the_real_path() {
    use super::super::exams::{Exam, Impression, Read, Recommendation};
    use super::super::rollup::{Rollup, RollupRow};
    use super::super::suite_rollups::pool;
    let read = |impression| Read {
        reviewer: "dr".into(),
        at_ms: 9_000,
        zones: Vec::new(),
        impression,
        recommendation: Recommendation::Refer,
        rescan_reason: String::new(),
        comment: String::new(),
        second_read: false,
    };
    let pool = pool();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let committed = SledStore::open(a.path()).unwrap();
    committed.commit(&pool, 1_000).unwrap();
    let mut exams: std::collections::BTreeMap<_, Exam> = Default::default();
    for r in &pool {
        let e = exams
            .entry(Exam::id_of(r))
            .or_insert_with(|| Exam::empty_for(r));
        e.add(r, 1_000, false);
    }
    for (i, e) in exams.values_mut().enumerate().filter(|(i, _)| i % 3 != 0) {
        let v = [Impression::CovidCompatible, Impression::Normal][i % 2];
        committed.record_read(&e.id, read(v)).unwrap();
        (e.reads, e.verdict) = (1, Some(v));
    }
    // One row per examination, in two loads: rows of one clinic-day merge.
    let rows: Vec<RollupRow> = exams
        .values()
        .map(|e| RollupRow {
            clinic: e.clinic.clone(),
            day: e.day,
            rollup: Rollup::of_exam(e),
        })
        .collect();
    let loaded = SledStore::open(b.path()).unwrap();
    let (first, rest) = rows.split_at(rows.len() / 2);
    loaded.load_rollups(first).unwrap();
    loaded.load_rollups(rest).unwrap();
    let all = AggregateQuery::everything();
    let want = committed.rollups(&all).unwrap();
    assert_eq!(want.len(), 4, "two clinics × two days");
    assert!(want.iter().any(|r| r.rollup.reviewed > 0));
    assert_eq!(loaded.rollups(&all).unwrap(), want);
    drop(loaded);
    let reopened = SledStore::open(b.path()).unwrap();
    assert_eq!(
        reopened.rollups(&all).unwrap(),
        want,
        "kept, and not rebuilt at open"
    );
}
