//! Device identity and people's access, end to end with real processes: the hub's TLS
//! gate in front of its embedded broker, Mosquitto with the shipped ACL, gRPC with
//! mTLS, tokens and roles. Each claim in SECURITY.md points at a test here.

use std::path::Path;
use std::time::Duration;

use pleura_e2e::*;
use pleura_proto::v1::hub_client::HubClient;
use pleura_proto::v1::{AggregatesRequest, GetCaseRequest, ListCasesRequest};
use pleura_shared::record::sample_record;
use pleura_shared::{topics, ScanRecord};
use prost::Message;
use rumqttc::{Event, Packet, QoS};

/// A batch of `records` claiming `clinic/device`, signed with the key in `bundle`.
/// Connects, runs `act` once connected, then polls until the connection ends or
/// `settle` passes. Returns whether it ever connected and whether the peer closed it.
fn session(
    (client, mut conn): (rumqttc::Client, rumqttc::Connection),
    settle: Duration,
    act: impl FnOnce(&rumqttc::Client),
) -> (bool, bool) {
    let mut act = Some(act);
    let end = std::time::Instant::now() + settle;
    let mut connected = false;
    while std::time::Instant::now() < end {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                connected = true;
                if let Some(a) = act.take() {
                    a(&client);
                }
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(_)) => return (connected, true),
        }
    }
    let _ = client.disconnect();
    (connected, false)
}

fn cases_of(hub: &Hub, clinic: &str, device: &str) -> usize {
    hub.devices()
        .unwrap()
        .iter()
        .find(|(d, _, _)| d == &format!("{clinic}/{device}"))
        .map_or(0, |(_, n, _)| *n as usize)
}

fn gate_refused(hub: &Hub, reason: &str) -> u64 {
    hub.metric(&format!(
        "pleura_hub_gate_refused_total{{reason=\"{reason}\"}}"
    ))
    .unwrap_or(0)
}

fn rejected(hub: &Hub, reason: &str) -> u64 {
    hub.metric(&format!(
        "pleura_hub_rejected_messages_total{{reason=\"{reason}\"}}"
    ))
    .unwrap_or(0)
}

#[test]
fn a_device_certificate_acts_only_for_its_own_clinic_and_device_on_the_embedded_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let a = hub.enroll("c1", "a", "north").unwrap().unwrap();
    hub.enroll("c1", "b", "north").unwrap();
    hub.enroll("c2", "x", "south").unwrap();
    let port = hub.mqtt_port;
    let settle = Duration::from_secs(3);

    // Publishing on device B's topic, or clinic C2's: the gate closes the connection.
    for (c, d) in [("c1", "b"), ("c2", "x")] {
        let batch = signed(c, d, &[sample_record(c, d, 2, true)], &a).encode_to_vec();
        let (connected, closed) =
            session(device_mqtt(port, &a, "c1", "a").unwrap(), settle, |cl| {
                cl.publish(topics::results(c, d), QoS::AtLeastOnce, false, batch)
                    .unwrap();
            });
        assert!(
            connected && closed,
            "publishing as {c}/{d} must end the session"
        );
    }
    assert_eq!(gate_refused(&hub, "publish_topic"), 2);

    // Subscribing to another device's acknowledgements, or to everyone's.
    for filter in [
        topics::acks("c1", "b"),
        "pleura/v1/clinic/+/device/+/acks".into(),
    ] {
        let (connected, closed) =
            session(device_mqtt(port, &a, "c1", "a").unwrap(), settle, |cl| {
                cl.subscribe(filter, QoS::AtLeastOnce).unwrap();
            });
        assert!(connected && closed);
    }
    assert_eq!(gate_refused(&hub, "subscribe_topic"), 2);

    // Taking over B's session by using B's client id with A's certificate.
    let tls = pleura_shared::pki::client_config(
        &a.join("ca.pem"),
        Some((&a.join("device.pem"), &a.join("device.key"))),
    )
    .unwrap();
    let (connected, _) = session(
        mqtt_client(&topics::client_id("c1", "b"), port, Some(tls)),
        settle,
        |_| {},
    );
    assert!(!connected);
    assert_eq!(gate_refused(&hub, "client_id"), 1);

    // On its own topic, a batch that claims C2 (signed with A's key) is refused by the
    // hub's signature check; A's own batch goes through.
    let forged = signed("c2", "x", &[sample_record("c2", "x", 3, true)], &a).encode_to_vec();
    let own = signed("c1", "a", &[sample_record("c1", "a", 1, false)], &a).encode_to_vec();
    let (connected, closed) = session(device_mqtt(port, &a, "c1", "a").unwrap(), settle, |cl| {
        let t = topics::results("c1", "a");
        cl.publish(t.clone(), QoS::AtLeastOnce, false, forged)
            .unwrap();
        cl.publish(t, QoS::AtLeastOnce, false, own).unwrap();
    });
    assert!(connected && !closed);
    eventually("A's own batch stored", Duration::from_secs(20), || {
        (cases_of(&hub, "c1", "a") == 1).then_some(())
    });
    assert_eq!(rejected(&hub, "signature"), 1);
    assert_eq!(cases_of(&hub, "c1", "b") + cases_of(&hub, "c2", "x"), 0);
}

/// Every way a certificate can be wrong, over MQTT (the gate) and gRPC (Upload).
#[test]
fn missing_expired_revoked_and_foreign_certificates_are_refused_over_mqtt_and_grpc() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let pki = hub.pki.clone().unwrap();
    let now = (pleura_shared::now_ms() / 1000) as i64;
    let good = hub.enroll("c1", "good", "north").unwrap().unwrap();
    let revoked = hub.enroll("c1", "revoked", "north").unwrap().unwrap();
    let expired = tmp.path().join("expired");
    hub_server::ca::Pki::open(&pki)
        .unwrap()
        .enroll(
            "c1",
            "expired",
            "north",
            now - 2 * 86_400,
            now - 86_400,
            &expired,
        )
        .unwrap();
    let foreign_pki = tmp.path().join("foreign-ca");
    ca_init(&foreign_pki).unwrap();
    let foreign = tmp.path().join("foreign");
    hub_server::ca::Pki::open(&foreign_pki)
        .unwrap()
        .enroll("c1", "good", "north", now - 60, now + 86_400, &foreign)
        .unwrap();

    let mqtt_ok = |bundle: &Path, device: &str| {
        session(
            device_mqtt(hub.mqtt_port, bundle, "c1", device).unwrap(),
            Duration::from_secs(2),
            |_| {},
        )
        .0
    };
    let upload = |bundle: Option<&Path>, device: &str| {
        let b = bundle.unwrap_or(&good);
        let batch = signed("c1", device, &[sample_record("c1", device, 1, false)], b);
        block_on(async {
            let mut c = HubClient::new(hub.channel(bundle).await?);
            Ok(c.upload(batch).await.map(|_| ()).map_err(|s| s.to_string()))
        })
        .unwrap_or_else(|e| Err(format!("transport: {e:#}")))
    };

    // Controls: the good and the soon-revoked device get in, both ways.
    assert!(mqtt_ok(&good, "good"));
    assert!(mqtt_ok(&revoked, "revoked"));
    upload(Some(&good), "good").unwrap();
    upload(Some(&revoked), "revoked").unwrap();

    hub.revoke("c1", "revoked").unwrap();

    for (what, bundle, device) in [
        ("revoked", &revoked, "revoked"),
        ("expired", &expired, "expired"),
        ("foreign-CA", &foreign, "good"),
    ] {
        assert!(!mqtt_ok(bundle, device), "{what} certificate got onto MQTT");
        let r = upload(Some(bundle), device);
        assert!(r.is_err(), "{what} certificate uploaded over gRPC");
    }
    // No certificate at all: TLS without a client certificate.
    let (connected, _) = session(
        mqtt_client(
            &topics::client_id("c1", "good"),
            hub.mqtt_port,
            Some(pleura_shared::pki::client_config(&good.join("ca.pem"), None).unwrap()),
        ),
        Duration::from_secs(2),
        |_| {},
    );
    assert!(!connected, "no certificate got onto MQTT");
    // Nor plaintext.
    let (connected, _) = session(
        mqtt_client(&topics::client_id("c1", "good"), hub.mqtt_port, None),
        Duration::from_secs(2),
        |_| {},
    );
    assert!(!connected, "plaintext got onto MQTT");
    let r = upload(None, "good");
    assert!(
        r.as_ref().unwrap_err().contains("client certificate"),
        "{r:?}"
    );
    assert!(gate_refused(&hub, "tls") >= 5);
    // Two uploads (the controls) and nothing else.
    assert_eq!(hub.case_ids().unwrap().len(), 2);
}

/// Revoking a device also closes the connection it already holds on the gate, within
/// the gate's re-check period; a device left alone stays connected meanwhile.
#[test]
fn revoking_a_connected_device_closes_its_open_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let kept = hub.enroll("c1", "kept", "north").unwrap().unwrap();
    let gone = hub.enroll("c1", "gone", "north").unwrap().unwrap();
    let window = hub_server::gate::RECHECK * 3;
    std::thread::scope(|s| {
        let control = s.spawn(|| {
            session(
                device_mqtt(hub.mqtt_port, &kept, "c1", "kept").unwrap(),
                window,
                |_| {},
            )
        });
        let (connected, closed) = session(
            device_mqtt(hub.mqtt_port, &gone, "c1", "gone").unwrap(),
            window,
            |_| hub.revoke("c1", "gone").unwrap(),
        );
        assert!(connected, "the device never connected");
        assert!(closed, "connection still open {window:?} after revocation");
        assert_eq!(control.join().unwrap(), (true, false), "control device");
    });
    assert_eq!(gate_refused(&hub, "revoked"), 1);
}

#[test]
fn through_mosquitto_the_acl_and_the_signatures_still_confine_a_device() {
    if Mosquitto::find().is_none() {
        eprintln!("SKIPPED: mosquitto not installed (CI installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (mosq, mut hub) = hub_behind_mosquitto(tmp.path()).unwrap();
    let pki = hub.pki.clone().unwrap();
    hub.start().unwrap();
    eventually("hub subscribed", Duration::from_secs(20), || {
        (hub.metric("pleura_hub_mqtt_connected")? == 1).then_some(())
    });
    let a = hub.enroll("c1", "a", "north").unwrap().unwrap();
    hub.enroll("c1", "b", "north").unwrap();

    // B's topic (the ACL drops it), a forged claim on A's own topic (the signature
    // check refuses it), then A's own batch (arrives).
    let to_b = signed("c1", "b", &[sample_record("c1", "b", 2, true)], &a).encode_to_vec();
    let forged = signed("c1", "b", &[sample_record("c1", "b", 2, true)], &a).encode_to_vec();
    let own = signed("c1", "a", &[sample_record("c1", "a", 2, true)], &a).encode_to_vec();
    let (connected, _) = session(
        device_mqtt(mosq.port, &a, "c1", "a").unwrap(),
        Duration::from_secs(3),
        |cl| {
            cl.publish(topics::results("c1", "b"), QoS::AtLeastOnce, false, to_b)
                .unwrap();
            let t = topics::results("c1", "a");
            cl.publish(t.clone(), QoS::AtLeastOnce, false, forged)
                .unwrap();
            cl.publish(t, QoS::AtLeastOnce, false, own).unwrap();
        },
    );
    assert!(connected);
    eventually("A's own batch stored", Duration::from_secs(20), || {
        (cases_of(&hub, "c1", "a") == 1).then_some(())
    });
    assert_eq!(rejected(&hub, "signature"), 1, "the forged claim, refused");
    assert_eq!(cases_of(&hub, "c1", "b"), 0);
    assert_eq!(
        hub.metric("pleura_hub_mqtt_messages_total"),
        Some(2),
        "the message to B's topic never reached the hub"
    );
    // No certificate: Mosquitto refuses the TLS handshake.
    let (connected, _) = session(
        mqtt_client(
            &topics::client_id("c1", "a"),
            mosq.port,
            Some(pleura_shared::pki::client_config(&pki.join("ca.pem"), None).unwrap()),
        ),
        Duration::from_secs(2),
        |_| {},
    );
    assert!(!connected);
}

#[test]
fn specialists_see_their_region_ministries_only_aggregates_and_every_access_is_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let north = hub.enroll("nclinic", "n1", "north").unwrap().unwrap();
    let south = hub.enroll("sclinic", "s1", "south").unwrap().unwrap();
    let n_flagged = sample_record("nclinic", "n1", 3, true);
    let n_normal = sample_record("nclinic", "n1", 0, false);
    let s_flagged = sample_record("sclinic", "s1", 3, true);
    for (bundle, c, d, recs) in [
        (
            &north,
            "nclinic",
            "n1",
            vec![n_flagged.clone(), n_normal.clone()],
        ),
        (&south, "sclinic", "s1", vec![s_flagged.clone()]),
    ] {
        let b = signed(c, d, &recs, bundle).encode_to_vec();
        session(
            device_mqtt(hub.mqtt_port, bundle, c, d).unwrap(),
            Duration::from_secs(2),
            |cl| {
                cl.publish(topics::results(c, d), QoS::AtLeastOnce, false, b)
                    .unwrap();
            },
        );
    }
    eventually("3 cases stored", Duration::from_secs(20), || {
        (hub.case_ids().ok()?.len() == 3).then_some(())
    });
    hub.add_user("ana", "specialist", Some("north"), "north specialist pw")
        .unwrap();
    hub.add_user("min", "ministry", None, "ministry viewer pw")
        .unwrap();

    block_on(async {
        let mut c = HubClient::new(hub.channel(None).await?);
        let ana = hub.login("ana", "north specialist pw").await?;
        let min = hub.login("min", "ministry viewer pw").await?;
        assert!(hub.login("ana", "wrong password here").await.is_err());

        // The north specialist's worklist: north's flagged case only.
        let list = c
            .list_cases(bearer(ListCasesRequest::default(), &ana))
            .await?
            .into_inner();
        let ids: Vec<Vec<u8>> = list
            .cases
            .iter()
            .map(|k| k.result.as_ref().unwrap().result_id.clone())
            .collect();
        assert_eq!(ids, vec![n_flagged.id.as_bytes().to_vec()]);
        let get = |id: &ScanRecord| GetCaseRequest {
            result_id: id.id.as_bytes().to_vec(),
        };
        c.get_case(bearer(get(&n_flagged), &ana)).await?;
        let e = c.get_case(bearer(get(&s_flagged), &ana)).await.unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::PermissionDenied,
            "R1 specialist reads R2"
        );

        // The ministry token reads no case, lists none, but gets the aggregates.
        let e = c.get_case(bearer(get(&n_flagged), &min)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = c
            .list_cases(bearer(ListCasesRequest::default(), &min))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // Only suppressed: 3 scans, 2 flagged are small counts (the records' scan day
        // is in 2024-W40).
        let agg = c
            .aggregates(bearer(
                AggregatesRequest {
                    from_week: "2024-W40".into(),
                    to_week: "2024-W40".into(),
                    ..Default::default()
                },
                &min,
            ))
            .await?
            .into_inner();
        assert!(agg.rows.is_empty());
        let scans = agg
            .tables
            .iter()
            .find(|t| t.id == "curve.examinations.regions")
            .expect("scans curve");
        assert!(scans.rows.iter().any(|r| r == "south"));
        assert!(scans.grand_total.as_ref().is_some_and(|g| g.suppressed));
        assert!(agg
            .tables
            .iter()
            .flat_map(|t| t.cells.iter())
            .all(|c| c.suppressed || c.value == 0 || c.value >= 5));

        // No token, a forged one.
        let e = c.get_case(get(&n_flagged)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = c
            .get_case(bearer(get(&n_flagged), &ana.replace("v1.", "v1.00")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        Ok(())
    })
    .unwrap();

    let audit = hub.dir.join("data/audit.log");
    let out = hub_admin(&["audit", "verify", &audit.to_string_lossy()], None).unwrap();
    assert!(out.contains("chain intact"), "{out}");
    let log = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let has = |user: &str, action: &str, target: &str, outcome: &str| {
        lines.iter().any(|l| {
            l.contains(&format!("\"user\":\"{user}\""))
                && l.contains(&format!("\"action\":\"{action}\""))
                && l.contains(target)
                && l.contains(outcome)
        })
    };
    let n_id = n_flagged.id.to_string();
    let s_id = s_flagged.id.to_string();
    assert!(has("ana", "get_case", &n_id, "\"allowed\""));
    assert!(has("ana", "get_case", &s_id, "denied"));
    assert!(has("min", "get_case", &n_id, "denied"));
    assert!(has("min", "list_cases", "", "denied"));
    assert!(has("ana", "login", "", "denied"));
}
