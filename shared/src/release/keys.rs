//! The model root key and model-signing keys: Ed25519, stored as PKCS#8 DER files
//! (PEM accepted on load) written 0600 and never replaced; the root's public half is
//! distributed as `model-root.pub`, the raw 32-byte key in lowercase hex on one line.

use std::path::Path;

use ring::signature::Ed25519KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use super::envelope::{RootSignature, SignedRelease, SignedRoot};
use super::hexstr::{self, key_id};
use super::manifest::ReleaseManifest;
use super::root::RootMetadata;
use super::ReleaseError;
use crate::signing::{BatchSigner, Domain};

/// One Ed25519 key pair with the PKCS#8 document it came from (so it can be saved).
struct KeyPair {
    signer: BatchSigner,
    public: [u8; 32],
    pkcs8: Vec<u8>,
}

fn key_err(path: &Path, reason: impl std::fmt::Display) -> ReleaseError {
    ReleaseError::KeyFile {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl KeyPair {
    fn generate() -> Result<Self, ReleaseError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| ReleaseError::Malformed(format!("generating a key: {e}")))?;
        Self::from_pkcs8(doc.as_ref())
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, ReleaseError> {
        let signer =
            BatchSigner::from_pkcs8(der).map_err(|e| ReleaseError::Malformed(e.to_string()))?;
        let public = signer.public_key().try_into().map_err(|_| {
            ReleaseError::Malformed("Ed25519 public key is not 32 bytes".to_string())
        })?;
        Ok(Self {
            signer,
            public,
            pkcs8: der.to_vec(),
        })
    }

    fn load(path: &Path) -> Result<Self, ReleaseError> {
        let bytes = std::fs::read(path).map_err(|e| key_err(path, e))?;
        let der = if bytes.starts_with(b"-----BEGIN") {
            match PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| key_err(path, e))? {
                PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
                _ => return Err(key_err(path, "not a PKCS#8 key")),
            }
        } else {
            bytes
        };
        Self::from_pkcs8(&der).map_err(|e| key_err(path, e))
    }

    /// Writes the PKCS#8 DER readable by this user only; an existing file is never
    /// replaced (losing a root key strands every device that trusts it).
    fn save(&self, path: &Path) -> Result<(), ReleaseError> {
        if path.symlink_metadata().is_ok() {
            return Err(key_err(path, "already exists; refusing to replace a key"));
        }
        crate::fsutil::write_atomic(path, &self.pkcs8, 0o600).map_err(|e| key_err(path, e))
    }

    fn sign(&self, domain: Domain, body: &[u8]) -> Vec<u8> {
        self.signer.sign_in(domain, body)
    }
}

/// The offline key devices trust at enrolment; it signs only root metadata.
pub struct RootKey(KeyPair);

/// A key that signs release manifests, certified by appearing in root metadata.
pub struct SigningKey(KeyPair);

macro_rules! key_common {
    ($t:ident) => {
        impl $t {
            pub fn generate() -> Result<Self, ReleaseError> {
                KeyPair::generate().map(Self)
            }

            pub fn from_pkcs8(der: &[u8]) -> Result<Self, ReleaseError> {
                KeyPair::from_pkcs8(der).map(Self)
            }

            /// Reads a PKCS#8 key file (DER, or PEM `PRIVATE KEY`).
            pub fn load(path: &Path) -> Result<Self, ReleaseError> {
                KeyPair::load(path).map(Self)
            }

            /// Writes the key as PKCS#8 DER, mode 0600; refuses to replace a file.
            pub fn save(&self, path: &Path) -> Result<(), ReleaseError> {
                self.0.save(path)
            }

            pub fn public_key(&self) -> [u8; 32] {
                self.0.public
            }

            /// Hex SHA-256 of the raw public key.
            pub fn key_id(&self) -> String {
                key_id(&self.0.public)
            }
        }

        /// Names the key by its id; the secret half is never printed.
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($t), self.key_id())
            }
        }
    };
}
key_common!(RootKey);
key_common!(SigningKey);

impl RootKey {
    /// The text of `model-root.pub`: the public key in lowercase hex, one line.
    pub fn public_key_file(&self) -> String {
        format!("{}\n", hex::encode(self.0.public))
    }

    /// Signs `metadata`, which must name this key as its root: the next root document
    /// when the root key stays the same.
    pub fn certify(&self, metadata: &RootMetadata) -> Result<SignedRoot, ReleaseError> {
        self.sign_root(metadata, &[self])
    }

    /// Hands trust over to `new_root`: `metadata` must name `new_root` as its root; it is
    /// signed by both keys, which is what a device holding this key requires.
    pub fn rotate_to(
        &self,
        new_root: &RootKey,
        metadata: &RootMetadata,
    ) -> Result<SignedRoot, ReleaseError> {
        self.sign_root(metadata, &[self, new_root])
    }

    fn sign_root(
        &self,
        metadata: &RootMetadata,
        signers: &[&RootKey],
    ) -> Result<SignedRoot, ReleaseError> {
        metadata.validate()?;
        let named = metadata.root_key()?;
        let last = signers.last().map(|k| k.0.public);
        if last != Some(named) {
            return Err(ReleaseError::Malformed(format!(
                "root metadata names root key {}, not the key signing it",
                key_id(&named)
            )));
        }
        let root = serde_json::to_vec(metadata)
            .map_err(|e| ReleaseError::Malformed(format!("root metadata: {e}")))?;
        let signatures = signers
            .iter()
            .map(|k| RootSignature {
                key_id: k.key_id(),
                signature: k.0.sign(Domain::RootMetadata, &root),
            })
            .collect();
        Ok(SignedRoot { root, signatures })
    }
}

impl SigningKey {
    /// Serialises `manifest` once and signs exactly those bytes.
    pub fn sign_release(&self, manifest: &ReleaseManifest) -> Result<SignedRelease, ReleaseError> {
        manifest.validate()?;
        let bytes = serde_json::to_vec(manifest)
            .map_err(|e| ReleaseError::Malformed(format!("manifest: {e}")))?;
        Ok(SignedRelease {
            signature: self.0.sign(Domain::ModelRelease, &bytes),
            manifest: bytes,
            key_id: self.key_id(),
        })
    }

    #[cfg(test)]
    pub(crate) fn sign_raw(&self, domain: Domain, body: &[u8]) -> Vec<u8> {
        self.0.sign(domain, body)
    }
}

#[cfg(test)]
impl RootKey {
    pub(crate) fn sign_raw(&self, domain: Domain, body: &[u8]) -> Vec<u8> {
        self.0.sign(domain, body)
    }
}

/// The root public key in a `model-root.pub` file's text.
pub fn parse_root_public_key(text: &str) -> Result<[u8; 32], ReleaseError> {
    hexstr::decode_key("model-root.pub", text.trim())
}

/// Reads a `model-root.pub` file.
pub fn load_root_public_key(path: &Path) -> Result<[u8; 32], ReleaseError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReleaseError::io(path, e))?;
    parse_root_public_key(&text).map_err(|e| ReleaseError::io(path, e))
}
