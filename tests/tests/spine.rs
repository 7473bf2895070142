//! End-to-end and fault tests of the edge → hub spine, with real processes, real
//! brokers and real sled files. Each test uses its own ports and folders.

use std::collections::HashSet;
use std::time::Duration;

use pleura_e2e::*;
use rand::Rng;

const FIXTURES: [&str; 6] = [
    "pocus_pneu_emdocs1.png",
    "pocus_cov_oliviera_fig4a.jpg",
    "pocus_cov_atlas45.gif",
    "cb_frame.bmp",
    "cb_single_rgb.dcm",
    "cb_patient16_R1.mp4",
];

fn pending(agent: &Agent) -> Option<u64> {
    agent.status().ok()?["outbox"]["pending"].as_u64()
}

/// All `n` results at the hub, each once, and the agent's queue empty.
fn assert_all_arrived_once(hub: &Hub, agent: &Agent, n: usize, within: Duration) {
    eventually("every result at the hub", within, || {
        (hub.case_ids().ok()?.len() >= n).then_some(())
    });
    eventually("agent queue drained", Duration::from_secs(30), || {
        (pending(agent)? == 0).then_some(())
    });
    let ids = hub.case_ids().unwrap();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), n, "hub holds exactly the results sent");
    assert_eq!(unique.len(), n, "no result stored twice");
}

#[test]
fn hub_down_during_analysis_then_every_scan_arrives_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    let mut agent = Agent::new(&tmp.path().join("a"), hub.mqtt_port, hub.agent_options()).unwrap();
    agent.start().unwrap();
    for (i, f) in FIXTURES.iter().enumerate() {
        let src = repo_root().join("fixtures/scans").join(f);
        agent.drop_scan(&src, &format!("{i}_{f}")).unwrap();
    }
    agent
        .drop_scan(&repo_root().join("Cargo.toml"), "notes.txt")
        .unwrap();
    // Everything analysed and queued while the hub is down.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let st = loop {
        let s = agent.status().unwrap();
        if s["intake"]["analysed"].as_u64() == Some(FIXTURES.len() as u64) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "scans not analysed offline; status {s}\nlog:\n{}",
            log_tail(&agent.dir.join("agent.log"), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st["outbox"]["pending"], FIXTURES.len() as u64);
    assert_eq!(st["sync"]["mqtt_connected"], false);
    assert_eq!(
        st["intake"]["rejected"], 1,
        "the text file is rejected, not lost"
    );
    assert!(agent
        .dir
        .join("data/rejected/notes.txt.reason.txt")
        .exists());
    assert_eq!(std::fs::read_dir(&agent.inbox).unwrap().count(), 0);

    hub.start().unwrap();
    assert_all_arrived_once(&hub, &agent, FIXTURES.len(), Duration::from_secs(60));
    let st = agent.status().unwrap();
    assert_eq!(st["sync"]["mqtt_connected"], true);
}

#[test]
fn sigkill_the_agent_during_sync_twenty_times_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let opts = AgentOptions {
        batch_size: 10,
        max_in_flight: 20,
        ..hub.agent_options()
    };
    let mut agent = Agent::new(&tmp.path().join("a"), hub.mqtt_port, opts).unwrap();
    let n = 3000;
    agent.fill(n).unwrap();
    let mut rng = rand::rng();
    let mut last = 0;
    for round in 0..20 {
        agent.start().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(150..700)));
        agent.kill9();
        let got = hub.case_ids().unwrap().len();
        assert!(
            got >= last,
            "round {round}: hub lost results ({got} < {last})"
        );
        last = got;
    }
    assert!(
        last < n,
        "the kills should land mid-sync (all {n} synced already)"
    );
    agent.start().unwrap();
    assert_all_arrived_once(&hub, &agent, n, Duration::from_secs(120));
}

#[test]
fn sigkill_the_hub_mid_ingest_and_restart_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let opts = AgentOptions {
        batch_size: 10,
        max_in_flight: 20,
        ..hub.agent_options()
    };
    let mut agent = Agent::new(&tmp.path().join("a"), hub.mqtt_port, opts).unwrap();
    let n = 3000;
    agent.fill(n).unwrap();
    agent.start().unwrap();
    eventually("ingest under way", Duration::from_secs(60), || {
        (hub.case_ids().ok()?.len() > 100).then_some(())
    });
    hub.kill9();
    let before = agent.status().unwrap()["outbox"]["pending"]
        .as_u64()
        .unwrap();
    assert!(before > 0, "killed mid-ingest");
    hub.start().unwrap();
    assert_all_arrived_once(&hub, &agent, n, Duration::from_secs(120));
}

#[test]
fn mosquitto_end_to_end_with_a_broker_restart_mid_sync() {
    if Mosquitto::find().is_none() {
        eprintln!(
            "SKIPPED: mosquitto not installed (CI installs it and sets PLEURA_REQUIRE_MOSQUITTO=1)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Mosquitto as deployed: TLS, client certificates, the shipped ACL.
    let (mut mosq, mut hub) = hub_behind_mosquitto(tmp.path()).unwrap();
    hub.start().unwrap();
    let opts = AgentOptions {
        batch_size: 10,
        max_in_flight: 20,
        ..hub.agent_options()
    };
    let mut agent = Agent::new(&tmp.path().join("a"), mosq.port, opts).unwrap();
    let n = 3000;
    agent.fill(n).unwrap();
    agent
        .drop_scan(&repo_root().join("fixtures/scans/cb_frame.bmp"), "real.bmp")
        .unwrap();
    agent.start().unwrap();
    eventually("sync under way", Duration::from_secs(60), || {
        (hub.case_ids().ok()?.len() > 100).then_some(())
    });
    mosq.kill9();
    std::thread::sleep(Duration::from_millis(500));
    mosq.start().unwrap();
    assert_all_arrived_once(&hub, &agent, n + 1, Duration::from_secs(120));
}

#[test]
fn garbage_and_oversized_payloads_are_rejected_counted_and_valid_traffic_flows() {
    use rumqttc::QoS;
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();

    // An enrolled device gone bad: the gate lets it publish on its own topic only, and
    // what it publishes there is refused by the hub.
    let bundle = hub.enroll("clinic-a", "rogue-1", "north").unwrap().unwrap();
    let (client, mut conn) = device_mqtt(hub.mqtt_port, &bundle, "clinic-a", "rogue-1").unwrap();
    let topic = "pleura/v1/clinic/clinic-a/device/rogue-1/results";
    client
        .publish(topic, QoS::AtLeastOnce, false, b"\xff\xfe garbage".to_vec())
        .unwrap();
    client
        .publish(topic, QoS::AtLeastOnce, false, vec![7u8; 100 * 1024])
        .unwrap();
    // A well-formed batch from a future schema version.
    let future = pleura_proto::v1::ResultBatch {
        schema_version: 99,
        clinic_id: "clinic-a".into(),
        device_id: "rogue-1".into(),
        results: vec![],
        ..Default::default()
    };
    let envelope = pleura_proto::v1::SignedBatch {
        batch: prost::Message::encode_to_vec(&future),
        signature: vec![],
    };
    client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            prost::Message::encode_to_vec(&envelope),
        )
        .unwrap();
    client.disconnect().unwrap();
    for ev in conn.iter() {
        if ev.is_err() {
            break;
        }
    }
    eventually("rejections counted", Duration::from_secs(20), || {
        let m = |r: &str| {
            hub.metric(&format!(
                "pleura_hub_rejected_messages_total{{reason=\"{r}\"}}"
            ))
        };
        (m("malformed")? == 1 && m("too_large")? == 1 && m("schema_version")? == 1).then_some(())
    });

    let mut agent = Agent::new(&tmp.path().join("a"), hub.mqtt_port, hub.agent_options()).unwrap();
    agent.fill(25).unwrap();
    agent.start().unwrap();
    assert_all_arrived_once(&hub, &agent, 25, Duration::from_secs(60));
}

#[test]
fn grpc_fallback_delivers_when_mqtt_is_blocked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    // The agent's MQTT port leads nowhere; only gRPC gets through.
    let opts = AgentOptions {
        grpc_url: Some(hub.grpc_url()),
        ..hub.agent_options()
    };
    let mut agent = Agent::new(&tmp.path().join("a"), free_port(), opts).unwrap();
    agent.fill(120).unwrap();
    agent.start().unwrap();
    assert_all_arrived_once(&hub, &agent, 120, Duration::from_secs(60));
    assert_eq!(agent.status().unwrap()["sync"]["transport"], "grpc");
    assert!(hub.metric("pleura_hub_grpc_uploads_total").unwrap() >= 3);
}

#[test]
fn at_the_quota_new_scans_wait_in_the_inbox_with_an_alarm_and_nothing_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    let opts = AgentOptions {
        quota_bytes: 64 * 1024,
        ..hub.agent_options()
    };
    let mut agent = Agent::new(&tmp.path().join("a"), hub.mqtt_port, opts).unwrap();
    let queued = agent.fill_to_quota().unwrap();
    assert!(queued > 300, "{queued} results fill 64 KiB");
    agent.start().unwrap();
    agent
        .drop_scan(
            &repo_root().join("fixtures/scans/cb_frame.bmp"),
            "late_R1.bmp",
        )
        .unwrap();
    let st = eventually("the quota alarm", Duration::from_secs(60), || {
        let s = agent.status().ok()?;
        (s["intake"]["waiting_for_quota"].as_u64()? == 1).then_some(s)
    });
    let alarms = st["alarms"].to_string();
    assert!(alarms.contains("outbox full"), "{alarms}");
    assert!(
        agent.inbox.join("late_R1.bmp").exists(),
        "the scan waits, it is not dropped"
    );

    // The hub comes back: the backlog drains, the waiting scan goes through.
    hub.start().unwrap();
    assert_all_arrived_once(&hub, &agent, queued + 1, Duration::from_secs(90));
    // status.json is rewritten every second and intake clears its alarms at the end
    // of its round: they clear soon after the queue drains, and stay clear
    eventually("every alarm cleared", Duration::from_secs(15), || {
        let s = agent.status().ok()?;
        (s["alarms"].as_array()?.is_empty()).then_some(())
    });
    assert!(!agent.inbox.join("late_R1.bmp").exists());
}

#[test]
fn the_largest_configured_batches_fit_the_hubs_limit_on_mqtt_and_grpc() {
    // 500 results a batch (the most `sync.batch_size` allows) are ~100 kB: the agent must
    // cut them to the hub's 64 KiB batch limit, or every batch is refused and nothing
    // arrives.
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let big = |grpc_url| AgentOptions {
        batch_size: 500,
        max_in_flight: 1000,
        grpc_url,
        ..hub.agent_options()
    };
    let mut mqtt = Agent::new(&tmp.path().join("m"), hub.mqtt_port, big(None)).unwrap();
    mqtt.fill(700).unwrap();
    mqtt.start().unwrap();
    assert_all_arrived_once(&hub, &mqtt, 700, Duration::from_secs(60));

    // Only gRPC gets through for the second agent.
    let mut grpc = Agent::new(
        &tmp.path().join("g"),
        free_port(),
        big(Some(hub.grpc_url())),
    )
    .unwrap();
    grpc.fill(700).unwrap();
    grpc.start().unwrap();
    assert_all_arrived_once(&hub, &grpc, 1400, Duration::from_secs(60));
    assert_eq!(grpc.status().unwrap()["sync"]["transport"], "grpc");
}
