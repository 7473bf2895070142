//! `cargo run --release -p pleura-e2e --bin sync-bench`: the sync benchmarks of
//! BENCHMARKS.md, as ratios against a baseline measured in the same run.
//!
//! 1. Baseline: Mosquitto pub/sub of the same 10,000 results in the same batches,
//!    publisher → broker → subscriber, QoS 1, nothing stored.
//! 2. Pleura: an agent with a 10,000-result backlog reconnects; time until the hub
//!    (external Mosquitto) has committed and acknowledged all and the agent's queue
//!    is empty. Traffic passes a counting TCP proxy for bytes on the wire.
//! 3. The agent's RSS idle and its peak during the drain.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pleura_e2e::*;

const N: usize = 10_000;
const BATCH: usize = 50;

fn main() -> Result<()> {
    Mosquitto::find().context("sync-bench needs mosquitto (apt-get install mosquitto)")?;
    let tmp = tempfile::tempdir()?;
    let mut mosq = Mosquitto::new(&tmp.path().join("mosquitto"))?;
    mosq.start()?;

    let single = baseline(mosq.port, 1)?;
    println!("baseline  mosquitto pub/sub, QoS 1, {N} one-result messages: {single:.3} s = {:.0} messages/s", N as f64 / single);
    let raw = baseline(mosq.port, BATCH)?;
    println!("baseline  mosquitto pub/sub, QoS 1, the same {N} results in {BATCH}-result messages: {raw:.3} s = {:.0} results/s", N as f64 / raw);

    // Plaintext and unsigned on both sides, so the ratio compares like with like; the
    // cost of TLS and signatures is not measured here yet.
    let mut hub = Hub::new_insecure(&tmp.path().join("hub"), Broker::External(mosq.port))?;
    hub.start()?;
    let proxy = CountingProxy::start(mosq.port, false)?;
    let mut agent = Agent::new(
        &tmp.path().join("agent"),
        proxy.port,
        AgentOptions {
            batch_size: BATCH,
            max_in_flight: 1000,
            ..Default::default()
        },
    )?;
    agent.fill(N)?;
    let t0 = Instant::now();
    agent.start()?;
    // The hub's committed counter, sampled every 10 ms: first and last commit.
    let mut first: Option<Instant> = None;
    let last = loop {
        let c = hub
            .metric("pleura_hub_results_committed_total ")
            .unwrap_or(0);
        if c > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if c >= N as u64 {
            break Instant::now();
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "backlog not drained in 10 min"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let pid = agent_pid(&agent)?;
    eventually("agent queue empty", Duration::from_secs(600), || {
        let s = agent.status().ok()?;
        (s["outbox"]["pending"].as_u64()? == 0 && s["sync"]["synced_total"].as_u64()? == N as u64)
            .then_some(())
    });
    let drain = t0.elapsed().as_secs_f64();
    let ingest = (last - first.unwrap_or(t0)).as_secs_f64().max(0.001);
    let at_hub = hub.case_ids()?.len();
    let peak = rss_kib(pid, "VmHWM:");
    std::thread::sleep(Duration::from_secs(3));
    let idle = rss_kib(pid, "VmRSS:");
    let (up, down) = (
        proxy.up.load(Ordering::Relaxed),
        proxy.down.load(Ordering::Relaxed),
    );

    println!("pleura    backlog of {N} drained (agent start → all committed at hub and acked): {drain:.2} s = {:.0} results/s; hub holds {at_hub}", N as f64 / drain);
    println!(
        "hub       durable ingest, first to last commit: {ingest:.2} s = {:.0} results/s",
        N as f64 / ingest
    );
    println!("ratio     hub durable ingest (results/s) / mosquitto raw message rate (one-result messages/s) = {:.2}", single / ingest);
    println!(
        "ratio     hub durable ingest / mosquitto moving the same {BATCH}-result batches = {:.3}",
        raw / ingest
    );
    println!("wire      agent → broker {:.0} bytes/result, broker → agent (acks) {:.0} bytes/result, total {:.0}",
        up as f64 / N as f64, down as f64 / N as f64, (up + down) as f64 / N as f64);
    println!(
        "memory    agent RSS peak during sync {:.1} MiB, idle after {:.1} MiB",
        peak as f64 / 1024.0,
        idle as f64 / 1024.0
    );
    Ok(())
}

/// Publishes the same payloads through Mosquitto to a subscriber; seconds until all arrived.
fn baseline(port: u16, batch: usize) -> Result<f64> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let batches: Vec<Vec<u8>> = (0..N / batch)
        .map(|_| {
            let b = pleura_proto::v1::ResultBatch {
                schema_version: 1,
                clinic_id: "c".into(),
                device_id: "d".into(),
                results: (0..batch).map(|_| pleura_shared_sample()).collect(),
            };
            prost::Message::encode_to_vec(&b)
        })
        .collect();
    let (sub, mut sub_conn) = Client::new(
        MqttOptions::new(format!("bench-sub-{batch}"), "127.0.0.1", port),
        100,
    );
    sub.subscribe(format!("bench/{batch}"), QoS::AtLeastOnce)?;
    for ev in sub_conn.iter() {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = ev {
            break;
        }
    }
    let expected = batches.len();
    let receiver = std::thread::spawn(move || {
        let mut got = 0;
        for ev in sub_conn.iter() {
            if let Ok(Event::Incoming(Packet::Publish(_))) = ev {
                got += 1;
                if got == expected {
                    break;
                }
            }
        }
    });
    let t0 = Instant::now();
    let mut opts = MqttOptions::new(format!("bench-pub-{batch}"), "127.0.0.1", port);
    opts.set_inflight((1000 / batch as u16).max(20));
    let (publ, mut pub_conn) = Client::new(opts, 100);
    std::thread::spawn(move || for _ in pub_conn.iter() {});
    for b in batches {
        publ.publish(format!("bench/{batch}"), QoS::AtLeastOnce, false, b)?;
    }
    receiver
        .join()
        .map_err(|_| anyhow::anyhow!("subscriber panicked"))?;
    Ok(t0.elapsed().as_secs_f64())
}

fn pleura_shared_sample() -> pleura_proto::v1::ScanResult {
    let mut r = pleura_proto::v1::ScanResult {
        result_id: (0..16).map(|_| rand::random()).collect(),
        clinic_id: "clinic-a".into(),
        device_id: "pi-123456789".into(),
        patient_key: (0..16).map(|_| rand::random()).collect(),
        zone: "R2".into(),
        scan_day: 20_000,
        analysed_at_ms: 1_730_000_000_000,
        format: "mp4".into(),
        class_probs: vec![0.2, 0.1, 0.7],
        severity: 1,
        severity_probs: vec![0.1, 0.7, 0.1, 0.1],
        uncertainty: 0.4,
        flagged: false,
        flag_reasons: vec![],
        frames_analysed: 32,
        frames_total: 60,
        model_version: "synthetic".into(),
        localisation: vec![128; 49],
        localisation_size: 7,
    };
    r.flagged = rand::random();
    r
}

fn agent_pid(agent: &Agent) -> Result<u32> {
    let s = eventually("agent status", Duration::from_secs(30), || {
        let s = agent.status().ok()?;
        (s["running"].as_bool()? && s["pid"].as_u64()? > 0).then_some(s)
    });
    s["pid"].as_u64().map(|p| p as u32).context("pid in status")
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
