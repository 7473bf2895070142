//! The hub's downlink key: Ed25519, PKCS#8 at `<pki_dir>/downlink.key` (0600). It signs
//! every message the hub sends a device (`SignedDownlink`); its public half ships in every
//! enrolment bundle as `hub-downlink.pub` (hex of the raw 32-byte key, one line), which the
//! agent trusts as `[tls] hub_key`.

use std::path::{Path, PathBuf};

use pleura_shared::signing::BatchSigner;

use super::{io, write_file, CaError, Pki};

/// The bundle file that carries the hub's downlink public key.
pub const BUNDLE_FILE: &str = "hub-downlink.pub";

impl Pki {
    pub fn downlink_key(&self) -> PathBuf {
        self.dir.join("downlink.key")
    }

    /// The downlink key, generated (and `created` true) when the PKI has none yet: a CA
    /// initialised before issue #13, or by `ca init` itself.
    pub fn downlink_signer(&self) -> Result<(BatchSigner, bool), CaError> {
        let path = self.downlink_key();
        match std::fs::read(&path) {
            Ok(der) => {
                let signer = BatchSigner::from_pkcs8(&der).map_err(|e| CaError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Ok((signer, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (signer, der) =
                    BatchSigner::generate().map_err(|e| CaError::Invalid(e.to_string()))?;
                write_file(&path, &der, true)?;
                Ok((signer, true))
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Writes `hub-downlink.pub` into a bundle folder.
    pub(super) fn write_downlink_pub(&self, out: &Path) -> Result<(), CaError> {
        let (signer, created) = self.downlink_signer()?;
        if created {
            tracing::info!(path = %self.downlink_key().display(), "hub downlink key created");
        }
        let line = format!("{}\n", hex::encode(signer.public_key()));
        write_file(&out.join(BUNDLE_FILE), line.as_bytes(), false)
    }
}

/// The key in a `hub-downlink.pub` file's text: the raw 32-byte Ed25519 public key, hex.
pub fn parse_public(text: &str) -> Result<Vec<u8>, String> {
    let key = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    if key.len() != 32 {
        return Err(format!("{} bytes, an Ed25519 key has 32", key.len()));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_downlink_key_is_private_stable_and_made_for_an_older_pki() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(dir.path(), "t", &["localhost".into()]).unwrap();
        let mode = std::fs::metadata(pki.downlink_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (a, created) = pki.downlink_signer().unwrap();
        assert!(!created);
        let (b, _) = pki.downlink_signer().unwrap();
        assert_eq!(a.public_key(), b.public_key());
        // A PKI from before the downlink key gets one when first asked.
        std::fs::remove_file(pki.downlink_key()).unwrap();
        let (c, created) = pki.downlink_signer().unwrap();
        assert!(created);
        assert_ne!(c.public_key(), a.public_key());
        assert!(parse_public(&hex::encode(c.public_key())).is_ok());
        assert!(parse_public("00ff").is_err());
    }
}
