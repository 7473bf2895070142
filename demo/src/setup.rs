//! The demo's set-up: free ports, the clinics' configurations, the regional CA with its
//! enrolled devices and accounts, and waiting on what the agents report.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edge_agent::config::{
    EdgeConfig, HubLink, InferenceSettings, IntakeSettings, SyncSettings, TlsFiles,
};
use hub_server::auth::Role;

/// The demo's people: user, role, region, password.
pub const PEOPLE: [(&str, Role, Option<&str>, &str); 3] = [
    ("operator", Role::Operator, None, "demo operator password"),
    (
        "dr-north",
        Role::Specialist,
        Some("north"),
        "demo specialist password",
    ),
    ("ministry", Role::Ministry, None, "demo ministry password"),
];

/// Creates the regional CA and the hub's model-signing keys, enrols each clinic's device
/// in its region (certificate, key and the model root key) and adds the accounts.
/// Returns the CA, its folder and the accounts file.
pub fn enrol(
    root: &Path,
    hub_dir: &Path,
    clinics: &[(&EdgeConfig, &str)],
) -> Result<(hub_server::ca::Pki, PathBuf, PathBuf)> {
    let pki_dir = root.join("pki");
    let pki = hub_server::ca::Pki::init(&pki_dir, "demo", &["127.0.0.1".into()])?;
    let models = hub_server::models::ModelStore::new(hub_dir);
    hub_server::models::keys::init_keys(&models, pleura_shared::now_ms())?;
    let root_pub = std::fs::read(models.root_public_key())?;
    let now = (pleura_shared::now_ms() / 1000) as i64;
    for (cfg, region) in clinics {
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
        let key = cfg.models.root_key.as_ref().context("models.root_key")?;
        std::fs::write(key, &root_pub)?;
    }
    let accounts = root.join("accounts.json");
    for (user, role, region, pw) in PEOPLE {
        hub_server::auth::add_account(&accounts, user, role, region, pw)?;
    }
    Ok((pki, pki_dir, accounts))
}

pub fn port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scans")
}

pub fn agent_config(root: &Path, clinic: &str, mqtt: u16, grpc: u16) -> EdgeConfig {
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
            hub_key: Some(bundle.join("hub-downlink.pub")),
        }),
        sync: SyncSettings {
            backoff_min_ms: 200,
            backoff_max_ms: 2_000,
            // Keep to MQTT in the demo, so the catch-up is visibly MQTT's.
            grpc_fallback_after: u32::MAX,
            ..SyncSettings::default()
        },
        inference: InferenceSettings {
            model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/pleura-lite.onnx"),
            poll_ms: 200,
            ..InferenceSettings::default()
        },
        intake: IntakeSettings::default(),
        media: Default::default(),
        // Enrolment puts the hub's model root key here: releases the hub publishes can
        // be rolled out to the demo's clinics (README, "Model updates").
        models: edge_agent::config::ModelsSettings {
            root_key: Some(bundle.join(pleura_shared::release::ROOT_PUBLIC_KEY_FILE)),
            ..Default::default()
        },
        clinic_page: Default::default(),
    }
}

/// Copies fixture scans into `inbox/<patient>/<zone>.<ext>` the way a device exports.
pub fn export(cfg: &EdgeConfig, scans: &[(&str, &str, &str)]) -> Result<()> {
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

pub fn status(cfg: &EdgeConfig) -> serde_json::Value {
    std::fs::read(cfg.status_file())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + within;
    while !f() {
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
