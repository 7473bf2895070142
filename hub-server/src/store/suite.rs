//! The test suite every `HubStore` backend must pass: `run` (commits, retractions,
//! reopening; `open` reopens the same store) and `queries` (filters, clinic scope,
//! paging and aggregates, on an empty store) and `exams` (examinations, claims, reads),
//! and `fleet` (each device's last contact and queue report).

use std::collections::BTreeSet;

use pleura_shared::record::sample_record;
use pleura_shared::ScanRecord;

pub use super::suite_exams::{current_readings, exams};
use super::{
    AggregateQuery, CaseFilter, ClinicDay, ClinicScope, Commit, Contact, Counts, DeviceStats,
    HubStore, QueueState, Retraction,
};

pub fn run<S: HubStore>(open: impl Fn() -> S) {
    let store = open();
    let a = sample_record("c1", "d1", 3, true);
    // b comes from a v2 model: its findings must be stored and returned as they came.
    let mut b = sample_record("c1", "d1", 0, false);
    b.analysis.findings = Some(pleura_shared::Findings::from_array([
        0.9, 0.1, 0.0, 0.25, 1.0,
    ]));
    let mut c = sample_record("c2", "d9", 1, false);
    c.scan_day = 19_000;

    assert_eq!(
        store.commit(&[a.clone(), b.clone()], 10).unwrap(),
        vec![Commit::New, Commit::New]
    );
    // Redelivery of a, plus a new c: a counts once.
    assert_eq!(
        store.commit(&[a.clone(), c.clone()], 20).unwrap(),
        vec![Commit::Duplicate, Commit::New]
    );
    // The same record twice inside one batch also counts once.
    let d = sample_record("c2", "d9", 2, true);
    assert_eq!(
        store.commit(&[d.clone(), d.clone()], 30).unwrap(),
        vec![Commit::New, Commit::Duplicate]
    );
    assert_eq!(store.count().unwrap(), 4);
    let got = store.get(&a.id).unwrap().unwrap();
    assert_eq!(got.record, a);
    assert_eq!(got.received_at_ms, 10, "first arrival wins");
    let got_b = store.get(&b.id).unwrap().unwrap();
    assert_eq!(got_b.record, b);
    assert_eq!(
        got_b.record.to_wire().finding_probs,
        vec![0.9, 0.1, 0.0, 0.25, 1.0]
    );
    assert_eq!(
        store.get(&a.id).unwrap().unwrap().record.analysis.findings,
        None
    );

    let flagged = store
        .list(&CaseFilter {
            flagged: Some(true),
            ..CaseFilter::everything()
        })
        .unwrap()
        .cases;
    assert_eq!(flagged.len(), 2);
    let c1 = store
        .list(&CaseFilter {
            clinic: Some("c1".into()),
            min_severity: 1,
            ..CaseFilter::everything()
        })
        .unwrap()
        .cases;
    assert_eq!(c1.len(), 1);
    assert_eq!(c1[0].record.id, a.id);
    let old = store
        .list(&CaseFilter {
            to_day: Some(19_500),
            ..CaseFilter::everything()
        })
        .unwrap()
        .cases;
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].record.id, c.id);
    let limited = store
        .list(&CaseFilter {
            limit: 3,
            ..CaseFilter::everything()
        })
        .unwrap()
        .cases;
    assert_eq!(limited.len(), 3);

    // Another device's record under an existing id (squatting a result id), or the same
    // device sending different content under it: refused, nothing overwritten.
    let mut squat = sample_record("c2", "d9", 0, false);
    squat.id = a.id;
    squat.scan = squat.id;
    let mut changed = a.clone();
    changed.analysis.flagged = false;
    assert_eq!(
        store.commit(&[squat, changed, a.clone()], 40).unwrap(),
        vec![Commit::Conflict, Commit::Conflict, Commit::Duplicate]
    );
    assert_eq!(store.get(&a.id).unwrap().unwrap().record, a);
    assert_eq!(store.count().unwrap(), 4);

    let mut devices = store.devices().unwrap();
    devices.sort_by(|x, y| x.device.cmp(&y.device));
    assert_eq!(devices.len(), 2);
    assert_eq!(
        (
            devices[0].results,
            devices[0].duplicates,
            devices[0].conflicts
        ),
        (2, 2, 1)
    );
    assert_eq!(
        (
            devices[1].results,
            devices[1].duplicates,
            devices[1].conflicts
        ),
        (2, 1, 1)
    );

    // A retraction applies to the result of the device that recorded it, recorded
    // before or after the result arrives; the first recording stands.
    let retract = |id, clinic: &str, device: &str, reason: &str| Retraction {
        id,
        clinic: clinic.into(),
        device: device.into(),
        reason: reason.into(),
        at_ms: 50,
    };
    let early = sample_record("c1", "d1", 1, false);
    store
        .retract(&[
            retract(a.id, "c1", "d1", "wrong patient"),
            retract(early.id, "c1", "d1", "sent before its result"),
            retract(c.id, "c1", "d1", "not d1's result"),
        ])
        .unwrap();
    store
        .retract(&[retract(a.id, "c1", "d1", "again")])
        .unwrap();
    assert_eq!(
        store
            .get(&a.id)
            .unwrap()
            .unwrap()
            .retraction
            .unwrap()
            .reason,
        "wrong patient"
    );
    assert_eq!(store.get(&c.id).unwrap().unwrap().retraction, None);
    store.commit(std::slice::from_ref(&early), 60).unwrap();
    let all = store.list(&CaseFilter::everything()).unwrap();
    assert_eq!(all.corrupt, 0);
    let retracted: Vec<_> = all
        .cases
        .iter()
        .filter(|c| c.retraction.is_some())
        .map(|c| c.record.id)
        .collect();
    assert_eq!(retracted.len(), 2);
    assert!(retracted.contains(&a.id) && retracted.contains(&early.id));
    assert_eq!(store.scan().unwrap().retractions.len(), 3);

    // Everything survives a reopen.
    drop(store);
    let store = open();
    assert_eq!(store.count().unwrap(), 5);
    assert_eq!(store.get(&d.id).unwrap().unwrap().record, d);
    let a_again = store.get(&a.id).unwrap().unwrap();
    assert_eq!(a_again.record, a);
    assert!(a_again.retraction.is_some());
    assert_eq!(store.scan().unwrap().cases.len(), 5);

    // A result rebuilt at its edge (re-analysed from its scan after the edge's store was
    // damaged): same id, same device, same content but for `analysed_at_ms`. A
    // duplicate; the stored record stands.
    let mut rebuilt = a.clone();
    rebuilt.analysed_at_ms += 3 * 86_400_000;
    assert_eq!(
        store.commit(std::slice::from_ref(&rebuilt), 70).unwrap(),
        vec![Commit::Duplicate]
    );
    // Anything else still conflicts: another device's record (identical otherwise), the
    // same device with another analysis, patient or zone.
    let mut other_device = rebuilt.clone();
    other_device.device = "d2".into();
    let mut other_analysis = rebuilt.clone();
    other_analysis.analysis.uncertainty = 0.5;
    let mut other_patient = rebuilt.clone();
    other_patient.patient_key = None;
    let mut other_zone = rebuilt.clone();
    other_zone.zone = Some("L1".into());
    let mut same_time_other_analysis = a.clone();
    same_time_other_analysis.analysis.severity_probs[0] = 0.3;
    assert_eq!(
        store
            .commit(
                &[
                    other_device,
                    other_analysis,
                    other_patient,
                    other_zone,
                    same_time_other_analysis
                ],
                80
            )
            .unwrap(),
        vec![Commit::Conflict; 5]
    );
    let kept = store.get(&a.id).unwrap().unwrap();
    assert_eq!(kept.record, a);
    assert_eq!(kept.received_at_ms, 10);
    assert_eq!(store.count().unwrap(), 5);
}

/// Fleet health: `note_contact` stores a device's last contact and queue report, a
/// device that has sent no result yet included; it and `commit` never lose each other's
/// update of the same device, one after the other or at the same time; both survive a
/// reopen.
pub fn fleet<S: HubStore>(open: impl Fn() -> S) {
    let store = open();
    let dev = |s: &S| -> DeviceStats {
        s.devices()
            .unwrap()
            .into_iter()
            .find(|d| (d.clinic.as_str(), d.device.as_str()) == ("c1", "d1"))
            .expect("the device is listed")
    };
    let contact = |at_ms: u64, pending: u64, oldest: u64| Contact {
        at_ms,
        queue: Some(QueueState {
            pending,
            oldest_pending_ms: oldest,
            reported_at_ms: at_ms - 10,
        }),
    };
    let fleet = |d: &DeviceStats| {
        (
            d.last_seen_ms,
            d.queue_pending,
            d.oldest_pending_ms,
            d.queue_reported_ms,
        )
    };

    // A holdings-only check from a device the store has no result of.
    store
        .note_contact("c1", "d1", &contact(1_000, 3, 500))
        .unwrap();
    let d = dev(&store);
    assert_eq!(fleet(&d), (1_000, 3, 500, 990));
    assert_eq!((d.results, d.last_received_ms), (0, 0));

    // Interleaved with commits: each keeps the other's fields.
    let a = sample_record("c1", "d1", 3, true);
    store.commit(std::slice::from_ref(&a), 2_000).unwrap();
    let d = dev(&store);
    assert_eq!((d.results, d.last_received_ms), (1, 2_000));
    assert_eq!(
        fleet(&d),
        (1_000, 3, 500, 990),
        "a commit keeps the contact"
    );
    store
        .note_contact("c1", "d1", &contact(3_000, 2, 600))
        .unwrap();
    store.commit(std::slice::from_ref(&a), 3_500).unwrap();
    let d = dev(&store);
    assert_eq!(
        (d.results, d.duplicates),
        (1, 1),
        "a contact keeps the counters"
    );
    assert_eq!(fleet(&d), (3_000, 2, 600, 2_990));
    // Without a report (an agent before it): seen, the last report kept.
    store
        .note_contact(
            "c1",
            "d1",
            &Contact {
                at_ms: 4_000,
                queue: None,
            },
        )
        .unwrap();
    assert_eq!(fleet(&dev(&store)), (4_000, 2, 600, 2_990));

    // At the same time: no update of either is lost.
    let n = 40u64;
    let records: Vec<ScanRecord> = (0..n)
        .map(|_| sample_record("c1", "d1", 1, false))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for r in &records {
                store.commit(std::slice::from_ref(r), 5_000).unwrap();
            }
        });
        s.spawn(|| {
            for i in 0..n {
                store
                    .note_contact("c1", "d1", &contact(5_000 + i, n - i, 700 + i))
                    .unwrap();
            }
        });
    });
    let d = dev(&store);
    assert_eq!((d.results, d.duplicates), (1 + n, 1));
    assert_eq!(fleet(&d), (5_000 + n - 1, 1, 700 + n - 1, 5_000 + n - 11));

    drop(store);
    let store = open();
    assert_eq!(dev(&store), d, "kept across a reopen");
}

pub(super) fn only(clinics: &[&str]) -> ClinicScope {
    ClinicScope::Only(clinics.iter().map(|c| c.to_string()).collect())
}

fn ids(store: &impl HubStore, f: &CaseFilter) -> Vec<pleura_shared::ResultId> {
    let l = store.list(f).unwrap();
    assert_eq!(l.corrupt, 0);
    l.cases.iter().map(|c| c.record.id).collect()
}

fn on(clinic: &str, day: u32, severity: u8, flagged: bool) -> ScanRecord {
    let mut r = sample_record(clinic, "d1", severity, flagged);
    r.scan_day = day;
    r
}

/// Filters, clinic scope, paging and aggregates: what the case service relies on a
/// backend to answer (a PostgreSQL backend with indexes, the sled one by scanning).
pub fn queries<S: HubStore>(store: &S) {
    // North: clinics n1 and n2. South: s1, which a north specialist must never see.
    let n1_old = on("n1", 100, 3, true);
    let n1_new = on("n1", 102, 1, false);
    let n2 = on("n2", 101, 2, true);
    let s1 = on("s1", 101, 3, true);
    let mut n1_retracted = on("n1", 102, 3, true);
    n1_retracted.analysis.class_probs = pleura_shared::ClassProbs::from_slice(&[0.8, 0.1, 0.1]);
    let all = [&n1_old, &n1_new, &n2, &s1, &n1_retracted];
    for (i, r) in all.iter().enumerate() {
        store.commit(&[(*r).clone()], 1000 + i as u64).unwrap();
    }
    store
        .retract(&[Retraction {
            id: n1_retracted.id,
            clinic: "n1".into(),
            device: "d1".into(),
            reason: "wrong patient".into(),
            at_ms: 2000,
        }])
        .unwrap();

    // Newest scan day first, then newest arrival; retracted cases are listed (marked).
    let everything = ids(store, &CaseFilter::everything());
    assert_eq!(
        everything,
        vec![n1_retracted.id, n1_new.id, s1.id, n2.id, n1_old.id]
    );
    let listed = store.list(&CaseFilter::everything()).unwrap().cases;
    assert!(listed[0].retraction.is_some() && listed[1].retraction.is_none());

    // Scope: a clinic outside it never appears, whatever else the filter asks for.
    let north = only(&["n1", "n2"]);
    let scoped = |f: CaseFilter| {
        ids(
            store,
            &CaseFilter {
                scope: north.clone(),
                ..f
            },
        )
    };
    assert!(!scoped(CaseFilter::everything()).contains(&s1.id));
    assert_eq!(scoped(CaseFilter::everything()).len(), 4);
    assert!(scoped(CaseFilter {
        clinic: Some("s1".into()),
        ..CaseFilter::everything()
    })
    .is_empty());
    assert!(ids(
        store,
        &CaseFilter {
            scope: ClinicScope::Only(BTreeSet::new()),
            ..CaseFilter::everything()
        }
    )
    .is_empty());

    // Each filter narrows; they combine.
    assert_eq!(
        scoped(CaseFilter {
            flagged: Some(true),
            ..CaseFilter::everything()
        }),
        vec![n1_retracted.id, n2.id, n1_old.id]
    );
    assert_eq!(
        scoped(CaseFilter {
            flagged: Some(false),
            ..CaseFilter::everything()
        }),
        vec![n1_new.id]
    );
    assert_eq!(
        ids(
            store,
            &CaseFilter {
                min_severity: 3,
                from_day: Some(101),
                to_day: Some(101),
                ..CaseFilter::everything()
            }
        ),
        vec![s1.id]
    );
    assert_eq!(
        scoped(CaseFilter {
            clinic: Some("n1".into()),
            to_day: Some(101),
            ..CaseFilter::everything()
        }),
        vec![n1_old.id]
    );

    // Paging walks the same order without gaps or repeats.
    let page = |offset, limit| {
        ids(
            store,
            &CaseFilter {
                offset,
                limit,
                ..CaseFilter::everything()
            },
        )
    };
    assert_eq!(page(0, 2), everything[..2]);
    assert_eq!(page(2, 2), everything[2..4]);
    assert_eq!(page(4, 2), everything[4..]);
    assert!(page(9, 2).is_empty());
    assert_eq!(page(1, 0), everything[1..]);

    // Aggregates: per clinic and day, retracted cases nowhere, scope and days applied.
    let counts = |rs: &[&ScanRecord]| {
        let mut c = Counts::default();
        rs.iter().for_each(|r| c.add(r));
        c
    };
    let row = |clinic: &str, day, rs: &[&ScanRecord]| ClinicDay {
        clinic: clinic.into(),
        day,
        counts: counts(rs),
    };
    let agg = store.aggregates(&AggregateQuery::everything()).unwrap();
    assert_eq!(agg.corrupt, 0);
    assert_eq!(
        agg.rows,
        vec![
            row("n1", 100, &[&n1_old]),
            row("n1", 102, &[&n1_new]),
            row("n2", 101, &[&n2]),
            row("s1", 101, &[&s1]),
        ]
    );
    let c = &agg.rows[0].counts;
    assert_eq!(
        (c.scans, c.flagged, c.by_severity, c.by_class),
        (1, 1, [0, 0, 0, 1], [0, 0, 1])
    );
    let north_agg = store
        .aggregates(&AggregateQuery {
            scope: north.clone(),
            from_day: Some(101),
            to_day: None,
        })
        .unwrap();
    assert_eq!(
        north_agg.rows,
        vec![row("n1", 102, &[&n1_new]), row("n2", 101, &[&n2])]
    );
    // A query that never named its scope sees nothing (fails closed).
    assert!(store.list(&CaseFilter::default()).unwrap().cases.is_empty());
    assert!(store
        .aggregates(&AggregateQuery::default())
        .unwrap()
        .rows
        .is_empty());
    assert!(store
        .aggregates(&AggregateQuery {
            scope: ClinicScope::Only(BTreeSet::new()),
            ..AggregateQuery::everything()
        })
        .unwrap()
        .rows
        .is_empty());
}
