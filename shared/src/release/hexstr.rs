//! Lowercase hex, the one spelling every signed document and envelope uses for bytes.
//! Decoding is strict so that no two spellings of an envelope mean the same thing.

use sha2::{Digest, Sha256};

use super::ReleaseError;

/// Decodes `text` (lowercase hex only); `field` names it in the error.
pub(crate) fn decode(field: &str, text: &str) -> Result<Vec<u8>, ReleaseError> {
    if let Some(c) = text.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(ReleaseError::Malformed(format!(
            "{field}: {c:?} is not a lowercase hex digit"
        )));
    }
    hex::decode(text).map_err(|e| ReleaseError::Malformed(format!("{field}: {e}")))
}

/// A raw Ed25519 public key (32 bytes) from its hex spelling.
pub(crate) fn decode_key(field: &str, text: &str) -> Result<[u8; 32], ReleaseError> {
    let bytes = decode(field, text)?;
    bytes.as_slice().try_into().map_err(|_| {
        ReleaseError::Malformed(format!(
            "{field}: {} bytes, an Ed25519 public key has 32",
            bytes.len()
        ))
    })
}

/// A key's id: the hex SHA-256 of its raw 32-byte public key.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(Sha256::digest(public_key))
}

/// Whether `text` is a hex SHA-256 (64 lowercase digits).
pub(crate) fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// serde for `Vec<u8>` fields as strict lowercase hex strings.
pub(crate) mod serde_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::decode("hex field", &text).map_err(serde::de::Error::custom)
    }
}

/// serde for a signed document's bytes, carried as a JSON string holding that exact text
/// (readable, and decoding the string gives back every byte that was signed).
pub(crate) mod serde_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(bytes).map_err(serde::ser::Error::custom)?;
        s.serialize_str(text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}
