//! The hub's case store: idempotent, durable commits of edge results. Behind a trait
//! so a PostgreSQL backend can follow for national scale; `suite` is the one test
//! suite every backend must pass. Listing and aggregation take their filter and the
//! caller's clinic scope, so a backend with indexes answers them without a full scan.

pub mod exams;
pub mod fleet;
pub mod integrity;
pub mod rollup;
mod sled_store;
#[cfg(test)]
pub mod suite;
#[cfg(test)]
mod suite_exams;
#[cfg(test)]
pub mod suite_rollups;

pub use fleet::{Contact, QueueState};
pub use integrity::Integrity;
pub use sled_store::{SledStore, STORE_DIR};

use std::collections::{BTreeMap, BTreeSet};

use pleura_shared::{ExamId, LungClass, ResultId, ScanRecord};

use exams::{
    Claim, ClaimOutcome, Exam, Read, ReadOutcome, Reads, Turnaround, Undelivered, Worklist,
    WorklistQuery,
};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq)]
pub struct StoredCase {
    pub record: ScanRecord,
    pub received_at_ms: u64,
    /// Set once the device that sent the result withdrew it. The case is kept.
    pub retraction: Option<Retraction>,
}

/// A device withdrawing one of its results (a mistaken export). Recorded even before
/// the result itself arrives; it applies only to a result of the same clinic/device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Retraction {
    pub id: ResultId,
    pub clinic: String,
    pub device: String,
    pub reason: String,
    pub at_ms: u64,
}

/// Matching cases, and how many stored cases (or retractions) could not be read
/// (damaged on disk): they are skipped, never the reason a listing fails.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub cases: Vec<StoredCase>,
    pub corrupt: u64,
}

/// What a start-up scan finds: every readable case (who sent it, its analysis day), the
/// ids of those that no longer decode, and every recorded retraction.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub cases: Vec<CaseSummary>,
    pub corrupt: Vec<ResultId>,
    pub retractions: Vec<Retraction>,
    /// Stored retractions that no longer decode (skipped; the device records them again).
    pub corrupt_retractions: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseSummary {
    pub id: ResultId,
    pub clinic: String,
    pub device: String,
    pub analysed_at_ms: u64,
}

impl CaseSummary {
    pub fn of(r: &ScanRecord) -> Self {
        Self {
            id: r.id,
            clinic: r.clinic.clone(),
            device: r.device.clone(),
            analysed_at_ms: r.analysed_at_ms,
        }
    }
}

/// Which clinics a query may see. Set by the case service from who is asking; a
/// backend must never return (or count) a case of a clinic outside it.
/// The default is no clinic at all: a query built without naming its scope fails closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClinicScope {
    All,
    /// Only these clinics (none at all if empty).
    Only(BTreeSet<String>),
}

impl Default for ClinicScope {
    fn default() -> Self {
        ClinicScope::Only(BTreeSet::new())
    }
}

impl ClinicScope {
    pub fn allows(&self, clinic: &str) -> bool {
        match self {
            ClinicScope::All => true,
            ClinicScope::Only(s) => s.contains(clinic),
        }
    }
}

/// A listing query. Every field narrows; `offset` and `limit` page through the cases in
/// listing order (newest scan day first, then newest arrival).
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    pub scope: ClinicScope,
    pub clinic: Option<String>,
    pub from_day: Option<u32>,
    pub to_day: Option<u32>,
    pub flagged: Option<bool>,
    pub min_severity: u8,
    /// Matching cases skipped before the first one returned.
    pub offset: usize,
    /// Most cases returned; 0 means no limit.
    pub limit: usize,
    /// Candidate models' shadow results too (by default a listing shows the current
    /// readings only).
    pub include_shadow: bool,
    /// Readings another analysis of the same scan superseded, too.
    pub include_superseded: bool,
}

impl CaseFilter {
    /// Every clinic's cases (the operator's view, maintenance, tests).
    pub fn everything() -> Self {
        Self {
            scope: ClinicScope::All,
            ..Self::default()
        }
    }

    /// Whether `r` is listed; `superseded`: another analysis of its scan is current.
    pub fn matches(&self, r: &ScanRecord, superseded: bool) -> bool {
        self.scope.allows(&r.clinic)
            && (self.include_shadow || !r.is_shadow())
            && (self.include_superseded || !superseded)
            && self.clinic.as_ref().is_none_or(|c| *c == r.clinic)
            && self.from_day.is_none_or(|d| r.scan_day >= d)
            && self.to_day.is_none_or(|d| r.scan_day <= d)
            && self.flagged.is_none_or(|f| r.analysis.flagged == f)
            && r.analysis.severity.score() >= self.min_severity
    }
}

/// What to count: the cases of the clinics in `scope` scanned within the day range.
/// Only current readings count: retracted, shadow and superseded results count nowhere.
#[derive(Debug, Clone, Default)]
pub struct AggregateQuery {
    pub scope: ClinicScope,
    pub from_day: Option<u32>,
    pub to_day: Option<u32>,
}

impl AggregateQuery {
    /// Every clinic's counts.
    pub fn everything() -> Self {
        Self {
            scope: ClinicScope::All,
            ..Self::default()
        }
    }

    /// Whether `r` counts; `superseded`: another analysis of its scan is current.
    pub fn matches(&self, r: &ScanRecord, superseded: bool) -> bool {
        self.scope.allows(&r.clinic)
            && !r.is_shadow()
            && !superseded
            && self.from_day.is_none_or(|d| r.scan_day >= d)
            && self.to_day.is_none_or(|d| r.scan_day <= d)
    }
}

/// Counts of scans, with no case identifiers and nothing per patient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub scans: u64,
    pub flagged: u64,
    /// Scans per severity score 0..3.
    pub by_severity: [u64; 4],
    /// Scans per most likely class, in `LungClass::ALL` order.
    pub by_class: [u64; 3],
    /// Scans per `analysis.model_version` (the model that gave the current reading).
    pub by_model: BTreeMap<String, u64>,
}

impl Counts {
    pub fn add(&mut self, r: &ScanRecord) {
        self.scans += 1;
        self.flagged += u64::from(r.analysis.flagged);
        self.by_severity[usize::from(r.analysis.severity.score().min(3))] += 1;
        let class = r.analysis.class_probs.most_likely();
        let i = LungClass::ALL.iter().position(|x| *x == class).unwrap_or(2);
        self.by_class[i] += 1;
        *self
            .by_model
            .entry(r.analysis.model_version.clone())
            .or_default() += 1;
    }

    pub fn merge(&mut self, o: &Counts) {
        self.scans += o.scans;
        self.flagged += o.flagged;
        for (a, b) in self.by_severity.iter_mut().zip(o.by_severity) {
            *a += b;
        }
        for (a, b) in self.by_class.iter_mut().zip(o.by_class) {
            *a += b;
        }
        for (model, n) in &o.by_model {
            *self.by_model.entry(model.clone()).or_default() += n;
        }
    }
}

/// The counts of one clinic on one scan day (what `GROUP BY clinic, scan_day` gives).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClinicDay {
    pub clinic: String,
    pub day: u32,
    pub counts: Counts,
}

/// Aggregate rows sorted by clinic then day, and how many stored cases could not be read.
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    pub rows: Vec<ClinicDay>,
    pub corrupt: u64,
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
    /// Fleet health (`fleet`, `HubStore::note_contact`): when the hub last received a
    /// verified batch of any kind from the device (hub clock; 0: none recorded).
    #[serde(default)]
    pub last_seen_ms: u64,
    /// Its last queue report: results waiting at the edge, not yet acknowledged...
    #[serde(default)]
    pub queue_pending: u64,
    /// ...`analysed_at_ms` of the oldest of them (0: none)...
    #[serde(default)]
    pub oldest_pending_ms: u64,
    /// ...and when the device took that report (its clock; 0: never reported).
    #[serde(default)]
    pub queue_reported_ms: u64,
}

/// What a commit did with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Stored now (also when it replaces a stored value that no longer decodes: the
    /// device re-sending a result the hub lost).
    New,
    /// The very same record (same device, same content) is already stored, or the same
    /// device's record that differs only in `analysed_at_ms` (rebuilt at the edge by
    /// re-analysing its scan): the stored one is kept.
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
    /// The store's files cannot be read back (checksum failure, unreadable page,
    /// panic in the backend): what the start-up check sets aside.
    #[error("the case store is damaged: {0}")]
    Damaged(String),
    #[error("stored case {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
}

pub trait HubStore: Send + Sync + 'static {
    /// Commits `records` durably (on disk when this returns), each at most once. A
    /// result's identity is its id *and* its signer and content: only a record from the
    /// same clinic/device, byte-identical but for `analysed_at_ms`, is a duplicate.
    fn commit(
        &self,
        records: &[ScanRecord],
        received_at_ms: u64,
    ) -> Result<Vec<Commit>, StoreError>;
    fn get(&self, id: &ResultId) -> Result<Option<StoredCase>, StoreError>;
    /// Matching cases (scope, filters, then paging), newest scan day first, each with
    /// its retraction; cases that no longer decode are counted and skipped.
    fn list(&self, filter: &CaseFilter) -> Result<Listing, StoreError>;
    /// Counts per clinic and scan day of the unretracted cases `query` matches; no
    /// clinic outside its scope appears.
    fn aggregates(&self, query: &AggregateQuery) -> Result<Aggregates, StoreError>;
    /// The ministry's roll-ups (`rollup`) of the clinics in `query`'s scope and day
    /// range, by clinic then day: maintained on every write, never a scan of the cases.
    fn rollups(&self, _query: &AggregateQuery) -> Result<Vec<rollup::RollupRow>, StoreError> {
        Err(StoreError::Backend("this store keeps no roll-ups".into()))
    }
    fn devices(&self) -> Result<Vec<DeviceStats>, StoreError>;
    /// Records a verified batch from `clinic`/`device` in its `DeviceStats`
    /// (`DeviceStats::note`) without losing a concurrent commit's counters. Advisory:
    /// need not be on disk when this returns. The default records nothing.
    fn note_contact(&self, _clinic: &str, _device: &str, _c: &Contact) -> Result<(), StoreError> {
        Ok(())
    }
    fn count(&self) -> Result<u64, StoreError>;
    /// Records retractions durably (on disk when this returns). Recording one again
    /// keeps the first, unless the stored one no longer decodes.
    fn retract(&self, retractions: &[Retraction]) -> Result<(), StoreError>;
    /// The retraction `clinic`/`device` recorded for `id`, if any (one that no longer
    /// decodes counts as none).
    fn retraction(
        &self,
        id: &ResultId,
        clinic: &str,
        device: &str,
    ) -> Result<Option<Retraction>, StoreError>;
    /// Reads everything once (at start, to check the store against the journal).
    fn scan(&self) -> Result<Scan, StoreError>;

    // Examinations (see `exams`). The defaults answer "unsupported", for wrappers and
    // backends that do not index examinations.

    fn exam(&self, _id: &ExamId) -> Result<Option<Exam>, StoreError> {
        Err(unsupported())
    }
    /// Examinations in clinical priority order (tier, deadline, uncertainty), scoped and
    /// filtered inside the query, each with its live claim.
    fn worklist(&self, _q: &WorklistQuery, _now_ms: u64) -> Result<Worklist, StoreError> {
        Err(unsupported())
    }
    /// Every examination of one patient pseudonym at one clinic, newest day first.
    fn patient_exams(&self, _clinic: &str, _patient: &[u8; 16]) -> Result<Vec<Exam>, StoreError> {
        Err(unsupported())
    }
    /// Claims (or renews) an examination for `user`; refused while another's claim lives.
    fn claim(
        &self,
        _exam: &ExamId,
        _user: &str,
        _now_ms: u64,
        _ttl_ms: u64,
    ) -> Result<ClaimOutcome, StoreError> {
        Err(unsupported())
    }
    /// Drops `user`'s claim; false if they held none.
    fn release(&self, _exam: &ExamId, _user: &str) -> Result<bool, StoreError> {
        Err(unsupported())
    }
    fn claim_of(&self, _exam: &ExamId, _now_ms: u64) -> Result<Option<Claim>, StoreError> {
        Err(unsupported())
    }
    /// Records a first or second read durably; the claim ends with it.
    fn record_read(&self, _exam: &ExamId, _read: Read) -> Result<ReadOutcome, StoreError> {
        Err(unsupported())
    }
    fn reads(&self, _exam: &ExamId) -> Result<Option<Reads>, StoreError> {
        Err(unsupported())
    }
    /// Reads not yet queued to every device (of one examination, or all), oldest key
    /// first. A store that records no reads has none.
    fn undelivered(&self, _exam: Option<&ExamId>) -> Result<Vec<Undelivered>, StoreError> {
        Ok(Vec::new())
    }
    /// The read is queued to every device of its examination: its outbox entry goes.
    fn delivered(&self, _read: &Undelivered) -> Result<(), StoreError> {
        Err(unsupported())
    }
    /// Every examination with a verdict, with its reads (the shadow comparison).
    fn reviewed_exams(&self) -> Result<Vec<(Exam, Reads)>, StoreError> {
        Err(unsupported())
    }
    /// Arrival, claim and first-read times of examinations first read since `since_ms`.
    fn turnaround(
        &self,
        _scope: &ClinicScope,
        _since_ms: u64,
    ) -> Result<Vec<Turnaround>, StoreError> {
        Err(unsupported())
    }
}

fn unsupported() -> StoreError {
    StoreError::Backend("this store does not index examinations".into())
}
