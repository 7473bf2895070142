//! A kill between any two steps of an install or a switch leaves exactly one verified
//! model active at the next start; a model that does not load is rolled back at start.

use pleura_shared::release::{MODEL_FILE, RELEASE_FILE};

use super::super::slots::{Current, Slot};
use super::super::{guard, switch};
use super::*;

/// Installs the shipped model as `version` into `slot` (the slot fully written).
fn installed(f: &Fx, slot: Slot, version: u64) {
    let m = manifest(version, &shipped());
    let signed = f.signer.sign_release(&m).unwrap();
    f.store
        .layout
        .write_slot(slot, &signed, &m, &shipped())
        .unwrap();
}

#[test]
fn a_half_written_active_slot_falls_back_to_previous_with_an_alarm() {
    let f = fx();
    installed(&f, Slot::A, 3);
    installed(&f, Slot::B, 4);
    let l = &f.store.layout;
    l.write_current(&Current {
        active: Slot::B,
        previous: Some(Slot::A),
        shadow: None,
    })
    .unwrap();
    // Killed while the model file was being written.
    let model = l.slot_dir(Slot::B).join(MODEL_FILE);
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let r = l.resolve().unwrap();
    assert_eq!((r.model.slot, r.model.version), (Slot::A, 3));
    assert!(r.alarm.unwrap().contains("slot b does not verify"));
    assert_eq!(l.read_current().unwrap().active, Slot::A);
    // Stable at the next start.
    let again = l.resolve().unwrap();
    assert_eq!(again.model.slot, Slot::A);
    assert!(again.alarm.is_none());
}

#[test]
fn a_slot_without_its_release_file_or_a_damaged_current_json_means_builtin() {
    let f = fx();
    installed(&f, Slot::A, 3);
    let l = &f.store.layout;
    l.write_current(&Current {
        active: Slot::A,
        previous: None,
        shadow: None,
    })
    .unwrap();
    std::fs::remove_file(l.slot_dir(Slot::A).join(RELEASE_FILE)).unwrap();
    let r = l.resolve().unwrap();
    assert_eq!(r.model.slot, Slot::Builtin);
    assert!(r.alarm.is_some());
    std::fs::write(l.current_file(), b"{\"active\": \"a\"").unwrap();
    let r = l.resolve().unwrap();
    assert_eq!(r.model.slot, Slot::Builtin);
    assert!(r.alarm.unwrap().contains("running the built-in model"));
}

#[test]
fn a_temp_current_json_left_by_a_kill_before_the_rename_is_ignored() {
    let f = fx();
    installed(&f, Slot::A, 3);
    installed(&f, Slot::B, 4);
    let l = &f.store.layout;
    l.write_current(&Current {
        active: Slot::A,
        previous: None,
        shadow: None,
    })
    .unwrap();
    // Switching to b: the temp file was written, the agent killed before the rename.
    let next = serde_json::to_vec(&Current {
        active: Slot::B,
        previous: Some(Slot::A),
        shadow: None,
    })
    .unwrap();
    std::fs::write(l.root().join("current.json.tmp"), next).unwrap();
    let r = l.resolve().unwrap();
    assert_eq!((r.model.slot, r.model.version), (Slot::A, 3));
    assert!(r.alarm.is_none());
    // A later switch replaces the leftover.
    l.write_current(&Current {
        active: Slot::B,
        previous: Some(Slot::A),
        shadow: None,
    })
    .unwrap();
    assert!(!l.root().join("current.json.tmp").exists());
    assert_eq!(l.resolve().unwrap().model.slot, Slot::B);
}

#[test]
fn a_release_that_does_not_load_is_rolled_back_at_start() {
    init_backend();
    let f = fx();
    installed(&f, Slot::A, 3);
    // Hash-consistent but not a model: signed over garbage bytes.
    let garbage = f.data.join("garbage.onnx");
    std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
    let mut m = manifest(4, &shipped());
    let sha = hex::encode(Sha256::digest(vec![7u8; 4096]));
    m.model_sha256 = sha.clone();
    m.model_size = 4096;
    m.sidecar["sha256"] = sha.into();
    let signed = f.signer.sign_release(&m).unwrap();
    let l = &f.store.layout;
    l.write_slot(Slot::B, &signed, &m, &garbage).unwrap();
    l.write_current(&Current {
        active: Slot::B,
        previous: Some(Slot::A),
        shadow: None,
    })
    .unwrap();
    let b = switch::boot(l, 1).unwrap();
    assert_eq!((b.model.slot, b.model.version), (Slot::A, 3));
    let (v, reason) = b.rolled_back.unwrap();
    assert_eq!(v, 4);
    assert!(reason.contains("failed to load"), "{reason}");
    assert!(b
        .alarm
        .unwrap()
        .starts_with("model pleura-lite 4 rolled back"));
    assert_eq!(l.read_current().unwrap().active, Slot::A);
    assert_eq!(l.rolled_back(), vec![4]);
    // That version is never taken again.
    let (offer, _) = f.offer(4);
    let r = f.store.take_offer(&offer, pleura_shared::now_ms()).unwrap();
    assert!(
        matches!(r, super::super::OfferOutcome::Refused { ref reason, .. } if reason.starts_with("rolled_back:")),
        "{r:?}"
    );
}

#[test]
fn faults_in_service_trip_the_guard_and_rollback_goes_to_previous() {
    init_backend();
    let f = fx();
    installed(&f, Slot::A, 3);
    installed(&f, Slot::B, 4);
    let l = &f.store.layout;
    l.write_current(&Current {
        active: Slot::B,
        previous: Some(Slot::A),
        shadow: None,
    })
    .unwrap();
    let (_, pool) = switch::start_pool(&l.slot_dir(Slot::B).join(MODEL_FILE), 1).unwrap();
    let live = super::super::LivePool::new(std::sync::Arc::new(pool), 4);
    let t0 = 1_000_000;
    let crash: Result<(), _> = Err(pleura_inference::AnalyzeError::Panicked);
    let decode: Result<(), _> = Err(pleura_inference::AnalyzeError::PoolClosed);
    live.observe(&crash, 4, t0);
    live.observe(&decode, 4, t0 + 1);
    live.observe(&crash, 4, t0 + 2);
    assert!(live.last_fault().unwrap().contains("crashed"));
    live.observe(&crash, 4, t0 + 3);
    // A late fault of a release no longer running counts for nothing.
    let replaced = super::super::LivePool::new(live.current(), 5);
    for t in 0..5 {
        replaced.observe(&crash, 4, t0 + t);
    }
    assert_eq!(replaced.last_fault(), None);
    // Tripped: the permit is stored for the worker.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(1), live.tripped.notified())
            .await
            .expect("guard tripped");
    });
    let (now, _, bad) = switch::rollback(&f.store, 1).unwrap().unwrap();
    assert_eq!((now.slot, now.version, bad.version), (Slot::A, 3, 4));
    assert_eq!(
        l.read_current().unwrap(),
        guard::rolled_back(&Current {
            active: Slot::B,
            previous: Some(Slot::A),
            shadow: None
        })
    );
    assert_eq!(l.rolled_back(), vec![4]);
    // Non-finite outputs trip at once.
    let live = super::super::LivePool::new(live.current(), 3);
    let nan: Result<(), _> = Err(pleura_inference::AnalyzeError::Model(
        pleura_inference::ModelError::NonFinite {
            name: "class_probs",
        },
    ));
    live.observe(&nan, 3, t0);
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(1), live.tripped.notified())
            .await
            .expect("non-finite trips at once");
    });
    // So do probabilities outside 0..1.
    let live = super::super::LivePool::new(live.current(), 3);
    let wrong: Result<(), _> = Err(pleura_inference::AnalyzeError::Model(
        pleura_inference::ModelError::OutOfRange {
            name: "class_probs",
            value: 1.5,
        },
    ));
    live.observe(&wrong, 3, t0);
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(1), live.tripped.notified())
            .await
            .expect("out-of-range trips at once");
    });
    assert!(live.last_fault().unwrap().contains("out-of-range"));
    assert!(live.take_trip(), "the trip is of the active release");
    assert!(!live.take_trip(), "one trip, one rollback");
    // A trip stored while the worker was busy, then the release replaced (rolled back
    // to 2): the stored wake-up must not roll back release 2.
    live.observe(&wrong, 3, t0 + 1);
    live.swap(live.current(), 2);
    assert!(!live.take_trip(), "a stale trip of release 3");
}
