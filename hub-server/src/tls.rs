//! The hub's TLS: the regional CA's trust bundle, client certificates checked against
//! the live device registry at every handshake (so a revoked or re-enrolled device is
//! refused at its next connection), mandatory on the MQTT gate, optional on gRPC (people
//! log in with tokens instead; device calls require a certificate) and not asked for on
//! the HTTPS port. The server certificate is ECDSA P-256 so that standard clients
//! (browsers, grpcio, curl) accept it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pleura_shared::pki::{self, cert_info, Principal};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::ca::{Pki, Registry};

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

/// The HTTPS port (metrics, health, web pages): the hub certificate and no client
/// certificates — people have none, and asking for one makes browsers prompt.
pub fn web_server_config(pki_files: &Pki) -> anyhow::Result<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(pki::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            pki::load_certs(&pki_files.hub_cert())?,
            pki::load_key(&pki_files.hub_key())?,
        )?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// TLS handshakes in progress at once, per listener.
pub const MAX_HANDSHAKES: usize = 256;
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections and runs each TLS handshake in its own task, with a deadline, so
/// that one slow client cannot hold up the accept loop; yields the completed ones.
pub fn handshakes(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    what: &'static str,
    shutdown: CancellationToken,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // At most MAX_HANDSHAKES at once: past that the kernel's backlog queues
            // connections instead of the hub holding a task and a socket for each.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = slots.clone().acquire_owned() => p.expect("never closed"),
            };
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors (EMFILE/ENFILE) and the like persist: retrying
                        // at once would spin a core. Back off briefly.
                        tracing::warn!(error = %e, "{what} accept failed; backing off");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                        continue;
                    }
                },
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send((s, addr)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%addr, error = %e, "{what} TLS handshake refused"),
                    Err(_) => tracing::warn!(%addr, "{what} TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    conns: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        what: &'static str,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self {
            conns: handshakes(listener, acceptor, what, shutdown),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.conns.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): axum's graceful shutdown takes over.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
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
