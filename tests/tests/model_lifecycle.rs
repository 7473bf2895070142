//! The model lifecycle with real processes (issue #15): the hub publishes a signed
//! release and rolls it out to one clinic; that clinic's agent downloads it (surviving a
//! SIGKILL mid-download), verifies it, runs its self-test and switches, while the other
//! clinic's agent is never offered it. A release whose file is tampered with on the hub is
//! refused by the device with a named reason, the running model untouched and the hub told;
//! a shadow release reads new scans beside the active one (its readings reach the hub
//! tagged as shadow, never flag and are never listed as the case) and waits for
//! `model promote`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pleura_e2e::*;
use serde_json::Value;

fn models_status(agent: &Agent) -> Option<Value> {
    Some(agent.status().ok()?["models"].clone())
}

fn active_version(agent: &Agent) -> Option<u64> {
    models_status(agent)?["active_version"].as_u64()
}

/// The hub's view of one device and release (`hub-server model status --json`).
fn hub_device(hub: &Hub, version: u64, device: &str) -> Option<Value> {
    let out = hub.model(&["status", "--json"]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    let d = v["releases"][version.to_string()]["devices"][device].clone();
    (!d.is_null()).then_some(d)
}

/// Results the hub has stored from one device (active and shadow readings alike).
fn results_from(hub: &Hub, device: &str) -> u64 {
    hub.devices()
        .unwrap()
        .into_iter()
        .find(|d| d.0 == device)
        .map_or(0, |d| d.1)
}

/// Self-test vectors for the shipped model, made by the edge binary's own engine.
fn self_test_vectors(dir: &Path) -> PathBuf {
    let out = dir.join("vectors.json");
    let st = Command::new(bin("edge-agent"))
        .args(["model", "self-test-vectors", "--model"])
        .arg(repo_root().join("models/pleura-lite.onnx"))
        .arg("--frames")
        .arg(repo_root().join("fixtures/scans/pocus_pneu_emdocs1.png"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

/// A candidate model: the shipped model and its sidecar, copied (a release's number, not
/// its bytes, is what the lifecycle acts on).
fn candidate(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for ext in ["onnx", "json"] {
        std::fs::copy(
            repo_root().join(format!("models/pleura-lite.{ext}")),
            dir.join(format!("pleura-lite.{ext}")),
        )
        .unwrap();
    }
    dir.join("pleura-lite.onnx")
}

#[test]
fn a_release_reaches_its_cohort_only_survives_a_kill_and_a_tampered_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.model(&["init-keys"]).unwrap();
    hub.start().unwrap();
    let agent_in = |clinic: &str, rate: u64| {
        let bundle = hub.enroll(clinic, "pi-1", "north").unwrap().unwrap();
        assert!(
            bundle.join("model-root.pub").exists(),
            "enrolment hands out the model root key"
        );
        let opts = AgentOptions {
            clinic: clinic.into(),
            device: "pi-1".into(),
            bundle: Some(bundle),
            model_bytes_per_s: rate,
            ..AgentOptions::default()
        };
        Agent::new(&tmp.path().join(clinic), hub.mqtt_port, opts).unwrap()
    };
    // 256 KiB/s: the ~2.8 MB model takes ~11 s, long enough to kill the agent mid-way.
    let mut a = agent_in("clinic-a", 256 * 1024);
    let mut b = agent_in("clinic-b", 4 * 1024 * 1024);
    a.start().unwrap();
    b.start().unwrap();

    let vectors = self_test_vectors(tmp.path());
    let vectors = vectors.to_string_lossy();
    let model = candidate(&tmp.path().join("candidate"));
    let model = model.to_string_lossy();
    hub.model(&[
        "publish",
        "--model",
        &model,
        "--version",
        "1",
        "--self-test",
        &vectors,
    ])
    .unwrap();
    hub.model(&["rollout", "--version", "1", "--clinics", "clinic-a"])
        .unwrap();

    // Killed mid-download, the agent resumes from what it holds.
    let held = eventually("clinic-a downloading", Duration::from_secs(90), || {
        let d = models_status(&a)?["downloading"].clone();
        let held = d.get(1)?.as_u64()?;
        (held > 0 && held < d.get(2)?.as_u64()?).then_some(held)
    });
    a.kill9();
    a.start().unwrap();
    eventually("clinic-a on release 1", Duration::from_secs(120), || {
        (active_version(&a)? == 1).then_some(())
    });
    eventually(
        "the hub sees clinic-a active",
        Duration::from_secs(30),
        || (hub_device(&hub, 1, "clinic-a/pi-1")?["state"] == "active").then_some(()),
    );
    eprintln!("clinic-a was killed holding {held} bytes and finished the download");
    assert!(
        hub_device(&hub, 1, "clinic-b/pi-1").is_none(),
        "clinic-b is outside the cohort"
    );
    assert_eq!(
        active_version(&b),
        Some(0),
        "clinic-b keeps its built-in model"
    );

    // Release 2's file is damaged on the hub after signing: the device refuses it.
    hub.model(&[
        "publish",
        "--model",
        &model,
        "--version",
        "2",
        "--self-test",
        &vectors,
    ])
    .unwrap();
    let file = hub.data_dir().join("models/releases/2/model.onnx");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    hub.model(&["rollout", "--version", "2", "--clinics", "clinic-a"])
        .unwrap();
    let reason = eventually("release 2 refused", Duration::from_secs(120), || {
        let d = hub_device(&hub, 2, "clinic-a/pi-1")?;
        (d["state"] == "refused").then(|| d["reason"].as_str().unwrap_or("").to_string())
    });
    assert!(reason.contains("hash"), "{reason}");
    assert_eq!(
        active_version(&a),
        Some(1),
        "the running model is untouched"
    );
    // The agent's status file is written a moment after the report left.
    eventually(
        "the refusal in the agent's status",
        Duration::from_secs(15),
        || {
            models_status(&a)?["last_refusal"]
                .as_str()
                .is_some_and(|r| r.contains("hash"))
                .then_some(())
        },
    );

    // A shadow release waits for the operator's promote.
    hub.model(&[
        "publish",
        "--model",
        &model,
        "--version",
        "3",
        "--self-test",
        &vectors,
    ])
    .unwrap();
    hub.model(&[
        "rollout",
        "--version",
        "3",
        "--clinics",
        "clinic-a",
        "--shadow",
    ])
    .unwrap();
    eventually("release 3 shadowing", Duration::from_secs(120), || {
        (hub_device(&hub, 3, "clinic-a/pi-1")?["state"] == "shadowing").then_some(())
    });
    assert_eq!(active_version(&a), Some(1));

    // While it shadows, a new scan is read by both: the active release's reading is the
    // case; the candidate's reaches the hub tagged as shadow, as a result of its own, and
    // never flags.
    let before = results_from(&hub, "clinic-a/pi-1");
    a.drop_scan(
        &repo_root().join("fixtures/scans/cb_patient29_L2.mp4"),
        "shadowed_L2.mp4",
    )
    .unwrap();
    eventually("both readings at the hub", Duration::from_secs(120), || {
        (results_from(&hub, "clinic-a/pi-1") == before + 2).then_some(())
    });
    let cases = hub.cases().unwrap();
    let shadowed: Vec<_> = cases
        .iter()
        .filter_map(|c| c.result.as_ref())
        .filter(|r| r.clinic_id == "clinic-a" && r.model_release >= 1)
        .collect();
    assert_eq!(
        shadowed.len(),
        1,
        "one current reading per scan is listed: {shadowed:?}"
    );
    let active = shadowed[0];
    assert!(!active.shadow && active.model_release == 1, "{active:?}");
    assert!(
        cases
            .iter()
            .filter_map(|c| c.result.as_ref())
            .all(|r| !r.shadow),
        "shadow readings are never listed as cases"
    );
    eventually(
        "the agent counts one shadow reading",
        Duration::from_secs(15),
        || (models_status(&a)?["shadow_results"].as_u64()? == 1).then_some(()),
    );
    hub.model(&["promote", "--version", "3"]).unwrap();
    eventually("clinic-a on release 3", Duration::from_secs(60), || {
        (active_version(&a)? == 3).then_some(())
    });
    a.kill9();
    b.kill9();
}
