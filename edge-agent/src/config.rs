//! Agent configuration (`edge.toml`), validated before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pleura_inference::BackendKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// This clinic and this device; they scope every topic and record.
    pub clinic: String,
    pub device: String,
    /// Where the ultrasound device exports scans. A subfolder names the patient.
    pub inbox: PathBuf,
    /// Outbox, processed/ and rejected/ scans, status file.
    pub data_dir: PathBuf,
    /// Most bytes of unsynced results kept; beyond it new scans wait in the inbox.
    #[serde(default = "default_quota")]
    pub quota_bytes: u64,
    /// Secret for patient pseudonyms; created (mode 0600) if missing. Never leaves the clinic.
    pub pseudonym_key_file: PathBuf,
    #[serde(default)]
    pub hub: HubLink,
    /// The bundle from `hub-server enroll`: required unless hub.insecure_plaintext.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub sync: SyncSettings,
    #[serde(default)]
    pub inference: InferenceSettings,
    #[serde(default)]
    pub intake: IntakeSettings,
    #[serde(default)]
    pub clinic_page: ClinicPageSettings,
    #[serde(default)]
    pub media: MediaSettings,
    #[serde(default)]
    pub models: ModelsSettings,
}

/// Model releases pushed by the hub (issue #15).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsSettings {
    /// The hub's model root public key (`model-root.pub` from the enrolment bundle).
    /// Without it every offer is refused.
    pub root_key: Option<PathBuf>,
    /// Download bandwidth cap for model files, bytes per second.
    pub max_bytes_per_s: u64,
    /// Seconds to wait for a chunk before asking again (with backoff).
    pub fetch_timeout_s: u64,
}

impl Default for ModelsSettings {
    fn default() -> Self {
        Self {
            root_key: None,
            max_bytes_per_s: 32 * 1024,
            fetch_timeout_s: 15,
        }
    }
}

/// Previews and clips of flagged scans for the hub's specialists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSettings {
    /// Most bytes of media kept in `<data_dir>/media/`. Items the hub holds are pruned
    /// first (reviewed results' first); past it no new clips are made (previews of
    /// flagged scans always are, with an alarm).
    pub max_bytes: u64,
    /// Seconds to wait for the hub's answer to a media message before asking again.
    pub ack_timeout_s: u64,
    /// Make a clip of every flagged scan (uploaded when the link is idle); when off,
    /// clips are made only when the hub asks for one.
    pub clips_of_flagged: bool,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            max_bytes: 512 * 1024 * 1024,
            ack_timeout_s: 10,
            clips_of_flagged: true,
        }
    }
}

/// The clinic's own page on the LAN (`clinic`): off unless enabled, behind a PIN set
/// with `edge-agent clinic-pin set`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClinicPageSettings {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// Plain HTTP, for a setup behind a TLS proxy of its own; HTTPS with a self-signed
    /// certificate (made in the data folder on first start) otherwise.
    pub insecure_http: bool,
    /// Minutes a login lasts.
    pub session_minutes: u64,
}

impl Default for ClinicPageSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 8480)),
            insecure_http: false,
            session_minutes: 480,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeSettings {
    /// Largest scan file read; larger ones go to rejected/ unread.
    pub max_scan_bytes: u64,
    /// Analyses of one file that may fail or be cut short (crash, OOM kill) before it
    /// goes to rejected/. Counted on disk, so restarts count too.
    pub max_attempts: u32,
    /// Longest one scan may be in analysis (seconds); past it the agent stops waiting,
    /// the attempt counts against the file, and the next scan is taken.
    pub max_analysis_s: u64,
    /// Log inbox paths (they name patients). Local debugging only; off by default.
    pub log_paths: bool,
    /// Bytes of analysed scans kept in processed/. Scans whose result the hub has not
    /// acknowledged are always kept (they rebuild a result the outbox loses); the
    /// others are pruned, oldest first, past this budget or `processed_keep_days`.
    pub processed_budget_bytes: u64,
    pub processed_keep_days: u32,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            max_scan_bytes: pleura_inference::decode::file::DEFAULT_MAX_SCAN_BYTES,
            max_attempts: 3,
            max_analysis_s: 300,
            log_paths: false,
            processed_budget_bytes: 2 << 30,
            processed_keep_days: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubLink {
    /// `mqtts://host:port` of the hub's broker.
    pub mqtt_url: String,
    /// `https://host:port` of the hub's gRPC API, the fallback when MQTT is blocked.
    #[serde(default)]
    pub grpc_url: Option<String>,
    /// Allow `mqtt://` and `http://` (no TLS, unsigned batches). Local development only.
    #[serde(default)]
    pub insecure_plaintext: bool,
}

impl Default for HubLink {
    fn default() -> Self {
        Self {
            mqtt_url: "mqtts://127.0.0.1:8883".into(),
            grpc_url: Some("https://127.0.0.1:7443".into()),
            insecure_plaintext: false,
        }
    }
}

/// The device's enrolment bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The regional CA (the only one trusted for the hub).
    pub ca: PathBuf,
    /// This device's certificate (CN `<clinic>/device/<device>`).
    pub cert: PathBuf,
    /// Its Ed25519 key: TLS client authentication and batch signatures.
    pub key: PathBuf,
    /// The hub's downlink public key (the bundle's `hub-downlink.pub`): verifies what the
    /// hub sends (verdicts, clip requests). Without it those messages are dropped.
    #[serde(default)]
    pub hub_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Results per MQTT message / gRPC call.
    pub batch_size: usize,
    /// Results sent but not yet acknowledged by the hub, at most.
    pub max_in_flight: usize,
    /// Resend a result the hub has not acknowledged after this long.
    pub ack_timeout_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Try gRPC after this many failed MQTT connection attempts in a row.
    pub grpc_fallback_after: u32,
    /// Anti-entropy: besides after each (re)connect, send the hub the digests of what
    /// it acknowledged this often (seconds); it asks back for what it lost.
    pub reconcile_interval_s: u64,
    /// Acknowledged results kept for anti-entropy (days of analysis, ~200 B each).
    pub acked_retention_days: u32,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            batch_size: 50,
            max_in_flight: 1000,
            ack_timeout_ms: 15_000,
            backoff_min_ms: 250,
            backoff_max_ms: 60_000,
            grpc_fallback_after: 4,
            reconcile_interval_s: 600,
            acked_retention_days: 90,
        }
    }
}

/// Longest `sync.acked_retention_days`: the hub compares at most
/// `pleura_shared::holdings::MAX_HOLDINGS_DAYS` days.
pub const MAX_ACKED_RETENTION_DAYS: u32 = 365;

impl SyncSettings {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceSettings {
    pub model: PathBuf,
    pub backend: BackendKind,
    pub onnxruntime_library: Option<PathBuf>,
    pub workers: usize,
    /// How often the inbox is looked at.
    pub poll_ms: u64,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        Self {
            model: pleura_inference::engine::default_model(),
            backend: BackendKind::Tract,
            onnxruntime_library: None,
            workers: 1,
            poll_ms: 500,
        }
    }
}

impl InferenceSettings {
    /// What `pleura_inference::engine` starts for the daemon.
    pub fn engine(&self) -> pleura_inference::EngineSpec {
        pleura_inference::EngineSpec {
            backend: self.backend,
            onnxruntime_library: self.onnxruntime_library.clone(),
            model: self.model.clone(),
            workers: self.workers,
        }
    }
}

fn default_quota() -> u64 {
    256 * 1024 * 1024
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl EdgeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let inv = |m: String| Err(ConfigError::Invalid(m));
        pleura_shared::validate_name("clinic", &self.clinic)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        pleura_shared::validate_name("device", &self.device)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        parse_mqtt_url(&self.hub.mqtt_url)?;
        let mut plaintext = vec![];
        if !self.hub.mqtt_url.starts_with("mqtts://") {
            plaintext.push(self.hub.mqtt_url.clone());
        }
        if let Some(g) = &self.hub.grpc_url {
            if !g.starts_with("http://") && !g.starts_with("https://") {
                return inv(format!(
                    "hub.grpc_url {g:?} must start with https:// (or http:// for plaintext)"
                ));
            }
            if g.starts_with("http://") {
                plaintext.push(g.clone());
            }
        }
        if !plaintext.is_empty() && !self.hub.insecure_plaintext {
            return inv(format!(
                "{} would send results without TLS; use mqtts:// and https:// with a [tls] \
                 bundle, or set hub.insecure_plaintext = true for local development",
                plaintext.join(" and ")
            ));
        }
        // Some URL uses TLS, so the bundle is needed.
        let urls = 1 + usize::from(self.hub.grpc_url.is_some());
        if plaintext.len() < urls && self.tls.is_none() {
            return inv(
                "mqtts:// and https:// need the device's [tls] bundle (ca, cert, key) from \
                 `hub-server enroll`"
                    .into(),
            );
        }
        let s = &self.sync;
        if s.batch_size == 0 || s.batch_size > 500 {
            return inv("sync.batch_size must be 1-500".into());
        }
        if s.max_in_flight < s.batch_size {
            return inv("sync.max_in_flight must be at least sync.batch_size".into());
        }
        if s.backoff_min_ms == 0 || s.backoff_min_ms > s.backoff_max_ms {
            return inv("sync.backoff_min_ms must be > 0 and <= sync.backoff_max_ms".into());
        }
        if s.reconcile_interval_s == 0 {
            return inv("sync.reconcile_interval_s must be positive".into());
        }
        if s.acked_retention_days == 0 || s.acked_retention_days > MAX_ACKED_RETENTION_DAYS {
            return inv(format!(
                "sync.acked_retention_days must be 1-{MAX_ACKED_RETENTION_DAYS}"
            ));
        }
        if s.ack_timeout_ms < 100 {
            return inv("sync.ack_timeout_ms must be at least 100".into());
        }
        if self.quota_bytes < 64 * 1024 {
            return inv("quota_bytes must be at least 64 KiB".into());
        }
        if self.inference.workers == 0 || self.inference.poll_ms == 0 {
            return inv("inference.workers and inference.poll_ms must be positive".into());
        }
        if self.intake.max_scan_bytes == 0 || self.intake.max_attempts == 0 {
            return inv("intake.max_scan_bytes and intake.max_attempts must be positive".into());
        }
        if self.intake.processed_keep_days == 0
            || self.intake.processed_keep_days > self.sync.acked_retention_days
        {
            // A kept scan whose acknowledged record was already forgotten would be
            // taken for a lost result and analysed (and sent) again.
            return inv("intake.processed_keep_days must be 1 to sync.acked_retention_days".into());
        }
        if self.intake.max_analysis_s == 0 {
            return inv("intake.max_analysis_s must be positive".into());
        }
        if self.media.ack_timeout_s == 0 || self.media.max_bytes < 1024 * 1024 {
            return inv(
                "media.ack_timeout_s must be positive and media.max_bytes at least 1 MiB".into(),
            );
        }
        if self.models.max_bytes_per_s < 1024 || self.models.fetch_timeout_s == 0 {
            return inv(
                "models.max_bytes_per_s must be at least 1024 and models.fetch_timeout_s positive"
                    .into(),
            );
        }
        if let Some(k) = &self.models.root_key {
            pleura_shared::release::load_root_public_key(k)
                .map_err(|e| ConfigError::Invalid(format!("models.root_key: {e}")))?;
        }
        if self.clinic_page.session_minutes == 0 || self.clinic_page.session_minutes > 24 * 60 {
            return inv("clinic_page.session_minutes must be 1-1440".into());
        }
        Ok(())
    }

    pub fn processed_dir(&self) -> PathBuf {
        self.data_dir.join("processed")
    }

    pub fn rejected_dir(&self) -> PathBuf {
        self.data_dir.join("rejected")
    }

    pub fn status_file(&self) -> PathBuf {
        self.data_dir.join("status.json")
    }

    /// Analysis attempts per inbox file, kept across restarts.
    pub fn attempts_file(&self) -> PathBuf {
        self.data_dir.join("intake-attempts.json")
    }

    pub fn example() -> String {
        "# Pleura edge agent configuration.\n\
         clinic = \"clinic-a\"\n\
         device = \"pi-1\"\n\
         # The ultrasound device exports scans here (inbox/<patient-id>/<zone>.mp4 links a patient).\n\
         inbox = \"/var/lib/pleura/inbox\"\n\
         data_dir = \"/var/lib/pleura\"\n\
         # Unsynced results kept at most; beyond it new scans wait in the inbox and status alarms.\n\
         quota_bytes = 268435456\n\
         # Secret for patient pseudonyms, created if missing; never copy it off the clinic.\n\
         pseudonym_key_file = \"/var/lib/pleura/pseudonym.key\"\n\n\
         [hub]\n\
         mqtt_url = \"mqtts://127.0.0.1:8883\"\n\
         grpc_url = \"https://127.0.0.1:7443\"\n\n\
         # The bundle from `hub-server enroll --clinic clinic-a --device pi-1 ...`.\n\
         [tls]\n\
         ca = \"/etc/pleura/ca.pem\"\n\
         cert = \"/etc/pleura/device.pem\"\n\
         key = \"/etc/pleura/device.key\"\n\
         # The hub's downlink key: verdicts and clip requests are trusted only with it.\n\
         hub_key = \"/etc/pleura/hub-downlink.pub\"\n\n\
         [sync]\n\
         batch_size = 50\n\
         max_in_flight = 1000\n\
         ack_timeout_ms = 15000\n\
         backoff_min_ms = 250\n\
         backoff_max_ms = 60000\n\
         grpc_fallback_after = 4\n\
         # Anti-entropy: how often the hub is told what it acknowledged (it asks back\n\
         # for what its store lost), and how long acknowledged results are kept for it.\n\
         reconcile_interval_s = 600\n\
         acked_retention_days = 90\n\n\
         [inference]\n\
         model = \"models/pleura-lite.onnx\"\n\
         backend = \"tract\"   # or \"onnxruntime\" with onnxruntime_library = \"/path/libonnxruntime.so\"\n\
         workers = 1\n\
         poll_ms = 500\n\n\
         [intake]\n\
         # Larger scan files go to rejected/ unread (512 MiB).\n\
         max_scan_bytes = 536870912\n\
         # A file whose analysis fails or is cut short (crash, out of memory) this many\n\
         # times goes to rejected/ with an alarm. Waiting for queue or disk space does not count.\n\
         max_attempts = 3\n\
         # A scan still in analysis after this many seconds is given up (counts as a\n\
         # failed attempt) so one file cannot stall the inbox; status alarms while one is slow.\n\
         max_analysis_s = 300\n\
         # Log inbox file and folder names. They name patients: local debugging only.\n\
         log_paths = false\n\
         # Analysed scans stay in processed/ until the hub acknowledges their result (they\n\
         # rebuild a result the outbox loses); then they are pruned, oldest first, past\n\
         # this many bytes (2 GiB) or days.\n\
         processed_budget_bytes = 2147483648\n\
         processed_keep_days = 30\n\n\
         # The clinic's page on the LAN: today's scans by local patient id, their sync state\n\
         # and the specialist's verdict. Off by default; set its PIN with\n\
         # `edge-agent clinic-pin set --config ...` (read from standard input) first.\n\
         [clinic_page]\n\
         enabled = false\n\
         listen = \"0.0.0.0:8480\"\n\
         # HTTPS with a self-signed certificate made in data_dir (its SHA-256 fingerprint is\n\
         # logged at start); plain HTTP only behind a TLS proxy of the clinic's own.\n\
         insecure_http = false\n\
         session_minutes = 480\n\n\
         # Previews (key frames with the model's map) and clips of flagged scans, sent to\n\
         # the hub after the results. At most this many bytes (512 MiB) are kept here;\n\
         # media the hub holds is pruned first. Clips of flagged scans are made unless\n\
         # clips_of_flagged = false (then only when a specialist asks for one).\n\
         [media]\n\
         max_bytes = 536870912\n\
         ack_timeout_s = 10\n\
         clips_of_flagged = true\n\n\
         # Model releases pushed by the hub, signed under the model root key from the\n\
         # enrolment bundle (without root_key every offer is refused). Downloads run after\n\
         # results and flagged media, at most max_bytes_per_s.\n\
         [models]\n\
         # root_key = \"/etc/pleura/model-root.pub\"\n\
         max_bytes_per_s = 32768\n\
         fetch_timeout_s = 15\n"
            .to_string()
    }
}

/// `mqtts://host:port` (or `mqtt://` for plaintext).
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), ConfigError> {
    pleura_shared::topics::parse_mqtt_url(url)
        .map_err(|e| ConfigError::Invalid(format!("hub.mqtt_url: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_bad_values_are_named() {
        let cfg: EdgeConfig = toml::from_str(&EdgeConfig::example()).unwrap();
        cfg.validate().unwrap();
        // The printed example states the defaults.
        let d = IntakeSettings::default();
        assert_eq!(cfg.intake.max_scan_bytes, d.max_scan_bytes);
        assert_eq!(cfg.intake.max_attempts, d.max_attempts);
        assert_eq!(cfg.intake.max_analysis_s, d.max_analysis_s);
        assert!(!cfg.intake.log_paths && !d.log_paths);
        // The clinic page is off unless asked for, by default and in the example.
        assert!(!cfg.clinic_page.enabled && !ClinicPageSettings::default().enabled);
        assert_eq!(cfg.clinic_page.listen, ClinicPageSettings::default().listen);
        let mut bad = cfg.clone();
        bad.clinic_page.session_minutes = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("session_minutes"));
        let mut bad = cfg.clone();
        bad.intake.max_attempts = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_attempts"));
        let mut bad = cfg.clone();
        bad.clinic = "Clinic A".into();
        assert!(bad.validate().unwrap_err().to_string().contains("clinic"));
        let mut bad = cfg.clone();
        bad.hub.mqtt_url = "tcp//x".into();
        assert!(bad.validate().unwrap_err().to_string().contains("mqtt_url"));
        let mut bad = cfg.clone();
        bad.hub.mqtt_url = "mqtt://h:1883".into();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("insecure_plaintext"));
        bad.hub.insecure_plaintext = true;
        bad.hub.grpc_url = Some("http://h:1".into());
        bad.validate().unwrap();
        let mut bad = cfg.clone();
        bad.tls = None;
        assert!(bad.validate().unwrap_err().to_string().contains("[tls]"));
        let d = SyncSettings::default();
        assert_eq!(cfg.sync.reconcile_interval_s, d.reconcile_interval_s);
        assert_eq!(cfg.sync.acked_retention_days, d.acked_retention_days);
        let mut bad = cfg.clone();
        bad.sync.reconcile_interval_s = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reconcile_interval_s"));
        let mut bad = cfg.clone();
        bad.sync.acked_retention_days = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("acked_retention_days"));
        let mut bad = cfg;
        bad.sync.batch_size = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("batch_size"));
    }
}
