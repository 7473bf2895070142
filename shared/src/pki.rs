//! Who is who on the wire: identities carried in X.509 certificates issued by the
//! regional CA, PEM loading, and the TLS client configuration both binaries use.
//!
//! A device certificate's common name is `<clinic>/device/<device>` — the same string
//! Mosquitto takes as the username (`use_identity_as_username`) for its topic ACL —
//! and the hub's own certificate is `pleura-hub`.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ids::validate_name;

/// Common name of the hub's certificate (server, and client towards an external broker).
pub const HUB_CN: &str = "pleura-hub";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Device { clinic: String, device: String },
    Hub,
}

impl Principal {
    pub fn device(clinic: &str, device: &str) -> Self {
        Principal::Device {
            clinic: clinic.into(),
            device: device.into(),
        }
    }

    /// The certificate common name that carries this identity.
    pub fn common_name(&self) -> String {
        match self {
            Principal::Device { clinic, device } => format!("{clinic}/device/{device}"),
            Principal::Hub => HUB_CN.into(),
        }
    }

    pub fn from_common_name(cn: &str) -> Result<Self, PkiError> {
        if cn == HUB_CN {
            return Ok(Principal::Hub);
        }
        match cn.split('/').collect::<Vec<_>>().as_slice() {
            [clinic, "device", device] => {
                validate_name("clinic", clinic).map_err(|e| PkiError::Identity(e.to_string()))?;
                validate_name("device", device).map_err(|e| PkiError::Identity(e.to_string()))?;
                Ok(Principal::device(clinic, device))
            }
            _ => Err(PkiError::Identity(format!(
                "common name {:?} is neither {HUB_CN:?} nor <clinic>/device/<device>",
                cn.chars().take(80).collect::<String>()
            ))),
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.common_name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate identity: {0}")]
    Identity(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the hub and agent need to know about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub principal: Principal,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Raw subject public key (32 bytes for Ed25519, 65 for ECDSA P-256).
    pub public_key: Vec<u8>,
    pub not_after_s: i64,
}

pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::Identity("certificate has no common name".into()))?;
    Ok(CertInfo {
        principal: Principal::from_common_name(cn)?,
        serial: hex::encode(cert.raw_serial()),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        not_after_s: cert.validity().not_after.timestamp(),
    })
}

/// Raw subject public key of any certificate (a CA's too, which `cert_info` refuses: its
/// common name is no principal). Matches `rcgen::KeyPair::public_key_raw`.
pub fn subject_public_key(der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// The subject common name of any certificate (a CA's too).
pub fn common_name(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    cn.ok_or_else(|| PkiError::Identity("certificate has no common name".into()))
}

/// DNS names and IP addresses a certificate is valid for.
pub fn subject_alt_names(der: &[u8]) -> Result<Vec<String>, PkiError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(path, e))?;
    if certs.is_empty() {
        return Err(read_err(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| read_err(path, e))
}

/// ring, explicitly: the only provider compiled in (no aws-lc, no build-time cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn roots(ca: &Path) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// TLS client trusting only the regional CA, presenting `identity` (cert, key) if given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    Ok(match identity {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_round_trip_and_bad_ones_are_named() {
        let p = Principal::device("c1", "pi-7");
        assert_eq!(p.common_name(), "c1/device/pi-7");
        assert_eq!(Principal::from_common_name("c1/device/pi-7").unwrap(), p);
        assert_eq!(Principal::from_common_name(HUB_CN).unwrap(), Principal::Hub);
        for bad in [
            "c1",
            "c1/device/",
            "c1/device/d/x",
            "../device/d",
            "c1/devices/d",
        ] {
            assert!(Principal::from_common_name(bad).is_err(), "{bad}");
        }
    }
}
