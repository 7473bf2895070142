//! The test suite every `HubStore` backend must pass. `open` reopens the same store.

use pleura_shared::record::sample_record;

use super::{CaseFilter, Commit, HubStore};

pub fn run<S: HubStore>(open: impl Fn() -> S) {
    let store = open();
    let a = sample_record("c1", "d1", 3, true);
    let b = sample_record("c1", "d1", 0, false);
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

    let flagged = store
        .list(&CaseFilter {
            flagged: Some(true),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(flagged.len(), 2);
    let c1 = store
        .list(&CaseFilter {
            clinic: Some("c1".into()),
            min_severity: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(c1.len(), 1);
    assert_eq!(c1[0].record.id, a.id);
    let old = store
        .list(&CaseFilter {
            to_day: Some(19_500),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].record.id, c.id);
    let limited = store
        .list(&CaseFilter {
            limit: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(limited.len(), 3);

    // Another device's record under an existing id (squatting a result id), or the same
    // device sending different content under it: refused, nothing overwritten.
    let mut squat = sample_record("c2", "d9", 0, false);
    squat.id = a.id;
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

    // Everything survives a reopen.
    drop(store);
    let store = open();
    assert_eq!(store.count().unwrap(), 4);
    assert_eq!(store.get(&d.id).unwrap().unwrap().record, d);
    assert_eq!(store.get(&a.id).unwrap().unwrap().record, a);
}
