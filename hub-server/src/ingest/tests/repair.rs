//! Ingest when something has gone wrong: a rebuilt result, a retraction that cannot be
//! recorded, results the hub lost, a journal that cannot be written.

use std::sync::atomic::Ordering::Relaxed;

use super::*;
use crate::store::{
    AggregateQuery, Aggregates, CaseFilter, DeviceStats, Listing, Scan, StoredCase,
};

/// Deletes cases behind the store's back, as a damaged page would.
fn lose(dir: &std::path::Path, ids: &[ResultId]) {
    let db = pleura_shared::sled_open::open_path(dir.join("cases.sled")).unwrap();
    let cases = db.open_tree("cases").unwrap();
    for id in ids {
        cases.remove(id.as_bytes()).unwrap();
    }
    db.flush().unwrap();
}

/// A store whose retractions cannot be recorded (a full disk, say).
struct NoRetractions(Arc<dyn HubStore>);

impl HubStore for NoRetractions {
    fn commit(&self, r: &[ScanRecord], at: u64) -> Result<Vec<Commit>, StoreError> {
        self.0.commit(r, at)
    }
    fn get(&self, id: &ResultId) -> Result<Option<StoredCase>, StoreError> {
        self.0.get(id)
    }
    fn list(&self, f: &CaseFilter) -> Result<Listing, StoreError> {
        self.0.list(f)
    }
    fn aggregates(&self, q: &AggregateQuery) -> Result<Aggregates, StoreError> {
        self.0.aggregates(q)
    }
    fn devices(&self) -> Result<Vec<DeviceStats>, StoreError> {
        self.0.devices()
    }
    fn count(&self) -> Result<u64, StoreError> {
        self.0.count()
    }
    fn retract(&self, _: &[Retraction]) -> Result<(), StoreError> {
        Err(StoreError::Backend("no space left on device".into()))
    }
    fn retraction(
        &self,
        id: &ResultId,
        clinic: &str,
        device: &str,
    ) -> Result<Option<Retraction>, StoreError> {
        self.0.retraction(id, clinic, device)
    }
    fn scan(&self) -> Result<Scan, StoreError> {
        self.0.scan()
    }
}

#[test]
fn a_result_rebuilt_at_the_edge_is_acked_as_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let ing = ingest(dir.path());
    let r = sample_record("c1", "d1", 2, true);
    send(&ing, &batch("c1", "d1", std::slice::from_ref(&r))).unwrap();
    let mut rebuilt = r.clone();
    rebuilt.analysed_at_ms += 2 * 86_400_000;
    let ack = send(&ing, &batch("c1", "d1", std::slice::from_ref(&rebuilt)))
        .unwrap()
        .ack;
    assert_eq!(ack.committed, vec![r.id.0.to_vec()]);
    assert!(ack.rejected.is_empty(), "{:?}", ack.rejected);
    assert_eq!(ing.metrics.results_conflict.load(Relaxed), 0);
    assert_eq!(ing.metrics.results_duplicate.load(Relaxed), 1);
    assert_eq!(ing.store.get(&r.id).unwrap().unwrap().record, r);
    // The device files the rebuilt copy under its own day: its holdings check finds
    // nothing lacking, now or after the copy arrives again.
    let mut check = batch("c1", "d1", &[]);
    check.holdings = Some(holdings_of(std::slice::from_ref(&rebuilt)).to_wire());
    assert!(send(&ing, &check).unwrap().ack.resend_days.is_empty());
    check.results = vec![rebuilt.to_wire()];
    assert!(send(&ing, &check).unwrap().ack.resend_days.is_empty());
    assert_eq!(
        ing.holdings.of("c1", "d1"),
        holdings_of(std::slice::from_ref(&rebuilt))
    );
}

#[test]
fn a_retraction_that_cannot_be_recorded_costs_no_message_its_acks() {
    let dir = tempfile::tempdir().unwrap();
    let mut ing = ingest(dir.path());
    ing.store = Arc::new(NoRetractions(ing.store.clone()));
    let (a, b) = (
        sample_record("c1", "d1", 1, false),
        sample_record("c2", "d2", 3, true),
    );
    let mut with_retraction = batch("c1", "d1", std::slice::from_ref(&a));
    let withdrawn = ResultId::random();
    with_retraction.retractions = vec![retraction(&withdrawn, "wrong patient")];
    let prepared = vec![
        ing.prepare_mqtt(&topics::results("c1", "d1"), &env(&with_retraction))
            .unwrap(),
        ing.prepare_mqtt(
            &topics::results("c2", "d2"),
            &env(&batch("c2", "d2", std::slice::from_ref(&b))),
        )
        .unwrap(),
    ];
    // One group commit, as the MQTT loop does it.
    let out = ing.commit(prepared).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].ack.committed, vec![a.id.0.to_vec()]);
    assert!(out[0].ack.retracted.is_empty(), "acked but not recorded");
    assert_eq!(out[1].ack.committed, vec![b.id.0.to_vec()]);
    assert_eq!(ing.store.count().unwrap(), 2);
    assert_eq!(ing.metrics.retractions.load(Relaxed), 0);
}

#[test]
fn a_lost_result_is_requested_even_when_the_device_holds_no_more_of_its_day() {
    let dir = tempfile::tempdir().unwrap();
    let day = 20_010;
    let recs: Vec<ScanRecord> = (0..3).map(|_| on_day("c1", "d1", day)).collect();
    let later = on_day("c1", "d1", day + 5);
    {
        let ing = ingest(dir.path());
        let all: Vec<ScanRecord> = recs.iter().chain([&later]).cloned().collect();
        send(&ing, &batch("c1", "d1", &all)).unwrap();
    }
    lose(dir.path(), &[recs[0].id]);
    let ing = ingest(dir.path());
    assert_eq!(ing.integrity.missing_total(), 1);
    let check = |device: &str, held: &[ScanRecord]| {
        let mut b = batch("c1", device, &[]);
        b.holdings = Some(holdings_of(held).to_wire());
        send(&ing, &b).unwrap().ack.resend_days
    };
    // The edge lost acknowledged records too: of that day it holds only the one the hub
    // lost (1 result, the hub 2), so the digests alone do not show the hub's loss.
    assert_eq!(check("d1", &[recs[0].clone(), later.clone()]), vec![day]);
    // A day within the span of the device's holdings counts, named or not.
    let before = on_day("c1", "d1", day - 1);
    assert_eq!(
        check("d1", &[before.clone(), later.clone()]),
        vec![day - 1, day]
    );
    // Outside the days the device sent: not asked for (it no longer keeps them).
    assert!(check("d1", std::slice::from_ref(&later)).is_empty());
    // Another device is not asked for d1's loss.
    assert!(check("d2", &[]).is_empty());
    // Re-sent: no longer missing, no longer requested.
    let mut again = batch("c1", "d1", &recs[..1]);
    again.holdings = Some(holdings_of(&[recs[0].clone(), later.clone()]).to_wire());
    let ack = send(&ing, &again).unwrap().ack;
    assert_eq!(ack.committed, vec![recs[0].id.0.to_vec()]);
    assert!(ack.resend_days.is_empty(), "{:?}", ack.resend_days);
    assert_eq!(ing.integrity.missing_total(), 0);
}

#[test]
fn holdings_follow_the_store_when_the_journal_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let ing = ingest(dir.path());
    let recs = vec![on_day("c1", "d1", 20_020), on_day("c1", "d1", 20_021)];
    let journal = dir.path().join("cases.journal");
    std::fs::remove_file(&journal).unwrap();
    let err = send(&ing, &batch("c1", "d1", &recs)).err().unwrap();
    assert!(matches!(err, IngestError::Journal(_)), "{err}");
    // Stored, not acknowledged; the holdings count what the store holds.
    assert_eq!(ing.store.count().unwrap(), 2);
    assert_eq!(ing.holdings.of("c1", "d1"), holdings_of(&recs));

    // The journal writable again: the device's resend is acked (as duplicates) and its
    // next holdings check finds nothing lacking.
    std::fs::write(&journal, b"").unwrap();
    let mut again = batch("c1", "d1", &recs);
    again.holdings = Some(holdings_of(&recs).to_wire());
    let ack = send(&ing, &again).unwrap().ack;
    assert_eq!(ack.committed.len(), 2);
    assert!(ack.resend_days.is_empty(), "{:?}", ack.resend_days);
    assert_eq!(ing.holdings.of("c1", "d1"), holdings_of(&recs));
}
