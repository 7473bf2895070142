//! The hub's TLS: one CA, client certificates checked against the live device registry
//! at every handshake (so a revoked or re-enrolled device is refused at its next
//! connection), mandatory on the MQTT gate and optional on gRPC (people log in with
//! tokens instead; device calls require a certificate).

use std::sync::Arc;

use pleura_shared::pki::{self, cert_info, Principal};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::ca::Registry;

#[derive(Debug)]
struct RegistryVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    registry: Arc<Registry>,
    mandatory: bool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl ClientCertVerifier for RegistryVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Chain, validity period and key usage first; then who it is and whether the
        // registry still trusts that certificate.
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = cert_info(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        match &info.principal {
            Principal::Device { clinic, device } => {
                if let Err(e) = self.registry.trusted(clinic, device, Some(&info.serial)) {
                    tracing::warn!(peer = %info.principal, reason = %e, "client certificate refused");
                    return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
                }
                Ok(ClientCertVerified::assertion())
            }
            // The hub's own certificate is for brokers, not for talking to itself.
            Principal::Hub => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server configuration presenting the hub certificate; `mandatory` client auth for MQTT.
pub fn server_config(
    registry: Arc<Registry>,
    mandatory: bool,
    alpn: &[&[u8]],
) -> anyhow::Result<ServerConfig> {
    let pki_files = registry.pki();
    let roots = Arc::new(pki::roots(&pki_files.ca_cert())?);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, pki::provider());
    if !mandatory {
        builder = builder.allow_unauthenticated();
    }
    let verifier = Arc::new(RegistryVerifier {
        inner: builder.build()?,
        registry: registry.clone(),
        mandatory,
    });
    let mut cfg = ServerConfig::builder_with_provider(pki::provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            pki::load_certs(&pki_files.hub_cert())?,
            pki::load_key(&pki_files.hub_key())?,
        )?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

pub fn acceptor(cfg: ServerConfig) -> TlsAcceptor {
    TlsAcceptor::from(Arc::new(cfg))
}

/// The device a verified connection belongs to, from its first certificate.
pub fn peer_device(certs: Option<&[CertificateDer<'_>]>) -> Option<(String, String)> {
    peer_certificate(certs).map(|(clinic, device, _)| (clinic, device))
}

/// Clinic, device and certificate serial of a verified connection's device certificate.
pub fn peer_certificate(certs: Option<&[CertificateDer<'_>]>) -> Option<(String, String, String)> {
    let info = cert_info(certs?.first()?).ok()?;
    match info.principal {
        Principal::Device { clinic, device } => Some((clinic, device, info.serial)),
        Principal::Hub => None,
    }
}
