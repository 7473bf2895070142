//! Every refusal of issue #15 is named and changes nothing; a verified offer becomes a
//! pending download; the install checks the file and runs the self-test.

use pleura_shared::release::{SignedRelease, SigningKey};

use super::super::install::{install, InstallError};
use super::super::{OfferOutcome, Slot};
use super::*;

fn refused(o: OfferOutcome) -> String {
    match o {
        OfferOutcome::Refused { reason, .. } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A refusal leaves no pending download, no installed release and no current.json (the
/// root metadata the offer carried is kept when it verified: `trust.json` may exist).
fn untouched(f: &Fx) {
    assert!(f.store.pending().unwrap().is_none());
    assert_eq!(f.store.trust().unwrap().installed_version(), None);
    assert!(f.current_bytes().is_none());
}

#[test]
fn a_valid_offer_is_persisted_as_a_pending_download() {
    let f = fx();
    let (offer, m) = f.offer(3);
    let p = match f.store.take_offer(&offer, pleura_shared::now_ms()).unwrap() {
        OfferOutcome::Accepted(p) => p,
        o => panic!("{o:?}"),
    };
    assert_eq!((p.version, p.held, p.size), (3, 0, m.model_size));
    assert_eq!(f.store.pending().unwrap(), Some(p));
    assert!(f.store.part_file(3).exists());
    // The root document it carried is now trusted.
    assert_eq!(f.store.trust().unwrap().root().version(), 1);
    // The same offer again (a re-send): nothing changes.
    let again = f.store.take_offer(&offer, pleura_shared::now_ms()).unwrap();
    assert_eq!(again, OfferOutcome::Duplicate { version: 3 });
}

#[test]
fn without_a_root_key_every_offer_is_refused() {
    let f = fx();
    let store = ModelStore::new(f.store.layout.clone(), None);
    let (offer, _) = f.offer(3);
    let r = refused(store.take_offer(&offer, pleura_shared::now_ms()).unwrap());
    assert!(r.starts_with("no_root_key:"), "{r}");
    untouched(&f);
}

#[test]
fn a_release_signed_by_an_uncertified_key_is_refused() {
    let f = fx();
    let m = manifest(3, &shipped());
    let other = SigningKey::generate().unwrap();
    let signed = other.sign_release(&m).unwrap();
    let r = refused(
        f.store
            .take_offer(&f.offer_for(&signed, &m, false), pleura_shared::now_ms())
            .unwrap(),
    );
    assert!(r.starts_with("unknown_signing_key:"), "{r}");
    untouched(&f);
}

#[test]
fn unsigned_and_garbled_releases_are_refused() {
    let f = fx();
    let (good, m) = f.offer(3);
    let signed = SignedRelease::from_json(&good.release).unwrap();
    let unsigned = SignedRelease {
        signature: vec![0; 64],
        ..signed.clone()
    };
    let r = refused(
        f.store
            .take_offer(&f.offer_for(&unsigned, &m, false), pleura_shared::now_ms())
            .unwrap(),
    );
    assert!(r.starts_with("bad_signature:"), "{r}");
    let mut tampered = signed.clone();
    let i = tampered.manifest.iter().position(|&b| b == b'3').unwrap();
    tampered.manifest[i] = b'4';
    let r = refused(
        f.store
            .take_offer(&f.offer_for(&tampered, &m, false), pleura_shared::now_ms())
            .unwrap(),
    );
    assert!(r.starts_with("bad_signature:"), "{r}");
    let mut garbled = good.clone();
    garbled.release = b"{not json".to_vec();
    let r = refused(
        f.store
            .take_offer(&garbled, pleura_shared::now_ms())
            .unwrap(),
    );
    assert!(r.starts_with("malformed:"), "{r}");
    // The offer's own fields must agree with what was signed.
    let mut lying = good;
    lying.size += 1;
    let r = refused(f.store.take_offer(&lying, pleura_shared::now_ms()).unwrap());
    assert!(r.starts_with("offer_mismatch:"), "{r}");
    untouched(&f);
}

#[test]
fn a_release_signed_by_a_revoked_key_is_refused() {
    let mut f = fx();
    let (offer, m) = f.offer(3);
    let mut v2 = f.meta.next(pleura_shared::now_ms());
    v2.revoke(&f.signer.key_id());
    f.meta = v2;
    let mut o = f.offer_for(
        &SignedRelease::from_json(&offer.release).unwrap(),
        &m,
        false,
    );
    let v1 = {
        let mut m1 = f.meta.clone();
        m1.version = 1;
        m1.revoked_key_ids.clear();
        m1.add_signing_key(&f.signer.public_key(), pleura_shared::now_ms() + 365 * DAY);
        f.root.certify(&m1).unwrap().to_json().unwrap()
    };
    o.roots = vec![v1.clone(), f.root_json()];
    let r = refused(f.store.take_offer(&o, pleura_shared::now_ms()).unwrap());
    assert!(r.starts_with("revoked_signing_key:"), "{r}");
    assert!(f.store.pending().unwrap().is_none());
    assert!(f.current_bytes().is_none());
    // The revocation it carried is kept although the release was refused: replaying
    // the release with only the old root metadata is refused too.
    assert_eq!(f.store.trust().unwrap().root().version(), 2);
    o.roots = vec![v1];
    let r = refused(f.store.take_offer(&o, pleura_shared::now_ms()).unwrap());
    assert!(r.starts_with("revoked_signing_key:"), "{r}");
}

#[test]
fn a_root_only_offer_updates_the_root_metadata_and_nothing_else() {
    let mut f = fx();
    let (offer, _) = f.offer(3);
    let mut v2 = f.meta.next(pleura_shared::now_ms());
    v2.revoke(&f.signer.key_id());
    let v1 = f.root_json();
    f.meta = v2;
    let root_only = pleura_shared::wire::ModelOffer {
        roots: vec![v1, f.root_json()],
        ..Default::default()
    };
    let out = f
        .store
        .take_offer(&root_only, pleura_shared::now_ms())
        .unwrap();
    assert_eq!(out, OfferOutcome::RootOnly { root_version: 2 });
    assert!(f.store.pending().unwrap().is_none());
    assert!(f.current_bytes().is_none());
    // A release by the key it revoked, offered with the old root only, is refused.
    let mut o = offer;
    o.roots.truncate(1);
    let r = refused(f.store.take_offer(&o, pleura_shared::now_ms()).unwrap());
    assert!(r.starts_with("revoked_signing_key:"), "{r}");
}

#[test]
fn older_and_replayed_offers_are_refused_once_a_newer_one_is_installed() {
    init_backend();
    let f = fx();
    let (offer5, _) = f.offer(5);
    let OfferOutcome::Accepted(p) = f
        .store
        .take_offer(&offer5, pleura_shared::now_ms())
        .unwrap()
    else {
        panic!()
    };
    // Downloaded (copied here), installed and activated.
    std::fs::copy(shipped(), f.store.part_file(5)).unwrap();
    let trust = f.store.trust().unwrap();
    let m = install(
        &f.store.layout,
        &trust,
        &p.release,
        &f.store.part_file(5),
        Slot::A,
    )
    .unwrap();
    assert_eq!((m.slot, m.version), (Slot::A, 5));
    f.store.drop_pending(None).unwrap();
    super::super::switch::activate(&f.store, Slot::A, 1).unwrap();
    let current = f.current_bytes().unwrap();
    let trust_before = std::fs::read(f.store.layout.trust()).unwrap();
    assert_eq!(f.store.trust().unwrap().installed_version(), Some(5));

    let (older, _) = f.offer(4);
    let r = refused(f.store.take_offer(&older, pleura_shared::now_ms()).unwrap());
    assert!(r.starts_with("not_newer:"), "{r}");
    // The very offer that was installed, replayed.
    let r = refused(
        f.store
            .take_offer(&offer5, pleura_shared::now_ms())
            .unwrap(),
    );
    assert!(r.starts_with("not_newer:"), "{r}");
    assert_eq!(f.current_bytes().unwrap(), current);
    assert_eq!(std::fs::read(f.store.layout.trust()).unwrap(), trust_before);
    assert!(f.store.pending().unwrap().is_none());
}

#[test]
fn a_tampered_file_is_refused_at_install_and_no_slot_is_written() {
    init_backend();
    let f = fx();
    let (offer, _) = f.offer(3);
    let OfferOutcome::Accepted(p) = f.store.take_offer(&offer, pleura_shared::now_ms()).unwrap()
    else {
        panic!()
    };
    let mut bytes = std::fs::read(shipped()).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(f.store.part_file(3), &bytes).unwrap();
    let trust = f.store.trust().unwrap();
    let e = install(
        &f.store.layout,
        &trust,
        &p.release,
        &f.store.part_file(3),
        Slot::A,
    )
    .unwrap_err();
    let InstallError::Refused(r) = e else {
        panic!("{e:?}")
    };
    assert!(r.starts_with("model_hash_mismatch:"), "{r}");
    assert!(!f.store.layout.slot_dir(Slot::A).exists());
    assert!(f.current_bytes().is_none());
}

#[test]
fn a_failing_self_test_is_refused_and_the_slot_dropped() {
    init_backend();
    let f = fx();
    let mut m = manifest(3, &shipped());
    let probs = m.self_test.vectors[0]
        .expected
        .get_mut("class_probs")
        .unwrap();
    probs[0] = if probs[0] > 0.5 { 0.0 } else { 1.0 };
    let signed = f.signer.sign_release(&m).unwrap();
    let OfferOutcome::Accepted(p) = f
        .store
        .take_offer(&f.offer_for(&signed, &m, false), pleura_shared::now_ms())
        .unwrap()
    else {
        panic!()
    };
    std::fs::copy(shipped(), f.store.part_file(3)).unwrap();
    let trust = f.store.trust().unwrap();
    let e = install(
        &f.store.layout,
        &trust,
        &p.release,
        &f.store.part_file(3),
        Slot::A,
    )
    .unwrap_err();
    let InstallError::Refused(r) = e else {
        panic!("{e:?}")
    };
    assert!(r.starts_with("self_test_failed:"), "{r}");
    assert!(!f.store.layout.slot_dir(Slot::A).exists());
    assert!(f.current_bytes().is_none());
    assert_eq!(f.store.layout.resolve().unwrap().model.slot, Slot::Builtin);
}

#[test]
fn the_shipped_model_passes_its_own_self_test_and_outputs_are_range_checked() {
    init_backend();
    let m = manifest(3, &shipped());
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path(), &shipped());
    let f = fx();
    let signed = f.signer.sign_release(&m).unwrap();
    let slot = layout.write_slot(Slot::B, &signed, &m, &shipped()).unwrap();
    super::super::install::self_test(&slot.model_path, &m).unwrap();
    let mut o = pleura_inference::FrameOutputs {
        n: 1,
        class_probs: vec![[0.2, 0.3, 0.5]],
        severity_probs: vec![[0.25; 4]],
        uncertainty: vec![0.1],
        cam: vec![],
        cam_size: 0,
        heads: None,
    };
    assert!(super::super::install::check_outputs(&o).is_ok());
    o.class_probs[0][1] = f32::NAN;
    assert!(super::super::install::check_outputs(&o).is_err());
    o.class_probs[0][1] = 1.5;
    assert!(super::super::install::check_outputs(&o)
        .unwrap_err()
        .contains("outside"));
}

#[test]
fn commands_on_different_releases_do_not_overwrite_each_other() {
    use super::super::command::{self, Decided};
    use pleura_shared::wire::{ModelAction, ModelCommand};
    let f = fx();
    let (offer, _) = f.offer(3);
    assert!(matches!(
        f.store.take_offer(&offer, pleura_shared::now_ms()).unwrap(),
        OfferOutcome::Accepted(_)
    ));
    let cmd = |version, action: ModelAction| ModelCommand {
        release_version: version,
        action: action as i32,
    };
    // A promote of release 3 arrives mid-download, then an abort of another release.
    assert!(command::store(&f.store, &cmd(3, ModelAction::Promote)).unwrap());
    assert!(command::store(&f.store, &cmd(2, ModelAction::Abort)).unwrap());
    assert_eq!(command::take(&f.store).unwrap(), vec![]);
    assert_eq!(
        f.store.pending().unwrap().map(|p| p.version),
        Some(3),
        "the abort of release 2 leaves release 3's download alone"
    );
    // The promote still waits for its release (the abort, carried out, is gone).
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.store.layout.command_file()).unwrap()).unwrap();
    assert_eq!(kept, serde_json::json!([{"version": 3, "promote": true}]));
    // A later decision on the same release replaces the earlier one.
    assert!(command::store(&f.store, &cmd(3, ModelAction::Abort)).unwrap());
    assert_eq!(
        command::take(&f.store).unwrap(),
        vec![Decided::Aborted {
            version: 3,
            download: true
        }]
    );
    assert!(f.store.pending().unwrap().is_none());
    assert!(!f.store.layout.command_file().exists());
    // An agent before this wrote one decision, not a list: still read.
    std::fs::write(
        f.store.layout.command_file(),
        br#"{"version": 7, "promote": false}"#,
    )
    .unwrap();
    assert_eq!(command::take(&f.store).unwrap(), vec![]);
    assert!(!f.store.layout.command_file().exists());
}
