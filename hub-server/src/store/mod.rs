//! The hub's case store: idempotent, durable commits of edge results. Behind a trait
//! so a PostgreSQL backend can follow for national scale; `suite` is the one test
//! suite every backend must pass.

mod sled_store;
#[cfg(test)]
pub mod suite;

pub use sled_store::SledStore;

use pleura_shared::{ResultId, ScanRecord};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredCase {
    pub record: ScanRecord,
    pub received_at_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    pub clinic: Option<String>,
    pub from_day: Option<u32>,
    pub to_day: Option<u32>,
    pub flagged: Option<bool>,
    pub min_severity: u8,
    pub limit: usize,
}

impl CaseFilter {
    pub fn matches(&self, r: &ScanRecord) -> bool {
        self.clinic.as_ref().is_none_or(|c| *c == r.clinic)
            && self.from_day.is_none_or(|d| r.scan_day >= d)
            && self.to_day.is_none_or(|d| r.scan_day <= d)
            && self.flagged.is_none_or(|f| r.analysis.flagged == f)
            && r.analysis.severity.score() >= self.min_severity
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct DeviceStats {
    pub clinic: String,
    pub device: String,
    pub results: u64,
    pub duplicates: u64,
    /// Results refused because a different record already holds their id.
    #[serde(default)]
    pub conflicts: u64,
    pub last_received_ms: u64,
}

/// What a commit did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    New,
    /// The very same record (same device, same content) is already stored.
    Duplicate,
    /// A different record holds this id: another device's, or different content from
    /// the same device. Nothing is stored or overwritten; the sender is not told
    /// "committed".
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("stored case {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
}

pub trait HubStore: Send + Sync + 'static {
    /// Commits `records` durably (on disk when this returns), each at most once. A
    /// result's identity is its id *and* its signer and content: only a byte-identical
    /// record from the same clinic/device is a duplicate.
    fn commit(
        &self,
        records: &[ScanRecord],
        received_at_ms: u64,
    ) -> Result<Vec<Commit>, StoreError>;
    fn get(&self, id: &ResultId) -> Result<Option<StoredCase>, StoreError>;
    /// Matching cases, newest scan day first.
    fn list(&self, filter: &CaseFilter) -> Result<Vec<StoredCase>, StoreError>;
    fn devices(&self) -> Result<Vec<DeviceStats>, StoreError>;
    fn count(&self) -> Result<u64, StoreError>;
}
