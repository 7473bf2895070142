//! The model lifecycle's refusals and faults with real processes (issue #15), beside
//! tests/tests/model_lifecycle.rs (cohort, kill mid-download, tampered file, shadow):
//!
//! - releases an attacker could bring to a running agent: unsigned, signed by a key the
//!   root never certified, signed by a revoked key, and an old release's authentic offer
//!   replayed (a rollback attack): each refused with a named reason, the running model
//!   untouched, the hub told;
//! - a release that passes its self-test but returns NaN in service is rolled back by the
//!   agent itself, the scan it failed on is analysed again by the previous model (nothing
//!   lost), with an alarm and a report; so is one whose probabilities leave 0..1; one that
//!   returns NaN on its self-test never runs;
//! - `model abort` stops a download under way; a device offline at rollout catches up when
//!   it reconnects; an agent killed the moment it has verified a release (the switch
//!   under way) comes back on exactly one verified model: the new release, the old one
//!   as its previous, no download left behind.

use std::time::Duration;

use pleura_e2e::models::*;
use pleura_e2e::*;

const A: &str = "clinic-a/pi-1";
const B: &str = "clinic-b/pi-1";

/// Waits until the hub hears that `device` refused `version`; returns the reason.
fn refused_at_hub(hub: &Hub, version: u64, device: &str) -> String {
    eventually(
        &format!("release {version} refused by {device}"),
        Duration::from_secs(120),
        || {
            let (state, reason) = hub_state(hub, version, device)?;
            (state == "refused").then_some(reason)
        },
    )
}

fn current_json(agent: &Agent) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(agent.dir.join("data/models/current.json")).ok()?).ok()
}

fn log_text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Publishes `trap` as `version`, rolls it out to clinic-a, waits until it runs, drops
/// the fixture `scan` into the inbox and waits until the hub hears the release was rolled
/// back; returns the reason.
fn faulty_in_service(
    hub: &Hub,
    a: &Agent,
    (trap, vectors): (&std::path::Path, &std::path::Path),
    version: u64,
    scan: &str,
) -> String {
    publish(hub, trap, version, vectors);
    rollout(hub, version, "clinic-a");
    becomes_active(hub, a, version, A);
    a.drop_scan(
        &repo_root().join("fixtures/scans").join(scan),
        &format!("fault_{scan}"),
    )
    .unwrap();
    eventually(
        &format!("release {version} rolled back"),
        Duration::from_secs(120),
        || {
            let (state, reason) = hub_state(hub, version, A)?;
            (state == "rolled_back").then_some(reason)
        },
    )
}

fn becomes_active(hub: &Hub, agent: &Agent, version: u64, device: &str) {
    eventually(
        &format!("{device} on release {version}"),
        Duration::from_secs(120),
        || (active_version(agent)? == version).then_some(()),
    );
    eventually(
        &format!("the hub sees release {version} active on {device}"),
        Duration::from_secs(30),
        || (hub_state(hub, version, device)?.0 == "active").then_some(()),
    );
}

#[test]
fn forged_revoked_and_replayed_releases_are_refused_by_a_running_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = hub_with_model_keys(tmp.path());
    let mut a = agent_in(&hub, tmp.path(), "clinic-a", 4 * 1024 * 1024);
    a.start().unwrap();
    let vectors = self_test_vectors(tmp.path());
    let model = candidate(&tmp.path().join("candidate"));

    publish(&hub, &model, 1, &vectors);
    rollout(&hub, 1, "clinic-a");
    becomes_active(&hub, &a, 1, A);

    // Unsigned: the signature stripped from the stored release.
    publish(&hub, &model, 2, &vectors);
    resign(&hub, 2, "");
    rollout(&hub, 2, "clinic-a");
    let r = refused_at_hub(&hub, 2, A);
    assert!(r.starts_with("bad_signature:"), "unsigned: {r}");
    assert_eq!(
        active_version(&a),
        Some(1),
        "the running model is untouched"
    );

    // Signed by a key this hub's root never certified (another hub's keys).
    let other = Hub::new(&tmp.path().join("other-hub"), Broker::Embedded).unwrap();
    other.model(&["init-keys"]).unwrap();
    publish(&other, &model, 3, &vectors);
    let dir = |h: &Hub| h.data_dir().join("models/releases/3");
    std::fs::create_dir_all(dir(&hub)).unwrap();
    for f in ["release.json", "model.onnx"] {
        std::fs::copy(dir(&other).join(f), dir(&hub).join(f)).unwrap();
    }
    rollout(&hub, 3, "clinic-a");
    let r = refused_at_hub(&hub, 3, A);
    assert!(r.starts_with("unknown_signing_key:"), "forged: {r}");
    assert_eq!(active_version(&a), Some(1));

    // Signed by a key the root then revoked: the offer carries the new root metadata.
    publish(&hub, &model, 4, &vectors);
    hub.model(&["rotate-signing-key", "--revoke-old"]).unwrap();
    rollout(&hub, 4, "clinic-a");
    let r = refused_at_hub(&hub, 4, A);
    assert!(r.starts_with("revoked_signing_key:"), "revoked: {r}");
    assert_eq!(active_version(&a), Some(1));

    // The new signing key's releases install.
    publish(&hub, &model, 5, &vectors);
    rollout(&hub, 5, "clinic-a");
    becomes_active(&hub, &a, 5, A);

    // An authentic offer replayed through the hub's own signed channel: release 1's,
    // signed by the key since revoked, and release 5's, once release 6 runs. A device
    // never goes back to a lower version.
    publish(&hub, &model, 6, &vectors);
    rollout(&hub, 6, "clinic-a");
    becomes_active(&hub, &a, 6, A);
    hub.kill9();
    replay_offer(&hub, 1, "clinic-a", "pi-1");
    replay_offer(&hub, 5, "clinic-a", "pi-1");
    hub.start().unwrap();
    let r = refused_at_hub(&hub, 1, A);
    assert!(r.starts_with("revoked_signing_key:"), "replayed 1: {r}");
    let r = refused_at_hub(&hub, 5, A);
    assert!(r.starts_with("not_newer:"), "replayed 5: {r}");
    assert_eq!(active_version(&a), Some(6));
    let s = models_status(&a).unwrap();
    assert!(
        s["last_refusal"]
            .as_str()
            .is_some_and(|r| r.starts_with("5: not_newer") || r.starts_with("1: revoked")),
        "the agent says what it refused: {s}"
    );
    a.kill9();
}

#[test]
fn faulty_releases_roll_back_abort_stops_and_offline_devices_catch_up() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = hub_with_model_keys(tmp.path());
    // 256 KiB/s: a download takes ~6 s, time enough to abort or kill it.
    let mut a = agent_in(&hub, tmp.path(), "clinic-a", 256 * 1024);
    let mut b = agent_in(&hub, tmp.path(), "clinic-b", 4 * 1024 * 1024);
    a.start().unwrap();
    b.start().unwrap();
    eventually("clinic-b connected", Duration::from_secs(60), || {
        models_status(&b).map(|_| ())
    });
    b.kill9();

    let vectors = self_test_vectors(tmp.path());
    let model = candidate(&tmp.path().join("candidate"));
    publish(&hub, &model, 1, &vectors);
    rollout(&hub, 1, "clinic-a,clinic-b");
    becomes_active(&hub, &a, 1, A);
    // clinic-b was offline all along: it catches up when it comes back.
    assert_ne!(hub_state(&hub, 1, B).map(|s| s.0), Some("active".into()));
    b.start().unwrap();
    becomes_active(&hub, &b, 1, B);

    // Abort while clinic-a downloads: it drops the download, keeps its model.
    publish(&hub, &model, 2, &vectors);
    rollout(&hub, 2, "clinic-a");
    eventually("clinic-a downloading 2", Duration::from_secs(60), || {
        let d = models_status(&a)?["downloading"].clone();
        (d.get(0)?.as_u64()? == 2 && d.get(1)?.as_u64()? > 0).then_some(())
    });
    hub.model(&["abort", "--version", "2"]).unwrap();
    let r = refused_at_hub(&hub, 2, A);
    assert!(r.starts_with("aborted"), "{r}");
    eventually("the download gone", Duration::from_secs(15), || {
        models_status(&a)?["downloading"].is_null().then_some(())
    });
    assert_eq!(active_version(&a), Some(1));

    // NaN in service: release 3 passes its self-test (a white frame) and goes active;
    // the first real scan makes it return NaN. The agent rolls back to release 1 by
    // itself and analyses that scan again: its result reaches the hub from release 1.
    let (trap, white_vectors) = faulty_when_dark(&tmp.path().join("trap"), "nan");
    let before = results_from(&hub, A);
    let reason = faulty_in_service(&hub, &a, (&trap, &white_vectors), 3, "cb_patient29_L2.mp4");
    assert!(
        reason.contains("non-finite") || reason.contains("NaN"),
        "{reason}"
    );
    assert_eq!(active_version(&a), Some(1));
    let s = models_status(&a).unwrap();
    assert!(
        s["alarm"]
            .as_str()
            .is_some_and(|x| x.contains("3 rolled back")),
        "an alarm in the agent's status: {s}"
    );
    eventually(
        "the scan's result at the hub",
        Duration::from_secs(120),
        || (results_from(&hub, A) == before + 1).then_some(()),
    );
    let cases = hub.cases().unwrap();
    let analysed: Vec<_> = cases
        .iter()
        .filter_map(|c| c.result.as_ref())
        .filter(|r| r.clinic_id == "clinic-a")
        .collect();
    assert_eq!(analysed.len(), 1, "{analysed:?}");
    assert_eq!(
        analysed[0].model_release, 1,
        "read again by the release rolled back to"
    );
    assert!(
        !a.inbox.join("fault_cb_patient29_L2.mp4").exists(),
        "the scan left the inbox"
    );

    // NaN on the self-test: release 4 (the same trap, tested on a real frame) never runs.
    publish(&hub, &trap, 4, &vectors);
    rollout(&hub, 4, "clinic-a");
    let r = refused_at_hub(&hub, 4, A);
    assert!(r.starts_with("self_test_failed:"), "{r}");
    assert_eq!(active_version(&a), Some(1));

    // Out-of-range in service: release 5 adds 2 to its outputs on dark frames, so its
    // class probabilities leave 0..1 (finite, so only the range check sees it). Rolled
    // back at once; the scan is read again by release 1.
    let (range_trap, range_vectors) = faulty_when_dark(&tmp.path().join("range-trap"), "2");
    let before = results_from(&hub, A);
    let reason = faulty_in_service(
        &hub,
        &a,
        (&range_trap, &range_vectors),
        5,
        "cb_patient16_R1.mp4",
    );
    assert!(reason.contains("out-of-range"), "{reason}");
    assert_eq!(active_version(&a), Some(1));
    eventually(
        "the second scan's result at the hub",
        Duration::from_secs(120),
        || (results_from(&hub, A) == before + 1).then_some(()),
    );
    let releases: Vec<u64> = hub
        .cases()
        .unwrap()
        .iter()
        .filter_map(|c| c.result.as_ref())
        .filter(|r| r.clinic_id == "clinic-a")
        .map(|r| r.model_release)
        .collect();
    assert_eq!(releases, vec![1, 1], "both scans read by release 1");

    // Killed the moment it has verified release 6 (install and self-test done, the
    // switch under way or just done): the restart finishes the job from the complete
    // download (or finds it done); it ends on exactly one verified model, release 6,
    // with release 1 as its previous one and no download left.
    let log = a.dir.join("agent.log");
    let verified = || log_text(&log).matches("model release verified").count();
    let before = verified();
    publish(&hub, &model, 6, &vectors);
    rollout(&hub, 6, "clinic-a");
    let t0 = std::time::Instant::now();
    while verified() == before {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "release 6 never verified"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    a.kill9();
    eprintln!("killed as release 6 was verified: {:?}", current_json(&a));
    a.start().unwrap();
    becomes_active(&hub, &a, 6, A);
    let s = models_status(&a).unwrap();
    assert!(
        s["alarm"].is_null() || !s["alarm"].as_str().unwrap().contains(" 6 "),
        "{s}"
    );
    let current = current_json(&a).expect("current.json");
    let slot_version = |slot: &serde_json::Value| -> Option<u64> {
        let f = a
            .dir
            .join("data/models/slots")
            .join(slot.as_str()?)
            .join("release.json");
        let env: serde_json::Value = serde_json::from_slice(&std::fs::read(f).ok()?).ok()?;
        let manifest: serde_json::Value = serde_json::from_str(env["manifest"].as_str()?).ok()?;
        manifest["version"].as_u64()
    };
    assert_eq!(slot_version(&current["active"]), Some(6), "{current}");
    assert_eq!(slot_version(&current["previous"]), Some(1), "{current}");
    let left = std::fs::read_dir(a.dir.join("data/models/download"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "no download left behind");
    a.kill9();
    b.kill9();
}
