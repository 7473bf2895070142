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

/// One scan's analysis by `release` (active unless `shadow`), analysed at `at_ms`.
fn analysis_of(scan: &ScanRecord, release: u64, shadow: Option<bool>, at_ms: u64) -> ScanRecord {
    let mut r = scan.clone();
    r.id = pleura_shared::result_id_for(&scan.scan, release, shadow.is_some());
    r.release = release;
    r.analysed_at_ms = at_ms;
    r.analysis.model_version = format!("pleura-lite r{release}");
    if let Some(would_flag) = shadow {
        r.analysis.flagged = false;
        r.analysis.flag_reasons.clear();
        r.shadow = Some(if would_flag {
            vec![pleura_shared::FlagReason::HighSeverity]
        } else {
            Vec::new()
        });
    }
    r
}

/// Current readings (on an empty store): a shadow result never flags an examination or
/// puts it on the worklist; of two analyses of one scan the later analysed is current
/// whatever the arrival order; listings and aggregates count current readings only,
/// aggregates split by model version.
pub fn current_readings<S: HubStore>(store: &S) {
    use super::{AggregateQuery, CaseFilter};
    let all = WorklistQuery {
        scope: ClinicScope::All,
        ..Default::default()
    };
    // A candidate's severe, would-flag reading of a calm scan, arriving first.
    let mut calm = scan_of("v1", 1, 100, "L1", 1, false);
    calm.analysis.flag_reasons.clear();
    calm.analysis.model_version = "pleura-lite r0".into();
    let shadow = analysis_of(&calm, 5, Some(true), calm.analysed_at_ms);
    assert_eq!(Exam::id_of(&shadow), Exam::id_of(&calm), "grouped by scan");
    store.commit(std::slice::from_ref(&shadow), 10).unwrap();
    let exam = store.exam(&Exam::id_of(&calm)).unwrap().unwrap();
    assert!(!exam.flagged && exam.live().next().is_none());
    assert!(exam.results[0].shadow && exam.results[0].would_flag);
    assert!(
        worklist_ids(store, &all).is_empty(),
        "a shadow alone is no case"
    );
    store.commit(std::slice::from_ref(&calm), 11).unwrap();
    let exam = store.exam(&Exam::id_of(&calm)).unwrap().unwrap();
    assert_eq!((exam.flagged, exam.max_severity), (false, 1));
    assert_eq!(exam.live().map(|r| r.id).collect::<Vec<_>>(), vec![calm.id]);
    let flagged = WorklistQuery {
        flagged: Some(true),
        ..all.clone()
    };
    assert!(
        worklist_ids(store, &flagged).is_empty(),
        "the shadow flags nothing"
    );

    // A re-analysis (release 4) after the first reading, in both arrival orders.
    let first = scan_of("v1", 2, 100, "R1", 1, false);
    let mut again = analysis_of(&first, 4, None, first.analysed_at_ms + 1000);
    again.analysis.flagged = true;
    again.analysis.flag_reasons = vec![pleura_shared::FlagReason::HighSeverity];
    again.analysis.severity = pleura_shared::Severity::new(3).unwrap();
    store.commit(std::slice::from_ref(&first), 20).unwrap();
    store.commit(std::slice::from_ref(&again), 21).unwrap();
    let late_first = scan_of("v1", 3, 100, "R1", 2, true);
    let late_again = analysis_of(&late_first, 4, None, late_first.analysed_at_ms + 1000);
    store.commit(std::slice::from_ref(&late_again), 30).unwrap();
    store.commit(std::slice::from_ref(&late_first), 31).unwrap();
    for (old, new) in [(&first, &again), (&late_first, &late_again)] {
        let e = store.exam(&Exam::id_of(old)).unwrap().unwrap();
        let r = |id| e.results.iter().find(|x| x.id == id).unwrap();
        assert!(r(old.id).superseded && !r(new.id).superseded);
        assert_eq!(e.live().map(|x| x.id).collect::<Vec<_>>(), vec![new.id]);
        assert_eq!(e.current_release_of(&old.scan), Some(4));
    }
    let e = store.exam(&Exam::id_of(&first)).unwrap().unwrap();
    assert_eq!(
        (e.flagged, e.max_severity),
        (true, 3),
        "the current reading counts"
    );
    assert!(worklist_ids(store, &flagged).contains(&e.id));

    // Listings: current readings unless asked; aggregates: current readings only.
    let listed = |f: CaseFilter| -> Vec<_> {
        let mut ids: Vec<_> = store
            .list(&f)
            .unwrap()
            .cases
            .iter()
            .map(|c| c.record.id)
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<pleura_shared::ResultId>| {
        v.sort();
        v
    };
    let current = sorted(vec![calm.id, again.id, late_again.id]);
    assert_eq!(listed(CaseFilter::everything()), current);
    assert_eq!(
        listed(CaseFilter {
            include_shadow: true,
            ..CaseFilter::everything()
        }),
        sorted(vec![calm.id, again.id, late_again.id, shadow.id])
    );
    assert_eq!(
        listed(CaseFilter {
            include_superseded: true,
            ..CaseFilter::everything()
        }),
        sorted(vec![
            calm.id,
            again.id,
            late_again.id,
            first.id,
            late_first.id
        ])
    );
    let agg = store.aggregates(&AggregateQuery::everything()).unwrap();
    assert_eq!(agg.rows.len(), 1);
    let c = &agg.rows[0].counts;
    assert_eq!((c.scans, c.flagged), (3, 2));
    assert_eq!(
        c.by_model
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect::<Vec<_>>(),
        vec![("pleura-lite r0", 1), ("pleura-lite r4", 2)]
    );

    // Withdrawing the current reading revives no earlier one.
    store
        .retract(&[Retraction {
            id: again.id,
            clinic: "v1".into(),
            device: "d1".into(),
            reason: "wrong patient".into(),
            at_ms: 40,
        }])
        .unwrap();
    let e = store.exam(&Exam::id_of(&first)).unwrap().unwrap();
    assert!(e.live().next().is_none());
    assert!(e.worklist_key().is_none());
    assert_eq!(
        store
            .aggregates(&AggregateQuery::everything())
            .unwrap()
            .rows[0]
            .counts
            .scans,
        2
    );

    // A later reading of the withdrawn scan (a rebuild, a re-analysis) stays withdrawn.
    let later = analysis_of(&first, 6, None, first.analysed_at_ms + 5000);
    store.commit(std::slice::from_ref(&later), 50).unwrap();
    let e = store.exam(&Exam::id_of(&first)).unwrap().unwrap();
    assert!(e.live().next().is_none(), "{:?}", e.results);
    assert!(!listed(CaseFilter::everything()).contains(&later.id));

    // Another device's reading of the same scan (same patient, day and scan id) never
    // supersedes this device's: both stay current.
    let mine = scan_of("v1", 4, 100, "L3", 2, true);
    let mut theirs = analysis_of(&mine, 7, None, mine.analysed_at_ms + 1000);
    theirs.device = "d2".into();
    theirs.analysis.flagged = false;
    theirs.analysis.flag_reasons.clear();
    store.commit(std::slice::from_ref(&mine), 60).unwrap();
    store.commit(std::slice::from_ref(&theirs), 61).unwrap();
    let e = store.exam(&Exam::id_of(&mine)).unwrap().unwrap();
    let live: Vec<_> = e.live().map(|x| x.id).collect();
    assert!(
        live.contains(&mine.id) && live.contains(&theirs.id),
        "{live:?}"
    );
    assert!(e.flagged, "the first device's flag stands");
}
