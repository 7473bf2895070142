//! `cargo run --release -p pleura-e2e --bin sync-bench`: the sync benchmarks of
//! BENCHMARKS.md, as ratios against a baseline measured in the same run.
//!
//! 1. Baseline: Mosquitto pub/sub of the same 10,000 results in the same batches,
//!    publisher → broker → subscriber, QoS 1, nothing stored.
//! 2. Pleura: an agent with a 10,000-result backlog reconnects; time until the hub
//!    (external Mosquitto) has committed and acknowledged all and the agent's queue
//!    is empty. Traffic passes a counting TCP proxy for bytes on the wire.
//! 3. The agent's RSS idle and its peak during the drain.
//! 4. The price of security: the same drain with mTLS and signed batches against the
//!    same broker in plaintext (embedded broker behind its TLS gate; Mosquitto with TLS).

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

    // Plaintext and unsigned on both sides, so the ratio to Mosquitto compares like
    // with like.
    let hub = Hub::new_insecure(&tmp.path().join("hub"), Broker::External(mosq.port))?;
    let plain = drain(hub, &tmp.path().join("agent"))?;
    plain.print("plaintext, external Mosquitto");
    println!("ratio     hub durable ingest (results/s) / mosquitto raw message rate (one-result messages/s) = {:.2}", single / plain.ingest);
    println!(
        "ratio     hub durable ingest / mosquitto moving the same {BATCH}-result batches = {:.3}",
        raw / plain.ingest
    );

    // The price of security on each broker: mTLS (+ the gate in front of the embedded
    // broker) and Ed25519-signed batches, against the same broker in plaintext.
    let hub = Hub::new_insecure(&tmp.path().join("hub-e"), Broker::Embedded)?;
    let emb_plain = drain(hub, &tmp.path().join("agent-e"))?;
    emb_plain.print("plaintext, embedded broker");
    let hub = Hub::new(&tmp.path().join("hub-et"), Broker::Embedded)?;
    let emb_tls = drain(hub, &tmp.path().join("agent-et"))?;
    emb_tls.print("mTLS + gate + signatures, embedded broker");
    let (_tls_mosq, hub) = hub_behind_mosquitto(&tmp.path().join("mt"))?;
    let mosq_tls = drain(hub, &tmp.path().join("agent-mt"))?;
    mosq_tls.print("mTLS + signatures, external Mosquitto (TLS, ACL)");
    for (name, secure, base) in [
        ("embedded broker", &emb_tls, &emb_plain),
        ("external Mosquitto", &mosq_tls, &plain),
    ] {
        println!(
            "ratio     secure / plaintext, {name}: ingest rate {:.2}, backlog drain time {:.2}, bytes on the wire {:.2}",
            base.ingest / secure.ingest,
            secure.drain / base.drain,
            secure.wire_per_result() / base.wire_per_result()
        );
    }
    Ok(())
}

struct Drain {
    /// Agent start → all committed at the hub and acknowledged, seconds.
    drain: f64,
    /// Hub's first to last commit, seconds.
    ingest: f64,
    up: u64,
    down: u64,
    peak_kib: u64,
    idle_kib: u64,
}

impl Drain {
    fn wire_per_result(&self) -> f64 {
        (self.up + self.down) as f64 / N as f64
    }

    fn print(&self, what: &str) {
        println!("pleura    [{what}] backlog of {N} drained (agent start → all committed at hub and acked): {:.2} s = {:.0} results/s", self.drain, N as f64 / self.drain);
        println!(
            "hub       [{what}] durable ingest, first to last commit: {:.2} s = {:.0} results/s",
            self.ingest,
            N as f64 / self.ingest
        );
        println!("wire      [{what}] agent → broker {:.0} bytes/result, broker → agent (acks) {:.0} bytes/result, total {:.0}",
            self.up as f64 / N as f64, self.down as f64 / N as f64, self.wire_per_result());
        println!(
            "memory    [{what}] agent RSS peak during sync {:.1} MiB, idle after {:.1} MiB",
            self.peak_kib as f64 / 1024.0,
            self.idle_kib as f64 / 1024.0
        );
    }
}

/// Starts `hub`, then an agent with an N-result backlog that reaches the hub's broker
/// (embedded or external) through a counting proxy, and times the drain.
fn drain(mut hub: Hub, agent_dir: &std::path::Path) -> Result<Drain> {
    hub.start()?;
    let proxy = CountingProxy::start(hub.mqtt_port, false)?;
    let mut agent = Agent::new(
        agent_dir,
        proxy.port,
        AgentOptions {
            batch_size: BATCH,
            max_in_flight: 1000,
            ..hub.agent_options()
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
    anyhow::ensure!(!hub.case_ids()?.is_empty(), "hub holds no cases");
    let peak_kib = rss_kib(pid, "VmHWM:");
    std::thread::sleep(Duration::from_secs(3));
    let idle_kib = rss_kib(pid, "VmRSS:");
    Ok(Drain {
        drain,
        ingest,
        up: proxy.up.load(Ordering::Relaxed),
        down: proxy.down.load(Ordering::Relaxed),
        peak_kib,
        idle_kib,
    })
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
                ..Default::default()
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
        finding_probs: vec![],
        ..Default::default()
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
