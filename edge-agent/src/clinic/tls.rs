//! The page's certificate: self-signed (ECDSA P-256, which browsers accept), made in the
//! data folder on first start and kept; staff check it by its SHA-256 fingerprint,
//! which the agent logs at start. And a TLS listener for `axum::serve`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::auth::write_private;
use super::ClinicError;

pub const CERT_FILE: &str = "clinic-page.crt";
pub const KEY_FILE: &str = "clinic-page.key";

pub struct PageCert {
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl PageCert {
    /// `AA:BB:…`, as browsers show a certificate's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig, ClinicError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            })
            .map_err(|e| ClinicError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Loads the page's certificate from `data_dir`, making one on first start.
pub fn load_or_create(data_dir: &Path, listen: SocketAddr) -> Result<PageCert, ClinicError> {
    let (cp, kp) = (data_dir.join(CERT_FILE), data_dir.join(KEY_FILE));
    let tls = |what: &str, e: String| ClinicError::Tls(format!("{what}: {e}"));
    if !(cp.exists() && kp.exists()) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| tls("generating a key", e.to_string()))?;
        let mut names = vec!["localhost".to_string(), "pleura-clinic".to_string()];
        if !listen.ip().is_unspecified() {
            names.push(listen.ip().to_string());
        }
        let mut params = rcgen::CertificateParams::new(names)
            .map_err(|e| tls("certificate names", e.to_string()))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Pleura clinic page");
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls("self-signing", e.to_string()))?;
        write_private(&kp, key.serialize_pem().as_bytes())?;
        write_private(&cp, cert.pem().as_bytes())?;
        tracing::info!(cert = %cp.display(), "made the clinic page's self-signed certificate");
    }
    let cert = CertificateDer::from_pem_file(&cp)
        .map_err(|e| tls(&cp.display().to_string(), e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&kp)
        .map_err(|e| tls(&kp.display().to_string(), e.to_string()))?;
    Ok(PageCert { cert, key })
}

/// Accepted TLS connections, each handshake on its own task with a deadline, so a
/// slow client holds nothing else up.
pub struct TlsListener {
    conns: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, conns) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "clinic page accept");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, addr)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "clinic page TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%addr, "clinic page TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { conns, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.conns.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "0.0.0.0:8480".parse().unwrap();
        let a = load_or_create(dir.path(), addr).unwrap();
        let b = load_or_create(dir.path(), addr).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32 * 3 - 1);
        a.server_config().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
    }
}
