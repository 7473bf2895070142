//! The case service over a real store, audit log and accounts: what each role gets, and
//! the audit line each access leaves, allowed or refused.

use std::path::Path;
use std::sync::Arc;

use pleura_shared::record::sample_record;
use pleura_shared::ScanRecord;

use super::*;
use crate::audit::Entry;
use crate::auth::{add_account, Role};
use crate::directory::FixedDirectory;
use crate::recovery::open_checked;

const PW: &str = "a long enough password";

struct Hub {
    svc: CaseService,
    store: Arc<crate::store::SledStore>,
    dir: tempfile::TempDir,
    north_flagged: ScanRecord,
    north_normal: ScanRecord,
    south_flagged: ScanRecord,
}

/// A hub with clinics n1 (north) and s1 (south), one account per role, and three cases.
fn hub() -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let recovered = open_checked(dir.path(), metrics.clone()).unwrap();
    let accounts = dir.path().join("accounts.json");
    add_account(&accounts, "ana", Role::Specialist, Some("north"), PW).unwrap();
    add_account(&accounts, "bob", Role::Specialist, Some("north"), PW).unwrap();
    add_account(&accounts, "min", Role::Ministry, None, PW).unwrap();
    add_account(&accounts, "op", Role::Operator, None, PW).unwrap();
    let auth = Auth::open(&accounts, &dir.path().join("token.key"), 60_000).unwrap();
    let audit = AuditLog::open(dir.path(), metrics.clone()).unwrap();
    let north_flagged = sample_record("n1", "d1", 3, true);
    let north_normal = sample_record("n1", "d1", 0, false);
    let south_flagged = sample_record("s1", "d1", 2, true);
    let all = [
        north_flagged.clone(),
        north_normal.clone(),
        south_flagged.clone(),
    ];
    recovered.store.commit(&all, 5).unwrap();
    let store = Arc::new(recovered.store);
    let parts = ReviewParts {
        media: Arc::new(crate::media::FsMediaStore::open(dir.path()).unwrap()),
        downlink: Arc::new(
            crate::downlink::Downlink::open(dir.path(), None, metrics.clone()).unwrap(),
        ),
    };
    let svc = CaseService::new(
        store.clone(),
        Arc::new(auth),
        Arc::new(audit),
        Arc::new(FixedDirectory::new([("n1", "north"), ("s1", "south")])),
        Arc::new(recovered.integrity),
        metrics,
    )
    .with_review(parts);
    Hub {
        svc,
        store,
        dir,
        north_flagged,
        north_normal,
        south_flagged,
    }
}

impl Hub {
    async fn who(&self, user: &str) -> Who {
        let s = self.svc.login(user, PW, "10.0.0.1").await.unwrap();
        self.svc
            .caller(Some(&s.token), "10.0.0.1", Action::ListCases)
            .await
            .unwrap()
    }

    fn audit(&self) -> Vec<Entry> {
        audit_lines(self.dir.path())
    }

    /// Whether the log holds a line for `user` doing `action` with an outcome that starts
    /// with `outcome`.
    fn logged(&self, user: &str, action: &str, outcome: &str) -> bool {
        self.audit()
            .iter()
            .any(|e| e.user == user && e.action == action && e.outcome.starts_with(outcome))
    }
}

fn audit_lines(dir: &Path) -> Vec<Entry> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(cases: &[StoredCase]) -> Vec<ResultId> {
    cases.iter().map(|c| c.record.id).collect()
}

#[tokio::test]
async fn a_specialist_works_their_regions_flagged_cases_only() {
    let h = hub();
    let ana = h.who("ana").await;
    let listed = h.svc.list(&ana, CaseQuery::default()).await.unwrap();
    assert_eq!(ids(&listed), vec![h.north_flagged.id]);
    // Asking for another clinic or for unflagged cases widens nothing.
    let q = CaseQuery {
        clinic: Some("s1".into()),
        ..Default::default()
    };
    assert!(h.svc.list(&ana, q).await.unwrap().is_empty());
    let q = CaseQuery {
        flagged: Some(false),
        ..Default::default()
    };
    assert_eq!(
        ids(&h.svc.list(&ana, q).await.unwrap()),
        vec![h.north_flagged.id]
    );

    let got = h.svc.get(&ana, h.north_flagged.id).await.unwrap();
    assert_eq!(got.record, h.north_flagged);
    let denied = HubError::Denied(policy::NOT_IN_SCOPE.into());
    for id in [h.south_flagged.id, h.north_normal.id, ResultId::random()] {
        assert_eq!(h.svc.get(&ana, id).await.unwrap_err(), denied);
    }

    let log = h.audit();
    let mine: Vec<_> = log.iter().filter(|e| e.user == "ana").collect();
    assert_eq!(mine[0].action, "login");
    assert!(mine
        .iter()
        .any(|e| e.action == "list_cases" && e.target == "1 cases"));
    assert!(mine.iter().any(|e| e.action == "get_case"
        && e.target == h.north_flagged.id.to_string()
        && e.outcome == "allowed"));
    assert!(mine.iter().any(|e| e.action == "get_case"
        && e.target == h.south_flagged.id.to_string()
        && e.outcome == format!("denied: {}", policy::NOT_IN_SCOPE)));
    assert!(mine
        .iter()
        .all(|e| e.source == "10.0.0.1" && e.role == "specialist"));
}

#[tokio::test]
async fn operators_see_every_case_and_listings_page() {
    let h = hub();
    let op = h.who("op").await;
    let all = h.svc.list(&op, CaseQuery::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    let page = |offset| CaseQuery {
        offset,
        limit: 2,
        ..Default::default()
    };
    let first = h.svc.list(&op, page(0)).await.unwrap();
    let second = h.svc.list(&op, page(2)).await.unwrap();
    assert_eq!([ids(&first), ids(&second)].concat(), ids(&all));
    assert!(h.svc.get(&op, h.north_normal.id).await.is_ok());
    assert!(h.logged("op", "list_cases", "allowed"));
}

#[tokio::test]
async fn a_ministry_viewer_reads_no_case_and_the_refusal_is_audited() {
    let h = hub();
    let min = h.who("min").await;
    let denied = HubError::Denied(policy::AGGREGATES_ONLY.into());
    assert_eq!(
        h.svc.list(&min, CaseQuery::default()).await.unwrap_err(),
        denied
    );
    assert_eq!(
        h.svc.get(&min, h.north_flagged.id).await.unwrap_err(),
        denied
    );
    assert!(h.logged("min", "list_cases", "denied: ministry"));
    assert!(h.logged("min", "get_case", "denied: ministry"));
}

#[tokio::test]
async fn aggregates_are_scoped_by_region_and_always_audited() {
    let h = hub();
    // Exact rows: operators (every region) and specialists (their own); a ministry
    // viewer gets none (only the suppressed report).
    let min = h.who("min").await;
    assert!(h
        .svc
        .aggregates(&min, DayRange::default())
        .await
        .unwrap()
        .is_empty());
    let op = h.who("op").await;
    let rows = h.svc.aggregates(&op, DayRange::default()).await.unwrap();
    let regions: Vec<_> = rows
        .iter()
        .map(|r| (r.region.as_str(), r.counts.scans))
        .collect();
    assert_eq!(regions, vec![("north", 2), ("south", 1)]);
    assert_eq!(rows[0].counts.flagged, 1);

    // A specialist's aggregates count their own region only.
    let ana = h.who("ana").await;
    let rows = h.svc.aggregates(&ana, DayRange::default()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].region.as_str(), rows[0].counts.scans),
        ("north", 2)
    );
    let later = DayRange {
        from_day: Some(h.north_flagged.scan_day + 1),
        to_day: None,
    };
    assert!(h.svc.aggregates(&op, later).await.unwrap().is_empty());

    assert!(h.logged("min", "aggregates", "allowed"));
    assert!(h.logged("op", "aggregates", "allowed"));
    assert!(h.logged("ana", "aggregates", "allowed"));
    let n = h
        .audit()
        .iter()
        .filter(|e| e.action == "aggregates")
        .count();
    assert_eq!(n, 4, "one line per call");

    // Refused for its token: audited too (first from a source at once, then folded).
    let e = h
        .svc
        .caller(None, "10.0.0.9", Action::Aggregates)
        .await
        .unwrap_err();
    assert_eq!(e, HubError::Unauthenticated("no bearer token".into()));
    let refused = h.audit().into_iter().last().unwrap();
    assert_eq!(
        (refused.action.as_str(), refused.source.as_str()),
        ("aggregates", "10.0.0.9")
    );
    assert!(refused.outcome.starts_with("denied: no bearer token"));
}

#[tokio::test]
async fn sync_status_is_for_operators_and_always_audited() {
    let h = hub();
    let op = h.who("op").await;
    let s = h.svc.sync_status(&op).await.unwrap();
    assert_eq!(s.devices.len(), 2);
    assert_eq!(s.missing, 0);
    assert!(h.logged("op", "sync_status", "allowed"));
    let target = &h.audit().into_iter().last().unwrap().target;
    assert_eq!(target, "2 devices");

    for user in ["ana", "min"] {
        let who = h.who(user).await;
        assert_eq!(
            h.svc.sync_status(&who).await.unwrap_err(),
            HubError::Denied(policy::OPERATORS_ONLY.into())
        );
        assert!(h.logged(user, "sync_status", "denied: sync status is for operators"));
    }

    let e = h
        .svc
        .caller(Some("v1.forged.token"), "10.0.0.8", Action::SyncStatus)
        .await
        .unwrap_err();
    assert!(matches!(e, HubError::Unauthenticated(_)));
    assert!(h.audit().iter().any(|l| l.action == "sync_status"
        && l.source == "10.0.0.8"
        && l.outcome.starts_with("denied")));
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_audited() {
    let h = hub();
    let e = h.svc.login("ana", "not the password", "10.0.0.7").await;
    assert!(matches!(e, Err(HubError::Unauthenticated(_))));
    assert!(h.logged("ana", "login", "denied"));
}

#[test]
fn clinic_rows_fold_into_region_rows() {
    let row = |clinic: &str, day, scans| ClinicDay {
        clinic: clinic.into(),
        day,
        counts: Counts {
            scans,
            ..Default::default()
        },
    };
    let regions = HashMap::from([
        ("n1".to_string(), "north".to_string()),
        ("n2".to_string(), "north".to_string()),
    ]);
    let folded = by_region(
        vec![
            row("n1", 7, 1),
            row("n2", 7, 2),
            row("n2", 8, 4),
            row("x", 7, 8),
        ],
        &regions,
    );
    let got: Vec<_> = folded
        .iter()
        .map(|r| (r.region.as_str(), r.day, r.counts.scans))
        .collect();
    assert_eq!(
        got,
        vec![("north", 7, 3), ("north", 8, 4), (UNASSIGNED, 7, 8)]
    );
}

#[tokio::test]
async fn a_rescan_after_the_verdict_is_read_again_and_no_one_seconds_their_own_read() {
    use crate::store::exams::{Exam, Impression, Recommendation};
    use crate::store::HubStore;
    let h = hub();
    let (ana, bob) = (h.who("ana").await, h.who("bob").await);
    let exam = Exam::id_of(&h.north_flagged);
    let form = |second_read| VerdictForm {
        impression: Some(Impression::CovidCompatible),
        recommendation: Some(Recommendation::Refer),
        second_read,
        ..Default::default()
    };
    let unread = |who: Who| {
        let svc = &h.svc;
        async move {
            let page = svc
                .worklist(
                    &who,
                    ExamQuery {
                        read: Some(false),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            page.rows.iter().map(|r| r.exam.id).collect::<Vec<_>>()
        }
    };
    h.svc.submit_verdict(&ana, exam, form(false)).await.unwrap();
    assert!(!unread(ana.clone()).await.contains(&exam));
    // Ana cannot second her own read (refused, audited); the form does not offer it.
    let own = h.svc.submit_verdict(&ana, exam, form(true)).await;
    match own {
        Err(HubError::Invalid(m)) => assert!(m.contains("another specialist"), "{m}"),
        o => panic!("{o:?}"),
    }
    assert!(h.logged("ana", "verdict", "refused: you gave the first read"));
    // The same patient rescanned that afternoon, severity 3 and flagged.
    let mut afternoon = sample_record("n1", "d1", 3, true);
    afternoon.patient_key = h.north_flagged.patient_key;
    afternoon.scan_day = h.north_flagged.scan_day;
    afternoon.zone = Some("L2".into());
    assert_eq!(Exam::id_of(&afternoon), exam);
    h.store
        .commit(std::slice::from_ref(&afternoon), 50)
        .unwrap();
    assert!(
        unread(ana.clone()).await.contains(&exam),
        "back on the worklist"
    );
    let d = h.svc.exam(&ana, exam).await.unwrap();
    let new: Vec<_> = d.exam.new_since_read().map(|r| r.id).collect();
    assert_eq!(new, vec![afternoon.id]);
    // A new verdict (first kind) covers the rescan, and goes to the device again.
    let again = h.svc.submit_verdict(&bob, exam, form(false)).await.unwrap();
    assert!(again.read.zones.iter().any(|z| z.result_id == afternoon.id));
    assert!(!unread(ana.clone()).await.contains(&exam));
    let d = h.svc.exam(&ana, exam).await.unwrap();
    let reads = d.reads.unwrap();
    assert_eq!(
        (reads.first.reviewer.as_str(), reads.later.len()),
        ("ana", 1)
    );
    assert_eq!(reads.latest().reviewer, "bob");
}

fn refer(second_read: bool) -> VerdictForm {
    use crate::store::exams::{Impression, Recommendation};
    VerdictForm {
        impression: Some(Impression::CovidCompatible),
        recommendation: Some(Recommendation::Refer),
        second_read,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_verdict_the_downlink_cannot_queue_is_stored_and_swept_to_each_device_once() {
    use crate::store::exams::{Exam, Undelivered};
    use crate::store::HubStore;
    use std::sync::atomic::Ordering;
    let h = hub();
    let (ana, bob) = (h.who("ana").await, h.who("bob").await);
    let exam = Exam::id_of(&h.north_flagged);
    let (clinic, device) = (&h.north_flagged.clinic, &h.north_flagged.device);
    let dl = h.svc.parts().unwrap().downlink;
    dl.fail_sends.store(true, Ordering::Relaxed);
    let done = h
        .svc
        .submit_verdict(&ana, exam, refer(false))
        .await
        .unwrap();
    assert!(!done.queued_everywhere());
    assert_eq!(done.failed.len(), 1);
    assert!(h.store.reads(&exam).unwrap().is_some(), "stored regardless");
    assert_eq!(h.store.undelivered(None).unwrap().len(), 1);
    assert_eq!(dl.pending(clinic, device).unwrap(), 0);
    // Still failing: the sweep leaves it for the next.
    assert_eq!(h.svc.sweep_verdicts().await.unwrap(), 0);
    dl.fail_sends.store(false, Ordering::Relaxed);
    assert_eq!(h.svc.sweep_verdicts().await.unwrap(), 1);
    assert_eq!(dl.pending(clinic, device).unwrap(), 1);
    assert_eq!(h.svc.sweep_verdicts().await.unwrap(), 0);
    assert_eq!(
        dl.pending(clinic, device).unwrap(),
        1,
        "swept twice, queued once"
    );
    assert!(h.store.undelivered(None).unwrap().is_empty());
    // A hub killed before the outbox entry went: queued again under the same id, a no-op.
    let id = delivery::verdict_message_id(&Undelivered::of(&exam, &done.read), clinic, device);
    let kind = pleura_proto::v1::downlink::Kind::Verdict(verdict::to_wire(
        &h.store.exam(&exam).unwrap().unwrap(),
        &done.read,
    ));
    assert_eq!(dl.send_with_id(clinic, device, id, kind).unwrap(), id);
    assert_eq!(dl.pending(clinic, device).unwrap(), 1);
    assert_eq!(dl.receipt(clinic, device, &[id.to_vec()]).unwrap(), 1);
    // With the downlink working, a verdict is queued at once (its own id).
    let second = h.svc.submit_verdict(&bob, exam, refer(true)).await.unwrap();
    assert!(second.queued_everywhere());
    assert_eq!(dl.pending(clinic, device).unwrap(), 1);
    assert!(h.store.undelivered(None).unwrap().is_empty());
}

#[tokio::test]
async fn a_withdrawn_results_media_are_neither_shown_nor_served() {
    use crate::media::ItemClaim;
    use crate::store::exams::Exam;
    use crate::store::{HubStore, Retraction};
    use pleura_proto::v1::MediaKind;
    use sha2::Digest;
    let h = hub();
    let ana = h.who("ana").await;
    let r = &h.north_flagged;
    let exam = Exam::id_of(r);
    let bytes = b"a clip".to_vec();
    let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    let claim = ItemClaim {
        sha256: sha,
        kind: MediaKind::Clip,
        result_id: r.id,
        clinic: r.clinic.clone(),
        device: r.device.clone(),
        total: bytes.len() as u64,
    };
    // A second scan of the examination keeps it on the worklist once the first is withdrawn.
    let mut other = r.clone();
    other.id = ResultId::random();
    other.scan = other.id;
    other.zone = Some("L2".into());
    h.store.commit(&[other], 6).unwrap();
    let media = h.svc.parts().unwrap().media;
    media.write_chunk(&claim, 0, &bytes, 1).unwrap();
    assert!(h.svc.media(&ana, exam, sha, None).await.is_ok());
    assert!(h
        .svc
        .exam(&ana, exam)
        .await
        .unwrap()
        .media
        .contains_key(&r.id));
    h.store
        .retract(&[Retraction {
            id: r.id,
            clinic: r.clinic.clone(),
            device: r.device.clone(),
            reason: "wrong patient".into(),
            at_ms: 9,
        }])
        .unwrap();
    let stored = h.store.exam(&exam).unwrap().unwrap();
    assert!(stored.results.iter().any(|x| x.id == r.id && x.retracted));
    assert_eq!(stored.live().count(), 1);
    assert!(h.svc.media(&ana, exam, sha, None).await.is_err());
    assert!(!h
        .svc
        .exam(&ana, exam)
        .await
        .unwrap()
        .media
        .contains_key(&r.id));
}
