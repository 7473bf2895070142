//! Why a root document, a release or a model file was refused.

/// Every refusal names its reason; none of them is a panic, whatever the input.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("signature by key {key_id} does not verify over this {what}")]
    BadSignature { key_id: String, what: &'static str },
    #[error("release is signed by key {key_id}, which the current root metadata does not certify")]
    UnknownSigningKey { key_id: String },
    #[error("signing key {key_id} is revoked")]
    RevokedSigningKey { key_id: String },
    #[error(
        "signing key {key_id} was valid until {not_after} ms but the release says it was created at {created_at} ms"
    )]
    SigningKeyExpired {
        key_id: String,
        not_after: u64,
        created_at: u64,
    },
    #[error(
        "release version {offered} is not newer than the installed version {installed} (rollback or replayed offer)"
    )]
    NotNewer { offered: u64, installed: u64 },
    #[error("model file SHA-256 is {actual}, the release says {expected}")]
    ModelHashMismatch { expected: String, actual: String },
    #[error("model file size differs from the release's {expected} bytes (read {actual}, reading stops one past)")]
    ModelSizeMismatch { expected: u64, actual: u64 },
    #[error("release needs agent version {min} or later; this agent is {agent}")]
    AgentTooOld { min: String, agent: String },
    #[error("release expired at {expires_at} ms (device clock says {now} ms)")]
    ReleaseExpired { expires_at: u64, now: u64 },
    #[error(
        "release claims creation at {created_at} ms, more than {slack_ms} ms after the device clock ({now} ms)"
    )]
    CreatedInFuture {
        created_at: u64,
        now: u64,
        slack_ms: u64,
    },
    #[error("root metadata version {offered} is not newer than the trusted version {installed}")]
    RootNotNewer { offered: u64, installed: u64 },
    #[error("root metadata lacks a signature by root key {key_id}")]
    RootSignatureMissing { key_id: String },
    #[error("{field} {value:?} is not a version MAJOR.MINOR.PATCH: {reason}")]
    BadVersionString {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("release input does not fit: {0}")]
    InputMismatch(String),
    #[error("self-test vector {vector}, output {output:?}: {detail}")]
    SelfTestFailed {
        vector: usize,
        output: String,
        detail: String,
    },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

impl ReleaseError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        ReleaseError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}
