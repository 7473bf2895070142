//! `hub-server ca migrate`: an install whose CA is Ed25519 moves to a P-256 CA in place.

use std::path::Path;

use rcgen::{Issuer, KeyPair, PKCS_ED25519};

use super::{ca_params, io, new_p256_key, read, write_file, CaError, Pki};

impl Pki {
    /// Moves an install whose CA is Ed25519 (before 2026-12) to a P-256 CA, in place:
    /// a new P-256 CA signs a new hub certificate (same names as the old one) and every
    /// enrolment from now on; the old CA stays in the trust bundle `ca.pem` (and its key,
    /// as `legacy-ca.key`, signs its CRL), so devices enrolled under it keep their
    /// certificates. Each device needs the new `ca.pem` to trust the hub's new
    /// certificate once the hub restarts. The replaced files are copied to
    /// `pre-migrate/` first. Returns the names the hub certificate is for.
    pub fn migrate(dir: &Path) -> Result<Vec<String>, CaError> {
        let pki = Self::open(dir)?;
        if pki.legacy_ca_key().exists() {
            return Err(CaError::Invalid(format!(
                "{} exists: this PKI was already migrated (to undo a migration that stopped \
                 part-way, put back the files in pre-migrate/ and remove legacy-ca.key)",
                pki.legacy_ca_key().display()
            )));
        }
        let old_key_pem = read(&pki.ca_key())?;
        let old_key = KeyPair::from_pem(&old_key_pem)?;
        if old_key.algorithm() != &PKCS_ED25519 {
            return Err(CaError::Invalid(format!(
                "the CA in {} is not Ed25519: nothing to migrate",
                dir.display()
            )));
        }
        let old_ca = pki.ca_cert_of(&old_key)?;
        let bad = |e: pleura_shared::pki::PkiError| CaError::Invalid(e.to_string());
        let old_cn = pleura_shared::pki::common_name(&old_ca).map_err(bad)?;
        let hub_pem = pleura_shared::pki::load_certs(&pki.hub_cert()).map_err(bad)?;
        let sans = pleura_shared::pki::subject_alt_names(&hub_pem[0]).map_err(bad)?;
        let old_bundle = read(&pki.ca_cert())?;

        let key = new_p256_key()?;
        let params = ca_params(&format!("{old_cn} P-256"))?;
        let cert = params.self_signed(&key)?;
        // A copy of what is replaced, to restore by hand if this stops part-way.
        let backup = dir.join("pre-migrate");
        for (name, secret) in [
            ("ca.pem", false),
            ("ca.key", true),
            ("hub.pem", false),
            ("hub.key", true),
            ("crl.pem", false),
        ] {
            let from = dir.join(name);
            if from.exists() {
                let bytes = std::fs::read(&from).map_err(io(&from))?;
                write_file(&backup.join(name), &bytes, secret)?;
            }
        }
        write_file(&pki.legacy_ca_key(), old_key_pem.as_bytes(), true)?;
        write_file(
            &pki.ca_cert(),
            format!("{}{old_bundle}", cert.pem()).as_bytes(),
            false,
        )?;
        write_file(&pki.ca_key(), key.serialize_pem().as_bytes(), true)?;
        pki.issue_hub(&Issuer::new(params, key), &sans, new_p256_key()?)?;
        pki.write_crl()?;
        Ok(sans)
    }
}
