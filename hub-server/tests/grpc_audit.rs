//! The gRPC API over real TLS, the hub running in this process: devices upload over
//! mTLS, people's `Aggregates` and `SyncStatus` calls are scoped by role, and every one
//! of them, allowed or refused, leaves a line in the audit log.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hub_server::audit::{self, AuditPaths, Entry};
use hub_server::auth::{add_account, Role};
use hub_server::ca::Pki;
use hub_server::config::HubConfig;
use pleura_proto::v1::hub_client::HubClient;
use pleura_proto::v1::{AggregatesRequest, LoginRequest, SignedBatch, SyncStatusRequest};
use pleura_shared::record::sample_record;
use pleura_shared::signing::BatchSigner;
use pleura_shared::wire::ResultBatch;
use pleura_shared::{ScanRecord, SCHEMA_VERSION};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

const PW: &str = "a long enough password";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A TLS channel trusting the hub's CA, as the device of `bundle` if given.
async fn channel(addr: SocketAddr, pki: &Path, bundle: Option<&Path>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        std::fs::read(pki.join("ca.pem")).unwrap(),
    ));
    if let Some(b) = bundle {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(b.join("device.pem")).unwrap(),
            std::fs::read(b.join("device.key")).unwrap(),
        ));
    }
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    for _ in 0..200 {
        if let Ok(c) = ep.connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the hub's gRPC port {addr} never answered");
}

fn signed(clinic: &str, device: &str, records: &[ScanRecord], bundle: &Path) -> SignedBatch {
    BatchSigner::from_pem_file(&bundle.join("device.key"))
        .unwrap()
        .seal(&ResultBatch {
            schema_version: SCHEMA_VERSION,
            clinic_id: clinic.into(),
            device_id: device.into(),
            results: records.iter().map(ScanRecord::to_wire).collect(),
            // Fleet health: the queue as the device saw it when it sent these.
            queue: Some(pleura_shared::wire::QueueReport {
                pending: records.len() as u64,
                oldest_pending_ms: 1_000,
                reported_at_ms: 2_000,
            }),
            ..Default::default()
        })
}

fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aggregates_and_sync_status_are_scoped_and_every_call_is_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki_dir, data) = (tmp.path().join("pki"), tmp.path().join("data"));
    let pki = Pki::init(&pki_dir, "test", &["127.0.0.1".into()]).unwrap();
    let now = (pleura_shared::now_ms() / 1000) as i64;
    let bundle = |name: &str| tmp.path().join(name);
    pki.enroll(
        "nclinic",
        "n1",
        "north",
        now - 60,
        now + 3600,
        &bundle("n1"),
    )
    .unwrap();
    pki.enroll(
        "sclinic",
        "s1",
        "south",
        now - 60,
        now + 3600,
        &bundle("s1"),
    )
    .unwrap();
    let accounts = tmp.path().join("accounts.json");
    add_account(&accounts, "ana", Role::Specialist, Some("north"), PW).unwrap();
    add_account(&accounts, "min", Role::Ministry, None, PW).unwrap();
    add_account(&accounts, "op", Role::Operator, None, PW).unwrap();

    let grpc = free_addr();
    let cfg: HubConfig = toml::from_str(&format!(
        "data_dir = {data:?}\ngrpc_listen = \"{grpc}\"\nmetrics_listen = \"{}\"\n\
         [mqtt]\nlisten = \"{}\"\n\
         [security]\npki_dir = {pki_dir:?}\naccounts_file = {accounts:?}\n",
        free_addr(),
        free_addr(),
    ))
    .unwrap();
    let shutdown = CancellationToken::new();
    let hub = tokio::spawn(hub_server::run(cfg, shutdown.clone()));

    for (clinic, device, records) in [
        (
            "nclinic",
            "n1",
            vec![
                sample_record("nclinic", "n1", 3, true),
                sample_record("nclinic", "n1", 0, false),
            ],
        ),
        (
            "sclinic",
            "s1",
            vec![sample_record("sclinic", "s1", 3, true)],
        ),
    ] {
        let b = bundle(device);
        let mut c = HubClient::new(channel(grpc, &pki_dir, Some(&b)).await);
        c.upload(signed(clinic, device, &records, &b))
            .await
            .unwrap();
    }

    let mut c = HubClient::new(channel(grpc, &pki_dir, None).await);
    let token = |user: &'static str| {
        let mut c = c.clone();
        async move {
            c.login(LoginRequest {
                username: user.into(),
                password: PW.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token
        }
    };
    let (ana, min, op) = (token("ana").await, token("min").await, token("op").await);

    // An operator counts every region exactly; a specialist only their own; the
    // ministry gets no exact rows, only the report's tables with small cells
    // suppressed (the sample records' scan day is in 2024-W40).
    let all = c
        .aggregates(bearer(AggregatesRequest::default(), &op))
        .await
        .unwrap()
        .into_inner()
        .rows;
    let scans: Vec<_> = all.iter().map(|r| (r.region.as_str(), r.scans)).collect();
    assert_eq!(scans, vec![("north", 2), ("south", 1)]);
    let week = AggregatesRequest {
        from_week: "2024-W40".into(),
        to_week: "2024-W40".into(),
        ..Default::default()
    };
    let ministry = c
        .aggregates(bearer(week.clone(), &min))
        .await
        .unwrap()
        .into_inner();
    assert!(ministry.rows.is_empty(), "no exact counts for the ministry");
    assert_eq!(ministry.suppression_threshold, 5);
    let curve = ministry
        .tables
        .iter()
        .find(|t| t.id == "curve.examinations.regions")
        .expect("the scans curve");
    assert_eq!(curve.rows, ["north", "south"]);
    assert_eq!(curve.cols, ["2024-W40"]);
    assert!(curve.cells.iter().all(|c| c.suppressed && c.value == 0));
    let shown: Vec<u64> = ministry
        .tables
        .iter()
        .flat_map(|t| t.cells.iter().chain(&t.row_totals).chain(&t.col_totals))
        .filter(|c| !c.suppressed)
        .map(|c| c.value)
        .collect();
    assert!(shown.iter().all(|v| *v == 0 || *v >= 5), "{shown:?}");
    // A bad week is named.
    let e = c
        .aggregates(bearer(
            AggregatesRequest {
                from_week: "2024-48".into(),
                ..Default::default()
            },
            &min,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("from_week"), "{}", e.message());
    // A specialist gets no national tables.
    let ana_tables = c
        .aggregates(bearer(week, &ana))
        .await
        .unwrap()
        .into_inner()
        .tables;
    assert!(ana_tables.is_empty());
    let north = c
        .aggregates(bearer(AggregatesRequest::default(), &ana))
        .await
        .unwrap()
        .into_inner()
        .rows;
    assert_eq!(north.len(), 1);
    assert_eq!((north[0].region.as_str(), north[0].scans), ("north", 2));

    // Sync status: operators only.
    let status = c
        .sync_status(bearer(SyncStatusRequest {}, &op))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.devices.len(), 2);
    for d in &status.devices {
        // Each device's last contact and queue report, as its upload carried it.
        assert!(d.last_seen_ms > 0, "{d:?}");
        assert_eq!(
            (d.queue_pending, d.oldest_pending_ms, d.queue_reported_ms),
            (d.results, 1_000, 2_000),
            "{d:?}"
        );
    }
    for t in [&min, &ana] {
        let e = c
            .sync_status(bearer(SyncStatusRequest {}, t))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
    }

    // Refused for the token: no token, a forged one. Apart by more than the folding
    // window, so that each is its own line.
    let e = c
        .aggregates(AggregatesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    tokio::time::sleep(hub_server::denials::WINDOW * 2).await;
    let e = c
        .sync_status(bearer(SyncStatusRequest {}, "v1.00.forged"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    shutdown.cancel();
    hub.await.unwrap().unwrap();

    let key = audit::load_key(&AuditPaths::in_dir(&data).key, false).unwrap();
    let entries: Vec<Entry> = audit::verify(&AuditPaths::in_dir(&data), &key)
        .unwrap()
        .entries;
    let has = |user: &str, action: &str, outcome: &str| {
        entries.iter().any(|e| {
            e.user == user
                && e.action.contains(action)
                && e.outcome.starts_with(outcome)
                && e.source == "127.0.0.1"
        })
    };
    assert!(has("min", "aggregates", "allowed"));
    assert!(has("ana", "aggregates", "allowed"));
    assert!(has("op", "sync_status", "allowed"));
    assert!(has(
        "min",
        "sync_status",
        "denied: sync status is for operators"
    ));
    assert!(has(
        "ana",
        "sync_status",
        "denied: sync status is for operators"
    ));
    assert!(has("-", "aggregates", "denied: no bearer token"));
    assert!(has("-", "sync_status", "denied: token is malformed"));
}
