//! Root metadata: versions, rotation, signatures.

use super::*;

#[test]
fn a_rotation_chain_is_followed_and_shortcuts_are_refused() {
    let mut f = fx();
    let (r2, r3) = (RootKey::generate().unwrap(), RootKey::generate().unwrap());
    let mut v2 = f.meta.next(NOW);
    v2.set_root(&r2);
    let mut v3 = v2.next(NOW);
    v3.set_root(&r3);
    let s2 = f.root.rotate_to(&r2, &v2).unwrap();
    let s3 = r2.rotate_to(&r3, &v3).unwrap();

    // v2 signed only by the new key: the device's root never vouched for it.
    let only_new = r2.certify(&v2).unwrap();
    let e = f.state.clone().update_root(&only_new).unwrap_err();
    assert!(
        matches!(&e, ReleaseError::RootSignatureMissing { key_id } if *key_id == f.root.key_id()),
        "{e}"
    );
    // v2 naming r2 but signed only by the old root: the new key never agreed.
    let bytes = serde_json::to_vec(&v2).unwrap();
    let only_old = SignedRoot {
        signatures: vec![RootSignature {
            key_id: f.root.key_id(),
            signature: f.root.sign_raw(Domain::RootMetadata, &bytes),
        }],
        root: bytes,
    };
    let e = f.state.clone().update_root(&only_old).unwrap_err();
    assert!(
        matches!(&e, ReleaseError::RootSignatureMissing { key_id } if *key_id == r2.key_id()),
        "{e}"
    );
    // Skipping v2 is not possible: v3 is not signed by the key the device holds.
    let e = f.state.clone().update_root(&s3).unwrap_err();
    assert!(
        matches!(e, ReleaseError::RootSignatureMissing { .. }),
        "{e}"
    );

    f.state.update_root(&s2).unwrap();
    assert_eq!(f.state.root().root_public_key(), r2.public_key());
    f.state.update_root(&s3).unwrap();
    assert_eq!(f.state.root().version(), 3);
    assert_eq!(f.state.root().root_public_key(), r3.public_key());
    // Older and equal versions are refused, whoever signed them.
    for (old, n) in [(&s2, 2), (&s3, 3)] {
        let e = f.state.update_root(old).unwrap_err();
        assert!(
            matches!(e, ReleaseError::RootNotNewer { offered, installed: 3 } if offered == n),
            "{e}"
        );
    }
    // The retired root key alone can no longer move the device.
    let mut v4 = v3.next(NOW);
    v4.set_root(&f.root);
    let e = f
        .state
        .update_root(&f.root.certify(&v4).unwrap())
        .unwrap_err();
    assert!(
        matches!(e, ReleaseError::RootSignatureMissing { .. }),
        "{e}"
    );
    // The signing key certified since v1 still signs releases under r3.
    let release = f.signer.sign_release(&manifest(5, &model_bytes())).unwrap();
    f.state.verify_release(&release, Some(NOW), AGENT).unwrap();
}

#[test]
fn a_chain_is_applied_in_order_from_enrolment() {
    let f = fx();
    let r2 = RootKey::generate().unwrap();
    let v1 = f.root.certify(&f.meta).unwrap();
    let mut m2 = f.meta.next(NOW);
    m2.set_root(&r2);
    let v2 = f.root.rotate_to(&r2, &m2).unwrap();
    let v3 = r2.certify(&m2.next(NOW)).unwrap();
    let mut fresh = TrustState::new(f.root.public_key());
    assert_eq!(fresh.root().version(), 0);
    let chain = [v1.clone(), v2.clone(), v3.clone()];
    assert_eq!(fresh.update_root_chain(&chain).unwrap(), 3);
    assert_eq!(fresh.root().version(), 3);
    // Already-known documents are skipped, not errors.
    assert_eq!(fresh.update_root_chain(&chain).unwrap(), 0);
    // Out of order, the rotation cannot be crossed.
    let mut again = TrustState::new(f.root.public_key());
    let e = again.update_root_chain(&[v1, v3, v2]).unwrap_err();
    assert!(
        matches!(e, ReleaseError::RootSignatureMissing { .. }),
        "{e}"
    );
}

#[test]
fn a_root_document_must_be_consistent() {
    let f = fx();
    let mut listed_root = f.meta.next(NOW);
    listed_root.add_signing_key(&f.root.public_key(), NOW);
    let mut wrong_id = f.meta.next(NOW);
    wrong_id.signing_keys[0].key_id = "00".repeat(32);
    let mut both = f.meta.next(NOW);
    both.revoked_key_ids.push(f.signer.key_id());
    let mut twice = f.meta.next(NOW);
    twice.signing_keys.push(twice.signing_keys[0].clone());
    let mut bad_revoked = f.meta.next(NOW);
    bad_revoked.revoked_key_ids.push("nope".to_string());
    for m in [listed_root, wrong_id, both, twice, bad_revoked] {
        assert!(matches!(
            f.root.certify(&m),
            Err(ReleaseError::Malformed(_))
        ));
        // Signed by hand, a device refuses it the same way.
        let bytes = serde_json::to_vec(&m).unwrap();
        let signed = SignedRoot {
            signatures: vec![RootSignature {
                key_id: f.root.key_id(),
                signature: f.root.sign_raw(Domain::RootMetadata, &bytes),
            }],
            root: bytes,
        };
        let mut state = f.state.clone();
        let e = state.update_root(&signed).unwrap_err();
        assert!(matches!(e, ReleaseError::Malformed(_)), "{e}");
        assert_eq!(state, f.state);
    }
    // The signer refuses metadata naming another root, or rotating to the wrong key.
    let other = RootKey::generate().unwrap();
    let mut m = f.meta.next(NOW);
    m.set_root(&other);
    assert!(matches!(
        f.root.certify(&m),
        Err(ReleaseError::Malformed(_))
    ));
    assert!(matches!(
        other.rotate_to(&f.root, &m),
        Err(ReleaseError::Malformed(_))
    ));
    // A tampered root document fails its signature.
    let mut s = f.root.certify(&f.meta.next(NOW)).unwrap();
    let i = s.root.iter().position(|&b| b == b'2').unwrap();
    s.root[i] = b'7';
    let e = f.state.clone().update_root(&s).unwrap_err();
    assert!(matches!(e, ReleaseError::BadSignature { .. }), "{e}");
}
