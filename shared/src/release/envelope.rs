//! The signed envelopes and their files: `release.json` beside `model.onnx` in a release
//! folder, `root.json` for root metadata. Each is one line of compact JSON; the signed
//! document rides inside as a JSON string holding exactly the bytes that were signed,
//! bytes elsewhere are lowercase hex, and unknown fields are refused.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::hexstr::{serde_hex, serde_text};
use super::ReleaseError;

/// The largest envelope file read (self-test frames make a release a few hundred KiB).
pub const MAX_ENVELOPE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRelease {
    /// The manifest's JSON bytes, exactly as signed; verification never re-serialises.
    #[serde(with = "serde_text")]
    pub manifest: Vec<u8>,
    /// Hex SHA-256 of the signing key's public key.
    pub key_id: String,
    /// Ed25519 over the `ModelRelease` domain context followed by `manifest`.
    #[serde(with = "serde_hex")]
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRoot {
    /// The root metadata's JSON bytes, exactly as signed.
    #[serde(with = "serde_text")]
    pub root: Vec<u8>,
    pub signatures: Vec<RootSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSignature {
    /// Hex SHA-256 of the root public key that made `signature`.
    pub key_id: String,
    /// Ed25519 over the `RootMetadata` domain context followed by `root`.
    #[serde(with = "serde_hex")]
    pub signature: Vec<u8>,
}

fn to_json<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, ReleaseError> {
    serde_json::to_vec(v).map_err(|e| ReleaseError::Malformed(format!("{what}: {e}")))
}

fn from_json<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, ReleaseError> {
    serde_json::from_slice(bytes).map_err(|e| ReleaseError::Malformed(format!("{what}: {e}")))
}

pub(crate) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, ReleaseError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| ReleaseError::io(path, e))?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReleaseError::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(ReleaseError::io(path, format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

macro_rules! envelope_io {
    ($t:ident, $what:literal) => {
        impl $t {
            pub fn to_json(&self) -> Result<Vec<u8>, ReleaseError> {
                to_json($what, self)
            }

            pub fn from_json(bytes: &[u8]) -> Result<Self, ReleaseError> {
                from_json($what, bytes)
            }

            pub fn read(path: &Path) -> Result<Self, ReleaseError> {
                let bytes = read_capped(path, MAX_ENVELOPE_BYTES)?;
                Self::from_json(&bytes).map_err(|e| match e {
                    ReleaseError::Malformed(m) => {
                        ReleaseError::Malformed(format!("{}: {m}", path.display()))
                    }
                    e => e,
                })
            }

            /// Replaces `path` atomically (mode 0644: nothing in it is secret).
            pub fn write(&self, path: &Path) -> Result<(), ReleaseError> {
                crate::fsutil::write_atomic(path, &self.to_json()?, 0o644)
                    .map_err(|e| ReleaseError::io(path, e))
            }
        }
    };
}
envelope_io!(SignedRelease, "release envelope");
envelope_io!(SignedRoot, "root envelope");
