use std::path::Path;
use std::sync::atomic::Ordering;

use pleura_shared::now_ms;
use pleura_shared::signing::BatchSigner;
use pleura_shared::wire::{downlink, Receipt, Verdict};

use super::*;

fn seal(key: &Path, clinic: &str, device: &str, kind: uplink::Kind, schema: u32) -> Vec<u8> {
    let body = Uplink {
        schema_version: schema,
        clinic_id: clinic.into(),
        device_id: device.into(),
        sent_at_ms: 1,
        kind: Some(kind),
    }
    .encode_to_vec();
    let signature = BatchSigner::from_pem_file(key)
        .unwrap()
        .sign_in(Domain::Uplink, &body);
    SignedUplink { body, signature }.encode_to_vec()
}

fn receipt(id: [u8; 16]) -> uplink::Kind {
    uplink::Kind::Receipt(Receipt {
        message_ids: vec![id.to_vec()],
    })
}

#[test]
fn only_the_enrolled_device_of_the_topic_can_receipt_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = crate::ca::Pki::init(&pki_dir, "t", &["localhost".into()]).unwrap();
    let now = (now_ms() / 1000) as i64;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    pki.enroll("c1", "a", "north", now - 60, now + 3600, &a)
        .unwrap();
    pki.enroll("c1", "b", "north", now - 60, now + 3600, &b)
        .unwrap();
    // The bundle carries the hub's downlink key.
    let (signer, created) = pki.downlink_signer().unwrap();
    assert!(!created, "ca init made the downlink key");
    let shipped = std::fs::read_to_string(a.join(crate::ca::DOWNLINK_BUNDLE_FILE)).unwrap();
    assert_eq!(
        crate::ca::parse_downlink_public(&shipped).unwrap(),
        signer.public_key()
    );

    let metrics = Arc::new(Metrics::default());
    let dl =
        Arc::new(Downlink::open(&dir.path().join("data"), Some(signer), metrics.clone()).unwrap());
    let v = downlink::Kind::Verdict(Verdict {
        exam_id: vec![1; 16],
        ..Default::default()
    });
    let id = dl.send("c1", "a", v).unwrap();
    let up = UplinkDispatcher {
        registry: Some(Arc::new(Registry::new(&pki_dir).unwrap())),
        downlink: dl.clone(),
        media: None,
        models: None,
        metrics: metrics.clone(),
        max_payload: 64 * 1024,
    };
    let topic_a = topics::uplink("c1", "a");
    let label = |topic: &str, payload: &[u8]| up.dispatch(topic, payload).err().map(|e| e.label());

    // b's key on a's topic; a's message on b's topic; unsigned; wrong schema.
    let by_b = seal(
        &b.join("device.key"),
        "c1",
        "a",
        receipt(id),
        SCHEMA_VERSION,
    );
    assert_eq!(label(&topic_a, &by_b), Some("signature"));
    let a_msg = seal(
        &a.join("device.key"),
        "c1",
        "a",
        receipt(id),
        SCHEMA_VERSION,
    );
    assert_eq!(label(&topics::uplink("c1", "b"), &a_msg), Some("signature"));
    let claims_b = seal(
        &a.join("device.key"),
        "c1",
        "b",
        receipt(id),
        SCHEMA_VERSION,
    );
    assert_eq!(label(&topic_a, &claims_b), Some("identity_mismatch"));
    let mut unsigned = SignedUplink::decode(a_msg.as_slice()).unwrap();
    unsigned.signature.clear();
    assert_eq!(
        label(&topic_a, &unsigned.encode_to_vec()),
        Some("signature")
    );
    let old = seal(
        &a.join("device.key"),
        "c1",
        "a",
        receipt(id),
        SCHEMA_VERSION + 1,
    );
    assert_eq!(label(&topic_a, &old), Some("schema_version"));
    assert_eq!(label(&topics::results("c1", "a"), &a_msg), Some("topic"));
    assert_eq!(label(&topic_a, b"junk"), Some("malformed"));
    assert_eq!(
        dl.pending("c1", "a").unwrap(),
        1,
        "nothing refused removed the message"
    );

    up.handle(&topic_a, &by_b);
    assert_eq!(metrics.uplink_rejected("signature"), 1);
    up.handle(&topic_a, &a_msg);
    assert_eq!(dl.pending("c1", "a").unwrap(), 0);
    assert_eq!(metrics.downlink_receipts.load(Ordering::Relaxed), 1);

    // A revoked device is refused.
    pki.revoke("c1", "a").unwrap();
    assert_eq!(label(&topic_a, &a_msg), Some("untrusted_device"));
}

#[test]
fn an_insecure_hub_takes_unsigned_messages_and_refuses_media_without_a_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let dl = Arc::new(Downlink::open(dir.path(), None, metrics.clone()).unwrap());
    let up = UplinkDispatcher {
        registry: None,
        downlink: dl,
        media: None,
        models: None,
        metrics,
        max_payload: 1024,
    };
    let body = Uplink {
        schema_version: SCHEMA_VERSION,
        clinic_id: "c1".into(),
        device_id: "a".into(),
        sent_at_ms: 1,
        kind: Some(uplink::Kind::MediaQuery(MediaQuery {
            sha256: vec![0; 32],
        })),
    };
    let msg = SignedUplink {
        body: body.encode_to_vec(),
        signature: vec![],
    };
    up.dispatch(&topics::uplink("c1", "a"), &msg.encode_to_vec())
        .unwrap();
    let big = vec![0u8; 2048];
    assert_eq!(
        up.dispatch(&topics::uplink("c1", "a"), &big)
            .unwrap_err()
            .label(),
        "too_large"
    );
}

#[derive(Default)]
struct FakeModels {
    seen: std::sync::Mutex<Vec<String>>,
}

impl ModelSink for FakeModels {
    fn fetch(&self, clinic: &str, device: &str, fetch: ModelFetch) -> ModelChunk {
        self.seen
            .lock()
            .unwrap()
            .push(format!("fetch {clinic}/{device} {}", fetch.offset));
        ModelChunk::default()
    }
    fn report(&self, clinic: &str, device: &str, report: ModelReport) {
        self.seen
            .lock()
            .unwrap()
            .push(format!("report {clinic}/{device} {}", report.state));
    }
}

#[test]
fn model_fetches_and_reports_go_to_the_model_task() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let models = Arc::new(FakeModels::default());
    let up = UplinkDispatcher {
        registry: None,
        downlink: Arc::new(Downlink::open(dir.path(), None, metrics.clone()).unwrap()),
        media: None,
        models: Some(models.clone()),
        metrics,
        max_payload: 4096,
    };
    let send = |kind| {
        let body = Uplink {
            schema_version: SCHEMA_VERSION,
            clinic_id: "c1".into(),
            device_id: "a".into(),
            sent_at_ms: 1,
            kind: Some(kind),
        };
        let msg = SignedUplink {
            body: body.encode_to_vec(),
            signature: vec![],
        };
        up.dispatch(&topics::uplink("c1", "a"), &msg.encode_to_vec())
    };
    send(uplink::Kind::ModelFetch(ModelFetch {
        release_version: 2,
        offset: 4096,
        ..Default::default()
    }))
    .unwrap();
    send(uplink::Kind::ModelReport(ModelReport {
        release_version: 2,
        state: 5,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(
        *models.seen.lock().unwrap(),
        ["fetch c1/a 4096", "report c1/a 5"]
    );
}
