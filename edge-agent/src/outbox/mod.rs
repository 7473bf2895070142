//! The durable offline queue of results waiting for the hub. Behind a trait so the
//! backend can change (redb, SQLite); `suite` is the one test suite every backend passes.

mod sled_outbox;
#[cfg(test)]
pub mod suite;

pub use sled_outbox::SledOutbox;

use pleura_shared::{ResultId, ScanRecord};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(
        "outbox full: {pending_bytes} bytes of unsynced results at the {quota_bytes}-byte quota; \
         new scans wait in the inbox until the hub is reached"
    )]
    QuotaExceeded {
        pending_bytes: u64,
        quota_bytes: u64,
    },
    #[error("outbox storage: {0}")]
    Backend(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxStats {
    pub pending: u64,
    pub pending_bytes: u64,
    pub quota_bytes: u64,
    /// When the oldest unsynced result was analysed (ms since the epoch).
    pub oldest_pending_ms: Option<u64>,
    /// Results the hub refused for good (kept for inspection, never resent).
    pub parked: u64,
    /// Stored entries that no longer decode (kept aside, counted).
    pub corrupt: u64,
}

/// Whether a `put` stored something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Stored,
    AlreadyQueued,
}

pub trait Outbox: Send + Sync + 'static {
    /// Stores `record` durably (on disk when this returns). Idempotent on its id.
    /// Refuses with `QuotaExceeded` rather than dropping anything.
    fn put(&self, record: &ScanRecord) -> Result<Put, OutboxError>;
    /// Up to `limit` queued results, most urgent first (flagged and severe, then
    /// oldest), skipping those `skip` says are already in flight.
    fn next_batch(
        &self,
        limit: usize,
        skip: &dyn Fn(&ResultId) -> bool,
    ) -> Result<Vec<ScanRecord>, OutboxError>;
    /// Removes results the hub has committed, durably. Returns how many were queued.
    fn remove(&self, ids: &[ResultId]) -> Result<usize, OutboxError>;
    /// Moves a result the hub rejected to the parked set, with the reason.
    fn park(&self, id: &ResultId, reason: &str) -> Result<(), OutboxError>;
    fn stats(&self) -> Result<OutboxStats, OutboxError>;
}
