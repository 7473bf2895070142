//! The real `edge-agent` daemon, configured for a test hub.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{bail, Context, Result};

use crate::*;

pub struct Agent {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub inbox: PathBuf,
    child: Option<Child>,
}

pub struct AgentOptions {
    pub clinic: String,
    pub device: String,
    pub batch_size: usize,
    pub max_in_flight: usize,
    pub grpc_url: Option<String>,
    pub quota_bytes: u64,
    /// Enrolment bundle (from `Hub::enroll`); None: insecure plaintext.
    pub bundle: Option<PathBuf>,
    /// `[models] max_bytes_per_s` when the bundle holds a model root key.
    pub model_bytes_per_s: u64,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            clinic: "clinic-a".into(),
            device: format!("pi-{}", rand::random::<u32>()),
            batch_size: 50,
            max_in_flight: 500,
            grpc_url: None,
            quota_bytes: 256 * 1024 * 1024,
            bundle: None,
            model_bytes_per_s: 4 * 1024 * 1024,
        }
    }
}

impl Agent {
    pub fn new(dir: &Path, mqtt_port: u16, o: AgentOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let inbox = dir.join("inbox");
        let config = dir.join("edge.toml");
        let grpc = o
            .grpc_url
            .map(|u| format!("grpc_url = \"{u}\"\n"))
            .unwrap_or_default();
        let (scheme, security) = match &o.bundle {
            Some(b) => (
                "mqtts",
                format!(
                    "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nhub_key = \"{}\"\n",
                    b.join("ca.pem").display(),
                    b.join("device.pem").display(),
                    b.join("device.key").display(),
                    b.join("hub-downlink.pub").display()
                ),
            ),
            None => ("mqtt", String::new()),
        };
        // A hub with model keys put its model root key in the bundle: take model offers.
        let models = match &o.bundle {
            Some(b) if b.join("model-root.pub").exists() => format!(
                "[models]\nroot_key = \"{}\"\nmax_bytes_per_s = {}\nfetch_timeout_s = 3\n",
                b.join("model-root.pub").display(),
                o.model_bytes_per_s
            ),
            _ => String::new(),
        };
        let insecure = o.bundle.is_none();
        std::fs::write(
            &config,
            format!(
                "clinic = \"{}\"\ndevice = \"{}\"\ninbox = \"{}\"\ndata_dir = \"{}\"\npseudonym_key_file = \"{}\"\nquota_bytes = {}\n\
                 [hub]\nmqtt_url = \"{scheme}://127.0.0.1:{mqtt_port}\"\ninsecure_plaintext = {insecure}\n{grpc}{security}\
                 [sync]\nbatch_size = {}\nmax_in_flight = {}\nack_timeout_ms = 3000\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\ngrpc_fallback_after = 3\n\
                 [inference]\nmodel = \"{}\"\npoll_ms = 200\n{models}",
                o.clinic,
                o.device,
                inbox.display(),
                dir.join("data").display(),
                dir.join("data/pseudonym.key").display(),
                o.quota_bytes,
                o.batch_size,
                o.max_in_flight,
                repo_root().join("models/pleura-lite.onnx").display()
            ),
        )?;
        std::fs::create_dir_all(&inbox)?;
        Ok(Self {
            dir: dir.into(),
            config,
            inbox,
            child: None,
        })
    }

    pub fn start(&mut self) -> Result<()> {
        let c = spawn(
            Command::new(bin("edge-agent"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info"),
            &self.dir.join("agent.log"),
        )?;
        self.child = Some(c);
        Ok(())
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Queues `n` synthetic results (agent must be stopped: sled holds a lock).
    pub fn fill(&self, n: usize) -> Result<()> {
        let out = Command::new(bin("edge-agent"))
            .args(["outbox-fill", "--count", &n.to_string(), "--config"])
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            bail!("outbox-fill: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Queues synthetic results until the outbox quota is reached; returns how many.
    pub fn fill_to_quota(&self) -> Result<usize> {
        let out = Command::new(bin("edge-agent"))
            .args([
                "outbox-fill",
                "--count",
                "100000000",
                "--until-full",
                "--config",
            ])
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            bail!("outbox-fill: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .context("outbox-fill output")
    }

    /// `edge-agent status --json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = Command::new(bin("edge-agent"))
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            bail!("status: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("status JSON")
    }

    /// Copies a scan into the inbox atomically (write elsewhere, then rename).
    pub fn drop_scan(&self, src: &Path, name: &str) -> Result<()> {
        let tmp = self.inbox.join(format!(".{name}.part"));
        std::fs::copy(src, &tmp)?;
        std::fs::rename(tmp, self.inbox.join(name))?;
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}
