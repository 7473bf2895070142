//! A specialist's verdict reaches the clinic exactly once (issue #13): queued at the hub
//! while the device is offline, published by the hub (at link-up, and again every 20 s
//! while unreceipted), verified and stored by the agent before its receipt, and gone from
//! the hub's queue once receipted; restarts lose and duplicate nothing. Real hub and agent
//! processes over mTLS, through the hub's embedded broker and through Mosquitto.
//!
//! The verdict is queued with `hub_server::downlink::Downlink::send` on the hub's own
//! queue (the call the case service makes when a specialist submits the form), with the
//! hub stopped, since its sled store is the running hub's alone.

use std::process::Command;
use std::time::Duration;

use hub_server::ca::Pki;
use pleura_e2e::*;
use pleura_proto::v1::{downlink, Impression, Recommendation, Verdict, ZoneScore};

fn verdicts(agent: &Agent) -> Vec<serde_json::Value> {
    let out = Command::new(bin("edge-agent"))
        .args(["verdicts", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "edge-agent verdicts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn connected(agent: &Agent) -> bool {
    agent
        .status()
        .ok()
        .and_then(|s| s["sync"]["mqtt_connected"].as_bool())
        .unwrap_or(false)
}

fn pending(hub: &Hub) -> Option<u64> {
    hub.metric("pleura_hub_downlink_pending ")
}

fn queue_verdict(hub: &Hub, clinic: &str, device: &str, exam: [u8; 16]) -> [u8; 16] {
    let dl = pleura_e2e::media::hub_downlink(hub);
    let v = Verdict {
        exam_id: exam.to_vec(),
        patient_key: vec![3; 16],
        scan_day: 20_000,
        zones: vec![ZoneScore {
            zone: "R2".into(),
            result_id: vec![4; 16],
            model_score: 2,
            score: 3,
            overridden: true,
        }],
        impression: Impression::CovidCompatible as i32,
        recommendation: Recommendation::Refer as i32,
        comment: "B-lines, subpleural consolidation R2".into(),
        reviewer: "dr-north".into(),
        given_at_ms: 1,
        ..Default::default()
    };
    let id = dl.send(clinic, device, downlink::Kind::Verdict(v)).unwrap();
    assert_eq!(dl.pending(clinic, device).unwrap(), 1);
    id
}

fn deliver_once(tmp: &std::path::Path, mosquitto: Option<&mut Mosquitto>) {
    let broker = match &mosquitto {
        Some(m) => Broker::External(m.port),
        None => Broker::Embedded,
    };
    let mut hub = Hub::new(&tmp.join("hub"), broker).unwrap();
    let opts = hub.agent_options();
    let (clinic, device) = (opts.clinic.clone(), opts.device.clone());
    let bundle = opts.bundle.clone().unwrap();
    assert!(
        bundle.join("hub-downlink.pub").exists(),
        "the bundle carries the hub key"
    );
    let mqtt_port = match &mosquitto {
        Some(m) => m.port,
        None => hub.mqtt_port,
    };
    if let Some(m) = mosquitto {
        m.start().unwrap();
    }
    hub.start().unwrap();
    let mut agent = Agent::new(&tmp.join("agent"), mqtt_port, opts).unwrap();
    // Once online, so that the broker knows its session; then offline.
    agent.start().unwrap();
    eventually("agent connected", Duration::from_secs(60), || {
        connected(&agent).then_some(())
    });
    agent.kill9();

    hub.kill9();
    let exam = rand::random::<[u8; 16]>();
    let id = queue_verdict(&hub, &clinic, &device, exam);
    hub.start().unwrap();
    // Published at link-up with the device offline; still pending (no receipt yet).
    eventually("verdict published", Duration::from_secs(30), || {
        (hub.metric("pleura_hub_downlink_published_total")? >= 1).then_some(())
    });
    assert_eq!(pending(&hub), Some(1));

    agent.start().unwrap();
    eventually(
        "verdict stored at the clinic",
        Duration::from_secs(60),
        || (agent.status().ok()?["verdicts"].as_u64()? == 1).then_some(()),
    );
    eventually("receipt reached the hub", Duration::from_secs(30), || {
        (pending(&hub)? == 0).then_some(())
    });
    let st = agent.status().unwrap();
    assert_eq!(st["downlink"]["trust"], "hub_key", "{st}");
    assert_eq!(st["downlink"]["dropped"], serde_json::json!({}), "{st}");

    // Restart both: nothing lost, nothing twice, nothing left to send.
    agent.kill9();
    hub.kill9();
    hub.start().unwrap();
    agent.start().unwrap();
    eventually("agent reconnected", Duration::from_secs(60), || {
        connected(&agent).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pending(&hub), Some(0));
    agent.kill9();
    let held = verdicts(&agent);
    assert_eq!(held.len(), 1, "exactly one verdict: {held:?}");
    let v = &held[0];
    assert_eq!(v["message_id"], hex(&id));
    assert_eq!(v["exam_id"], hex(&exam));
    assert_eq!(v["impression"], "IMPRESSION_COVID_COMPATIBLE");
    assert_eq!(v["recommendation"], "RECOMMENDATION_REFER");
    assert_eq!(v["zones"][0]["score"], 3);
    assert_eq!(v["comment"], "B-lines, subpleural consolidation R2");
}

#[test]
fn a_verdict_sent_while_the_device_is_offline_arrives_once_through_the_embedded_broker() {
    let tmp = tempfile::tempdir().unwrap();
    deliver_once(tmp.path(), None);
}

#[test]
fn a_verdict_sent_while_the_device_is_offline_arrives_once_through_mosquitto() {
    if Mosquitto::find().is_none() {
        eprintln!("mosquitto not installed; skipped (PLEURA_REQUIRE_MOSQUITTO=1 makes it fail)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hub_pki = tmp.path().join("hub/pki");
    // The hub's CA first: Mosquitto serves its certificates (the hub then keeps it).
    hub_admin(
        &["ca", "init", "--pki-dir", &hub_pki.to_string_lossy()],
        None,
    )
    .unwrap();
    let mut mosq = Mosquitto::with_tls(&tmp.path().join("mosquitto"), &hub_pki).unwrap();
    deliver_once(tmp.path(), Some(&mut mosq));
}

/// Whoever holds MQTT credentials able to write a device's downlink topic (here the
/// hub's own broker certificate, as a compromised broker or hub host would) still
/// cannot make the clinic accept a verdict: only the downlink key signs them, and each
/// names the one device it is for.
#[test]
fn a_verdict_not_signed_by_the_hubs_downlink_key_or_for_another_device_is_dropped() {
    if Mosquitto::find().is_none() {
        eprintln!("mosquitto not installed; skipped (PLEURA_REQUIRE_MOSQUITTO=1 makes it fail)");
        return;
    }
    use pleura_proto::v1::{Downlink as Body, SignedDownlink};
    use pleura_shared::signing::{BatchSigner, Domain};
    use prost::Message;

    let tmp = tempfile::tempdir().unwrap();
    let (mosq, mut hub) = hub_behind_mosquitto(tmp.path()).unwrap();
    let opts = hub.agent_options();
    let (clinic, device) = (opts.clinic.clone(), opts.device.clone());
    let port = mosq.port;
    hub.start().unwrap();
    let mut agent = Agent::new(&tmp.path().join("agent"), port, opts).unwrap();
    agent.start().unwrap();
    eventually("agent connected", Duration::from_secs(60), || {
        connected(&agent).then_some(())
    });

    let pki = hub.pki.clone().unwrap();
    let (hub_key, _) = Pki::open(&pki).unwrap().downlink_signer().unwrap();
    let (other_key, _) = BatchSigner::generate().unwrap();
    let seal = |key: &BatchSigner, dev: &str, id: u8| {
        let body = Body {
            schema_version: pleura_shared::SCHEMA_VERSION,
            clinic_id: clinic.clone(),
            device_id: dev.into(),
            message_id: vec![id; 16],
            created_at_ms: 1,
            kind: Some(downlink::Kind::Verdict(Verdict {
                exam_id: vec![1; 16],
                comment: "forged".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let signature = key.sign_in(Domain::Downlink, &body);
        SignedDownlink { body, signature }.encode_to_vec()
    };
    let tls = pleura_shared::pki::client_config(
        &pki.join("ca.pem"),
        Some((&pki.join("hub.pem"), &pki.join("hub.key"))),
    )
    .unwrap();
    let (client, mut conn) = mqtt_client("forger", port, Some(tls));
    let topic = pleura_shared::topics::downlink(&clinic, &device);
    let qos = rumqttc::QoS::AtLeastOnce;
    client
        .publish(&topic, qos, false, seal(&other_key, &device, 1))
        .unwrap();
    client
        .publish(&topic, qos, false, seal(&hub_key, "pi-other", 2))
        .unwrap();
    let pump = std::thread::spawn(move || {
        for ev in conn.iter().take(20) {
            if ev.is_err() {
                break;
            }
        }
    });
    eventually("both forgeries dropped", Duration::from_secs(30), || {
        let st = agent.status().ok()?;
        let d = &st["downlink"]["dropped"];
        (d["signature"].as_u64()? >= 1 && d["other_device"].as_u64()? >= 1).then_some(())
    });
    let _ = client.disconnect();
    let _ = pump.join();
    assert_eq!(agent.status().unwrap()["verdicts"], 0);
    agent.kill9();
    assert!(verdicts(&agent).is_empty());
}
