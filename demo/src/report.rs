//! What the demo prints once both clinics have synced: the cases at the hub, the
//! per-device counts, the agents' own status, and who may see what.

use std::path::Path;

use anyhow::{Context, Result};
use edge_agent::config::EdgeConfig;
use pleura_proto::v1::hub_client::HubClient;
use pleura_proto::v1::{AggregatesRequest, ListCasesRequest, LoginRequest, SyncStatusRequest};

use crate::setup::{bearer, status, PEOPLE};

pub async fn show(ca: &Path, grpc: u16, clinics: &[&EdgeConfig], root: &Path) -> Result<()> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca)?));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{grpc}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = HubClient::new(channel);
    let mut tokens = Vec::new();
    for (user, _, _, pw) in PEOPLE {
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
    for cfg in clinics {
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
    println!("  the ministry viewer's case list is refused ({denied}); over gRPC it gets no");
    println!(
        "  exact counts, only the report's {} tables with counts under {} suppressed:",
        agg.tables.len(),
        agg.suppression_threshold
    );
    if let Some(t) = agg
        .tables
        .iter()
        .find(|t| t.id == "curve.examinations.regions")
    {
        let show = |c: &pleura_proto::v1::Count| {
            if c.suppressed {
                "suppressed".to_string()
            } else {
                c.value.to_string()
            }
        };
        for (i, region) in t.rows.iter().enumerate() {
            println!(
                "  patients examined, region {region:<6} (last 12 weeks): {}",
                show(&t.row_totals[i])
            );
        }
        if let Some(g) = &t.grand_total {
            println!("  patients examined, all regions: {}", show(g));
        }
    }
    println!(
        "  every access above, refused ones included, is in the keyed audit log {} \
         (checked by `hub-server audit verify`)",
        root.join("hub/audit.log").display()
    );
    println!("\nPatients appear only as keyed pseudonyms; the key stays in each clinic.");
    println!("Results are signed by each device's enrolled key and travel over mutual TLS.");
    Ok(())
}
