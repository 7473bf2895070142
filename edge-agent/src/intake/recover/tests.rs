use std::sync::Arc;

use pleura_shared::PseudonymKey;

use super::super::attempts::Attempts;
use super::super::tests::{intake, place_of, take_in};
use super::super::{Intake, Outcome};
use super::*;
use crate::outbox::{Outbox, SledOutbox};

/// The same intake after its outbox store was lost whole (its folder gone; the journal
/// beside it kept): the outbox opened afresh on the same folders, with the same key.
fn with_store_lost(i: Arc<Intake>, outbox: Arc<SledOutbox>) -> (Arc<Intake>, Arc<SledOutbox>) {
    drop(outbox);
    let (cfg, pool) = (i.cfg.clone(), i.pool.clone());
    let key = PseudonymKey::new(i.key.as_bytes().to_vec()).unwrap();
    drop(i);
    std::fs::remove_dir_all(cfg.data_dir.join("outbox.sled")).unwrap();
    let outbox = Arc::new(SledOutbox::open(&cfg.data_dir, cfg.quota_bytes).unwrap());
    let i = Intake {
        cfg,
        pool,
        outbox: outbox.clone(),
        key: std::sync::Arc::new(key),
        status: Arc::default(),
        queued: Arc::default(),
        abandoned: Arc::default(),
        scan_log: None,
        media: None,
    };
    (Arc::new(i), outbox)
}

/// The outside chaos test's finding: 45 byte-identical scans under 5 patient folders
/// became 9 results, all under patient 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_bytes_under_two_patients_are_two_results() {
    let dir = tempfile::tempdir().unwrap();
    let (i, outbox) = intake(dir.path(), 1 << 20);
    let i = Arc::new(i);
    for rel in ["p1/scan_R1.png", "p2/scan_R1.png", "p2/scan_R2.png"] {
        assert!(matches!(take_in(&i, rel).await, Outcome::Done));
    }
    let batch = outbox.next_batch(10, &|_| false).unwrap();
    assert_eq!(batch.len(), 3, "three results, none merged");
    let patients: HashSet<_> = batch.iter().map(|r| r.patient_key).collect();
    assert_eq!(patients.len(), 2);
    let kept = walk(&i.cfg.processed_dir()).unwrap();
    assert_eq!(kept.len(), 3);
    for k in &kept {
        let id = k.id.expect("named by its result id");
        assert!(batch.iter().any(|r| r.id == id));
    }
}

/// A store that lost everything (its folder gone) is rebuilt from processed/ by
/// analysing the scans again: the same ids, patients and zones, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_lost_by_the_store_are_rebuilt_from_processed() {
    let dir = tempfile::tempdir().unwrap();
    let (i, outbox) = intake(dir.path(), 1 << 20);
    let i = Arc::new(i);
    // Each patient's vitals: the rebuilt results carry the same age band and sex.
    for (p, vitals) in [
        ("p1", r#"{"age_years": 3, "sex": "m"}"#),
        ("p2", r#"{"age_years": 57, "sex": "f"}"#),
        ("p3", r#"{"age_years": 70}"#),
    ] {
        std::fs::create_dir_all(i.cfg.inbox.join(p)).unwrap();
        std::fs::write(i.cfg.inbox.join(p).join("vitals.json"), vitals).unwrap();
    }
    for rel in ["p1/scan_R1.png", "p2/scan_L3.png", "p3/clip.png"] {
        assert!(matches!(take_in(&i, rel).await, Outcome::Done));
    }
    let before = outbox.next_batch(10, &|_| false).unwrap();
    // One of them was acknowledged by the hub already.
    outbox.remove(&[before[0].id]).unwrap();
    let (i, outbox) = with_store_lost(i, outbox);
    let stats = outbox.stats().unwrap();
    assert_eq!(stats.lost_pending, 2);
    assert!(
        stats.damage.as_deref().unwrap().contains("2 queued"),
        "{stats:?}"
    );
    let pass = i.tend_processed(&mut HashSet::new()).await;
    // The acknowledged one's record went with the store too, but the journal remembers
    // it was acknowledged: nothing to rebuild or send, and its scan may be pruned.
    assert_eq!(
        (pass.rebuilt, pass.failed, pass.unrecoverable),
        (2, 0, 0),
        "{pass:?}"
    );
    assert!(outbox.lost().is_empty());
    assert_eq!(
        outbox.held(&before[0].id).unwrap(),
        Some(crate::outbox::Held::Acked)
    );
    let after = outbox.next_batch(10, &|_| false).unwrap();
    assert_eq!(after.len(), 2);
    // Reported at every start until a person deals with it, not once.
    drop(i);
    drop(outbox);
    let again = SledOutbox::open(&dir.path().join("data"), 1 << 20).unwrap();
    let d = again.stats().unwrap().damage.expect("still reported");
    assert!(
        d.contains("2 queued") && d.contains("outbox-damage.log"),
        "{d}"
    );
    for r in &before[1..] {
        let a = after.iter().find(|a| a.id == r.id).expect("same id");
        assert_eq!(
            (a.patient_key, &a.zone, &a.analysis, a.demographics),
            (r.patient_key, &r.zone, &r.analysis, r.demographics)
        );
        assert!(r.demographics.age_band.is_some());
    }
}

/// processed/ stays within its budget by pruning acknowledged scans, oldest first;
/// a scan whose result is still queued is never pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_is_pruned_to_its_budget_but_never_unacknowledged_scans() {
    let dir = tempfile::tempdir().unwrap();
    let (i, outbox) = intake(dir.path(), 1 << 20);
    let mut i = Arc::new(i);
    for rel in ["p1/scan_R1.png", "p2/scan_R1.png", "p3/scan_R1.png"] {
        assert!(matches!(take_in(&i, rel).await, Outcome::Done));
    }
    let mut kept = walk(&i.cfg.processed_dir()).unwrap();
    let size = kept[0].size;
    // Oldest first: p1, p2, p3.
    for (n, k) in kept.iter_mut().enumerate() {
        let t = SystemTime::now() - Duration::from_secs(3600 * (10 - n as u64));
        let f = std::fs::File::options().write(true).open(&k.path).unwrap();
        f.set_modified(t).unwrap();
    }
    let ids: Vec<ResultId> = kept.iter().map(|k| k.id.unwrap()).collect();
    // Two acknowledged; the budget holds two scans.
    outbox.remove(&ids[..2]).unwrap();
    Arc::get_mut(&mut i)
        .unwrap()
        .cfg
        .intake
        .processed_budget_bytes = 2 * size;
    let pass = i.tend_processed(&mut HashSet::new()).await;
    assert_eq!(pass.pruned, 1);
    let left: Vec<ResultId> = walk(&i.cfg.processed_dir())
        .unwrap()
        .iter()
        .map(|k| k.id.unwrap())
        .collect();
    assert!(!left.contains(&ids[0]), "the oldest acknowledged scan went");
    assert!(left.contains(&ids[2]), "the queued scan stays");
    // Even with no budget at all, the queued scan stays, and status says so.
    Arc::get_mut(&mut i)
        .unwrap()
        .cfg
        .intake
        .processed_budget_bytes = 0;
    let pass = i.tend_processed(&mut HashSet::new()).await;
    assert_eq!(pass.pruned, 1);
    assert_eq!(walk(&i.cfg.processed_dir()).unwrap().len(), 1);
    assert_eq!(pass.pinned_bytes, size);
    i.report_processed(&pass);
    assert!(i
        .status
        .snapshot()
        .alarms
        .iter()
        .any(|a| a.starts_with("processed/ holds")));
}

/// The outside chaos test's finding: scans waiting for quota space were analysed again
/// on every poll (87 % CPU, ~23 warnings/s). At the quota a scan is not even read: an
/// undecodable file waits too, instead of being analysed and rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_quota_scans_wait_unread() {
    let dir = tempfile::tempdir().unwrap();
    let (i, outbox) = intake(dir.path(), 64 * 1024);
    let i = Arc::new(i);
    let mut n = 0u64;
    while outbox.has_room() {
        let mut r = pleura_shared::record::sample_record("clinic-a", "pi-1", 1, false);
        r.analysed_at_ms = n;
        n += 1;
        outbox.put(&r).unwrap();
    }
    let scan = i.cfg.inbox.join("garbage_R1.png");
    std::fs::write(&scan, b"not an image at all").unwrap();
    let r = i.scan_ref(&scan);
    let attempts = Attempts::load(i.cfg.attempts_file());
    for _ in 0..5 {
        let at = place_of(&i, &scan);
        let o = i
            .process(at, &scan, None, &r, SystemTime::now(), &attempts)
            .await;
        assert!(matches!(o, Outcome::Quota));
    }
    assert!(scan.exists(), "not analysed, so not rejected either");
    assert_eq!(i.status.snapshot().intake.rejected, 0);
    // Room again (the hub acknowledged results): it is taken in (and rejected).
    let b = outbox.next_batch(5, &|_| false).unwrap();
    outbox
        .remove(&b.iter().map(|r| r.id).collect::<Vec<_>>())
        .unwrap();
    let at = place_of(&i, &scan);
    let o = i
        .process(at, &scan, None, &r, SystemTime::now(), &attempts)
        .await;
    assert!(matches!(o, Outcome::Done));
    assert!(!scan.exists());
}

/// A lost result with no scan left to rebuild it from is reported, and not looked for
/// again at every poll (the review found a walk of processed/ every poll_ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_result_without_its_scan_is_reported_once_per_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (i, outbox) = intake(dir.path(), 1 << 20);
    let i = Arc::new(i);
    let r = pleura_shared::record::sample_record("clinic-a", "pi-1", 1, false);
    outbox.put(&r).unwrap();
    let (i, _outbox) = with_store_lost(i, outbox);
    let mut failed = HashSet::new();
    let pass = i.tend_processed(&mut failed).await;
    assert_eq!(pass.unrecoverable, 1);
    assert!(
        failed.contains(&r.id),
        "remembered: the intake loop does not pass again"
    );
    i.report_processed(&pass);
    assert!(i
        .status
        .snapshot()
        .alarms
        .iter()
        .any(|a| a.contains("cannot be rebuilt")));
}

/// A lost result's scan in processed/ is rebuilt whichever release named it, as long as
/// that release is one of the first thousand or near the one running; a shadow reading's
/// id or another scan's is never taken for it.
#[test]
fn a_scan_named_by_the_built_in_model_or_any_recent_release_is_recognised() {
    use pleura_shared::{result_id_for, ResultId};
    let scan = ResultId::random();
    let now = 20_261_201;
    for r in [0, 1, 3, 1_000, now - 71, now, now + 2] {
        let id = result_id_for(&scan, r, false);
        assert!(super::named_by_a_release(&scan, now, &id), "release {r}");
    }
    assert!(!super::named_by_a_release(
        &scan,
        now,
        &result_id_for(&scan, 3, true)
    ));
    let other = result_id_for(&ResultId::random(), 3, false);
    assert!(!super::named_by_a_release(&scan, now, &other));
    assert!(!super::named_by_a_release(
        &scan,
        5,
        &result_id_for(&scan, 50_000, false)
    ));
}
