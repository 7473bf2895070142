//! The one error type of the hub's people-facing side (and of uploads over gRPC). Each
//! variant is a kind of answer; `grpc` maps it to a `tonic::Code` and `http` to an HTTP
//! status, once each. Messages name the problem and never carry case data.

use crate::auth::AuthError;
use crate::ingest::IngestError;
use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HubError {
    /// No valid identity: no token, a bad or expired one, a wrong password.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller asking for what their role or scope does not allow (also a case
    /// that does not exist: out of scope and absent answer alike).
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Invalid(String),
    /// Throttled, or a request over a size or count limit.
    #[error("{0}")]
    Exhausted(String),
    /// The store, the audit log or the accounts cannot be used right now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        HubError::Unavailable(e.to_string())
    }
}

impl From<AuthError> for HubError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Accounts { .. } => {
                tracing::error!(error = %e, "accounts file");
                HubError::Unavailable("accounts unavailable".into())
            }
            AuthError::Invalid(m) => HubError::Invalid(m),
            e => HubError::Unauthenticated(e.to_string()),
        }
    }
}

impl From<IngestError> for HubError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Store(s) => s.into(),
            e @ IngestError::Journal(_) => {
                tracing::error!(error = %e, "case journal write failed");
                HubError::Unavailable(e.to_string())
            }
            e @ (IngestError::Untrusted(_)
            | IngestError::Unsigned(_)
            | IngestError::Signature(_)) => HubError::Denied(e.to_string()),
            e @ (IngestError::TooLarge(..) | IngestError::TooMany(..)) => {
                HubError::Exhausted(e.to_string())
            }
            e => HubError::Invalid(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for HubError {
    fn from(e: tokio::task::JoinError) -> Self {
        HubError::Internal(e.to_string())
    }
}
