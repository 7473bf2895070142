//! What a manifest asks of the agent: version, input shape, self-test.

use super::*;

#[test]
fn an_agent_older_than_the_minimum_is_refused() {
    let f = fx();
    let mut m = manifest(5, &model_bytes());
    m.min_agent_version = "0.10.0".to_string();
    let signed = f.signer.sign_release(&m).unwrap();
    let e = f
        .state
        .verify_release(&signed, Some(NOW), "0.9.7")
        .unwrap_err();
    assert!(
        matches!(&e, ReleaseError::AgentTooOld { min, agent } if min == "0.10.0" && agent == "0.9.7"),
        "{e}"
    );
    let e = f
        .state
        .verify_release(&signed, Some(NOW), "0.10.0-rc.1")
        .unwrap_err();
    assert!(matches!(e, ReleaseError::AgentTooOld { .. }), "{e}");
    for agent in ["0.10.0", "0.10.1+build.7", "1.0.0"] {
        f.state.verify_release(&signed, Some(NOW), agent).unwrap();
    }
    // An agent too old to understand a newer manifest says so rather than "malformed".
    let newer = br#"{"min_agent_version":"2.0.0","version":"a string now"}"#.to_vec();
    let e = f
        .state
        .verify_release(&sign_bytes(&f.signer, newer), Some(NOW), AGENT)
        .unwrap_err();
    assert!(matches!(e, ReleaseError::AgentTooOld { .. }), "{e}");
}

#[test]
fn bad_version_strings_are_named() {
    let f = fx();
    for bad in [
        "0.1", "0.1.0.0", "v0.1.0", "0.01.0", "0.1.x", "", "0.1.0-", "1..0",
    ] {
        let mut m = manifest(5, &model_bytes());
        m.min_agent_version = bad.to_string();
        let e = f.signer.sign_release(&m).unwrap_err();
        assert!(
            matches!(&e, ReleaseError::BadVersionString { field, value, .. }
                if *field == "min_agent_version" && value == bad),
            "{bad:?}: {e}"
        );
        // A device meeting one anyway (signed by hand) names it the same way.
        let bytes = serde_json::to_vec(&m).unwrap();
        let e = f
            .state
            .verify_release(&sign_bytes(&f.signer, bytes), Some(NOW), AGENT)
            .unwrap_err();
        assert!(
            matches!(
                e,
                ReleaseError::BadVersionString {
                    field: "min_agent_version",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("min_agent_version"), "{e}");
    }
    let signed = f.signer.sign_release(&manifest(5, &model_bytes())).unwrap();
    let e = f
        .state
        .verify_release(&signed, Some(NOW), "dev")
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReleaseError::BadVersionString {
                field: "agent version",
                ..
            }
        ),
        "{e}"
    );
    let v = |s| AgentVersion::parse("agent version", s).unwrap();
    assert!(v("0.10.0") > v("0.9.99") && v("1.0.0-rc.2") > v("1.0.0-rc.1"));
    assert!(v("1.0.0") > v("1.0.0-rc.1") && v("1.0.0+x") == v("1.0.0"));
}

#[test]
fn a_manifest_that_does_not_fit_the_agent_is_refused() {
    let f = fx();
    let model = model_bytes();
    type Change = fn(&mut ReleaseManifest);
    let cases: Vec<(Change, &str)> = vec![
        (
            |m| m.self_test.vectors[0].frame_hex.push_str("00"),
            "hex digits",
        ),
        (|m| m.severity_levels = 5, "severity levels"),
        (|m| m.input.size = 0, "input size"),
        (
            |m| m.sidecar["classes"] = serde_json::json!(["a", "b", "c"]),
            "classes",
        ),
        (
            |m| m.sidecar["input"]["size"] = serde_json::json!(192),
            "input.size",
        ),
    ];
    for (change, words) in cases {
        let mut m = manifest(5, &model);
        change(&mut m);
        assert!(matches!(
            f.signer.sign_release(&m),
            Err(ReleaseError::InputMismatch(_))
        ));
        let signed = sign_bytes(&f.signer, serde_json::to_vec(&m).unwrap());
        let e = f
            .state
            .verify_release(&signed, Some(NOW), AGENT)
            .unwrap_err();
        assert!(matches!(e, ReleaseError::InputMismatch(_)), "{e}");
        assert!(e.to_string().contains(words), "{words}: {e}");
    }
    let malformed: Vec<Change> = vec![
        |m| m.model_sha256 = m.model_sha256.to_uppercase(),
        |m| m.sidecar["sha256"] = serde_json::json!("00"),
        |m| m.expires_at_ms = m.created_at_ms,
        |m| m.self_test.vectors.clear(),
        |m| m.name = "Pleura Lite".to_string(),
        |m| m.self_test.vectors[0].frame_hex = "zz".repeat(16),
        |m| {
            m.input.size = 1024;
            m.sidecar["input"]["size"] = serde_json::json!(1024);
            m.self_test.vectors = vec![m.self_test.vectors[0].clone(); 3];
            for v in &mut m.self_test.vectors {
                v.frame_hex = "00".repeat(1024 * 1024);
            }
        },
    ];
    for change in malformed {
        let mut m = manifest(5, &model);
        change(&mut m);
        let e = f.signer.sign_release(&m).unwrap_err();
        assert!(matches!(e, ReleaseError::Malformed(_)), "{e}");
    }
    let e = f
        .state
        .verify_release(&sign_bytes(&f.signer, b"{}".to_vec()), Some(NOW), AGENT);
    assert!(matches!(e, Err(ReleaseError::Malformed(_))));
}

#[test]
fn self_test_outputs_are_compared_within_tolerance() {
    let m = manifest(5, &model_bytes());
    let t = &m.self_test;
    assert_eq!(t.vectors[0].frame(&m.input).unwrap(), vec![7u8; 16]);
    let out = |v: Vec<f32>| BTreeMap::from([("class_probs".to_string(), v)]);
    t.check(0, &out(vec![0.2005, 0.2995, 0.5])).unwrap();
    for (got, words) in [
        (out(vec![0.21, 0.3, 0.5]), "value 0"),
        (out(vec![0.2, 0.3]), "2 values"),
        (out(vec![0.2, f32::NAN, 0.5]), "value 1"),
        (BTreeMap::new(), "no such output"),
    ] {
        let e = t.check(0, &got).unwrap_err();
        assert!(
            matches!(e, ReleaseError::SelfTestFailed { vector: 0, .. }),
            "{e}"
        );
        assert!(e.to_string().contains(words), "{words}: {e}");
    }
    assert!(matches!(
        t.check(1, &out(vec![])),
        Err(ReleaseError::Malformed(_))
    ));
}
