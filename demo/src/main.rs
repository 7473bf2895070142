//! `cargo run --release -p pleura-demo`: starts a hub (embedded MQTT broker behind its
//! TLS gate) and two clinic agents on loopback, all on embedded defaults, with TLS on:
//! the demo creates the regional CA, enrols both devices and adds three accounts. The
//! southern clinic starts while the hub is down, analyses its scans offline, and
//! catches up once the hub is up. Prints what arrived where and who may see it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edge_agent::config::{
    EdgeConfig, HubLink, InferenceSettings, IntakeSettings, SyncSettings, TlsFiles,
};
use hub_server::auth::Role;
use hub_server::config::{HubConfig, MqttConfig, SecurityConfig};
use pleura_proto::v1::hub_client::HubClient;
use pleura_proto::v1::{AggregatesRequest, ListCasesRequest, LoginRequest, SyncStatusRequest};
use tokio_util::sync::CancellationToken;

fn port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A request carrying `authorization: Bearer <token>`.
fn bearer<T>(msg: T, token: &str) -> Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scans")
}

fn agent_config(root: &Path, clinic: &str, mqtt: u16, grpc: u16) -> EdgeConfig {
    let dir = root.join(clinic);
    let bundle = dir.join("bundle");
    EdgeConfig {
        clinic: clinic.into(),
        device: "pi-1".into(),
        inbox: dir.join("inbox"),
        data_dir: dir.join("data"),
        quota_bytes: 64 * 1024 * 1024,
        pseudonym_key_file: dir.join("data/pseudonym.key"),
        hub: HubLink {
            mqtt_url: format!("mqtts://127.0.0.1:{mqtt}"),
            grpc_url: Some(format!("https://127.0.0.1:{grpc}")),
            insecure_plaintext: false,
        },
        tls: Some(TlsFiles {
            ca: bundle.join("ca.pem"),
            cert: bundle.join("device.pem"),
            key: bundle.join("device.key"),
        }),
        sync: SyncSettings {
            backoff_min_ms: 200,
            backoff_max_ms: 2_000,
            // Keep to MQTT in the demo, so the catch-up is visibly MQTT's.
            grpc_fallback_after: u32::MAX,
            ..SyncSettings::default()
        },
        inference: InferenceSettings {
            model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/lusnet-s.onnx"),
            poll_ms: 200,
            ..InferenceSettings::default()
        },
        intake: IntakeSettings::default(),
    }
}

/// Copies fixture scans into `inbox/<patient>/<zone>.<ext>` the way a device exports.
fn export(cfg: &EdgeConfig, scans: &[(&str, &str, &str)]) -> Result<()> {
    for (patient, name, fixture) in scans {
        let dir = cfg.inbox.join(patient);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{name}.part"));
        std::fs::copy(fixtures().join(fixture), &tmp)
            .with_context(|| format!("copying fixture {fixture}"))?;
        std::fs::rename(tmp, dir.join(name))?;
    }
    Ok(())
}

fn status(cfg: &EdgeConfig) -> serde_json::Value {
    std::fs::read(cfg.status_file())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + within;
    while !f() {
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,rumqttd=off".into()),
        )
        .init();
    let root = std::env::temp_dir().join(format!("pleura-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let (mqtt, grpc, metrics) = (port()?, port()?, port()?);
    println!("Pleura demo in {}", root.display());
    println!("(triage support only: the model's output is not a diagnosis)\n");

    let shutdown = CancellationToken::new();
    let south = agent_config(&root, "clinic-south", mqtt, grpc);
    let north = agent_config(&root, "clinic-north", mqtt, grpc);

    println!("0. The regional CA is created; each clinic's Pi is enrolled (certificate + key),");
    println!("   and three people get accounts: an operator, a northern specialist, a ministry viewer.\n");
    let pki_dir = root.join("pki");
    let pki = hub_server::ca::Pki::init(&pki_dir, "demo", &["127.0.0.1".into()])?;
    let now = (pleura_shared::now_ms() / 1000) as i64;
    for (cfg, region) in [(&north, "north"), (&south, "south")] {
        let bundle = cfg
            .tls
            .as_ref()
            .context("tls")?
            .ca
            .parent()
            .context("bundle")?;
        pki.enroll(
            &cfg.clinic,
            &cfg.device,
            region,
            now - 60,
            now + 86_400,
            bundle,
        )?;
    }
    let accounts = root.join("accounts.json");
    let people = [
        ("operator", Role::Operator, None, "demo operator password"),
        (
            "dr-north",
            Role::Specialist,
            Some("north"),
            "demo specialist password",
        ),
        ("ministry", Role::Ministry, None, "demo ministry password"),
    ];
    for (user, role, region, pw) in people {
        hub_server::auth::add_account(&accounts, user, role, region, pw)?;
    }

    println!("1. clinic-south starts; the hub is DOWN. Its device exports 3 scans.");
    tokio::spawn(edge_agent::daemon::run(south.clone(), shutdown.clone()));
    export(
        &south,
        &[
            ("P-2001", "L2.mp4", "cb_patient29_L2.mp4"),
            ("P-2001", "R1.mp4", "cb_patient16_R1.mp4"),
            ("P-2002", "R3.dcm", "cb_multiframe.dcm"),
        ],
    )?;
    wait_for(
        "clinic-south to analyse offline",
        Duration::from_secs(300),
        || status(&south)["intake"]["analysed"] == 3,
    )
    .await?;
    let s = status(&south);
    println!(
        "   analysed offline; {} result(s) queued durably, hub reachable: {}\n",
        s["outbox"]["pending"], s["sync"]["mqtt_connected"]
    );

    println!("2. The hub starts (MQTT over mTLS on 127.0.0.1:{mqtt}, gRPC over TLS on {grpc}).");
    let hub_cfg = HubConfig {
        data_dir: root.join("hub"),
        mqtt: MqttConfig {
            listen: format!("127.0.0.1:{mqtt}").parse()?,
            ..MqttConfig::default()
        },
        grpc_listen: format!("127.0.0.1:{grpc}").parse()?,
        metrics_listen: format!("127.0.0.1:{metrics}").parse()?,
        security: SecurityConfig {
            pki_dir: pki_dir.clone(),
            accounts_file: accounts.clone(),
            ..SecurityConfig::default()
        },
    };
    hub_cfg.validate()?;
    tokio::spawn(hub_server::run(hub_cfg, shutdown.clone()));

    println!("3. clinic-north starts online. Its device exports 4 scans (one is not a scan).\n");
    tokio::spawn(edge_agent::daemon::run(north.clone(), shutdown.clone()));
    export(
        &north,
        &[
            ("P-1001", "R2.png", "pocus_pneu_emdocs1.png"),
            ("P-1001", "L1.gif", "pocus_cov_atlas45.gif"),
            ("P-1002", "R4.jpg", "pocus_cov_oliviera_fig4a.jpg"),
        ],
    )?;
    std::fs::write(north.inbox.join("referral-letter.txt"), "not an image")?;

    wait_for("both clinics to sync", Duration::from_secs(300), || {
        let (n, s) = (status(&north), status(&south));
        n["intake"]["analysed"] == 3
            && n["outbox"]["pending"] == 0
            && s["outbox"]["pending"] == 0
            && s["sync"]["synced_total"] == 3
    })
    .await?;

    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(pki.ca_cert())?),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{grpc}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = HubClient::new(channel);
    let mut tokens = Vec::new();
    for (user, _, _, pw) in people {
        let t = client
            .login(LoginRequest {
                username: user.into(),
                password: pw.into(),
            })
            .await?
            .into_inner()
            .token;
        tokens.push(t);
    }
    let cases = client
        .list_cases(bearer(ListCasesRequest::default(), &tokens[0])?)
        .await?
        .into_inner()
        .cases;
    println!(
        "What arrived at the hub ({} cases, each exactly once):",
        cases.len()
    );
    println!(
        "  {:<13} {:<5} {:<8} {:<8} {:<8} {:>6} {:>6} {:>6}  sev flagged",
        "clinic", "zone", "patient", "fmt", "result", "covid", "pneu", "normal"
    );
    for c in &cases {
        let r = c.result.as_ref().context("case without result")?;
        let p = &r.class_probs;
        println!(
            "  {:<13} {:<5} {:<8} {:<8} {:<8} {:>6.2} {:>6.2} {:>6.2}  {:<3} {}",
            r.clinic_id,
            r.zone,
            hex::encode(r.patient_key.get(..3).unwrap_or_default()),
            r.format,
            hex::encode(&r.result_id[..4]),
            p[0],
            p[1],
            p[2],
            r.severity,
            if r.flagged { "yes" } else { "no" }
        );
    }
    println!("\nPer device, as the hub counts them:");
    for d in client
        .sync_status(bearer(SyncStatusRequest {}, &tokens[0])?)
        .await?
        .into_inner()
        .devices
    {
        println!(
            "  {}/{}: {} result(s), {} redelivery(ies) deduplicated",
            d.clinic_id, d.device_id, d.results, d.duplicates
        );
    }
    println!("\nAgents (edge-agent status):");
    for cfg in [&north, &south] {
        let s = status(cfg);
        println!(
            "  {}: {} analysed, {} rejected (see {}), queue {}, last transport {}",
            cfg.clinic,
            s["intake"]["analysed"],
            s["intake"]["rejected"],
            cfg.rejected_dir().display(),
            s["outbox"]["pending"],
            s["sync"]["transport"].as_str().unwrap_or("-")
        );
    }
    let worklist = client
        .list_cases(bearer(ListCasesRequest::default(), &tokens[1])?)
        .await?
        .into_inner()
        .cases;
    println!(
        "\nWho sees what: dr-north's worklist holds {} flagged case(s), all from the north;",
        worklist.len()
    );
    let denied = client
        .list_cases(bearer(ListCasesRequest::default(), &tokens[2])?)
        .await
        .err()
        .map(|s| s.message().to_string())
        .unwrap_or_else(|| "allowed (unexpected)".into());
    let agg = client
        .aggregates(bearer(AggregatesRequest::default(), &tokens[2])?)
        .await?
        .into_inner();
    println!("  the ministry viewer's case list is refused ({denied}); its aggregates:");
    for r in &agg.rows {
        println!(
            "  region {:<6} day {}: {} scan(s), {} flagged, severity 0-3 {:?}",
            r.region, r.day, r.scans, r.flagged, r.by_severity
        );
    }
    println!(
        "  every access above, refused ones included, is in the keyed audit log {} \
         (checked by `hub-server audit verify`)",
        root.join("hub/audit.log").display()
    );
    println!("\nPatients appear only as keyed pseudonyms; the key stays in each clinic.");
    println!("Results are signed by each device's enrolled key and travel over mutual TLS.");
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
