//! Harness for the end-to-end tests: spawns the real `hub-server` and `edge-agent`
//! binaries (and Mosquitto) as processes on ports chosen at runtime, kills them
//! with SIGKILL, restarts them, and waits for conditions with deadlines.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod agent;
mod mosquitto;
mod proxy;

pub use agent::{Agent, AgentOptions};
pub use mosquitto::Mosquitto;
pub use proxy::CountingProxy;

use anyhow::{bail, Context, Result};
use pleura_proto::v1::hub_client::HubClient;
use pleura_proto::v1::{Case, ListCasesRequest, LoginRequest, SyncStatusRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// `target/<profile>/<name>`, built by `cargo build --bins` (scripts/test.sh does).
pub fn bin(name: &str) -> PathBuf {
    // Tests run from target/<profile>/deps, tools from target/<profile>.
    let exe = std::env::current_exe().expect("executable path");
    let here = exe.parent().expect("target/<profile>");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target/<profile>")
    } else {
        here
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --release --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A loopback port nothing listens on now, never handed out twice in this process
/// (tests run in parallel and some bind their port only later).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The last lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(cmd
        .stdout(Stdio::from(f.try_clone()?))
        .stderr(Stdio::from(f))
        .spawn()?)
}

pub(crate) fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        let _ = c.wait();
    }
}

/// Minimal plain-HTTP GET (an insecure hub's metrics port); returns status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    get_over(s, path)
}

/// Minimal HTTPS GET (a secure hub's metrics port), trusting only `ca`.
pub fn https_get(port: u16, path: &str, ca: &Path) -> Option<(u16, String)> {
    let cfg = pleura_shared::pki::client_config(ca, None).ok()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).ok()?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    get_over(rustls::StreamOwned::new(conn, tcp), path)
}

fn get_over(mut s: impl Read + Write, path: &str) -> Option<(u16, String)> {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    // A peer that closes without TLS close_notify ends in an error after the response.
    if s.read_to_end(&mut raw).is_err() && raw.is_empty() {
        return None;
    }
    let buf = String::from_utf8_lossy(&raw);
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((code, body))
}

pub enum Broker {
    Embedded,
    External(u16),
}

/// Runs `hub-server <args>` to completion (CA, enrolment, accounts); returns stdout.
pub fn hub_admin(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new(bin("hub-server"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "hub-server {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `hub-server ca init` into `pki` (for a broker that must exist before the hub).
pub fn ca_init(pki: &Path) -> Result<()> {
    hub_admin(&["ca", "init", "--pki-dir", &pki.to_string_lossy()], None).map(drop)
}

/// Mosquitto as deployed (TLS, the hub's CA, the shipped ACL), started, and a hub in
/// `<root>/hub` using it as its external broker (not started).
pub fn hub_behind_mosquitto(root: &Path) -> Result<(Mosquitto, Hub)> {
    let pki = root.join("hub/pki");
    ca_init(&pki)?;
    let mut mosq = Mosquitto::with_tls(&root.join("mosquitto"), &pki)?;
    mosq.start()?;
    let hub = Hub::new(&root.join("hub"), Broker::External(mosq.port))?;
    Ok((mosq, hub))
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
        let done = self.device_admin(
            "enroll",
            clinic,
            device,
            &["--region", region, "--out", &out_arg],
        )?;
        Ok(done.then_some(out))
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

    /// A gRPC channel to the hub: TLS trusting its CA, with `identity` (a device bundle
    /// dir) as client certificate if given.
    pub async fn channel(&self, identity: Option<&Path>) -> Result<Channel> {
        let Some(pki) = &self.pki else {
            return Ok(
                Endpoint::from_shared(format!("http://127.0.0.1:{}", self.grpc_port))?
                    .connect()
                    .await?,
            );
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(pki.join("ca.pem"))?));
        if let Some(b) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                std::fs::read(b.join("device.pem"))?,
                std::fs::read(b.join("device.key"))?,
            ));
        }
        Ok(
            Endpoint::from_shared(format!("https://127.0.0.1:{}", self.grpc_port))?
                .tls_config(tls)?
                .connect()
                .await?,
        )
    }

    /// Logs in; returns the bearer token.
    pub async fn login(&self, user: &str, password: &str) -> Result<String> {
        let mut c = HubClient::new(self.channel(None).await?);
        Ok(c.login(LoginRequest {
            username: user.into(),
            password: password.into(),
        })
        .await?
        .into_inner()
        .token)
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

    /// Every stored case, via the gRPC API, as the operator sees them.
    pub fn cases(&self) -> Result<Vec<Case>> {
        block_on(async move {
            let token = self.login(OPERATOR.0, OPERATOR.1).await?;
            let mut c = HubClient::new(self.channel(None).await?);
            let r = c
                .list_cases(bearer(
                    ListCasesRequest {
                        limit: 10_000,
                        ..Default::default()
                    },
                    &token,
                ))
                .await?
                .into_inner();
            Ok(r.cases)
        })
    }

    /// Result ids (hex) of every stored case.
    pub fn case_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .cases()?
            .into_iter()
            .filter_map(|c| c.result.map(|r| hex(&r.result_id)))
            .collect())
    }

    /// (results, duplicates) the hub has seen from each device.
    pub fn devices(&self) -> Result<Vec<(String, u64, u64)>> {
        block_on(async move {
            let token = self.login(OPERATOR.0, OPERATOR.1).await?;
            let mut c = HubClient::new(self.channel(None).await?);
            let r = c
                .sync_status(bearer(SyncStatusRequest {}, &token))
                .await?
                .into_inner();
            Ok(r.devices
                .into_iter()
                .map(|d| {
                    (
                        format!("{}/{}", d.clinic_id, d.device_id),
                        d.results,
                        d.duplicates,
                    )
                })
                .collect())
        })
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A raw MQTT client speaking as the device of `bundle` (TLS with its certificate),
/// for tests that misbehave on its behalf.
pub fn device_mqtt(
    port: u16,
    bundle: &Path,
    clinic: &str,
    device: &str,
) -> Result<(rumqttc::Client, rumqttc::Connection)> {
    let tls = pleura_shared::pki::client_config(
        &bundle.join("ca.pem"),
        Some((&bundle.join("device.pem"), &bundle.join("device.key"))),
    )?;
    Ok(mqtt_client(
        &pleura_shared::topics::client_id(clinic, device),
        port,
        Some(tls),
    ))
}

pub fn mqtt_client(
    client_id: &str,
    port: u16,
    tls: Option<rustls::ClientConfig>,
) -> (rumqttc::Client, rumqttc::Connection) {
    let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20)
        .set_keep_alive(Duration::from_secs(5));
    if let Some(t) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(t)),
        ));
    }
    rumqttc::Client::new(opts, 16)
}

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    r
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
