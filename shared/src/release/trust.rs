//! What a device trusts and persists (`trust.json`): the current root key and root
//! metadata, every key id ever revoked, and the installed release version.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::envelope::{read_capped, SignedRoot, MAX_ENVELOPE_BYTES};
use super::hexstr::{self, key_id};
use super::root::RootMetadata;
use super::ReleaseError;
use crate::signing::{verify_in, Domain};

/// Root metadata whose signatures checked out, or (before the first document arrives)
/// just the root key pinned at enrolment, as an empty version 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRoot {
    key: [u8; 32],
    metadata: RootMetadata,
    signed: Option<SignedRoot>,
}

impl VerifiedRoot {
    pub fn version(&self) -> u64 {
        self.metadata.version
    }

    /// The root key that must sign the next root document.
    pub fn root_public_key(&self) -> [u8; 32] {
        self.key
    }

    pub fn metadata(&self) -> &RootMetadata {
        &self.metadata
    }

    /// The envelope it was verified from (`None` for the pinned-key-only version 0).
    pub fn signed(&self) -> Option<&SignedRoot> {
        self.signed.as_ref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustState {
    pub(crate) root: VerifiedRoot,
    pub(crate) installed_version: Option<u64>,
    pub(crate) revoked: BTreeSet<String>,
}

/// `trust.json`: the envelope is kept, not just its contents, so it can be re-checked.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    root_public_key: String,
    root: Option<SignedRoot>,
    installed_version: Option<u64>,
    revoked_key_ids: BTreeSet<String>,
}

/// Checks that `signed` carries a valid signature by `key`.
fn check_signed_by(signed: &SignedRoot, key: &[u8; 32]) -> Result<(), ReleaseError> {
    let id = key_id(key);
    let mut candidates = signed
        .signatures
        .iter()
        .filter(|s| s.key_id == id)
        .peekable();
    if candidates.peek().is_none() {
        return Err(ReleaseError::RootSignatureMissing { key_id: id });
    }
    if candidates
        .any(|s| verify_in(Domain::RootMetadata, key, &signed.root, &s.signature, "").is_ok())
    {
        Ok(())
    } else {
        Err(ReleaseError::BadSignature {
            key_id: id,
            what: "root metadata",
        })
    }
}

fn parse_root(signed: &SignedRoot) -> Result<RootMetadata, ReleaseError> {
    serde_json::from_slice(&signed.root)
        .map_err(|e| ReleaseError::Malformed(format!("root metadata: {e}")))
}

impl TrustState {
    /// A device's state at enrolment: it trusts `root_public_key` (from `model-root.pub`)
    /// and has installed no release through this path yet.
    pub fn new(root_public_key: [u8; 32]) -> Self {
        let metadata = RootMetadata {
            version: 0,
            root_public_key: hex::encode(root_public_key),
            signing_keys: Vec::new(),
            revoked_key_ids: Vec::new(),
            created_at_ms: 0,
        };
        Self {
            root: VerifiedRoot {
                key: root_public_key,
                metadata,
                signed: None,
            },
            installed_version: None,
            revoked: BTreeSet::new(),
        }
    }

    pub fn root(&self) -> &VerifiedRoot {
        &self.root
    }

    pub fn installed_version(&self) -> Option<u64> {
        self.installed_version
    }

    /// Every key id any accepted root version has revoked.
    pub fn revoked_key_ids(&self) -> impl Iterator<Item = &str> {
        self.revoked.iter().map(String::as_str)
    }

    /// Accepts a newer root document: it must be signed by the current root key and,
    /// when it names a different root key (a rotation), by that key too. A document
    /// that certifies a key once revoked is refused. On error nothing changes.
    pub fn update_root(&mut self, signed: &SignedRoot) -> Result<(), ReleaseError> {
        // Parsed before its signatures are checked only to name the refusal; nothing
        // from it is trusted until both checks below pass.
        let metadata = parse_root(signed)?;
        if metadata.version <= self.root.version() {
            return Err(ReleaseError::RootNotNewer {
                offered: metadata.version,
                installed: self.root.version(),
            });
        }
        check_signed_by(signed, &self.root.key)?;
        metadata.validate()?;
        let new_key = metadata.root_key()?;
        if new_key != self.root.key {
            check_signed_by(signed, &new_key)?;
        }
        let mut revoked = self.revoked.clone();
        revoked.extend(metadata.revoked_key_ids.iter().cloned());
        if let Some(k) = metadata
            .signing_keys
            .iter()
            .find(|k| revoked.contains(&k.key_id))
        {
            return Err(ReleaseError::RevokedSigningKey {
                key_id: k.key_id.clone(),
            });
        }
        self.revoked = revoked;
        self.root = VerifiedRoot {
            key: new_key,
            metadata,
            signed: Some(signed.clone()),
        };
        Ok(())
    }

    /// Applies root documents in order (e.g. every version a release folder ships),
    /// skipping those not newer than the trusted one; returns how many were applied.
    /// A rotation must be crossed one document at a time, so the chain must hold each.
    pub fn update_root_chain(&mut self, chain: &[SignedRoot]) -> Result<usize, ReleaseError> {
        let mut applied = 0;
        for signed in chain {
            match self.update_root(signed) {
                Ok(()) => applied += 1,
                Err(ReleaseError::RootNotNewer { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(applied)
    }

    pub fn to_json(&self) -> Result<Vec<u8>, ReleaseError> {
        let p = Persisted {
            root_public_key: hex::encode(self.root.key),
            root: self.root.signed.clone(),
            installed_version: self.installed_version,
            revoked_key_ids: self.revoked.clone(),
        };
        serde_json::to_vec_pretty(&p)
            .map_err(|e| ReleaseError::Malformed(format!("trust state: {e}")))
    }

    /// Reads persisted state back, re-checking the root document against the root key
    /// it names.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let p: Persisted = serde_json::from_slice(bytes)
            .map_err(|e| ReleaseError::Malformed(format!("trust state: {e}")))?;
        let key = hexstr::decode_key("root_public_key", &p.root_public_key)?;
        let mut state = Self::new(key);
        if let Some(signed) = p.root {
            check_signed_by(&signed, &key)?;
            let metadata = parse_root(&signed)?;
            metadata.validate()?;
            if metadata.root_key()? != key {
                return Err(ReleaseError::Malformed(
                    "trust state: root document names another root key".to_string(),
                ));
            }
            state.root = VerifiedRoot {
                key,
                metadata,
                signed: Some(signed),
            };
        }
        state.installed_version = p.installed_version;
        state.revoked = p.revoked_key_ids;
        state
            .revoked
            .extend(state.root.metadata.revoked_key_ids.iter().cloned());
        Ok(state)
    }

    pub fn load(path: &Path) -> Result<Self, ReleaseError> {
        let bytes = read_capped(path, MAX_ENVELOPE_BYTES)?;
        Self::from_json(&bytes).map_err(|e| ReleaseError::io(path, e))
    }

    /// Replaces `path` atomically, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), ReleaseError> {
        crate::fsutil::write_atomic(path, &self.to_json()?, 0o600)
            .map_err(|e| ReleaseError::io(path, e))
    }
}
