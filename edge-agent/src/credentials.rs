//! The device's enrolment bundle, loaded once at start: TLS for MQTT and gRPC, and the
//! key that signs every batch. Refuses a certificate that names another device.

use std::sync::Arc;

use anyhow::{bail, Context};
use pleura_shared::pki::{self, cert_info, Principal};
use pleura_shared::signing::BatchSigner;

use crate::config::EdgeConfig;

pub struct Credentials {
    pub mqtt_tls: Option<Arc<rustls::ClientConfig>>,
    pub grpc_tls: Option<tonic::transport::ClientTlsConfig>,
    pub signer: Option<BatchSigner>,
}

impl Credentials {
    pub fn load(cfg: &EdgeConfig) -> anyhow::Result<Self> {
        let Some(t) = &cfg.tls else {
            tracing::warn!(
                "no [tls] bundle: sending unsigned batches in plaintext (development mode)"
            );
            return Ok(Self {
                mqtt_tls: None,
                grpc_tls: None,
                signer: None,
            });
        };
        let certs = pki::load_certs(&t.cert)?;
        let info = cert_info(&certs[0]).with_context(|| format!("{}", t.cert.display()))?;
        let me = Principal::device(&cfg.clinic, &cfg.device);
        if info.principal != me {
            bail!(
                "{} is the certificate of {}, but this agent is configured as {me}",
                t.cert.display(),
                info.principal
            );
        }
        let signer = BatchSigner::from_pem_file(&t.key)?;
        if signer.public_key() != info.public_key.as_slice() {
            bail!("{} is not the key of {}", t.key.display(), t.cert.display());
        }
        let mqtt_tls = Arc::new(pki::client_config(&t.ca, Some((&t.cert, &t.key)))?);
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        let grpc_tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&t.ca)?))
            .identity(tonic::transport::Identity::from_pem(
                read(&t.cert)?,
                read(&t.key)?,
            ));
        Ok(Self {
            mqtt_tls: (cfg.hub.mqtt_url.starts_with("mqtts://")).then_some(mqtt_tls),
            grpc_tls: cfg
                .hub
                .grpc_url
                .as_ref()
                .is_some_and(|u| u.starts_with("https://"))
                .then_some(grpc_tls),
            signer: Some(signer),
        })
    }
}

/// The keys of the hub <-> device channel: the device key that signs uplink messages
/// (None without a bundle) and what downlink messages are trusted by. A configured
/// `hub_key` that cannot be read stops the agent; none configured is logged once here
/// (messages from the hub are then dropped).
pub fn channel_keys(
    cfg: &EdgeConfig,
) -> anyhow::Result<(Option<BatchSigner>, crate::downlink::HubTrust)> {
    use crate::downlink::HubTrust;
    let Some(t) = &cfg.tls else {
        return Ok((None, HubTrust::Insecure));
    };
    let signer = BatchSigner::from_pem_file(&t.key)?;
    let Some(path) = &t.hub_key else {
        tracing::warn!(
            "[tls] has no hub_key (the bundle's hub-downlink.pub): verdicts and clip requests \
             from the hub cannot be trusted and will be dropped"
        );
        return Ok((Some(signer), HubTrust::Missing));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading [tls] hub_key {}", path.display()))?;
    let key = crate::downlink::parse_hub_key(&text)
        .map_err(|e| anyhow::anyhow!("[tls] hub_key {}: {e}", path.display()))?;
    Ok((Some(signer), HubTrust::Key(key)))
}
