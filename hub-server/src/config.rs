//! Hub configuration (`hub.toml`), validated before any socket is bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Where the case store lives.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// gRPC API (upload fallback, cases, sync status).
    #[serde(default = "default_grpc")]
    pub grpc_listen: SocketAddr,
    /// Prometheus `/metrics` and `/healthz`.
    #[serde(default = "default_metrics")]
    pub metrics_listen: SocketAddr,
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub ministry: MinistryConfig,
}

/// `[ministry]`: what the ministry's dashboard and exports publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinistryConfig {
    /// Counts from 1 to this minus one are suppressed everywhere a ministry sees numbers.
    #[serde(default = "default_threshold")]
    pub suppression_threshold: u64,
    /// Devices not heard from for longer are marked silent.
    #[serde(default = "default_silent_days")]
    pub silent_days: u32,
    /// Canonical base of the FHIR `Measure` the MeasureReports name.
    #[serde(default = "default_fhir_base")]
    pub fhir_base: String,
    /// Where `hub-server` pushes weekly data values (absent: download only).
    #[serde(default, skip_serializing)]
    pub dhis2: Option<crate::ministry::export::dhis2::Dhis2Config>,
}

impl Default for MinistryConfig {
    fn default() -> Self {
        Self {
            suppression_threshold: default_threshold(),
            silent_days: default_silent_days(),
            fhir_base: default_fhir_base(),
            dhis2: None,
        }
    }
}

fn default_threshold() -> u64 {
    crate::ministry::suppress::DEFAULT_THRESHOLD
}
fn default_silent_days() -> u32 {
    3
}
fn default_fhir_base() -> String {
    "https://pleura.invalid/fhir".into()
}

impl MinistryConfig {
    pub fn settings(&self) -> crate::cases::ministry::MinistrySettings {
        crate::cases::ministry::MinistrySettings {
            threshold: self.suppression_threshold,
            silent_days: self.silent_days,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=100).contains(&self.suppression_threshold) {
            return Err(ConfigError::Invalid(
                "ministry.suppression_threshold must be 2 to 100 (1 would publish every small count)"
                    .into(),
            ));
        }
        if !(1..=365).contains(&self.silent_days) {
            return Err(ConfigError::Invalid(
                "ministry.silent_days must be 1 to 365".into(),
            ));
        }
        if let Some(d) = &self.dhis2 {
            d.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// `mtls` (default): TLS everywhere, device certificates, signed batches.
    /// `insecure-plaintext`: no TLS and unsigned batches accepted; local development only.
    #[serde(default)]
    pub mode: SecurityMode,
    /// The CA and device registry (`hub-server ca init`, `enroll`, `revoke`).
    #[serde(default = "default_pki_dir")]
    pub pki_dir: PathBuf,
    /// Specialist, ministry and operator accounts (`hub-server user add`).
    #[serde(default = "default_accounts")]
    pub accounts_file: PathBuf,
    /// How long a login token lasts.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_s: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityMode {
    #[default]
    Mtls,
    InsecurePlaintext,
}

fn default_pki_dir() -> PathBuf {
    "/etc/pleura/pki".into()
}
fn default_accounts() -> PathBuf {
    "/etc/pleura/accounts.json".into()
}
fn default_token_ttl() -> u64 {
    8 * 3600
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            mode: SecurityMode::Mtls,
            pki_dir: default_pki_dir(),
            accounts_file: default_accounts(),
            token_ttl_s: default_token_ttl(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `embedded` runs rumqttd inside the hub; `external` connects to `url`.
    #[serde(default)]
    pub broker: BrokerKind,
    /// Embedded broker's public address (the TLS gate in `mtls` mode).
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// Loopback address of rumqttd behind the public port (the TLS gate, or a plain relay
    /// in insecure mode); port 0 picks one.
    #[serde(default = "default_internal")]
    pub internal_listen: SocketAddr,
    /// External broker, e.g. `mqtts://broker.example:8883` (the hub presents hub.pem).
    #[serde(default)]
    pub url: Option<String>,
    /// Shared-subscription group; hubs in one group split the devices' traffic.
    #[serde(default = "default_group")]
    pub share_group: Option<String>,
    /// Client id of this hub on the broker (unique per hub instance).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Largest batch accepted, bytes: MQTT payloads and gRPC uploads alike.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    #[default]
    Embedded,
    External,
}

fn default_grpc() -> SocketAddr {
    "127.0.0.1:7443".parse().expect("literal")
}
fn default_metrics() -> SocketAddr {
    "127.0.0.1:9464".parse().expect("literal")
}
fn default_mqtt_listen() -> SocketAddr {
    "127.0.0.1:8883".parse().expect("literal")
}
fn default_internal() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal")
}
fn default_group() -> Option<String> {
    Some("pleura-hubs".into())
}
fn default_client_id() -> String {
    "pleura-hub-1".into()
}
fn default_max_payload() -> usize {
    pleura_shared::record::MAX_BATCH_BYTES
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            broker: BrokerKind::Embedded,
            listen: default_mqtt_listen(),
            internal_listen: default_internal(),
            url: None,
            share_group: default_group(),
            client_id: default_client_id(),
            max_payload: default_max_payload(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl HubConfig {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.mqtt;
        if m.broker == BrokerKind::External && m.url.is_none() {
            return Err(ConfigError::Invalid(
                "mqtt.broker = \"external\" needs mqtt.url".into(),
            ));
        }
        if let Some(g) = &m.share_group {
            pleura_shared::validate_name("share_group", g)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if !self.internal_listen_is_loopback() {
            return Err(ConfigError::Invalid(
                "mqtt.internal_listen must be a loopback address: it bypasses the TLS gate".into(),
            ));
        }
        if let Some(url) = &m.url {
            let tls = url.starts_with("mqtts://");
            if self.security.mode == SecurityMode::Mtls && !tls {
                return Err(ConfigError::Invalid(format!(
                    "mqtt.url {url} is plaintext; use mqtts:// or set security.mode = \"insecure-plaintext\" for local development"
                )));
            }
        }
        if !(1024..=16 * 1024 * 1024).contains(&m.max_payload) {
            return Err(ConfigError::Invalid(
                "mqtt.max_payload must be 1 KiB to 16 MiB".into(),
            ));
        }
        if m.client_id.is_empty() || m.client_id.len() > 64 {
            return Err(ConfigError::Invalid(
                "mqtt.client_id must be 1-64 characters".into(),
            ));
        }
        self.ministry.validate()
    }

    fn internal_listen_is_loopback(&self) -> bool {
        self.mqtt.internal_listen.ip().is_loopback()
    }

    /// The external broker: host, port, whether to use TLS.
    pub fn external_broker(&self) -> Result<(String, u16, bool), ConfigError> {
        let url = self.mqtt.url.as_deref().unwrap_or_default();
        let (h, p) = parse_mqtt_url(url)?;
        Ok((h, p, url.starts_with("mqtts://")))
    }

    pub fn example() -> String {
        format!(
            "# Pleura hub configuration.\n\
             # Case store (sled); keep it on durable storage.\n\
             data_dir = \"/var/lib/pleura-hub\"\n\
             # gRPC API: upload fallback, cases, sync status.\n\
             grpc_listen = \"{}\"\n\
             # Prometheus metrics (/metrics) and liveness (/healthz).\n\
             metrics_listen = \"{}\"\n\n\
             [security]\n\
             # \"mtls\": TLS with device certificates and signed batches. \"insecure-plaintext\"\n\
             # turns all of that off, for local development only.\n\
             mode = \"mtls\"\n\
             # CA and device registry: hub-server ca init / enroll / revoke --pki-dir <this>.\n\
             pki_dir = \"/etc/pleura/pki\"\n\
             # Specialist, ministry and operator accounts: hub-server user add --accounts <this>.\n\
             accounts_file = \"/etc/pleura/accounts.json\"\n\
             token_ttl_s = 28800\n\n\
             [mqtt]\n\
             # \"embedded\" (rumqttd inside the hub) or \"external\" (Mosquitto, EMQX, ...).\n\
             broker = \"embedded\"\n\
             listen = \"{}\"\n\
             # The gate (TLS, client certificates) listens on `listen`; rumqttd behind it on\n\
             # a loopback port.\n\
             internal_listen = \"127.0.0.1:0\"\n\
             # url = \"mqtts://broker.example:8883\"   # for broker = \"external\"\n\
             share_group = \"pleura-hubs\"\n\
             client_id = \"pleura-hub-1\"\n\
             # Largest result batch, bytes, over MQTT and gRPC alike.\n\
             max_payload = {}\n\n\
             [ministry]\n\
             # Counts 1-4 are suppressed on the dashboard, in the API and in every export.\n\
             suppression_threshold = 5\n\
             silent_days = 3\n\
             # [ministry.dhis2]   # weekly data values to DHIS2 (docs/ministry.md)\n\
             # url = \"https://dhis2.example.org\"\n\
             # token_file = \"/etc/pleura/dhis2.token\"\n\
             # org_units = {{ \"clinic-a\" = \"DiszpKrYNg8\" }}\n\
             # data_elements = {{ examinations = \"FTRrcoaog83\", flagged = \"eY5ehpbEsB7\" }}\n",
            default_grpc(),
            default_metrics(),
            default_mqtt_listen(),
            default_max_payload()
        )
    }
}

/// `mqtt://host:port` or `mqtts://host:port`.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), ConfigError> {
    pleura_shared::topics::parse_mqtt_url(url)
        .map_err(|e| ConfigError::Invalid(format!("mqtt.url: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let cfg: HubConfig = toml::from_str(&HubConfig::example()).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.mqtt.broker, BrokerKind::Embedded);
    }

    #[test]
    fn bad_configs_are_named() {
        let mut cfg: HubConfig = toml::from_str(&HubConfig::example()).unwrap();
        cfg.mqtt.broker = BrokerKind::External;
        assert!(cfg.validate().unwrap_err().to_string().contains("mqtt.url"));
        assert!(toml::from_str::<HubConfig>("data_dir='x'\nbogus=1").is_err());
        let mut cfg: HubConfig = toml::from_str(&HubConfig::example()).unwrap();
        assert_eq!(cfg.ministry.suppression_threshold, 5);
        cfg.ministry.suppression_threshold = 1;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("ministry.suppression_threshold"), "{e}");
        assert_eq!(parse_mqtt_url("mqtt://h:1884").unwrap(), ("h".into(), 1884));
        assert_eq!(parse_mqtt_url("mqtt://h").unwrap(), ("h".into(), 1883));
        assert!(parse_mqtt_url("http://h").is_err());
    }
}
