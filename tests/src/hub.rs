//! A hub-server process: its configuration, start, SIGKILL and metrics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::*;

pub enum Broker {
    Embedded,
    External(u16),
}

/// The operator account every test hub gets (to list cases and sync status).
pub const OPERATOR: (&str, &str) = ("ops", "operator password 1");

pub struct Hub {
    pub dir: PathBuf,
    pub mqtt_port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
    /// The hub's CA and registry; None for an insecure-plaintext hub.
    pub pki: Option<PathBuf>,
    pub accounts: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Hub {
    /// A hub in its default mode: mTLS with a CA of its own (`hub-server ca init`).
    pub fn new(dir: &Path, broker: Broker) -> Result<Self> {
        Self::build(dir, broker, true)
    }

    /// A hub in `insecure-plaintext` mode (only for tests that must read the bytes on
    /// the wire).
    pub fn new_insecure(dir: &Path, broker: Broker) -> Result<Self> {
        Self::build(dir, broker, false)
    }

    fn build(dir: &Path, broker: Broker, tls: bool) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let scheme = if tls { "mqtts" } else { "mqtt" };
        let (mqtt_port, broker_cfg) = match broker {
            Broker::Embedded => {
                let p = free_port();
                (
                    p,
                    format!("broker = \"embedded\"\nlisten = \"127.0.0.1:{p}\"\n"),
                )
            }
            Broker::External(p) => (
                p,
                format!("broker = \"external\"\nurl = \"{scheme}://127.0.0.1:{p}\"\n"),
            ),
        };
        let (grpc_port, metrics_port) = (free_port(), free_port());
        let pki_dir = dir.join("pki");
        let accounts = dir.join("accounts.json");
        if tls && !pki_dir.join("ca.pem").exists() {
            hub_admin(
                &["ca", "init", "--pki-dir", &pki_dir.to_string_lossy()],
                None,
            )?;
        }
        hub_admin(
            &[
                "user",
                "add",
                "--accounts",
                &accounts.to_string_lossy(),
                "--username",
                OPERATOR.0,
                "--role",
                "operator",
            ],
            Some(OPERATOR.1),
        )?;
        let mode = if tls { "mtls" } else { "insecure-plaintext" };
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\ngrpc_listen = \"127.0.0.1:{grpc_port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
                 [security]\nmode = \"{mode}\"\npki_dir = \"{}\"\naccounts_file = \"{}\"\n[mqtt]\n{broker_cfg}",
                dir.join("data").display(),
                pki_dir.display(),
                accounts.display(),
            ),
        )?;
        Ok(Self {
            dir: dir.into(),
            mqtt_port,
            grpc_port,
            metrics_port,
            pki: tls.then_some(pki_dir),
            accounts,
            config,
            child: None,
        })
    }

    /// Enrols a device with this hub's CA; returns its bundle (None for an insecure hub).
    pub fn enroll(&self, clinic: &str, device: &str, region: &str) -> Result<Option<PathBuf>> {
        let out = self.dir.join("bundles").join(format!("{clinic}-{device}"));
        let out_arg = out.to_string_lossy();
        // The data dir too: a hub with model keys puts its model-root.pub in the bundle.
        let data = self.data_dir();
        let data_arg = data.to_string_lossy();
        let done = self.device_admin(
            "enroll",
            clinic,
            device,
            &[
                "--region",
                region,
                "--out",
                &out_arg,
                "--data-dir",
                &data_arg,
            ],
        )?;
        Ok(done.then_some(out))
    }

    /// The hub's `data_dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `hub-server model <args…> --data-dir <data_dir>`: the model lifecycle's CLI, which
    /// works on files beside a running hub; returns its standard output.
    pub fn model(&self, args: &[&str]) -> Result<String> {
        let data = self.data_dir();
        let data = data.to_string_lossy();
        let mut all = vec!["model"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data-dir", &data]);
        hub_admin(&all, None)
    }

    /// `hub-server revoke` of a device enrolled with this hub, while it runs.
    pub fn revoke(&self, clinic: &str, device: &str) -> Result<()> {
        let done = self.device_admin("revoke", clinic, device, &[])?;
        anyhow::ensure!(done, "an insecure-plaintext hub has no CA to revoke from");
        Ok(())
    }

    /// `hub-server <cmd> --pki-dir … --clinic … --device … <extra>`; false for an insecure
    /// hub (no CA).
    fn device_admin(&self, cmd: &str, clinic: &str, device: &str, extra: &[&str]) -> Result<bool> {
        let Some(pki) = &self.pki else {
            return Ok(false);
        };
        let pki = pki.to_string_lossy();
        let mut args = vec![
            cmd,
            "--pki-dir",
            &pki,
            "--clinic",
            clinic,
            "--device",
            device,
        ];
        args.extend_from_slice(extra);
        hub_admin(&args, None)?;
        Ok(true)
    }

    /// Default agent options, enrolled with this hub (region "north").
    pub fn agent_options(&self) -> AgentOptions {
        let o = AgentOptions::default();
        let bundle = self
            .enroll(&o.clinic, &o.device, "north")
            .expect("enrolling the test device");
        AgentOptions { bundle, ..o }
    }

    pub fn add_user(
        &self,
        name: &str,
        role: &str,
        region: Option<&str>,
        password: &str,
    ) -> Result<()> {
        let accounts = self.accounts.to_string_lossy().into_owned();
        let mut args = vec![
            "user",
            "add",
            "--accounts",
            &accounts,
            "--username",
            name,
            "--role",
            role,
        ];
        if let Some(r) = region {
            args.extend(["--region", r]);
        }
        hub_admin(&args, Some(password)).map(drop)
    }

    pub fn start(&mut self) -> Result<()> {
        let c = spawn(
            Command::new(bin("hub-server"))
                .args(["serve", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info,rumqttd=warn"),
            &self.dir.join("hub.log"),
        )?;
        self.child = Some(c);
        let end = Instant::now() + Duration::from_secs(30);
        while !matches!(self.http("/healthz"), Some((200, _))) {
            assert!(
                Instant::now() < end,
                "hub not ready after 30 s; its log:\n{}",
                log_tail(&self.dir.join("hub.log"), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// GET on the metrics port: HTTPS trusting the hub's CA, plain for an insecure hub.
    pub fn http(&self, path: &str) -> Option<(u16, String)> {
        match &self.pki {
            Some(pki) => https_get(self.metrics_port, path, &pki.join("ca.pem")),
            None => http_get(self.metrics_port, path),
        }
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    pub fn metric(&self, name: &str) -> Option<u64> {
        let (_, body) = self.http("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
    }

    pub fn grpc_url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.grpc_port)
    }

    pub fn mqtt_url(&self, port: u16) -> String {
        let scheme = if self.pki.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{port}")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}
