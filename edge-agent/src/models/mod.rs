//! The model lifecycle at the edge (issue #15): signed releases offered by the hub are
//! verified before a byte is fetched (`offer`), downloaded resumably in the background
//! after clinical data (`download`), installed into the spare slot and self-tested with
//! the configured backend (`install`), switched in atomically between analyses
//! (`slots`, `live`), and rolled back by the agent itself when they misbehave (`guard`).
//! `worker` is the task that moves the bytes and sends the reports.
//!
//! Files, under `<data_dir>/models/`: `trust.json` (the `TrustState`), `slots/{a,b}/`
//! (`release.json`, `model.onnx`, `model.json` = the manifest's sidecar), `current.json`
//! (`{"active", "previous", "shadow"}`), `download/<version>.json` + `.part`,
//! `command.json` (a PROMOTE/ABORT received and not yet carried out) and
//! `rolled_back.json` (versions this device rolled back, never taken again).

pub mod command;
pub mod download;
pub mod guard;
pub mod install;
pub mod live;
pub mod offer;
pub mod run;
pub mod slots;
pub mod switch;
#[cfg(test)]
pub(crate) mod tests;
pub mod worker;

pub use live::LivePool;
pub use offer::{ModelStore, OfferOutcome, Pending};
pub use slots::{Current, Layout, Slot, SlotModel};
pub use worker::{ModelEvent, ModelWorker};

use pleura_shared::release::ReleaseError;

/// This agent's version, as releases' `min_agent_version` is compared with.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model state {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("model engine: {0}")]
    Engine(String),
}

impl ModelsError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ModelsError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The stable name of a refusal, first word of every REFUSED report's reason.
pub fn refusal_name(e: &ReleaseError) -> &'static str {
    match e {
        ReleaseError::BadSignature { .. } => "bad_signature",
        ReleaseError::UnknownSigningKey { .. } => "unknown_signing_key",
        ReleaseError::RevokedSigningKey { .. } => "revoked_signing_key",
        ReleaseError::SigningKeyExpired { .. } => "signing_key_expired",
        ReleaseError::NotNewer { .. } => "not_newer",
        ReleaseError::ModelHashMismatch { .. } => "model_hash_mismatch",
        ReleaseError::ModelSizeMismatch { .. } => "model_size_mismatch",
        ReleaseError::AgentTooOld { .. } => "agent_too_old",
        ReleaseError::ReleaseExpired { .. } => "release_expired",
        ReleaseError::CreatedInFuture { .. } => "created_in_future",
        ReleaseError::RootNotNewer { .. } => "root_not_newer",
        ReleaseError::RootSignatureMissing { .. } => "root_signature_missing",
        ReleaseError::BadVersionString { .. } => "bad_version_string",
        ReleaseError::InputMismatch(_) => "input_mismatch",
        ReleaseError::SelfTestFailed { .. } => "self_test_failed",
        ReleaseError::Malformed(_) => "malformed",
        ReleaseError::KeyFile { .. } => "key_file",
        ReleaseError::Io { .. } => "io",
    }
}

/// `"<name>: <message>"`, as a report's reason.
pub fn refusal(e: &ReleaseError) -> String {
    format!("{}: {e}", refusal_name(e))
}
