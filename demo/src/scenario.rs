//! The demo's story, step by step: the southern clinic analyses offline, the hub comes
//! up, the northern clinic joins online, and both catch up; a flagged scan's preview
//! reaches the hub, the northern specialist reads it in the web application, and the
//! verdict comes back to the clinic's own page.

use std::time::Duration;

use anyhow::Result;
use hub_server::config::{HubConfig, MinistryConfig, MqttConfig, SecurityConfig};
use tokio_util::sync::CancellationToken;

use crate::ministry::{self, Dhis2Stand};
use crate::report;
use crate::review::Specialist;
use crate::setup::{self, agent_config, export, port, status, wait_for, PEOPLE};

/// The northern clinic's page PIN (the demo sets it; a clinic uses `edge-agent clinic-pin set`).
pub const CLINIC_PIN: &str = "2468-demo";

pub async fn run() -> Result<()> {
    let root = std::env::temp_dir().join(format!("pleura-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let (mqtt, grpc, metrics) = (port()?, port()?, port()?);
    println!("Pleura demo in {}", root.display());
    println!("(triage support only: the model's output is not a diagnosis)\n");

    let shutdown = CancellationToken::new();
    let south = agent_config(&root, "clinic-south", mqtt, grpc);
    let mut north = agent_config(&root, "clinic-north", mqtt, grpc);
    let clinic_page = port()?;
    north.clinic_page.enabled = true;
    north.clinic_page.listen = format!("127.0.0.1:{clinic_page}").parse()?;

    println!("0. The regional CA is created; each clinic's Pi is enrolled (certificate + key),");
    println!("   and three people get accounts: an operator, a northern specialist, a ministry viewer.\n");
    let (pki, pki_dir, accounts) = setup::enrol(
        &root,
        &root.join("hub"),
        &[(&north, "north"), (&south, "south")],
    )?;

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
    let dhis2 = Dhis2Stand::default().start().await?;
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
        ministry: MinistryConfig {
            dhis2: Some(Dhis2Stand::config(&dhis2, &root)?),
            ..MinistryConfig::default()
        },
    };
    hub_cfg.validate()?;
    tokio::spawn(hub_server::run(hub_cfg, shutdown.clone()));

    println!("3. clinic-north starts online, with its clinic page on. Its device exports 4 scans");
    println!("   (one is not a scan).\n");
    pleura_shared::fsutil::private_dir(&north.data_dir)?;
    edge_agent::clinic::auth::set_pin(&north.data_dir, CLINIC_PIN)?;
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

    report::show(&pki.ca_cert(), grpc, &[&north, &south], &root).await?;

    let (user, _, _, password) = PEOPLE[1];
    println!("\n4. The flagged scans' de-identified previews (key frames + activation maps) and");
    println!("   clips follow the results. {user} signs in to the hub's web application");
    println!("   (https://127.0.0.1:{metrics}/) and opens the most urgent examination.");
    let web = format!("127.0.0.1:{metrics}").parse()?;
    let dr = Specialist::login(web, &pki.ca_cert(), user, password).await?;
    let (exam, page) = dr.first_case_with_preview(Duration::from_secs(300)).await?;
    println!("   examination {exam}: preview at the hub; {user} claims it and answers:");
    println!("   COVID-19 compatible, refer.");
    dr.give_verdict(
        &exam,
        &page,
        "covid",
        "refer",
        "B-lines with a subpleural consolidation; refer for oxygen.",
    )
    .await?;
    wait_for(
        "the verdict to reach clinic-north",
        Duration::from_secs(120),
        || status(&north)["verdicts"] == 1,
    )
    .await?;
    println!("5. The verdict, signed by the hub, is held by clinic-north and shown on its page.\n");

    let (user_m, _, _, password_m) = PEOPLE[2];
    println!("6. The ministry viewer ({user_m}) signs in to the same web application:");
    ministry::visit(web, &pki.ca_cert(), user_m, password_m).await?;
    println!("   (the DHIS2 here is a local stand-in at {dhis2}; a real one is configured in");
    println!("   hub.toml's [ministry.dhis2]).\n");

    if std::env::var_os("PLEURA_DEMO_EXIT").is_none() {
        println!("Both web pages stay up until Ctrl-C (the browser will warn about the demo's own");
        println!(
            "certificates: accept them, or trust {}):",
            pki.ca_cert().display()
        );
        println!(
            "  specialist  https://127.0.0.1:{metrics}/  user {user}, password \"{password}\""
        );
        println!("  clinic      https://127.0.0.1:{clinic_page}/  PIN {CLINIC_PIN}");
        println!(
            "  ministry    https://127.0.0.1:{metrics}/ministry  user {user_m}, password \"{password_m}\""
        );
        println!(
            "To push a model release to clinic-north: README, \"Model updates\", with D={}",
            root.display()
        );
        tokio::signal::ctrl_c().await?;
    }
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
