//! The test suite every `HubStore` backend must pass. `open` reopens the same store.

use pleura_shared::record::sample_record;

use super::{CaseFilter, Commit, HubStore, Retraction};

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
        .unwrap()
        .cases;
    assert_eq!(flagged.len(), 2);
    let c1 = store
        .list(&CaseFilter {
            clinic: Some("c1".into()),
            min_severity: 1,
            ..Default::default()
        })
        .unwrap()
        .cases;
    assert_eq!(c1.len(), 1);
    assert_eq!(c1[0].record.id, a.id);
    let old = store
        .list(&CaseFilter {
            to_day: Some(19_500),
            ..Default::default()
        })
        .unwrap()
        .cases;
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].record.id, c.id);
    let limited = store
        .list(&CaseFilter {
            limit: 3,
            ..Default::default()
        })
        .unwrap()
        .cases;
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
    let all = store.list(&CaseFilter::default()).unwrap();
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
