//! The model lifecycle as the tests see it: an agent's `models` status, the hub's view of
//! one release on one device, and candidate releases (good, or faulty in service).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{bin, repo_root, Agent, AgentOptions, Broker, Hub};

/// A hub in `<root>/hub` with its model keys made (`model init-keys`), started.
pub fn hub_with_model_keys(root: &Path) -> Hub {
    let mut hub = Hub::new(&root.join("hub"), Broker::Embedded).unwrap();
    hub.model(&["init-keys"]).unwrap();
    hub.start().unwrap();
    hub
}

/// An agent of `clinic` (device "pi-1"), enrolled with `hub` (which hands out its model
/// root key), downloading models at `rate` bytes/s; in `<root>/<clinic>`, not started.
pub fn agent_in(hub: &Hub, root: &Path, clinic: &str, rate: u64) -> Agent {
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
    Agent::new(&root.join(clinic), hub.mqtt_port, opts).unwrap()
}

/// `hub-server model publish` of `model` (its sidecar beside it) as `version`.
pub fn publish(hub: &Hub, model: &Path, version: u64, vectors: &Path) {
    hub.model(&[
        "publish",
        "--model",
        &model.to_string_lossy(),
        "--version",
        &version.to_string(),
        "--self-test",
        &vectors.to_string_lossy(),
    ])
    .unwrap();
}

/// `hub-server model rollout` of `version` to `clinics` (comma-separated).
pub fn rollout(hub: &Hub, version: u64, clinics: &str) {
    hub.model(&[
        "rollout",
        "--version",
        &version.to_string(),
        "--clinics",
        clinics,
    ])
    .unwrap();
}

pub fn models_status(agent: &Agent) -> Option<Value> {
    Some(agent.status().ok()?["models"].clone())
}

pub fn active_version(agent: &Agent) -> Option<u64> {
    models_status(agent)?["active_version"].as_u64()
}

/// The hub's view of one device and release (`hub-server model status --json`).
pub fn hub_device(hub: &Hub, version: u64, device: &str) -> Option<Value> {
    let out = hub.model(&["status", "--json"]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    let d = v["releases"][version.to_string()]["devices"][device].clone();
    (!d.is_null()).then_some(d)
}

/// The state the hub last heard of a release on a device, and its reason.
pub fn hub_state(hub: &Hub, version: u64, device: &str) -> Option<(String, String)> {
    let d = hub_device(hub, version, device)?;
    Some((
        d["state"].as_str()?.to_string(),
        d["reason"].as_str().unwrap_or("").to_string(),
    ))
}

/// Results the hub has stored from one device (active and shadow readings alike).
pub fn results_from(hub: &Hub, device: &str) -> u64 {
    hub.devices()
        .unwrap()
        .into_iter()
        .find(|d| d.0 == device)
        .map_or(0, |d| d.1)
}

/// Self-test vectors for `model` on `frame`, made by the edge binary's own engine.
pub fn self_test_vectors_for(model: &Path, frame: &Path, out: &Path) -> PathBuf {
    let st = Command::new(bin("edge-agent"))
        .args(["model", "self-test-vectors", "--model"])
        .arg(model)
        .arg("--frames")
        .arg(frame)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    out.to_path_buf()
}

/// Self-test vectors for the shipped model on a fixture frame.
pub fn self_test_vectors(dir: &Path) -> PathBuf {
    self_test_vectors_for(
        &repo_root().join("models/pleura-lite.onnx"),
        &repo_root().join("fixtures/scans/pocus_pneu_emdocs1.png"),
        &dir.join("vectors.json"),
    )
}

/// A candidate model: the shipped model and its sidecar, copied (a release's number, not
/// its bytes, is what the lifecycle acts on).
pub fn candidate(dir: &Path) -> PathBuf {
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

/// A candidate that is faulty in service only (tests/models/faulty_when_dark.py): the
/// shipped model, except that `poison` ("nan", or e.g. "2": probabilities out of 0..1) is
/// added to its outputs on dark frames, which every scan is. Returns the model and
/// self-test vectors on a white frame, which it passes.
pub fn faulty_when_dark(dir: &Path, poison: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let model = dir.join("pleura-lite.onnx");
    let white = dir.join("white.png");
    let py = repo_root().join(".venv-test/bin/python");
    let st = Command::new(&py)
        .arg(repo_root().join("tests/models/faulty_when_dark.py"))
        .arg(repo_root().join("models/pleura-lite.onnx"))
        .arg(&model)
        .arg(&white)
        .arg(poison)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/test.sh installs onnx there)",
                py.display()
            )
        });
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let vectors = self_test_vectors_for(&model, &white, &dir.join("vectors.json"));
    (model, vectors)
}

/// Queues, at the stopped hub, the offer of release `version` to one device again, exactly
/// as `model rollout` made it: an authentic, validly signed but old offer, replayed.
pub fn replay_offer(hub: &Hub, version: u64, clinic: &str, device: &str) {
    use pleura_proto::v1::{downlink, ModelOffer};
    let store = hub_server::models::ModelStore::new(&hub.data_dir());
    let rel = store.release(version).unwrap();
    let roots = store.root_chain().unwrap().into_iter().map(|(_, b)| b);
    let offer = ModelOffer {
        model_version: format!("{} {version}", rel.manifest.name),
        sha256: rel.sha256.clone(),
        size: rel.manifest.model_size,
        release: rel.envelope.clone(),
        release_version: version,
        shadow: false,
        roots: roots.collect(),
    };
    crate::media::hub_downlink(hub)
        .send(clinic, device, downlink::Kind::ModelOffer(offer))
        .unwrap();
}

/// Release `version`'s `release.json` at the hub, with its signature replaced by `sig`.
pub fn resign(hub: &Hub, version: u64, sig: &str) {
    let path = hub
        .data_dir()
        .join(format!("models/releases/{version}/release.json"));
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["signature"] = Value::String(sig.into());
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}
