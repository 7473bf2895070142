//! The edge side of anti-entropy and retractions against the real hub: a hub whose
//! case store is lost gets every acknowledged result back from the agent (over MQTT
//! after the reconnect, over gRPC on the interval); a retraction queued with
//! `edge-agent retract` while the agent runs reaches the hub; and a gRPC-only agent's
//! status says the hub is reachable via gRPC, not "unreachable … backing-off".

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use pleura_e2e::*;
use pleura_proto::v1::Case;

/// Sets `[sync] reconcile_interval_s` in the agent's configuration.
fn reconcile_every(agent: &Agent, secs: u64) {
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let anchor = "grpc_fallback_after = 3\n";
    assert!(
        text.contains(anchor),
        "the harness's [sync] section changed"
    );
    let text = text.replace(anchor, &format!("{anchor}reconcile_interval_s = {secs}\n"));
    std::fs::write(&agent.config, text).unwrap();
}

fn status(agent: &Agent) -> serde_json::Value {
    agent.status().unwrap()
}

/// The hub holds exactly `n` distinct results.
fn hub_holds(hub: &Hub, n: usize, within: Duration, log: &std::path::Path) {
    let end = std::time::Instant::now() + within;
    loop {
        let ids = hub.case_ids().unwrap_or_default();
        let unique: HashSet<&String> = ids.iter().collect();
        if ids.len() == n && unique.len() == n {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "hub holds {} results ({} distinct), expected {n}; agent log:\n{}",
            ids.len(),
            unique.len(),
            log_tail(log, 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn lose_the_hubs_store(hub: &mut Hub) {
    hub.kill9();
    let store = hub.dir.join("data/cases.sled");
    assert!(
        store.exists(),
        "{} (hub store layout changed)",
        store.display()
    );
    std::fs::remove_dir_all(&store).unwrap();
    hub.start().unwrap();
}

#[test]
fn a_hub_that_lost_its_store_gets_every_result_back_after_the_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let mut agent = Agent::new(&tmp.path().join("a"), hub.mqtt_port, hub.agent_options()).unwrap();
    let log = agent.dir.join("agent.log");
    let n = 200;
    agent.fill(n).unwrap();
    agent.start().unwrap();
    hub_holds(&hub, n, Duration::from_secs(60), &log);
    eventually("agent queue drained", Duration::from_secs(30), || {
        (status(&agent)["outbox"]["pending"].as_u64()? == 0).then_some(())
    });

    // An idle agent logs no sync rounds (one line per round that did something).
    let rounds = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("sync round via")
            .count()
    };
    let before = rounds();
    assert!(before >= 1, "{}", log_tail(&log, 20));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rounds(), before, "{}", log_tail(&log, 20));

    // The hub loses every case; the agent (default 10 min interval) must notice at the
    // reconnect, not in ten minutes.
    lose_the_hubs_store(&mut hub);
    hub_holds(&hub, n, Duration::from_secs(60), &log);
    // status.json is rewritten every second.
    eventually("status counts the resend", Duration::from_secs(10), || {
        let s = status(&agent);
        (s["sync"]["resent_for_hub"].as_u64()? >= n as u64
            && s["sync"]["reconnects"].as_u64()? >= 2)
            .then_some(())
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the hub lacks acknowledged results; queued them again"),
        "{}",
        log_tail(&log, 30)
    );
    assert!(
        text.contains("sync round via mqtt"),
        "{}",
        log_tail(&log, 30)
    );
}

#[test]
fn over_grpc_alone_status_says_reachable_and_the_interval_check_repairs_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    // The agent's MQTT port leads nowhere; only gRPC gets through.
    let opts = AgentOptions {
        grpc_url: Some(hub.grpc_url()),
        ..hub.agent_options()
    };
    let mut agent = Agent::new(&tmp.path().join("a"), free_port(), opts).unwrap();
    reconcile_every(&agent, 2);
    let log = agent.dir.join("agent.log");
    let n = 120;
    agent.fill(n).unwrap();
    agent.start().unwrap();
    hub_holds(&hub, n, Duration::from_secs(60), &log);
    // Drained over gRPC: the status is current and specific (it said "unreachable …
    // backing-off" before).
    let st = eventually("idle over gRPC", Duration::from_secs(30), || {
        let s = status(&agent);
        (s["outbox"]["pending"].as_u64()? == 0 && s["sync"]["state"] == "idle").then_some(s)
    });
    let sync = &st["sync"];
    assert_eq!(sync["transport"], "grpc", "{sync}");
    assert_eq!(sync["reachable"], true, "{sync}");
    assert_eq!(sync["mqtt_connected"], false, "{sync}");
    assert_eq!(sync["grpc"]["up"], true, "{sync}");
    assert!(sync["grpc"]["last_ok_ms"].as_u64().is_some(), "{sync}");
    assert!(sync["mqtt"]["failures"].as_u64().unwrap() >= 3, "{sync}");
    let summary = sync["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("reachable via grpc (mqtt down: "),
        "{summary}"
    );

    lose_the_hubs_store(&mut hub);
    hub_holds(&hub, n, Duration::from_secs(60), &log);
    eventually("status counts the resend", Duration::from_secs(10), || {
        (status(&agent)["sync"]["resent_for_hub"].as_u64()? >= n as u64).then_some(())
    });
}

/// Every case the hub holds, as the operator sees them.
fn cases(hub: &Hub) -> Vec<Case> {
    hub.cases().unwrap()
}

fn retract(agent: &Agent, target: &str, reason: &str) -> std::process::Output {
    Command::new(bin("edge-agent"))
        .args(["retract", target, "--reason", reason, "--config"])
        .arg(&agent.config)
        .output()
        .unwrap()
}

#[test]
fn a_retraction_queued_while_the_agent_runs_reaches_the_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let mut agent = Agent::new(&tmp.path().join("a"), hub.mqtt_port, hub.agent_options()).unwrap();
    let log = agent.dir.join("agent.log");
    agent.fill(5).unwrap();
    agent.start().unwrap();
    hub_holds(&hub, 5, Duration::from_secs(60), &log);
    let target = hub.case_ids().unwrap()[0].clone();

    // Refused before anything is spooled: a bad id, no reason, a line break.
    for (t, r, why) in [
        (
            "not-an-id",
            "wrong patient",
            "neither a 32-hex-digit result id",
        ),
        (target.as_str(), "  ", "a reason is required"),
        (target.as_str(), "wrong\npatient", "control character"),
    ] {
        let out = retract(&agent, t, r);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
    }
    let spool = agent.dir.join("data/retractions");
    assert!(!spool.exists() || std::fs::read_dir(&spool).unwrap().count() == 0);

    let out = retract(&agent, &target, "filed under the wrong patient folder");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("retraction of {target} queued"))
            && said.contains("the hub records it at the next sync"),
        "{said}"
    );
    let case = eventually(
        "the hub marks the case retracted",
        Duration::from_secs(30),
        || {
            cases(&hub).into_iter().find(|c| {
                c.retracted && c.result.as_ref().map(|r| hex(&r.result_id)) == Some(target.clone())
            })
        },
    );
    assert_eq!(
        case.retraction_reason,
        "filed under the wrong patient folder"
    );
    assert_eq!(cases(&hub).len(), 5, "the case is kept");
    eventually(
        "the agent saw the hub record it",
        Duration::from_secs(15),
        || {
            let s = status(&agent);
            (s["sync"]["retractions_recorded"].as_u64()? == 1
                && s["outbox"]["retractions_pending"].as_u64()? == 0)
                .then_some(())
        },
    );
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "spool emptied"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("1 retraction(s) recorded"),
        "{}",
        log_tail(&log, 20)
    );
}
