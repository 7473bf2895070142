//! The examination part of the backend suite: the index kept on commit, priority order,
//! scope, paging, claims, reads, turnaround and retraction.

use pleura_shared::record::sample_record;
use pleura_shared::{ExamId, ScanRecord};

use super::exams::{
    ClaimOutcome, Exam, Impression, Read, ReadOutcome, Recommendation, Turnaround, WorklistQuery,
    ZoneRead,
};
use super::suite::only;
use super::{ClinicScope, HubStore, Retraction};

fn scan_of(
    clinic: &str,
    patient: u8,
    day: u32,
    zone: &str,
    severity: u8,
    flagged: bool,
) -> ScanRecord {
    let mut r = sample_record(clinic, "d1", severity, flagged);
    r.patient_key = Some([patient; 16]);
    r.scan_day = day;
    r.zone = Some(zone.into());
    r.analysis.uncertainty = 0.1;
    r
}

fn worklist_ids(store: &impl HubStore, q: &WorklistQuery) -> Vec<ExamId> {
    store
        .worklist(q, 0)
        .unwrap()
        .rows
        .iter()
        .map(|r| r.exam.id)
        .collect()
}

/// Examinations: the index kept on commit, priority order, scope, paging, claims, reads,
/// turnaround and retraction (on an empty store).
pub fn exams<S: HubStore>(store: &S) {
    let r1 = scan_of("n1", 7, 100, "R1", 1, false);
    let r2 = scan_of("n1", 7, 100, "R2", 3, true);
    let later = scan_of("n1", 7, 101, "R1", 2, true);
    let n2 = scan_of("n2", 8, 100, "L1", 1, true);
    let mut n2_unsure = scan_of("n2", 9, 100, "L1", 1, true);
    n2_unsure.analysis.uncertainty = 0.45;
    let calm = scan_of("n2", 10, 100, "L1", 0, false);
    let south = scan_of("s1", 7, 100, "R1", 3, true);
    store.commit(std::slice::from_ref(&r1), 1000).unwrap();
    store
        .commit(
            &[r2.clone(), later.clone(), n2.clone(), n2_unsure.clone()],
            2000,
        )
        .unwrap();
    store.commit(&[calm.clone(), south.clone()], 2000).unwrap();
    let exam = Exam::id_of(&r1);
    assert_eq!(exam, Exam::id_of(&r2), "one patient, clinic and day");

    let e = store.exam(&exam).unwrap().unwrap();
    assert_eq!(e.results.len(), 2);
    assert_eq!((e.max_severity, e.flagged), (3, true));
    assert_eq!((e.first_received_ms, e.last_received_ms), (1000, 2000));
    assert_eq!(e.patient_key, Some([7; 16]));
    assert!(store.exam(&ExamId([0; 16])).unwrap().is_none());

    // Priority order: severity 3 (1 h), severity 2 (4 h), then flagged (12 h) with the
    // more uncertain first; another region's exam never, an unnamed scope nothing.
    let north = only(&["n1", "n2"]);
    let flagged = WorklistQuery {
        scope: north.clone(),
        flagged: Some(true),
        ..Default::default()
    };
    let order = vec![
        exam,
        Exam::id_of(&later),
        Exam::id_of(&n2_unsure),
        Exam::id_of(&n2),
    ];
    assert_eq!(worklist_ids(store, &flagged), order);
    let all_north = worklist_ids(
        store,
        &WorklistQuery {
            scope: north.clone(),
            ..Default::default()
        },
    );
    assert_eq!(all_north.len(), 5);
    assert_eq!(all_north[4], Exam::id_of(&calm));
    let everywhere = worklist_ids(
        store,
        &WorklistQuery {
            scope: ClinicScope::All,
            ..Default::default()
        },
    );
    assert_eq!(everywhere.len(), 6);
    assert!(everywhere[..2].contains(&Exam::id_of(&south)));
    assert!(worklist_ids(store, &WorklistQuery::default()).is_empty());
    let row = &store.worklist(&flagged, 0).unwrap().rows[0];
    assert_eq!(row.priority.deadline_ms, 1000 + 3_600_000);

    // Paging walks the same order.
    let page = |offset, limit| {
        let w = store
            .worklist(
                &WorklistQuery {
                    offset,
                    limit,
                    ..flagged.clone()
                },
                0,
            )
            .unwrap();
        (w.rows.iter().map(|r| r.exam.id).collect::<Vec<_>>(), w.more)
    };
    assert_eq!(page(0, 3), (order[..3].to_vec(), true));
    assert_eq!(page(3, 3), (order[3..].to_vec(), false));

    // Earlier exams of the same pseudonym at the same clinic, not at another clinic.
    let of_patient: Vec<_> = store
        .patient_exams("n1", &[7; 16])
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(of_patient, vec![Exam::id_of(&later), exam]);

    // Claims: one specialist at a time; expired claims can be taken over.
    let claimed = |o: ClaimOutcome| matches!(o, ClaimOutcome::Claimed(_));
    assert!(claimed(store.claim(&exam, "ana", 5000, 1000).unwrap()));
    assert!(
        claimed(store.claim(&exam, "ana", 5500, 1000).unwrap()),
        "renewed"
    );
    match store.claim(&exam, "bob", 6000, 1000).unwrap() {
        ClaimOutcome::HeldBy(c) => assert_eq!((c.user.as_str(), c.at_ms), ("ana", 5000)),
        o => panic!("{o:?}"),
    }
    assert_eq!(store.claim_of(&exam, 6000).unwrap().unwrap().user, "ana");
    assert!(store.claim_of(&exam, 6600).unwrap().is_none(), "expired");
    assert!(claimed(store.claim(&exam, "bob", 6600, 1000).unwrap()));
    assert!(!store.release(&exam, "ana").unwrap());
    assert!(store.release(&exam, "bob").unwrap());
    assert!(store.claim_of(&exam, 6600).unwrap().is_none());
    assert_eq!(
        store.claim(&ExamId([0; 16]), "ana", 1, 1).unwrap(),
        ClaimOutcome::NoSuchExam
    );
    assert!(claimed(store.claim(&exam, "ana", 7000, 1000).unwrap()));
    let w = store.worklist(&flagged, 7100).unwrap();
    assert_eq!(w.rows[0].claim.as_ref().unwrap().user, "ana");

    // Reads: a first, then one second read by someone else; the claim ends with the read.
    let read_by = |who: &str, second| Read {
        reviewer: who.into(),
        at_ms: 9000,
        zones: vec![ZoneRead {
            result_id: r2.id,
            zone: "R2".into(),
            model_score: 3,
            score: 2,
            overridden: true,
        }],
        impression: Impression::CovidCompatible,
        recommendation: Recommendation::Rescan,
        rescan_reason: "probe too shallow".into(),
        comment: String::new(),
        second_read: second,
    };
    let read = |second| read_by(if second { "bob" } else { "ana" }, second);
    let other = Exam::id_of(&later);
    assert_eq!(
        store.record_read(&other, read(true)).unwrap(),
        ReadOutcome::NoFirstRead
    );
    assert_eq!(
        store.record_read(&exam, read(false)).unwrap(),
        ReadOutcome::Recorded
    );
    assert_eq!(
        store.record_read(&exam, read(false)).unwrap(),
        ReadOutcome::AlreadyRead
    );
    assert!(store.claim_of(&exam, 7100).unwrap().is_none());
    assert_eq!(
        store.record_read(&exam, read_by("ana", true)).unwrap(),
        ReadOutcome::OwnRead,
        "no one seconds their own read"
    );
    assert_eq!(
        store.record_read(&exam, read(true)).unwrap(),
        ReadOutcome::Recorded
    );
    assert_eq!(
        store.record_read(&exam, read(true)).unwrap(),
        ReadOutcome::AlreadyRead
    );
    assert_eq!(
        store.record_read(&ExamId([0; 16]), read(false)).unwrap(),
        ReadOutcome::NoSuchExam
    );
    let reads = store.reads(&exam).unwrap().unwrap();
    assert_eq!(reads.first, read(false));
    assert_eq!(reads.second, Some(read(true)));
    assert_eq!(store.exam(&exam).unwrap().unwrap().reads, 2);
    let unread = WorklistQuery {
        read: Some(false),
        ..flagged.clone()
    };
    assert_eq!(worklist_ids(store, &unread), order[1..].to_vec());
    let done = WorklistQuery {
        read: Some(true),
        ..flagged.clone()
    };
    assert_eq!(worklist_ids(store, &done), vec![exam]);
    let t = store.turnaround(&north, 0).unwrap();
    assert_eq!(
        t,
        vec![Turnaround {
            clinic: "n1".into(),
            arrived_ms: 1000,
            claimed_ms: Some(5000),
            read_ms: 9000,
        }]
    );
    assert!(store.turnaround(&only(&["s1"]), 0).unwrap().is_empty());
    assert!(store.turnaround(&north, 9001).unwrap().is_empty());

    // A withdrawn result leaves the reading; an exam with none left leaves the worklist.
    let withdraw = |r: &ScanRecord| Retraction {
        id: r.id,
        clinic: r.clinic.clone(),
        device: r.device.clone(),
        reason: "wrong patient".into(),
        at_ms: 10_000,
    };
    store.retract(&[withdraw(&later)]).unwrap();
    assert!(!worklist_ids(store, &unread).contains(&Exam::id_of(&later)));
    let gone = store.exam(&Exam::id_of(&later)).unwrap().unwrap();
    assert!(gone.results[0].retracted);
    store.retract(&[withdraw(&r2)]).unwrap();
    let e = store.exam(&exam).unwrap().unwrap();
    assert_eq!((e.max_severity, e.flagged), (1, false));
    assert!(
        !worklist_ids(store, &done).contains(&exam),
        "no longer flagged"
    );
    // A retraction recorded before its result arrives applies when it does.
    let early = scan_of("n1", 11, 100, "R1", 3, true);
    store.retract(&[withdraw(&early)]).unwrap();
    store.commit(std::slice::from_ref(&early), 11_000).unwrap();
    assert!(store.exam(&Exam::id_of(&early)).unwrap().unwrap().results[0].retracted);
    assert_eq!(worklist_ids(store, &unread), order[2..].to_vec());
    rescan_after_a_verdict(store, read_by);
}

/// A scan of the same examination that arrives after its verdict puts it back on the
/// unread worklist, marked new, until a new (not a second) verdict covers it.
fn rescan_after_a_verdict<S: HubStore>(store: &S, read_by: impl Fn(&str, bool) -> Read) {
    let morning = scan_of("r1", 21, 100, "R1", 1, true);
    store
        .commit(std::slice::from_ref(&morning), 20_000)
        .unwrap();
    let exam = Exam::id_of(&morning);
    let q = |read| WorklistQuery {
        scope: only(&["r1"]),
        read: Some(read),
        ..Default::default()
    };
    assert_eq!(
        store.record_read(&exam, read_by("ana", false)).unwrap(),
        ReadOutcome::Recorded
    );
    assert!(worklist_ids(store, &q(false)).is_empty());
    let afternoon = scan_of("r1", 21, 100, "R2", 3, true);
    store
        .commit(std::slice::from_ref(&afternoon), 30_000)
        .unwrap();
    assert_eq!(Exam::id_of(&afternoon), exam);
    let e = store.exam(&exam).unwrap().unwrap();
    assert!(e.needs_read());
    let new: Vec<_> = e.new_since_read().map(|r| r.id).collect();
    assert_eq!(new, vec![afternoon.id]);
    assert_eq!(
        e.priority().deadline_ms,
        30_000 + 3_600_000,
        "the clock starts at the rescan"
    );
    let w = store.worklist(&q(false), 0).unwrap();
    assert_eq!(w.rows.len(), 1, "back on the unread worklist");
    assert!(worklist_ids(store, &q(true)).is_empty());
    // A repeated first read is refused; a new verdict covers the rescan.
    let mut again = read_by("cy", false);
    again.at_ms = 40_000;
    assert_eq!(
        store.record_read(&exam, again.clone()).unwrap(),
        ReadOutcome::Recorded
    );
    assert_eq!(
        store.record_read(&exam, again.clone()).unwrap(),
        ReadOutcome::AlreadyRead
    );
    let reads = store.reads(&exam).unwrap().unwrap();
    assert_eq!(reads.later, vec![again.clone()]);
    assert_eq!(reads.latest(), &again);
    let e = store.exam(&exam).unwrap().unwrap();
    assert!(!e.needs_read() && e.new_since_read().next().is_none());
    assert!(worklist_ids(store, &q(false)).is_empty());
    assert_eq!(worklist_ids(store, &q(true)), vec![exam]);
    // A withdrawn rescan takes the examination off the unread worklist again.
    let evening = scan_of("r1", 21, 100, "R3", 2, true);
    store
        .commit(std::slice::from_ref(&evening), 50_000)
        .unwrap();
    assert_eq!(worklist_ids(store, &q(false)), vec![exam]);
    store
        .retract(&[Retraction {
            id: evening.id,
            clinic: evening.clinic.clone(),
            device: evening.device.clone(),
            reason: "wrong patient".into(),
            at_ms: 51_000,
        }])
        .unwrap();
    assert!(worklist_ids(store, &q(false)).is_empty());
}
