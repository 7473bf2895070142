//! The model lifecycle at the edge (issue #15): signed releases offered by the hub are
//! verified before a byte is fetched (`offer`), downloaded resumably in the background
//! after clinical data (`download`), installed into the spare slot and self-tested with
//! the configured backend (`install`), switched in atomically between analyses
//! (`slots`, `live`), run beside the active model on new scans while in shadow
//! (`shadow`), and rolled back by the agent itself when they misbehave (`guard`).
//! `worker` is the task that moves the bytes and sends the reports.
//!
//! Files, under `<data_dir>/models/`: `trust.json` (the `TrustState`), `slots/{a,b}/`
//! (`release.json`, `model.onnx`, `model.json` = the manifest's sidecar), `current.json`
//! (`{"active", "previous", "shadow"}`), `download/<version>.json` + `.part`,
//! `command.json` (a PROMOTE/ABORT received and not yet carried out),
//! `rolled_back.json` (versions this device rolled back, never taken again) and
//! `reports.json` (reports to the hub not yet sent).

pub mod command;
pub mod download;
pub mod guard;
pub mod install;
pub mod live;
pub mod offer;
pub mod reports;
pub mod run;
pub mod shadow;
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

/// No clock reading before this is plausible (2026-11-01, before this code existed): a
/// Pi without a real-time clock boots in 1970 or at a stale saved time.
pub const CLOCK_FLOOR_MS: u64 = 1_793_491_200_000;

/// The time to check a release's expiry and creation against: None when the clock is
/// not plausible, so that a wrong clock never locks a clinic out of updates (version
/// monotonicity still stops replays; SECURITY.md, "Model releases"). Only an offer's
/// acceptance is checked against time: installing and activating a release accepted
/// earlier re-check its signature, key and version, never its expiry.
pub fn trusted_now(now_ms: u64) -> Option<u64> {
    (now_ms >= CLOCK_FLOOR_MS).then_some(now_ms)
}

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

#[cfg(test)]
mod clock_tests {
    #[test]
    fn an_implausible_clock_skips_the_time_checks() {
        assert_eq!(super::trusted_now(0), None, "a Pi booting in 1970");
        assert_eq!(super::trusted_now(super::CLOCK_FLOOR_MS - 1), None);
        let now = super::CLOCK_FLOOR_MS + 86_400_000;
        assert_eq!(super::trusted_now(now), Some(now));
    }
}
