//! Signed model releases and their verification on a device.
//!
//! **Trust model.** An offline Ed25519 *root key* is pinned on every device at enrolment
//! (`model-root.pub`). It signs only *root metadata* (`root.json`): a `version` that only
//! goes up, the certified *model-signing keys* (id = hex SHA-256 of the public key, each
//! with `not_after_ms`), revoked key ids, and the root key for the next document. A
//! signing key (never the root key, never the hub's CA or downlink key) signs *release
//! manifests* (`release.json`, beside `model.onnx`): name, monotonically increasing
//! `version`, the model's SHA-256 and size, input shape, labels, the sidecar, minimum
//! agent version, creation and expiry times, and self-test vectors. Every signature is
//! over a domain context plus the exact signed bytes (`signing::Domain`), so root
//! metadata can never pass as a release or the reverse, and nothing is re-serialised.
//!
//! **Updates.** A device accepts root metadata only with a higher version, signed by its
//! current root key; a *rotation* (a new `root_public_key`) must also be signed by the
//! new key, and is crossed one document at a time. *Revoking* a signing key is a new
//! root version that drops and lists it; revocations are remembered for good. A release
//! is installed only if its version is above the installed one (no rollback, no replay
//! of an older offer), its key is certified and unrevoked, the agent is new enough, and
//! the model file matches its digest and size (streamed).
//!
//! **Time.** Expiry gates only *accepting an offer*, never running the installed model,
//! so an offline clinic is never bricked. A signing key past `not_after_ms` cannot sign
//! releases created later (`created_at_ms` is the signer's claim: a key suspected of
//! compromise must be revoked, not left to expire). With a trusted clock a release past
//! `expires_at_ms`, or created more than a day in the future, is refused; when the device
//! is unsure of its clock (`now_ms = None`) both checks are skipped and the result says
//! `clock_unsure`: a wrong clock must not lock a clinic out of fixes, and version
//! monotonicity still stops replays. Root metadata does not expire.
//!
//! **Persisted on a device** (`trust.json`): the current root key and signed root
//! document, every revoked key id, and the installed release version.

mod envelope;
mod error;
mod hexstr;
mod keys;
mod manifest;
mod root;
mod trust;
mod verify;
mod version;

#[cfg(test)]
mod tests;

pub use envelope::{RootSignature, SignedRelease, SignedRoot, MAX_ENVELOPE_BYTES};
pub use error::ReleaseError;
pub use hexstr::key_id;
pub use keys::{load_root_public_key, parse_root_public_key, RootKey, SigningKey};
pub use manifest::{
    InputSpec, ReleaseManifest, SelfTest, SelfTestVector, Thresholds, MAX_INPUT_SIZE,
    MAX_SELF_TEST_BYTES, MAX_SELF_TEST_VECTORS, SEVERITY_LEVELS,
};
pub use root::{CertifiedKey, RootMetadata};
pub use trust::{TrustState, VerifiedRoot};
pub use verify::{VerifiedRelease, CREATED_AT_SLACK_MS};
pub use version::AgentVersion;

/// The envelope file in a release folder.
pub const RELEASE_FILE: &str = "release.json";
/// The model file in a release folder.
pub const MODEL_FILE: &str = "model.onnx";
/// Root metadata shipped with releases (the latest version; a rotation needs each).
pub const ROOT_FILE: &str = "root.json";
/// The root public key a device receives at enrolment.
pub const ROOT_PUBLIC_KEY_FILE: &str = "model-root.pub";
/// A device's persisted trust state.
pub const TRUST_FILE: &str = "trust.json";
