//! End-to-end integrity of result batches: the device signs the encoded batch with its
//! Ed25519 key (the key of its enrolled certificate); the hub verifies it against the
//! enrolled public key, whatever broker carried it.

use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::PrivateKeyDer;

use crate::pki::{load_key, PkiError};

/// Domain separation: a signature over one kind of message can never be replayed as
/// another (a batch as an uplink message, a device's uplink as a hub's downlink…).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// `SignedBatch.batch`, signed by a device.
    ResultBatch,
    /// `SignedUplink.body`, signed by a device.
    Uplink,
    /// `SignedDownlink.body`, signed by the hub's downlink key.
    Downlink,
    /// `SignedRoot.root`: model-release root metadata, signed by a model root key.
    RootMetadata,
    /// `SignedRelease.manifest`: a model release manifest, signed by a model-signing key.
    ModelRelease,
}

impl Domain {
    fn context(self) -> &'static [u8] {
        match self {
            Domain::ResultBatch => b"pleura.v1.ResultBatch\0",
            Domain::Uplink => b"pleura.v1.Uplink\0",
            Domain::Downlink => b"pleura.v1.Downlink\0",
            Domain::RootMetadata => b"pleura.v1.ModelRootMetadata\0",
            Domain::ModelRelease => b"pleura.v1.ModelRelease\0",
        }
    }
}

pub struct BatchSigner {
    key: Ed25519KeyPair,
}

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("device key is not an Ed25519 PKCS#8 key: {0}")]
    Key(String),
    #[error("signature does not verify against the enrolled key of {0}")]
    Invalid(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

fn message(domain: Domain, body: &[u8]) -> Vec<u8> {
    let context = domain.context();
    let mut m = Vec::with_capacity(context.len() + body.len());
    m.extend_from_slice(context);
    m.extend_from_slice(body);
    m
}

impl BatchSigner {
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignatureError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| SignatureError::Key(e.to_string()))?;
        Ok(Self { key })
    }

    /// The device's PEM private key (the bundle's `device.key`).
    pub fn from_pem_file(path: &Path) -> Result<Self, SignatureError> {
        match load_key(path)? {
            PrivateKeyDer::Pkcs8(k) => Self::from_pkcs8(k.secret_pkcs8_der()),
            _ => Err(SignatureError::Key(format!(
                "{} is not a PKCS#8 key",
                path.display()
            ))),
        }
    }

    pub fn sign(&self, batch: &[u8]) -> Vec<u8> {
        self.sign_in(Domain::ResultBatch, batch)
    }

    /// Signs `body` as a message of `domain` (the same key signs uplink messages).
    pub fn sign_in(&self, domain: Domain, body: &[u8]) -> Vec<u8> {
        self.key.sign(&message(domain, body)).as_ref().to_vec()
    }

    /// Generates a fresh key (the hub's downlink key at `ca init`; tests), with its
    /// PKCS#8 document so that it can be stored.
    pub fn generate() -> Result<(Self, Vec<u8>), SignatureError> {
        let rng = ring::rand::SystemRandom::new();
        let doc =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| SignatureError::Key(e.to_string()))?;
        Ok((Self::from_pkcs8(doc.as_ref())?, doc.as_ref().to_vec()))
    }

    /// `batch` encoded and signed: the envelope a device sends.
    pub fn seal(&self, batch: &pleura_proto::v1::ResultBatch) -> pleura_proto::v1::SignedBatch {
        let batch = prost::Message::encode_to_vec(batch);
        let signature = self.sign(&batch);
        pleura_proto::v1::SignedBatch { batch, signature }
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }
}

/// Checks `signature` over `batch` with the raw Ed25519 `public_key`; `who` names the
/// claimed signer in the error.
pub fn verify(
    public_key: &[u8],
    batch: &[u8],
    signature: &[u8],
    who: &str,
) -> Result<(), SignatureError> {
    verify_in(Domain::ResultBatch, public_key, batch, signature, who)
}

/// Checks `signature` over `body` as a message of `domain`.
pub fn verify_in(
    domain: Domain,
    public_key: &[u8],
    body: &[u8],
    signature: &[u8],
    who: &str,
) -> Result<(), SignatureError> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&message(domain, body), signature)
        .map_err(|_| SignatureError::Invalid(who.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> BatchSigner {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        BatchSigner::from_pkcs8(doc.as_ref()).unwrap()
    }

    #[test]
    fn signatures_verify_only_for_the_same_key_and_bytes() {
        let (a, b) = (signer(), signer());
        let sig = a.sign(b"batch");
        verify(a.public_key(), b"batch", &sig, "a").unwrap();
        assert!(verify(a.public_key(), b"batcH", &sig, "a").is_err());
        assert!(verify(b.public_key(), b"batch", &sig, "b").is_err());
        assert!(verify(a.public_key(), b"batch", &sig[..63], "a").is_err());
        // A batch signature is no uplink or downlink signature, and back.
        assert!(verify_in(Domain::Uplink, a.public_key(), b"batch", &sig, "a").is_err());
        let up = a.sign_in(Domain::Uplink, b"batch");
        verify_in(Domain::Uplink, a.public_key(), b"batch", &up, "a").unwrap();
        assert!(verify(a.public_key(), b"batch", &up, "a").is_err());
        assert!(verify_in(Domain::Downlink, a.public_key(), b"batch", &up, "a").is_err());
        // The context prefix matters: a raw signature over the bytes does not verify.
        let raw = a.key.sign(b"batch");
        assert!(verify(a.public_key(), b"batch", raw.as_ref(), "a").is_err());
    }
}
