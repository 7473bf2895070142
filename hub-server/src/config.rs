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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `embedded` runs rumqttd inside the hub; `external` connects to `url`.
    #[serde(default)]
    pub broker: BrokerKind,
    /// Embedded broker's listening address.
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// External broker, e.g. `mqtt://broker.example:1883`.
    #[serde(default)]
    pub url: Option<String>,
    /// Shared-subscription group; hubs in one group split the devices' traffic.
    #[serde(default = "default_group")]
    pub share_group: Option<String>,
    /// Client id of this hub on the broker (unique per hub instance).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Largest MQTT payload accepted, bytes.
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
    "127.0.0.1:1883".parse().expect("literal")
}
fn default_group() -> Option<String> {
    Some("pleura-hubs".into())
}
fn default_client_id() -> String {
    "pleura-hub-1".into()
}
fn default_max_payload() -> usize {
    64 * 1024
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            broker: BrokerKind::Embedded,
            listen: default_mqtt_listen(),
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
        Ok(())
    }

    /// Where the hub's MQTT client connects.
    pub fn mqtt_endpoint(&self) -> Result<(String, u16), ConfigError> {
        match self.mqtt.broker {
            BrokerKind::Embedded => {
                Ok((self.mqtt.listen.ip().to_string(), self.mqtt.listen.port()))
            }
            BrokerKind::External => parse_mqtt_url(self.mqtt.url.as_deref().unwrap_or_default()),
        }
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
             [mqtt]\n\
             # \"embedded\" (rumqttd inside the hub) or \"external\" (Mosquitto, EMQX, ...).\n\
             broker = \"embedded\"\n\
             listen = \"{}\"\n\
             # url = \"mqtt://broker.example:1883\"   # for broker = \"external\"\n\
             share_group = \"pleura-hubs\"\n\
             client_id = \"pleura-hub-1\"\n\
             max_payload = {}\n",
            default_grpc(),
            default_metrics(),
            default_mqtt_listen(),
            default_max_payload()
        )
    }
}

/// `mqtt://host:port` (port defaults to 1883).
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
        assert_eq!(parse_mqtt_url("mqtt://h:1884").unwrap(), ("h".into(), 1884));
        assert_eq!(parse_mqtt_url("mqtt://h").unwrap(), ("h".into(), 1883));
        assert!(parse_mqtt_url("http://h").is_err());
    }
}
