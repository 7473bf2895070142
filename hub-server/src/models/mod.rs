//! The hub side of the model lifecycle (issue #15): signed releases on disk, the
//! operator's rollout plan, and the task that offers releases to devices, serves their
//! downloads and records where each device stands.
//!
//! Everything lives in `<data_dir>/models/`:
//!
//! ```text
//! root.key            offline root key (created here for the demo; belongs offline)
//! signing.key         model-signing key, certified by the latest roots/<v>.json
//! retired/<id>.key    signing keys replaced by `rotate-signing-key`
//! roots/<v>.json      every signed root metadata version (sent in each offer)
//! model-root.pub      the root public key, copied into enrolment bundles
//! releases/<N>/       release.json (signed envelope) + model.onnx
//! rollout.json        the plan, written atomically by the CLI, polled by the hub
//! status.json         per release and device state, written atomically by the hub
//! shadow.json         candidates vs the active model on reviewed scans, by the hub
//! delivered.json      which offers and commands the hub queued (the hub's own memory)
//! ```
//!
//! The CLI only touches files (the running hub holds its sled databases locked); the hub
//! reads `rollout.json` every [`control::POLL_EVERY`] and answers devices over the
//! signed downlink.

pub mod control;
pub mod keys;
pub mod ports;
pub mod publish;
pub mod rollout;
mod serve;
pub mod shadow;
pub mod status;
pub mod store;

#[cfg(test)]
mod control_tests;
#[cfg(test)]
mod shadow_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use pleura_shared::release::ReleaseError;

pub use control::ModelControl;
pub use ports::{DeviceList, ModelOutbox};
pub use rollout::{Cohort, PlanState, ReleasePlan, RolloutFile};
pub use status::{DeviceStatus, StatusFile};
pub use store::ModelStore;

/// The largest chunk of a model file sent in one `ModelChunk` (MQTT payload limits).
pub const MAX_CHUNK_BYTES: usize = 32 * 1024;
/// The largest `release.json` publish accepts: it rides whole in a `ModelOffer`, and the
/// agent's MQTT client takes packets up to 256 KiB (the rest is left for the root chain
/// and the signed downlink around it). A bigger offer would never reach a device.
pub const MAX_OFFER_RELEASE_BYTES: usize = 192 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("release version {version} is not above the highest published version {highest}: versions only go up (to roll back, publish the earlier model as a higher version)")]
    NotNewer { version: u64, highest: u64 },
    #[error("model file SHA-256 is {actual}, its sidecar {sidecar} says {expected}")]
    SidecarHashMismatch {
        sidecar: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("sidecar {path}: {reason}")]
    Sidecar { path: PathBuf, reason: String },
    #[error("self-test vectors {path}: {reason}")]
    SelfTest { path: PathBuf, reason: String },
    #[error("no model keys in {0}: run `hub-server model init-keys` first")]
    NoKeys(PathBuf),
    #[error("model keys already exist in {0}; refusing to replace them")]
    KeysExist(PathBuf),
    #[error("signing key {key_id} is not certified by root metadata version {root_version} (revoked or rotated out): run `hub-server model rotate-signing-key`")]
    SigningKeyNotCertified { key_id: String, root_version: u64 },
    #[error("release.json would be {bytes} bytes, more than the {limit} an offer can carry to a device: use fewer or smaller self-test vectors")]
    TooLargeForOffer { bytes: usize, limit: usize },
    #[error("release {0} is not published")]
    UnknownRelease(u64),
    #[error("release {version}: {reason}")]
    Plan { version: u64, reason: String },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelsError + '_ {
    move |source| ModelsError::Io {
        path: path.into(),
        source,
    }
}

/// Reads a JSON file; None when it does not exist.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, ModelsError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ModelsError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        })
}

/// Replaces `path` atomically with pretty JSON (written, fsynced, renamed).
pub(crate) fn write_json<T: serde::Serialize>(
    path: &Path,
    value: &T,
    mode: u32,
) -> Result<(), ModelsError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| ModelsError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    pleura_shared::fsutil::write_atomic(path, &bytes, mode).map_err(io_err(path))
}
