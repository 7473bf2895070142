//! Unit tests of the release format: fixtures here, release checks below, roots, files
//! and properties in `tests/`.

mod files;
mod manifest;
mod props;
mod roots;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::*;
use crate::signing::Domain;

pub(super) const NOW: u64 = 1_800_000_000_000;
pub(super) const DAY: u64 = 24 * 60 * 60 * 1000;
pub(super) const AGENT: &str = "0.1.0";

pub(super) fn model_bytes() -> Vec<u8> {
    (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect()
}

/// A valid manifest for `model` (a 4×4 gray input, one self-test vector).
pub(super) fn manifest(version: u64, model: &[u8]) -> ReleaseManifest {
    let sha = hex::encode(Sha256::digest(model));
    let labels = vec![
        "covid".to_string(),
        "other_pneumonia".into(),
        "normal".into(),
    ];
    ReleaseManifest {
        name: "pleura-lite".to_string(),
        version,
        model_sha256: sha.clone(),
        model_size: model.len() as u64,
        input: InputSpec {
            size: 4,
            channels: 1,
        },
        class_labels: labels.clone(),
        severity_levels: 4,
        sidecar: serde_json::json!({
            "name": "pleura-lite", "sha256": sha, "input": {"size": 4, "max_frames": 32},
            "classes": labels, "covid_threshold": 0.261028, "uncertainty_flag": 0.988833,
        }),
        card_summary: "Lung ultrasound triage, 3 classes × 4 severities.".to_string(),
        min_agent_version: "0.1.0".to_string(),
        created_at_ms: NOW - DAY,
        expires_at_ms: NOW + 90 * DAY,
        self_test: SelfTest {
            tolerance: 1e-3,
            vectors: vec![SelfTestVector {
                frame_hex: hex::encode([7u8; 16]),
                expected: BTreeMap::from([("class_probs".to_string(), vec![0.2, 0.3, 0.5])]),
            }],
        },
    }
}

pub(super) struct Fx {
    pub root: RootKey,
    pub signer: SigningKey,
    pub meta: RootMetadata,
    pub state: TrustState,
}

/// A device that trusts root v1, which certifies `signer` for a year.
pub(super) fn fx() -> Fx {
    let root = RootKey::generate().unwrap();
    let signer = SigningKey::generate().unwrap();
    let mut meta = RootMetadata::first(&root, NOW - 2 * DAY);
    meta.add_signing_key(&signer.public_key(), NOW + 365 * DAY);
    let mut state = TrustState::new(root.public_key());
    state.update_root(&root.certify(&meta).unwrap()).unwrap();
    Fx {
        root,
        signer,
        meta,
        state,
    }
}

/// A release signed over arbitrary manifest bytes (for manifests the signer refuses).
pub(super) fn sign_bytes(key: &SigningKey, bytes: Vec<u8>) -> SignedRelease {
    SignedRelease {
        signature: key.sign_raw(Domain::ModelRelease, &bytes),
        manifest: bytes,
        key_id: key.key_id(),
    }
}

#[test]
fn a_valid_release_verifies_and_its_model_checks_out() {
    let f = fx();
    let model = model_bytes();
    let signed = f.signer.sign_release(&manifest(5, &model)).unwrap();
    let v = f.state.verify_release(&signed, Some(NOW), AGENT).unwrap();
    assert_eq!(v.version(), 5);
    assert_eq!(v.key_id(), f.signer.key_id());
    assert!(!v.clock_unsure());
    assert!(v.warnings().is_empty());
    v.check_model_file(&model[..]).unwrap();
    let t = v.manifest().thresholds().unwrap();
    assert_eq!(
        (t.covid_threshold, t.uncertainty_flag),
        (0.261028, 0.988833)
    );
    // The manifest bytes are the signed ones, kept verbatim.
    assert_eq!(
        signed.manifest,
        serde_json::to_vec(&manifest(5, &model)).unwrap()
    );
}

#[test]
fn a_tampered_manifest_byte_is_a_bad_signature() {
    let f = fx();
    let mut signed = f.signer.sign_release(&manifest(5, &model_bytes())).unwrap();
    let i = signed.manifest.iter().position(|&b| b == b'5').unwrap();
    signed.manifest[i] = b'9';
    let e = f
        .state
        .verify_release(&signed, Some(NOW), AGENT)
        .unwrap_err();
    assert!(matches!(e, ReleaseError::BadSignature { .. }), "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn a_model_with_one_flipped_byte_or_wrong_length_is_refused() {
    let f = fx();
    let model = model_bytes();
    let signed = f.signer.sign_release(&manifest(5, &model)).unwrap();
    let v = f.state.verify_release(&signed, Some(NOW), AGENT).unwrap();
    let mut bad = model.clone();
    bad[4321] ^= 0x01;
    let e = v.check_model_file(&bad[..]).unwrap_err();
    assert!(matches!(e, ReleaseError::ModelHashMismatch { .. }), "{e}");
    let e = v.check_model_file(&model[..model.len() - 1]).unwrap_err();
    assert!(
        matches!(
            e,
            ReleaseError::ModelSizeMismatch {
                expected: 10_000,
                actual: 9_999
            }
        ),
        "{e}"
    );
    // An endless stream stops one byte past the expected size.
    let e = v.check_model_file(std::io::repeat(0)).unwrap_err();
    assert!(
        matches!(e, ReleaseError::ModelSizeMismatch { actual: 10_001, .. }),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(MODEL_FILE);
    std::fs::write(&path, &model).unwrap();
    v.check_model_path(&path).unwrap();
    std::fs::write(&path, &bad).unwrap();
    assert!(v.check_model_path(&path).is_err());
}

#[test]
fn a_key_the_root_does_not_certify_is_unknown() {
    let f = fx();
    let stranger = SigningKey::generate().unwrap();
    let signed = stranger.sign_release(&manifest(5, &model_bytes())).unwrap();
    let e = f
        .state
        .verify_release(&signed, Some(NOW), AGENT)
        .unwrap_err();
    assert!(
        matches!(&e, ReleaseError::UnknownSigningKey { key_id } if *key_id == stranger.key_id()),
        "{e}"
    );
    // Claiming a certified key's id does not help: the signature is checked with it.
    let mut claimed = signed;
    claimed.key_id = f.signer.key_id();
    let e = f
        .state
        .verify_release(&claimed, Some(NOW), AGENT)
        .unwrap_err();
    assert!(matches!(e, ReleaseError::BadSignature { .. }), "{e}");
}

#[test]
fn a_revoked_key_is_refused_for_good() {
    let mut f = fx();
    let signed = f.signer.sign_release(&manifest(5, &model_bytes())).unwrap();
    f.state.verify_release(&signed, Some(NOW), AGENT).unwrap();
    let mut v2 = f.meta.next(NOW);
    v2.revoke(&f.signer.key_id());
    assert!(v2.signing_keys.is_empty());
    f.state.update_root(&f.root.certify(&v2).unwrap()).unwrap();
    let e = f
        .state
        .verify_release(&signed, Some(NOW), AGENT)
        .unwrap_err();
    assert!(
        matches!(&e, ReleaseError::RevokedSigningKey { key_id } if *key_id == f.signer.key_id()),
        "{e}"
    );
    // A later root that no longer lists the revocation cannot bring the key back.
    let mut v3 = v2.next(NOW);
    v3.revoked_key_ids.clear();
    v3.add_signing_key(&f.signer.public_key(), NOW + DAY);
    let e = f
        .state
        .update_root(&f.root.certify(&v3).unwrap())
        .unwrap_err();
    assert!(matches!(e, ReleaseError::RevokedSigningKey { .. }), "{e}");
    assert_eq!(f.state.root().version(), 2);
    v3.signing_keys.clear();
    f.state.update_root(&f.root.certify(&v3).unwrap()).unwrap();
    let e = f
        .state
        .verify_release(&signed, Some(NOW), AGENT)
        .unwrap_err();
    assert!(matches!(e, ReleaseError::RevokedSigningKey { .. }), "{e}");
}

#[test]
fn a_version_not_above_the_installed_one_is_refused() {
    let mut f = fx();
    let model = model_bytes();
    let v5 = f.signer.sign_release(&manifest(5, &model)).unwrap();
    let v6 = f.signer.sign_release(&manifest(6, &model)).unwrap();
    let ok = f.state.verify_release(&v5, Some(NOW), AGENT).unwrap();
    f.state.record_installed(&ok).unwrap();
    assert_eq!(f.state.installed_version(), Some(5));
    for (offer, n) in [
        (&v5, 5),
        (&f.signer.sign_release(&manifest(4, &model)).unwrap(), 4),
    ] {
        let e = f.state.verify_release(offer, Some(NOW), AGENT).unwrap_err();
        assert!(
            matches!(e, ReleaseError::NotNewer { offered, installed: 5 } if offered == n),
            "{e}"
        );
    }
    let newer = f.state.verify_release(&v6, None, AGENT).unwrap();
    f.state.record_installed(&newer).unwrap();
    // The old offer replayed after the newer install, with or without a clock.
    for now in [Some(NOW), None] {
        let e = f.state.verify_release(&v5, now, AGENT).unwrap_err();
        assert!(
            matches!(
                e,
                ReleaseError::NotNewer {
                    offered: 5,
                    installed: 6
                }
            ),
            "{e}"
        );
    }
    // Recording an older release (verified before the newer install) is refused too.
    assert!(matches!(
        f.state.record_installed(&ok),
        Err(ReleaseError::NotNewer {
            offered: 5,
            installed: 6
        })
    ));
}

#[test]
fn signatures_from_another_domain_are_refused() {
    let f = fx();
    let bytes = serde_json::to_vec(&manifest(5, &model_bytes())).unwrap();
    for domain in [Domain::RootMetadata, Domain::Downlink, Domain::ResultBatch] {
        let signed = SignedRelease {
            signature: f.signer.sign_raw(domain, &bytes),
            manifest: bytes.clone(),
            key_id: f.signer.key_id(),
        };
        let e = f
            .state
            .verify_release(&signed, Some(NOW), AGENT)
            .unwrap_err();
        assert!(
            matches!(e, ReleaseError::BadSignature { .. }),
            "{domain:?}: {e}"
        );
    }
    // The root key signing a manifest (in either domain) is no certified signing key.
    let by_root = SignedRelease {
        signature: f.root.sign_raw(Domain::ModelRelease, &bytes),
        manifest: bytes.clone(),
        key_id: f.root.key_id(),
    };
    let e = f
        .state
        .verify_release(&by_root, Some(NOW), AGENT)
        .unwrap_err();
    assert!(matches!(e, ReleaseError::UnknownSigningKey { .. }), "{e}");
    // Root metadata signed in the release domain does not pass as root metadata.
    let mut state = f.state.clone();
    let v2 = serde_json::to_vec(&f.meta.next(NOW)).unwrap();
    let forged = SignedRoot {
        signatures: vec![RootSignature {
            key_id: f.root.key_id(),
            signature: f.root.sign_raw(Domain::ModelRelease, &v2),
        }],
        root: v2,
    };
    let e = state.update_root(&forged).unwrap_err();
    assert!(matches!(e, ReleaseError::BadSignature { .. }), "{e}");
    assert_eq!(state, f.state);
}

#[test]
fn expiry_gates_offers_only_when_the_clock_is_trusted() {
    let f = fx();
    let mut m = manifest(5, &model_bytes());
    m.expires_at_ms = NOW - 1;
    m.created_at_ms = NOW - 30 * DAY;
    let signed = f.signer.sign_release(&m).unwrap();
    let e = f
        .state
        .verify_release(&signed, Some(NOW), AGENT)
        .unwrap_err();
    assert!(
        matches!(e, ReleaseError::ReleaseExpired { expires_at, now: NOW } if expires_at == NOW - 1),
        "{e}"
    );
    let v = f.state.verify_release(&signed, None, AGENT).unwrap();
    assert!(v.clock_unsure());
    assert!(
        v.warnings()[0].contains("clock unsure"),
        "{:?}",
        v.warnings()
    );

    let mut future = manifest(5, &model_bytes());
    future.created_at_ms = NOW + 2 * DAY;
    let signed = f.signer.sign_release(&future).unwrap();
    let e = f
        .state
        .verify_release(&signed, Some(NOW), AGENT)
        .unwrap_err();
    assert!(matches!(e, ReleaseError::CreatedInFuture { .. }), "{e}");
    f.state
        .verify_release(&signed, Some(NOW + DAY), AGENT)
        .unwrap();
    f.state.verify_release(&signed, None, AGENT).unwrap();
}

#[test]
fn a_signing_key_cannot_sign_after_its_not_after() {
    let f = fx();
    let mut m = manifest(5, &model_bytes());
    m.created_at_ms = NOW + 366 * DAY;
    m.expires_at_ms = NOW + 400 * DAY;
    let signed = f.signer.sign_release(&m).unwrap();
    // Even with no clock: the key's own window is on the signed creation time.
    let e = f.state.verify_release(&signed, None, AGENT).unwrap_err();
    assert!(
        matches!(e, ReleaseError::SigningKeyExpired { not_after, .. } if not_after == NOW + 365 * DAY),
        "{e}"
    );
}
