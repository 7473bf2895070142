//! Root metadata: which keys may sign releases, which are revoked, and which root key
//! signs the next document.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::hexstr::{self, key_id};
use super::keys::RootKey;
use super::ReleaseError;

/// The document a root key signs (`SignedRoot.root`). Unknown fields are ignored: the
/// document is signed, so a field an older device does not know came from the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMetadata {
    /// Only ever goes up; a device refuses a document not newer than its own.
    pub version: u64,
    /// Hex of the raw Ed25519 key that signs this document and the next one.
    pub root_public_key: String,
    /// The model-signing keys certified by this version.
    pub signing_keys: Vec<CertifiedKey>,
    /// Keys withdrawn for good; a device remembers them even once a later version
    /// stops listing them.
    #[serde(default)]
    pub revoked_key_ids: Vec<String>,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedKey {
    /// Hex SHA-256 of the raw public key.
    pub key_id: String,
    /// Hex of the raw 32-byte Ed25519 public key.
    pub public_key: String,
    /// The key may sign releases created up to this instant (ms since the epoch).
    pub not_after_ms: u64,
}

impl RootMetadata {
    /// Version 1 under `root`, certifying no key yet.
    pub fn first(root: &RootKey, created_at_ms: u64) -> Self {
        Self {
            version: 1,
            root_public_key: hex::encode(root.public_key()),
            signing_keys: Vec::new(),
            revoked_key_ids: Vec::new(),
            created_at_ms,
        }
    }

    /// The following version: the same keys, `version + 1`.
    pub fn next(&self, created_at_ms: u64) -> Self {
        Self {
            version: self.version.saturating_add(1),
            created_at_ms,
            ..self.clone()
        }
    }

    /// Names `root` as the key that signs this document (a rotation when it changes).
    pub fn set_root(&mut self, root: &RootKey) {
        self.root_public_key = hex::encode(root.public_key());
    }

    /// Certifies a signing key by its raw public key (replacing an entry with its id).
    pub fn add_signing_key(&mut self, public_key: &[u8; 32], not_after_ms: u64) {
        let id = key_id(public_key);
        self.signing_keys.retain(|k| k.key_id != id);
        self.signing_keys.push(CertifiedKey {
            key_id: id,
            public_key: hex::encode(public_key),
            not_after_ms,
        });
    }

    /// Drops the key and lists it as revoked.
    pub fn revoke(&mut self, key_id: &str) {
        self.signing_keys.retain(|k| k.key_id != key_id);
        if !self.revoked_key_ids.iter().any(|k| k == key_id) {
            self.revoked_key_ids.push(key_id.to_string());
        }
    }

    pub fn signing_key(&self, key_id: &str) -> Option<&CertifiedKey> {
        self.signing_keys.iter().find(|k| k.key_id == key_id)
    }

    pub(crate) fn root_key(&self) -> Result<[u8; 32], ReleaseError> {
        hexstr::decode_key("root_public_key", &self.root_public_key)
    }

    /// Internal consistency: well-formed keys whose ids match, no duplicates, the root
    /// key never certified as a signing key, no key both certified and revoked.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        let root = self.root_key()?;
        let mut seen = BTreeSet::new();
        for k in &self.signing_keys {
            let public = hexstr::decode_key("signing key", &k.public_key)?;
            if key_id(&public) != k.key_id {
                return Err(ReleaseError::Malformed(format!(
                    "signing key id {} is not the SHA-256 of its public key",
                    k.key_id
                )));
            }
            if public == root {
                return Err(ReleaseError::Malformed(
                    "the root key is listed as a model-signing key".to_string(),
                ));
            }
            if !seen.insert(k.key_id.as_str()) {
                return Err(ReleaseError::Malformed(format!(
                    "signing key {} is listed twice",
                    k.key_id
                )));
            }
        }
        for id in &self.revoked_key_ids {
            if !hexstr::is_sha256(id) {
                return Err(ReleaseError::Malformed(format!(
                    "revoked key id {id:?} is not a hex SHA-256"
                )));
            }
            if seen.contains(id.as_str()) {
                return Err(ReleaseError::Malformed(format!(
                    "key {id} is both certified and revoked"
                )));
            }
        }
        Ok(())
    }
}
