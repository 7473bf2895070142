//! The model task against a real downlink queue (sled), real release files and a real
//! audit log, across restarts.

use std::path::Path;
use std::sync::{Arc, Mutex};

use pleura_shared::wire::{downlink, ModelAction, ModelFetch, ModelReport, ModelState};

use super::rollout::{apply, Change};
use super::tests::{published, NOW};
use super::*;
use crate::audit::AuditLog;
use crate::downlink::Downlink;
use crate::error::HubError;
use crate::metrics::Metrics;

/// The real queue, plus a record of what went through it.
struct Recorder {
    dl: Downlink,
    sent: Mutex<Vec<(String, downlink::Kind)>>,
}

impl ModelOutbox for Recorder {
    fn send_with_id(
        &self,
        clinic: &str,
        device: &str,
        id: [u8; 16],
        kind: downlink::Kind,
    ) -> Result<(), HubError> {
        self.sent
            .lock()
            .unwrap()
            .push((format!("{clinic}/{device}"), kind.clone()));
        self.dl.send_with_id(clinic, device, id, kind).map(drop)
    }
    fn publish_ephemeral(&self, clinic: &str, device: &str, kind: downlink::Kind) {
        self.dl.publish_ephemeral(clinic, device, kind)
    }
}

struct Hub {
    control: ModelControl,
    out: Arc<Recorder>,
}

fn devices() -> Vec<(String, String)> {
    [("c1", "a"), ("c1", "b"), ("c2", "a")]
        .map(|(c, d)| (c.to_string(), d.to_string()))
        .to_vec()
}

/// A hub over `dir`'s data dir (opened afresh each call, as after a restart).
fn hub(dir: &Path, store: &ModelStore) -> Hub {
    let data = dir.join("data");
    let metrics = Arc::new(Metrics::default());
    let out = Arc::new(Recorder {
        dl: Downlink::open(&data, None, metrics.clone()).unwrap(),
        sent: Mutex::new(Vec::new()),
    });
    let audit = Arc::new(AuditLog::open(&data, metrics.clone()).unwrap());
    let control = ModelControl::open(
        store.clone(),
        out.clone(),
        Arc::new(devices()),
        Some(audit),
        metrics,
    );
    Hub { control, out }
}

fn plan(store: &ModelStore, version: u64, change: Change) {
    let mut f: RolloutFile = read_json(&store.rollout_path())
        .unwrap()
        .unwrap_or_default();
    apply(&mut f, version, change, NOW).unwrap();
    write_json(&store.rollout_path(), &f, 0o600).unwrap();
}

fn sent(h: &Hub) -> Vec<(String, downlink::Kind)> {
    std::mem::take(&mut *h.out.sent.lock().unwrap())
}

fn status(store: &ModelStore) -> StatusFile {
    read_json(&store.status_path()).unwrap().unwrap()
}

fn clinics(names: &[&str]) -> Cohort {
    Cohort::Clinics(names.iter().map(|s| s.to_string()).collect())
}

#[test]
fn offers_and_commands_are_queued_once_per_device_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let h = hub(dir.path(), &store);
    assert_eq!(h.control.tick().unwrap(), 0, "no plan: nothing offered");

    plan(
        &store,
        1,
        Change::Rollout {
            cohort: clinics(&["c1"]),
            shadow: true,
        },
    );
    assert_eq!(h.control.tick().unwrap(), 2);
    let offers = sent(&h);
    let release = store.release(1).unwrap();
    let chain = store.root_chain().unwrap();
    for (who, kind) in &offers {
        assert!(who.starts_with("c1/"), "{who}");
        let downlink::Kind::ModelOffer(o) = kind else {
            panic!("{kind:?}")
        };
        assert_eq!(o.release, release.envelope);
        assert_eq!(o.sha256, release.sha256);
        assert_eq!((o.size, o.release_version, o.shadow), (100_000, 1, true));
        assert_eq!(o.roots, vec![chain[0].1.clone()]);
        assert_eq!(o.model_version, "pleura-lite 1");
    }
    assert_eq!(h.control.tick().unwrap(), 0, "offered once");
    let st = status(&store);
    assert_eq!(st.releases[&1].devices["c1/a"].state, "offered");
    assert!(st.releases[&1].devices["c1/a"].offered_shadow);
    assert!(!st.releases[&1].devices.contains_key("c2/a"));
    assert_eq!(h.out.dl.pending("c1", "a").unwrap(), 1);
    drop(h);

    // Restart: nothing offered again; the queue still holds the offers.
    let h = hub(dir.path(), &store);
    assert_eq!(h.control.tick().unwrap(), 0);
    assert_eq!(h.out.dl.pending("c1", "b").unwrap(), 1);

    plan(&store, 1, Change::Promote);
    assert_eq!(h.control.tick().unwrap(), 2);
    for (_, kind) in sent(&h) {
        let downlink::Kind::ModelCommand(c) = kind else {
            panic!("{kind:?}")
        };
        assert_eq!(
            (c.release_version, c.action),
            (1, ModelAction::Promote as i32)
        );
    }
    drop(h);
    let h = hub(dir.path(), &store);
    assert_eq!(
        h.control.tick().unwrap(),
        0,
        "promoted once, across a restart"
    );

    // Widened after promotion: the late device installs it directly, no PROMOTE.
    plan(
        &store,
        1,
        Change::Rollout {
            cohort: clinics(&["c1", "c2"]),
            shadow: true,
        },
    );
    assert_eq!(h.control.tick().unwrap(), 1);
    let late = sent(&h);
    assert_eq!(late[0].0, "c2/a");
    assert!(matches!(&late[0].1, downlink::Kind::ModelOffer(o) if !o.shadow));
    assert_eq!(h.control.tick().unwrap(), 0);

    plan(&store, 1, Change::Abort);
    assert_eq!(
        h.control.tick().unwrap(),
        3,
        "every offered device told to abort"
    );
    assert_eq!(h.control.tick().unwrap(), 0);
    assert!(status(&store).releases[&1].devices["c2/a"].abort_sent);

    let log = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    assert_eq!(log.matches("model.plan").count(), 4, "{log}");
    assert!(log.contains("aborted, clinics c1,c2, shadow"));
}

#[test]
fn a_paused_rollout_offers_nothing_new_and_percent_cohorts_apply() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let h = hub(dir.path(), &store);
    plan(
        &store,
        1,
        Change::Rollout {
            cohort: Cohort::Percent(0),
            shadow: false,
        },
    );
    assert_eq!(h.control.tick().unwrap(), 0, "0% reaches nobody");
    plan(&store, 1, Change::Pause);
    plan(
        &store,
        1,
        Change::Rollout {
            cohort: Cohort::Percent(100),
            shadow: false,
        },
    );
    assert_eq!(
        h.control.tick().unwrap(),
        3,
        "a new rollout runs again, 100% is everyone"
    );
    plan(&store, 1, Change::Pause);
    assert_eq!(h.control.tick().unwrap(), 0);
}

fn fetch(
    h: &Hub,
    who: (&str, &str),
    version: u64,
    sha: &[u8],
    offset: u64,
    max: u32,
) -> pleura_shared::wire::ModelChunk {
    h.control.fetch(
        who.0,
        who.1,
        ModelFetch {
            release_version: version,
            sha256: sha.to_vec(),
            offset,
            max_bytes: max,
        },
    )
}

#[test]
fn fetches_get_the_file_in_chunks_and_refusals_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let h = hub(dir.path(), &store);
    let sha = store.release(1).unwrap().sha256;
    let a = ("c1", "a");
    let refused = |c: &pleura_shared::wire::ModelChunk| c.refused.clone();
    assert_eq!(
        refused(&fetch(&h, a, 1, &sha, 0, 0)),
        "release is not rolled out"
    );
    plan(
        &store,
        1,
        Change::Rollout {
            cohort: clinics(&["c1"]),
            shadow: false,
        },
    );
    h.control.tick().unwrap();

    let whole = std::fs::read(store.model_path(1)).unwrap();
    let mut got = Vec::new();
    while got.len() < whole.len() {
        let c = fetch(&h, a, 1, &sha, got.len() as u64, 0);
        assert!(c.refused.is_empty(), "{}", c.refused);
        assert_eq!((c.total, c.offset), (100_000, got.len() as u64));
        assert!(!c.data.is_empty() && c.data.len() <= MAX_CHUNK_BYTES);
        got.extend_from_slice(&c.data);
    }
    assert_eq!(got, whole);
    assert_eq!(fetch(&h, a, 1, &sha, 10, 100).data, whole[10..110]);
    assert_eq!(
        fetch(&h, a, 1, &sha, 0, 1 << 30).data.len(),
        MAX_CHUNK_BYTES
    );
    assert!(
        fetch(&h, a, 1, &sha, 100_000, 0).data.is_empty(),
        "at the end"
    );

    assert_eq!(
        refused(&fetch(&h, a, 1, &sha, 100_001, 0)),
        "offset is past the end of the model"
    );
    assert_eq!(refused(&fetch(&h, a, 7, &sha, 0, 0)), "unknown release");
    assert_eq!(
        refused(&fetch(&h, a, 1, &[0; 32], 0, 0)),
        "sha256 is not the release's model"
    );
    assert_eq!(
        refused(&fetch(&h, ("c2", "a"), 1, &sha, 0, 0)),
        "device is not in the release's cohort"
    );
    plan(&store, 1, Change::Abort);
    h.control.tick().unwrap();
    assert_eq!(
        refused(&fetch(&h, a, 1, &sha, 0, 0)),
        "release rollout aborted"
    );
}

fn report(h: &Hub, who: (&str, &str), state: ModelState, reason: &str, held: u64) {
    h.control.report(
        who.0,
        who.1,
        ModelReport {
            release_version: 1,
            state: state as i32,
            reason: reason.into(),
            held,
            active_version: 0,
        },
    );
}

#[test]
fn reports_reach_status_json_and_refusals_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let h = hub(dir.path(), &store);
    plan(
        &store,
        1,
        Change::Rollout {
            cohort: clinics(&["c1"]),
            shadow: true,
        },
    );
    h.control.tick().unwrap();
    report(&h, ("c1", "a"), ModelState::Downloading, "", 32_768);
    report(
        &h,
        ("c1", "b"),
        ModelState::Refused,
        "signing key abc is revoked\n\u{1b}[2Kc1/x\tactive",
        0,
    );
    h.control.tick().unwrap();
    let st = status(&store);
    let r = &st.releases[&1];
    assert_eq!((r.name.as_str(), r.size), ("pleura-lite", 100_000));
    assert_eq!(r.devices["c1/a"].state, "downloading");
    assert_eq!(r.devices["c1/a"].held, 32_768);
    let why = &r.devices["c1/b"].reason;
    assert!(why.starts_with("signing key abc is revoked"), "{why}");
    assert!(
        !why.chars().any(char::is_control),
        "device text reaches the operator's terminal without control characters: {why:?}"
    );
    assert!(
        r.devices["c1/a"].offered_at_ms.is_some(),
        "offer kept beside the report"
    );
    assert_eq!(r.devices["c1/b"].state, "refused");
    assert!(r.devices["c1/b"]
        .reason
        .starts_with("signing key abc is revoked"));
    let text = status::render(&st);
    assert!(text.contains("c1/a\tdownloading 32768/100000"), "{text}");
    assert!(
        text.contains("refused: signing key abc is revoked"),
        "{text}"
    );

    report(
        &h,
        ("c1", "a"),
        ModelState::RolledBack,
        "self-test failed: NaN",
        100_000,
    );
    let log = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    assert!(log.contains("refused: signing key abc is revoked"), "{log}");
    assert!(log.contains("rolled_back: self-test failed: NaN"), "{log}");
    h.control.flush().unwrap();
    drop(h);

    // A restart keeps what devices reported.
    let h = hub(dir.path(), &store);
    h.control.tick().unwrap();
    assert_eq!(
        status(&store).releases[&1].devices["c1/a"].state,
        "rolled_back"
    );
}

/// A revocation (root metadata v2) reaches every enrolled device at once, as a root-only
/// offer carrying the whole chain, once per device and version, across restarts; a new
/// root version goes out again.
#[test]
fn a_new_root_version_is_queued_to_every_device_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = published(dir.path());
    let h = hub(dir.path(), &store);
    assert_eq!(
        h.control.tick().unwrap(),
        0,
        "root v1 rides with offers only"
    );
    keys::revoke_signing_key(&store, None, None, NOW + 1).unwrap();
    assert_eq!(h.control.tick().unwrap(), 3);
    let chain: Vec<Vec<u8>> = store
        .root_chain()
        .unwrap()
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(chain.len(), 2);
    let mut to: Vec<String> = Vec::new();
    for (who, kind) in sent(&h) {
        let downlink::Kind::ModelOffer(o) = kind else {
            panic!("{kind:?}")
        };
        assert!(o.release.is_empty() && o.release_version == 0, "{o:?}");
        assert_eq!(o.roots, chain);
        to.push(who);
    }
    to.sort();
    assert_eq!(to, ["c1/a", "c1/b", "c2/a"]);
    assert_eq!(h.control.tick().unwrap(), 0, "once");
    drop(h);
    let h = hub(dir.path(), &store);
    assert_eq!(h.control.tick().unwrap(), 0, "once, across a restart");
    keys::rotate_signing_key(&store, None, true, NOW + 2).unwrap();
    assert_eq!(h.control.tick().unwrap(), 3, "root v3 goes out too");
}
