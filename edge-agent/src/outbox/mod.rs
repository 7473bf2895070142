//! The durable offline queue of results waiting for the hub, and the acknowledged
//! results kept for anti-entropy. Behind a trait so the backend can change (redb,
//! SQLite); `suite` is the one test suite every backend passes. `ledger` is the
//! store-independent journal that says what the store should hold.

pub mod ledger;
mod sled_outbox;
#[cfg(test)]
pub mod suite;

pub use sled_outbox::SledOutbox;

use pleura_shared::holdings::Holdings;
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
    #[error("disk full: the outbox cannot be written ({0}); nothing was stored")]
    DiskFull(String),
    #[error("outbox storage: {0}")]
    Backend(String),
}

impl OutboxError {
    /// Classifies an I/O failure: a full disk (ENOSPC, EDQUOT) is named as such.
    pub fn from_io(e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => OutboxError::DiskFull(e.to_string()),
            _ => OutboxError::Backend(e.to_string()),
        }
    }
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
    /// Acknowledged results kept for anti-entropy (`outbox.acked_retention_days`).
    #[serde(default)]
    pub acked: u64,
    /// Retractions waiting for the hub.
    #[serde(default)]
    pub retractions_pending: u64,
    /// Queued results the journal knows of but the store lost, not yet rebuilt.
    #[serde(default)]
    pub lost_pending: u64,
    /// What the store check at start found (None: the store holds all it should).
    #[serde(default)]
    pub damage: Option<String>,
}

/// What waits for the hub, cheap enough to read for every batch (the hub's fleet view:
/// each batch carries it as its `QueueReport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Results queued, not yet acknowledged (as `OutboxStats::pending`).
    pub pending: u64,
    /// `analysed_at_ms` of the oldest of them (None: nothing queued).
    pub oldest_pending_ms: Option<u64>,
}

/// Whether a `put` stored something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Stored,
    AlreadyQueued,
}

/// Where a result stands in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Queued,
    Acked,
    Parked,
    /// Known to the journal, lost from the store: to be rebuilt from its scan.
    Lost,
}

pub trait Outbox: Send + Sync + 'static {
    /// Stores `record` durably (on disk when this returns). Idempotent on its id.
    /// Refuses with `QuotaExceeded` rather than dropping anything; on any error nothing
    /// claims the record exists (a later `put` stores it afresh).
    fn put(&self, record: &ScanRecord) -> Result<Put, OutboxError>;
    /// Up to `limit` queued results, most urgent first (flagged and severe, then
    /// oldest), skipping those `skip` says are already in flight.
    fn next_batch(
        &self,
        limit: usize,
        skip: &dyn Fn(&ResultId) -> bool,
    ) -> Result<Vec<ScanRecord>, OutboxError>;
    /// The hub has committed these: they leave the queue, durably, and are kept as
    /// acknowledged for anti-entropy. Returns how many were queued.
    fn remove(&self, ids: &[ResultId]) -> Result<usize, OutboxError>;
    /// Moves a result the hub rejected to the parked set, with the reason.
    fn park(&self, id: &ResultId, reason: &str) -> Result<(), OutboxError>;
    fn stats(&self) -> Result<OutboxStats, OutboxError>;
    /// How many results are queued and when the oldest was analysed, without reading
    /// the whole queue (the sync worker asks before every batch). Agrees with `stats`.
    fn queue_depth(&self) -> Result<QueueDepth, OutboxError>;
    /// Whether a result could be stored now without passing the quota (so a scan is not
    /// analysed only to be refused).
    fn has_room(&self) -> bool;
    fn held(&self, id: &ResultId) -> Result<Option<Held>, OutboxError>;
    /// Queued results the store lost (known from the journal), to rebuild from scans.
    fn lost(&self) -> Vec<ResultId>;
    /// The acknowledged results per day of analysis, for the hub to compare.
    fn holdings(&self) -> Result<Holdings, OutboxError>;
    /// Queues the acknowledged results of `days` again (the hub lost them). Returns how
    /// many were queued.
    fn requeue_days(&self, days: &[u32]) -> Result<usize, OutboxError>;
    /// Forgets acknowledged results analysed before `day`. Returns how many.
    fn prune_acked(&self, before_day: u32) -> Result<usize, OutboxError>;
    /// Queues a retraction of `id` for the hub (kept until the hub records it).
    fn retract(&self, id: &ResultId, reason: &str) -> Result<(), OutboxError>;
    /// Retractions the hub has not recorded yet.
    fn retractions(&self) -> Result<Vec<(ResultId, String)>, OutboxError>;
    /// The hub recorded these retractions.
    fn retracted(&self, ids: &[ResultId]) -> Result<usize, OutboxError>;
}
