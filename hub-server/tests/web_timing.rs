//! The worklist page with 100,000 examinations in the store, over real HTTPS (ignored by
//! default: `cargo test --release -p hub-server --test web_timing -- --ignored --nocapture`).

#[path = "support/web_client.rs"]
mod client;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use client::{rows, Client};
use hub_server::auth::{add_account, Role};
use hub_server::ca::Pki;
use hub_server::config::HubConfig;
use hub_server::store::{HubStore, SledStore};
use pleura_shared::record::sample_record;
use pleura_shared::ScanRecord;
use tokio_util::sync::CancellationToken;

const PW: &str = "a long enough password";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "timing: 100,000 examinations"]
async fn the_worklist_page_stays_fast_with_100k_examinations() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki_dir, data) = (tmp.path().join("pki"), tmp.path().join("data"));
    let pki = Pki::init(&pki_dir, "test", &["127.0.0.1".into()]).unwrap();
    let now_s = (pleura_shared::now_ms() / 1000) as i64;
    let clinics: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    for (i, c) in clinics.iter().enumerate() {
        let region = if i < 5 { "north" } else { "south" };
        pki.enroll(
            c,
            "d1",
            region,
            now_s - 60,
            now_s + 3600,
            &tmp.path().join(c),
        )
        .unwrap();
    }
    let accounts = tmp.path().join("accounts.json");
    add_account(&accounts, "ana", Role::Specialist, Some("north"), PW).unwrap();
    add_account(&accounts, "op", Role::Operator, None, PW).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    {
        let store = SledStore::open(&data).unwrap();
        let now = pleura_shared::now_ms();
        for batch in 0..200u32 {
            let records: Vec<ScanRecord> = (0..500u32)
                .map(|i| {
                    let n = batch * 500 + i;
                    let sev = (n % 4) as u8;
                    let mut r = sample_record(
                        &clinics[(n % 20) as usize],
                        "d1",
                        sev,
                        sev >= 2 || n % 3 == 0,
                    );
                    let mut key = [0u8; 16];
                    key[..4].copy_from_slice(&n.to_be_bytes());
                    r.patient_key = Some(key);
                    r
                })
                .collect();
            store
                .commit(&records, now - u64::from(batch) * 1000)
                .unwrap();
        }
    }
    let web = free_addr();
    let cfg: HubConfig = toml::from_str(&format!(
        "data_dir = {data:?}\ngrpc_listen = \"{}\"\nmetrics_listen = \"{web}\"\n\
         [mqtt]\nlisten = \"{}\"\n\
         [security]\npki_dir = {pki_dir:?}\naccounts_file = {accounts:?}\n",
        free_addr(),
        free_addr(),
    ))
    .unwrap();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let hub = tokio::spawn(hub_server::run(cfg, shutdown.clone()));
    let anon = Client::new(web, &pki_dir.join("ca.pem"));
    for _ in 0..1200 {
        if tokio::net::TcpStream::connect(web).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("hub start with 100,000 results: {:?}", started.elapsed());
    for user in ["ana", "op"] {
        let form = anon.get("/login").await;
        let nonce = form.cookie("pleura_login").unwrap();
        let a = anon
            .with_cookie("pleura_login", &nonce)
            .post(
                "/login",
                &[
                    ("username", user),
                    ("password", PW),
                    ("csrf", nonce.as_str()),
                ],
            )
            .await;
        let c = anon.with_cookie("pleura_session", &a.cookie("pleura_session").unwrap());
        for path in ["/", "/?page=40"] {
            let n = 10;
            let t = Instant::now();
            let mut last = None;
            for _ in 0..n {
                last = Some(c.get(path).await);
            }
            let page = last.unwrap();
            assert_eq!(page.status, 200);
            assert_eq!(rows(&page).len(), 50);
            eprintln!(
                "{user} GET {path}: {:?} per page, {} bytes",
                t.elapsed() / n,
                page.body.len()
            );
        }
    }
    shutdown.cancel();
    hub.await.unwrap().unwrap();
}
