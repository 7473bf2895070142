//! Properties: no corruption of a signed envelope verifies, and none panics.

use proptest::prelude::*;

use super::*;

fn arb_manifest() -> impl Strategy<Value = (ReleaseManifest, Vec<u8>)> {
    (
        1u64..1_000_000,
        proptest::collection::vec(any::<u8>(), 1..256),
        1u32..6,
        1u32..3,
        "[a-z][a-z0-9-]{0,20}",
        "[ -~]{0,60}",
        proptest::collection::vec(-10.0f32..10.0, 1..6),
        0.0f32..0.1,
    )
        .prop_map(
            |(version, model, size, channels, name, card, expected, tol)| {
                let mut m = manifest(version, &model);
                m.name = name;
                m.card_summary = card;
                m.input = InputSpec { size, channels };
                m.sidecar["input"]["size"] = serde_json::json!(size);
                m.self_test.tolerance = tol;
                let frame: Vec<u8> = (0..m.input.frame_len()).map(|i| (i * 37) as u8).collect();
                m.self_test.vectors[0].frame_hex = hex::encode(frame);
                m.self_test.vectors[0].expected = BTreeMap::from([("out".to_string(), expected)]);
                (m, model)
            },
        )
}

fn accepted(state: &TrustState, json: &[u8]) -> bool {
    SignedRelease::from_json(json)
        .and_then(|s| state.verify_release(&s, Some(NOW), AGENT))
        .is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn no_single_byte_corruption_of_an_envelope_verifies(
        (m, model) in arb_manifest(),
        picks in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 16),
    ) {
        let f = fx();
        let signed = f.signer.sign_release(&m).unwrap();
        let json = signed.to_json().unwrap();
        // The uncorrupted envelope is accepted, so a refusal below means something.
        let back = SignedRelease::from_json(&json).unwrap();
        let v = f.state.verify_release(&back, Some(NOW), AGENT).unwrap();
        prop_assert!(v.check_model_file(&model[..]).is_ok());
        for (at, flip) in &picks {
            let mut bad = json.clone();
            let i = at.index(bad.len());
            bad[i] ^= flip;
            prop_assert!(!accepted(&f.state, &bad), "accepted {}", String::from_utf8_lossy(&bad));
            // The same corruption within the signed bytes or the signature alone.
            let mut s = signed.clone();
            let i = at.index(s.manifest.len());
            s.manifest[i] ^= flip;
            prop_assert!(f.state.verify_release(&s, None, AGENT).is_err());
            let mut s = signed.clone();
            let i = at.index(s.signature.len());
            s.signature[i] ^= flip;
            prop_assert!(f.state.verify_release(&s, None, AGENT).is_err());
            let mut corrupt = model.clone();
            let i = at.index(corrupt.len());
            corrupt[i] ^= flip;
            prop_assert!(v.check_model_file(&corrupt[..]).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let f = fx();
        let _ = SignedRelease::from_json(&bytes);
        let _ = SignedRoot::from_json(&bytes);
        let _ = TrustState::from_json(&bytes);
        let signed = sign_bytes(&f.signer, bytes.clone());
        prop_assert!(f.state.verify_release(&signed, None, AGENT).is_err());
        let root = SignedRoot { root: bytes, signatures: vec![] };
        prop_assert!(f.state.clone().update_root(&root).is_err());
    }
}
