//! Keys, publishing and the release store, on real files.

use std::path::{Path, PathBuf};

use pleura_shared::release::{
    load_root_public_key, SignedRelease, SignedRoot, TrustState, RELEASE_FILE,
};
use sha2::{Digest, Sha256};

use super::publish::{publish, PublishRequest};
use super::*;

pub(super) const NOW: u64 = 1_780_000_000_000;

/// A model file of `len` bytes with its sidecar (matching hash) and self-test vectors.
pub(super) fn model_files(dir: &Path, name: &str, len: usize) -> (PathBuf, PathBuf) {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let model = dir.join(format!("{name}.onnx"));
    std::fs::write(&model, &bytes).unwrap();
    let sidecar = serde_json::json!({
        "name": "pleura-lite", "sha256": hex::encode(Sha256::digest(&bytes)),
        "input": {"size": 4, "max_frames": 32}, "classes": ["covid", "other_pneumonia", "normal"],
        "covid_threshold": 0.26, "uncertainty_flag": 0.98,
    });
    std::fs::write(dir.join(format!("{name}.json")), sidecar.to_string()).unwrap();
    let vectors = dir.join(format!("{name}-vectors.json"));
    let tests = serde_json::json!({"tolerance": 0.001, "vectors": [
        {"frame_hex": hex::encode([9u8; 16]), "expected": {"class_probs": [0.2, 0.3, 0.5]}}
    ]});
    std::fs::write(&vectors, tests.to_string()).unwrap();
    (model, vectors)
}

pub(super) fn request(model: &Path, vectors: &Path, version: u64) -> PublishRequest {
    PublishRequest {
        model: model.into(),
        version,
        self_test: vectors.into(),
        card_summary: "test model".into(),
        expires_days: 180,
        min_agent: "0.1.0".into(),
    }
}

/// A hub data dir with keys and release 1 (100 000 bytes) published.
pub(super) fn published(dir: &Path) -> ModelStore {
    let store = ModelStore::new(&dir.join("data"));
    keys::init_keys(&store, NOW).unwrap();
    let (model, vectors) = model_files(dir, "m1", 100_000);
    publish(&store, &request(&model, &vectors, 1), NOW).unwrap();
    store
}

fn chain(store: &ModelStore) -> Vec<SignedRoot> {
    store
        .root_chain()
        .unwrap()
        .iter()
        .map(|(_, b)| SignedRoot::from_json(b).unwrap())
        .collect()
}

#[test]
fn a_published_release_verifies_on_a_device_that_trusts_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let root = load_root_public_key(&store.root_public_key()).unwrap();
    let mut device = TrustState::new(root);
    assert_eq!(device.update_root_chain(&chain(&store)).unwrap(), 1);
    let signed = SignedRelease::read(&store.release_dir(1).join(RELEASE_FILE)).unwrap();
    let verified = device
        .verify_release(&signed, Some(NOW + 1000), "0.1.0")
        .unwrap();
    verified.check_model_path(&store.model_path(1)).unwrap();
    assert_eq!(verified.manifest().input.size, 4);
    assert_eq!(store.versions().unwrap(), vec![1]);
    let r = store.release(1).unwrap();
    assert_eq!(r.envelope, signed.to_json().unwrap());
    assert_eq!(r.sha256.len(), 32);
    assert!(matches!(
        keys::init_keys(&store, NOW),
        Err(ModelsError::KeysExist(_))
    ));
}

#[test]
fn publish_refuses_versions_not_above_the_highest() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let (model, vectors) = model_files(dir.path(), "m2", 5_000);
    publish(&store, &request(&model, &vectors, 5), NOW).unwrap();
    for v in [5, 4, 1, 0] {
        match publish(&store, &request(&model, &vectors, v), NOW) {
            Err(ModelsError::NotNewer { version, highest }) => {
                assert_eq!((version, highest), (v, 5));
            }
            other => panic!("version {v}: {other:?}"),
        }
    }
    publish(&store, &request(&model, &vectors, 6), NOW).unwrap();
    assert_eq!(store.versions().unwrap(), vec![1, 5, 6]);
}

#[test]
fn publish_refuses_a_model_whose_hash_differs_from_its_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let (model, vectors) = model_files(dir.path(), "m2", 5_000);
    std::fs::write(&model, b"not the model the sidecar describes").unwrap();
    let e = publish(&store, &request(&model, &vectors, 2), NOW).unwrap_err();
    assert!(matches!(e, ModelsError::SidecarHashMismatch { .. }), "{e}");
    assert_eq!(store.versions().unwrap(), vec![1], "nothing stored");
    // Bad self-test vectors are refused too (a frame of the wrong size).
    let (model, vectors) = model_files(dir.path(), "m3", 5_000);
    std::fs::write(
        &vectors,
        r#"{"tolerance":0.001,"vectors":[{"frame_hex":"00","expected":{"p":[1.0]}}]}"#,
    )
    .unwrap();
    let e = publish(&store, &request(&model, &vectors, 2), NOW).unwrap_err();
    assert!(matches!(e, ModelsError::Release(_)), "{e}");
    assert_eq!(store.versions().unwrap(), vec![1]);
}

#[test]
fn publish_refuses_a_release_too_large_to_offer() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let (model, vectors) = model_files(dir.path(), "big", 5_000);
    let side = dir.path().join("big.json");
    let mut sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&side).unwrap()).unwrap();
    sidecar["input"]["size"] = 192.into();
    std::fs::write(&side, sidecar.to_string()).unwrap();
    let vector = serde_json::json!({"frame_hex": hex::encode(vec![1u8; 192 * 192]),
        "expected": {"class_probs": [0.2, 0.3, 0.5]}});
    let tests = serde_json::json!({"tolerance": 0.001, "vectors": vec![vector; 8]});
    std::fs::write(&vectors, tests.to_string()).unwrap();
    let e = publish(&store, &request(&model, &vectors, 2), NOW).unwrap_err();
    assert!(matches!(e, ModelsError::TooLargeForOffer { .. }), "{e}");
    assert_eq!(store.versions().unwrap(), vec![1]);
}

#[test]
fn publishing_needs_keys_and_a_certified_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = ModelStore::new(&dir.path().join("data"));
    let (model, vectors) = model_files(dir.path(), "m1", 5_000);
    let e = publish(&store, &request(&model, &vectors, 1), NOW).unwrap_err();
    assert!(matches!(e, ModelsError::NoKeys(_)), "{e}");

    keys::init_keys(&store, NOW).unwrap();
    let (_, revoked) = keys::revoke_signing_key(&store, None, None, NOW + 1).unwrap();
    let e = publish(&store, &request(&model, &vectors, 1), NOW + 2).unwrap_err();
    assert!(
        matches!(e, ModelsError::SigningKeyNotCertified { .. }),
        "{e}"
    );

    let k = keys::rotate_signing_key(&store, None, false, NOW + 3).unwrap();
    assert_eq!(k.root_version, 3);
    publish(&store, &request(&model, &vectors, 1), NOW + 4).unwrap();
    // A device following the whole chain trusts the new key and knows the revocation.
    let mut device = TrustState::new(load_root_public_key(&store.root_public_key()).unwrap());
    assert_eq!(device.update_root_chain(&chain(&store)).unwrap(), 3);
    assert!(device.revoked_key_ids().any(|id| id == revoked));
    let signed = SignedRelease::read(&store.release_dir(1).join(RELEASE_FILE)).unwrap();
    device
        .verify_release(&signed, Some(NOW + 5), "0.1.0")
        .unwrap();
    assert_eq!(store.latest_root().unwrap().version, 3);
}

#[test]
fn chunks_are_read_at_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let whole = std::fs::read(store.model_path(1)).unwrap();
    assert_eq!(store.read_chunk(1, 0, 10).unwrap(), whole[..10]);
    assert_eq!(store.read_chunk(1, 99_990, 100).unwrap(), whole[99_990..]);
    assert!(store.read_chunk(1, 100_000, 100).unwrap().is_empty());
    assert!(matches!(
        store.release(9),
        Err(ModelsError::UnknownRelease(9))
    ));
}
