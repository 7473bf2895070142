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
