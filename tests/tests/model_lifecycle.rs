//! The model lifecycle with real processes (issue #15): the hub publishes a signed
//! release and rolls it out to one clinic; that clinic's agent downloads it (surviving a
//! SIGKILL mid-download), verifies it, runs its self-test and switches, while the other
//! clinic's agent is never offered it. A release whose file is tampered with on the hub is
//! refused by the device with a named reason, the running model untouched and the hub told;
//! a shadow release reads new scans beside the active one (its readings reach the hub
//! tagged as shadow, never flag and are never listed as the case) and waits for
//! `model promote`. The active reading's findings (A-lines, B-lines, consolidation,
//! effusion, pleural line) reach the hub as `edge-agent analyze` reads them.

use std::time::Duration;

use pleura_e2e::models::*;
use pleura_e2e::*;

#[test]
fn a_release_reaches_its_cohort_only_survives_a_kill_and_a_tampered_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub_with_model_keys(tmp.path());
    // 256 KiB/s: the ~1.5 MB model takes ~6 s, long enough to kill the agent mid-way.
    let mut a = agent_in(&hub, tmp.path(), "clinic-a", 256 * 1024);
    let mut b = agent_in(&hub, tmp.path(), "clinic-b", 4 * 1024 * 1024);
    a.start().unwrap();
    b.start().unwrap();

    let vectors = self_test_vectors(tmp.path());
    let model = candidate(&tmp.path().join("candidate"));
    publish(&hub, &model, 1, &vectors);
    rollout(&hub, 1, "clinic-a");

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
    publish(&hub, &model, 2, &vectors);
    let file = hub.data_dir().join("models/releases/2/model.onnx");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    rollout(&hub, 2, "clinic-a");
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
    publish(&hub, &model, 3, &vectors);
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
    // The findings the model read travel with the result (#14): the hub holds what
    // `edge-agent analyze` gives for the same file with the same model.
    let out = std::process::Command::new(bin("edge-agent"))
        .args(["analyze", "--json"])
        .arg(repo_root().join("fixtures/scans/cb_patient29_L2.mp4"))
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let read: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let names = [
        "a_lines",
        "b_lines",
        "consolidation",
        "effusion",
        "pleural_irregularity",
    ];
    assert_eq!(active.finding_probs.len(), names.len(), "{active:?}");
    for (name, got) in names.iter().zip(&active.finding_probs) {
        let want = read["findings"][name].as_f64().unwrap();
        assert!(
            (f64::from(*got) - want).abs() < 1e-4,
            "{name}: hub {got}, analyze {want}"
        );
    }
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
