//! The regional certificate authority and the device registry, as files under
//! `pki_dir` (so `enroll` and `revoke` work while the hub runs, and the hub sees them at
//! the next connection):
//!
//! ```text
//! ca.pem                   the trust bundle: the regional CA (ECDSA P-256), then, after
//!                          `ca migrate`, the retired Ed25519 CA of an older install
//! ca.key                   the regional CA's key (0600, never leaves the hub)
//! legacy-ca.key            after `ca migrate`: the retired CA's key, which only signs
//!                          its CRL (its device certificates stay valid until re-enrolled)
//! hub.pem hub.key          the hub's server (and broker-client) certificate, ECDSA P-256
//! pre-migrate/             after `ca migrate`: the files it replaced
//! crl.pem                  revocations, one CRL per CA, for Mosquitto's `crlfile`
//! devices/<clinic>/<device>.json   one enrolment: region, serial, key, revocation
//! ```
//!
//! The CA and the hub's certificate are ECDSA P-256 because browsers and BoringSSL-based
//! gRPC clients refuse Ed25519 in TLS; device keys stay Ed25519 (they also sign batches,
//! and rustls and OpenSSL accept them as client certificates under a P-256 CA).

mod downlink_key;
mod migrate;

pub use downlink_key::{
    parse_public as parse_downlink_public, BUNDLE_FILE as DOWNLINK_BUNDLE_FILE,
};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use pleura_shared::pki::{cert_info, Principal, HUB_CN};
use pleura_shared::{now_ms, validate_name};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("enrolment record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.into(),
        source,
    }
}

/// One device's enrolment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub clinic: String,
    pub device: String,
    /// The health region the clinic belongs to; scopes specialists' access.
    pub region: String,
    /// Serial of the current certificate; an older certificate of the device is refused.
    pub serial: String,
    /// Raw Ed25519 public key, hex: verifies the device's signed batches.
    pub public_key: String,
    pub not_after_s: i64,
    pub enrolled_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

pub struct Pki {
    dir: PathBuf,
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CaError> {
    write_atomic(path, bytes, secret).map_err(io(path))
}

/// Write-then-rename (fsynced): a reader such as the running hub never sees half a
/// file. `secret` files are created 0600; certificates 0644, for Mosquitto to read.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    pleura_shared::fsutil::write_atomic(path, bytes, if secret { 0o600 } else { 0o644 })
}

/// A fresh ECDSA P-256 key (the CA's and the hub's): what every TLS client accepts.
fn new_p256_key() -> Result<KeyPair, CaError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// A fresh Ed25519 key (a device's), stored as PKCS#8 v1 (seed only). ring writes v2,
/// which OpenSSL 3.0 (Mosquitto on Debian 12) cannot read; ring, rustls and rcgen read v1.
fn new_ed25519_key() -> Result<KeyPair, CaError> {
    const V2: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const V1: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let v2 = KeyPair::generate_for(&PKCS_ED25519)?.serialize_der();
    let seed = v2
        .strip_prefix(&V2[..])
        .and_then(|r| r.get(..32))
        .ok_or_else(|| CaError::Invalid("unexpected Ed25519 PKCS#8 layout from ring".into()))?;
    let v1 = [&V1[..], seed].concat();
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(v1),
        &PKCS_ED25519,
    )?)
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] = (b[0] & 0x7f).max(1); // positive, no leading zero: hex matches the DER bytes
    SerialNumber::from_slice(&b)
}

fn ts(secs: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| CaError::Invalid(e.to_string()))
}

fn now_s() -> i64 {
    (now_ms() / 1000) as i64
}

fn ca_params(common_name: &str) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = ts(now_s() - 3600)?;
    params.not_after = ts(now_s() + 20 * 365 * 86_400)?;
    params.serial_number = Some(serial());
    Ok(params)
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn hub_cert(&self) -> PathBuf {
        self.dir.join("hub.pem")
    }
    pub fn hub_key(&self) -> PathBuf {
        self.dir.join("hub.key")
    }
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    fn record_path(&self, clinic: &str, device: &str) -> PathBuf {
        self.dir
            .join("devices")
            .join(clinic)
            .join(format!("{device}.json"))
    }

    /// Creates the CA (ECDSA P-256), the hub's certificate (valid for `sans`: DNS names
    /// or IPs the devices use to reach the hub) and an empty CRL. Refuses to overwrite a CA.
    pub fn init(dir: &Path, name: &str, sans: &[String]) -> Result<Self, CaError> {
        Self::init_with(dir, name, sans, new_p256_key()?)
    }

    /// The PKI `ca init` wrote before the CA moved to P-256 (an Ed25519 CA and hub
    /// certificate), kept so that `migrate` is tested against a real older install.
    #[doc(hidden)]
    pub fn init_legacy_ed25519(dir: &Path, name: &str, sans: &[String]) -> Result<Self, CaError> {
        Self::init_with(dir, name, sans, new_ed25519_key()?)
    }

    fn init_with(dir: &Path, name: &str, sans: &[String], key: KeyPair) -> Result<Self, CaError> {
        let pki = Self { dir: dir.into() };
        if pki.ca_key().exists() {
            return Err(CaError::Invalid(format!(
                "{} already holds a CA; refusing to replace it (every enrolled device would be locked out)",
                dir.display()
            )));
        }
        let hub_key = if key.algorithm() == &PKCS_ED25519 {
            new_ed25519_key()?
        } else {
            new_p256_key()?
        };
        let params = ca_params(&format!("Pleura regional CA {name}"))?;
        let cert = params.self_signed(&key)?;
        write_file(&pki.ca_key(), key.serialize_pem().as_bytes(), true)?;
        write_file(&pki.ca_cert(), cert.pem().as_bytes(), false)?;
        pki.issue_hub(&Issuer::new(params, key), sans, hub_key)?;
        pki.write_crl()?;
        pki.downlink_signer()?;
        Ok(pki)
    }

    /// The hub's server (and broker-client) certificate, CN `pleura-hub`.
    fn issue_hub(
        &self,
        issuer: &Issuer<'_, KeyPair>,
        sans: &[String],
        key: KeyPair,
    ) -> Result<(), CaError> {
        let mut hub = CertificateParams::new(sans.to_vec())?;
        hub.distinguished_name = DistinguishedName::new();
        hub.distinguished_name.push(DnType::CommonName, HUB_CN);
        hub.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        hub.use_authority_key_identifier_extension = true;
        hub.not_before = ts(now_s() - 3600)?;
        hub.not_after = ts(now_s() + 825 * 86_400)?;
        hub.serial_number = Some(serial());
        let cert = hub.signed_by(&key, issuer)?;
        write_file(&self.hub_key(), key.serialize_pem().as_bytes(), true)?;
        write_file(&self.hub_cert(), cert.pem().as_bytes(), false)
    }

    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let pki = Self { dir: dir.into() };
        for p in [pki.ca_cert(), pki.hub_cert(), pki.hub_key()] {
            if !p.exists() {
                return Err(CaError::Invalid(format!(
                    "{} is missing; run `hub-server ca init --pki-dir {}` first",
                    p.display(),
                    dir.display()
                )));
            }
        }
        Ok(pki)
    }

    /// The certificate in the trust bundle whose public key is `key`'s.
    fn ca_cert_of(&self, key: &KeyPair) -> Result<CertificateDer<'static>, CaError> {
        let path = self.ca_cert();
        let certs =
            pleura_shared::pki::load_certs(&path).map_err(|e| CaError::Invalid(e.to_string()))?;
        for c in certs {
            let pk = pleura_shared::pki::subject_public_key(&c).map_err(|e| CaError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if pk == key.public_key_raw() {
                return Ok(c);
            }
        }
        Err(CaError::Invalid(format!(
            "{} holds no certificate for the key in {}",
            path.display(),
            self.ca_key().display()
        )))
    }

    fn issuer_from(&self, key_path: &Path) -> Result<Issuer<'static, KeyPair>, CaError> {
        let key = KeyPair::from_pem(&read(key_path)?)?;
        let cert = self.ca_cert_of(&key)?;
        Ok(Issuer::from_ca_cert_der(&cert, key)?)
    }

    /// The CA that signs enrolments now.
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CaError> {
        self.issuer_from(&self.ca_key())
    }

    fn legacy_ca_key(&self) -> PathBuf {
        self.dir.join("legacy-ca.key")
    }

    /// Issues a device certificate valid from `not_before_s` to `not_after_s` (Unix
    /// seconds) and writes the agent bundle into `out`: ca.pem, device.pem, device.key,
    /// hub-downlink.pub.
    /// Re-enrolling a device replaces its certificate; the old one stops working.
    pub fn enroll(
        &self,
        clinic: &str,
        device: &str,
        region: &str,
        not_before_s: i64,
        not_after_s: i64,
        out: &Path,
    ) -> Result<DeviceRecord, CaError> {
        for (what, v) in [("clinic", clinic), ("device", device), ("region", region)] {
            validate_name(what, v).map_err(|e| CaError::Invalid(e.to_string()))?;
        }
        if let Some(other) = self.clinic_region(clinic)? {
            if other != region {
                return Err(CaError::Invalid(format!(
                    "clinic {clinic} is enrolled in region {other}, not {region}"
                )));
            }
        }
        let principal = Principal::device(clinic, device);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, principal.common_name());
        params
            .distinguished_name
            .push(DnType::OrganizationName, clinic);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.not_before = ts(not_before_s)?;
        params.not_after = ts(not_after_s)?;
        params.serial_number = Some(serial());
        let key = new_ed25519_key()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        let info = cert_info(cert.der()).map_err(|e| CaError::Invalid(e.to_string()))?;

        write_file(
            &out.join("device.key"),
            key.serialize_pem().as_bytes(),
            true,
        )?;
        write_file(&out.join("device.pem"), cert.pem().as_bytes(), false)?;
        write_file(
            &out.join("ca.pem"),
            read(&self.ca_cert())?.as_bytes(),
            false,
        )?;
        self.write_downlink_pub(out)?;
        let rec = DeviceRecord {
            clinic: clinic.into(),
            device: device.into(),
            region: region.into(),
            serial: info.serial,
            public_key: hex::encode(&info.public_key),
            not_after_s,
            enrolled_at_ms: now_ms(),
            revoked_at_ms: None,
        };
        self.save(&rec)?;
        Ok(rec)
    }

    fn save(&self, rec: &DeviceRecord) -> Result<(), CaError> {
        let json = serde_json::to_vec_pretty(rec).map_err(|e| CaError::Invalid(e.to_string()))?;
        write_file(&self.record_path(&rec.clinic, &rec.device), &json, false)
    }

    /// Marks the device revoked and re-issues the CRL. The hub refuses it from its next
    /// connection (and its batches, whatever broker carries them).
    pub fn revoke(&self, clinic: &str, device: &str) -> Result<DeviceRecord, CaError> {
        let mut rec = self
            .device(clinic, device)?
            .ok_or_else(|| CaError::Invalid(format!("{clinic}/device/{device} is not enrolled")))?;
        if rec.revoked_at_ms.is_none() {
            rec.revoked_at_ms = Some(now_ms());
            self.save(&rec)?;
        }
        self.write_crl()?;
        Ok(rec)
    }

    /// One CRL per CA in crl.pem (OpenSSL wants the CRL of the issuer of the certificate
    /// it checks; serials are random 128-bit, so listing each revoked serial in both
    /// CRLs is harmless).
    fn write_crl(&self) -> Result<(), CaError> {
        let mut issuers = vec![self.issuer()?];
        if self.legacy_ca_key().exists() {
            issuers.push(self.issuer_from(&self.legacy_ca_key())?);
        }
        let mut revoked = Vec::new();
        for r in self.devices()? {
            if let Some(at) = r.revoked_at_ms {
                revoked.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(
                        &hex::decode(&r.serial).map_err(|e| CaError::Invalid(e.to_string()))?,
                    ),
                    revocation_time: ts((at / 1000) as i64)?,
                    reason_code: Some(RevocationReason::CessationOfOperation),
                    invalidity_date: None,
                });
            }
        }
        let params = CertificateRevocationListParams {
            this_update: ts(now_s() - 60)?,
            next_update: ts(now_s() + 365 * 86_400)?,
            crl_number: SerialNumber::from_slice(&(now_ms()).to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let mut pem = String::new();
        for issuer in &issuers {
            pem.push_str(&params.signed_by(issuer)?.pem()?);
        }
        write_file(&self.crl(), pem.as_bytes(), false)
    }

    pub fn device(&self, clinic: &str, device: &str) -> Result<Option<DeviceRecord>, CaError> {
        let path = self.record_path(clinic, device);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| CaError::Corrupt {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// (clinic, device) of every enrolment file, without reading them.
    pub(crate) fn device_ids(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Ok(clinics) = std::fs::read_dir(self.dir.join("devices")) else {
            return out;
        };
        for c in clinics.flatten() {
            let Ok(devs) = std::fs::read_dir(c.path()) else {
                continue;
            };
            let clinic = c.file_name().to_string_lossy().into_owned();
            for d in devs.flatten() {
                let name = d.file_name().to_string_lossy().into_owned();
                if let Some(device) = name.strip_suffix(".json") {
                    out.push((clinic.clone(), device.to_string()));
                }
            }
        }
        out.sort();
        out
    }

    pub fn devices(&self) -> Result<Vec<DeviceRecord>, CaError> {
        let mut out = Vec::new();
        for (clinic, device) in self.device_ids() {
            out.extend(self.device(&clinic, &device)?);
        }
        Ok(out)
    }

    fn clinic_region(&self, clinic: &str) -> Result<Option<String>, CaError> {
        Ok(self
            .devices()?
            .into_iter()
            .find(|d| d.clinic == clinic)
            .map(|d| d.region))
    }
}

/// Why a device is not trusted now.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrustError {
    #[error("{0} is not enrolled")]
    Unknown(String),
    #[error("{0} is revoked")]
    Revoked(String),
    #[error("{0} presented certificate {1}, but its current one is {2}")]
    Superseded(String, String, String),
    #[error("device registry: {0}")]
    Registry(String),
}

/// A record as last read, with the file's mtime then (None: no file).
type Cached = (Option<SystemTime>, Option<DeviceRecord>);

/// The running hub's read-through view of the enrolments: re-read when a file changes,
/// so enrolments and revocations apply without a restart.
pub struct Registry {
    pki: Pki,
    cache: Mutex<HashMap<(String, String), Cached>>,
}

impl Registry {
    pub fn new(pki_dir: &Path) -> Result<Self, CaError> {
        Ok(Self {
            pki: Pki::open(pki_dir)?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The current enrolment of a device, if any (revoked ones included).
    pub fn lookup(&self, clinic: &str, device: &str) -> Result<Option<DeviceRecord>, TrustError> {
        let path = self.pki.record_path(clinic, device);
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let key = (clinic.to_string(), device.to_string());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, rec)) = cache.get(&key) {
            if *t == mtime {
                return Ok(rec.clone());
            }
        }
        let rec = self
            .pki
            .device(clinic, device)
            .map_err(|e| TrustError::Registry(e.to_string()))?;
        cache.insert(key, (mtime, rec.clone()));
        Ok(rec)
    }

    /// An enrolled, unrevoked device; with `serial`, also its current certificate.
    pub fn trusted(
        &self,
        clinic: &str,
        device: &str,
        serial: Option<&str>,
    ) -> Result<DeviceRecord, TrustError> {
        let who = Principal::device(clinic, device).to_string();
        let rec = self
            .lookup(clinic, device)?
            .ok_or_else(|| TrustError::Unknown(who.clone()))?;
        if rec.revoked_at_ms.is_some() {
            return Err(TrustError::Revoked(who));
        }
        if let Some(s) = serial {
            if s != rec.serial {
                return Err(TrustError::Superseded(who, s.into(), rec.serial.clone()));
            }
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests;
