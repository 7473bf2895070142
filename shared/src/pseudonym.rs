//! Keyed patient pseudonyms: the same patient's scans link up at the hub without the
//! hub learning who the patient is. The key never leaves the clinic.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a pseudonym on the wire.
pub const PSEUDONYM_LEN: usize = 16;

/// A clinic's secret for pseudonyms (at least 16 bytes).
#[derive(Clone)]
pub struct PseudonymKey(Vec<u8>);

#[derive(Debug, thiserror::Error)]
#[error("pseudonym key must be at least 16 bytes, got {0}")]
pub struct ShortKey(pub usize);

impl PseudonymKey {
    pub fn new(secret: Vec<u8>) -> Result<Self, ShortKey> {
        if secret.len() < 16 {
            return Err(ShortKey(secret.len()));
        }
        Ok(Self(secret))
    }

    pub fn generate() -> Self {
        Self(rand::random::<[u8; 32]>().to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// HMAC-SHA256 of the normalised patient identifier, truncated to 16 bytes.
    /// Identifiers differing only in case or surrounding blanks map together.
    pub fn pseudonym(&self, patient_id: &str) -> [u8; PSEUDONYM_LEN] {
        let normalised = patient_id.trim().to_uppercase();
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac accepts any key length");
        mac.update(b"pleura-patient-v1\0");
        mac.update(normalised.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; PSEUDONYM_LEN];
        out.copy_from_slice(&full[..PSEUDONYM_LEN]);
        out
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_patient_same_key_links_other_key_does_not() {
        let k = PseudonymKey::new(vec![7; 32]).unwrap();
        assert_eq!(k.pseudonym("PAT-001"), k.pseudonym(" pat-001 "));
        assert_ne!(k.pseudonym("PAT-001"), k.pseudonym("PAT-002"));
        let other = PseudonymKey::new(vec![8; 32]).unwrap();
        assert_ne!(k.pseudonym("PAT-001"), other.pseudonym("PAT-001"));
        assert!(PseudonymKey::new(vec![1; 8]).is_err());
    }
}
