//! The case service: the hub's people-facing side without a transport. It decides who
//! is calling (`access`), what they may see (`policy`), asks the store for exactly that
//! (filters and clinic scope go into the query, not applied afterwards), and writes
//! every access, allowed or refused, to the audit log before any data is returned.
//! gRPC (`grpc`) is a thin adapter over it; a web front end uses the same calls.

mod access;
pub mod delivery;
pub mod ministry;
mod models;
pub mod policy;
pub mod review;
#[cfg(test)]
mod tests;
pub mod turnaround;
pub mod verdict;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use pleura_shared::ResultId;

use crate::audit::AuditLog;
use crate::auth::Auth;
use crate::directory::{Directory, UNASSIGNED};
use crate::error::HubError;
use crate::metrics::Metrics;
use crate::ratelimit::LoginLimiter;
use crate::store::{
    AggregateQuery, CaseFilter, ClinicDay, Counts, DeviceStats, HubStore, Integrity, Listing,
    StoreError, StoredCase,
};

pub use access::{Session, Who};
pub use policy::Action;
pub use review::{ClaimResult, ExamDetail, ExamQuery, MediaBytes, ReviewParts, WorklistPage};
pub use turnaround::TurnaroundStats;
pub use verdict::{Submitted, VerdictForm};

/// Cases listed when a query names no limit, and the most one listing returns.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// What a person asks to list. The service narrows it to what they may see.
#[derive(Debug, Clone, Default)]
pub struct CaseQuery {
    pub clinic: Option<String>,
    pub from_day: Option<u32>,
    pub to_day: Option<u32>,
    pub flagged: Option<bool>,
    /// 0..3; higher asks for nothing more than 3 does.
    pub min_severity: u8,
    pub offset: usize,
    /// 0: `DEFAULT_LIMIT`; capped at `MAX_LIMIT`.
    pub limit: usize,
}

/// An inclusive range of scan days; None is unbounded.
#[derive(Debug, Clone, Copy, Default)]
pub struct DayRange {
    pub from_day: Option<u32>,
    pub to_day: Option<u32>,
}

/// The counts of one region on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionDay {
    pub region: String,
    pub day: u32,
    pub counts: Counts,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSync {
    pub stats: DeviceStats,
    /// Results acknowledged that the store no longer holds.
    pub missing: u64,
}

/// What an operator sees of the devices' sync and the store's start-up check.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncStatus {
    pub devices: Vec<DeviceSync>,
    pub missing: u64,
    pub journal_damaged_lines: u64,
    pub corrupt_cases: u64,
    pub store_set_aside: Option<PathBuf>,
}

pub struct CaseService {
    store: Arc<dyn HubStore>,
    auth: Arc<Auth>,
    audit: Arc<AuditLog>,
    directory: Arc<dyn Directory>,
    integrity: Arc<Integrity>,
    metrics: Arc<Metrics>,
    limiter: LoginLimiter,
    /// Media and the downlink, for the review loop (examinations work without them;
    /// media, verdicts and clip requests need them).
    review: Option<ReviewParts>,
    ministry: ministry::MinistrySettings,
}

/// Runs store (and directory) work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, HubError> {
    tokio::task::spawn_blocking(f).await?
}

/// A listing, with undecodable cases said and skipped.
fn listed(l: Result<Listing, StoreError>) -> Result<Vec<StoredCase>, HubError> {
    let l = l?;
    if l.corrupt > 0 {
        tracing::warn!(
            corrupt = l.corrupt,
            "stored cases that no longer decode were skipped"
        );
    }
    Ok(l.cases)
}

/// Folds clinic rows into region rows, sorted by region then day.
fn by_region(rows: Vec<ClinicDay>, regions: &HashMap<String, String>) -> Vec<RegionDay> {
    let mut acc: BTreeMap<(String, u32), Counts> = BTreeMap::new();
    for row in rows {
        let region = regions.get(&row.clinic).map_or(UNASSIGNED, String::as_str);
        acc.entry((region.to_string(), row.day))
            .or_default()
            .merge(&row.counts);
    }
    acc.into_iter()
        .map(|((region, day), counts)| RegionDay {
            region,
            day,
            counts,
        })
        .collect()
}

impl CaseService {
    pub fn new(
        store: Arc<dyn HubStore>,
        auth: Arc<Auth>,
        audit: Arc<AuditLog>,
        directory: Arc<dyn Directory>,
        integrity: Arc<Integrity>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            auth,
            audit,
            directory,
            integrity,
            metrics,
            limiter: LoginLimiter::default(),
            review: None,
            ministry: ministry::MinistrySettings::default(),
        }
    }

    /// Adds the media store and the downlink the review loop sends through.
    pub fn with_review(mut self, parts: ReviewParts) -> Self {
        self.review = Some(parts);
        self
    }

    /// The cases matching `q` that `who` may see, newest first.
    pub async fn list(&self, who: &Who, q: CaseQuery) -> Result<Vec<StoredCase>, HubError> {
        let action = Action::ListCases;
        let view = match policy::case_view(&who.caller) {
            Ok(v) => v,
            Err(why) => return Err(self.deny(who, action, "", why).await),
        };
        let (store, directory) = (self.store.clone(), self.directory.clone());
        let cases = blocking(move || {
            let filter = CaseFilter {
                scope: view.reach.scope(&*directory),
                clinic: q.clinic,
                from_day: q.from_day,
                to_day: q.to_day,
                flagged: if view.flagged_only {
                    Some(true)
                } else {
                    q.flagged
                },
                min_severity: q.min_severity.min(3),
                offset: q.offset,
                limit: match q.limit {
                    0 => DEFAULT_LIMIT,
                    n => n.min(MAX_LIMIT),
                },
                // Current readings only: shadow and superseded results are not cases.
                include_shadow: false,
                include_superseded: false,
            };
            listed(store.list(&filter))
        })
        .await?;
        let target = format!("{} cases", cases.len());
        self.record(who, action, &target, "allowed").await?;
        Ok(cases)
    }

    /// One case, if `who` may see it; absent and out of scope answer alike.
    pub async fn get(&self, who: &Who, id: ResultId) -> Result<StoredCase, HubError> {
        let action = Action::GetCase;
        let target = id.to_string();
        let view = match policy::case_view(&who.caller) {
            Ok(v) => v,
            Err(why) => return Err(self.deny(who, action, &target, why).await),
        };
        let (store, directory) = (self.store.clone(), self.directory.clone());
        let case = blocking(move || {
            let Some(case) = store.get(&id)? else {
                return Ok(None);
            };
            let scope = view.reach.scope(&*directory);
            Ok(view.allows(&scope, &case.record).then_some(case))
        })
        .await?;
        let Some(case) = case else {
            return Err(self.deny(who, action, &target, policy::NOT_IN_SCOPE).await);
        };
        self.record(who, action, &target, "allowed").await?;
        Ok(case)
    }

    /// Counts per region and day of the unretracted scans `who` may count.
    /// A ministry viewer gets none: small counts reach them only suppressed
    /// (`ministry_report`).
    pub async fn aggregates(&self, who: &Who, days: DayRange) -> Result<Vec<RegionDay>, HubError> {
        if !policy::exact_counts(&who.caller) {
            self.record(
                who,
                Action::Aggregates,
                "0 rows (suppressed report only)",
                "allowed",
            )
            .await?;
            return Ok(Vec::new());
        }
        let reach = policy::aggregate_reach(&who.caller);
        let (store, directory) = (self.store.clone(), self.directory.clone());
        let rows = blocking(move || {
            let regions = directory.regions();
            let agg = store.aggregates(&AggregateQuery {
                scope: reach.scope_in(&regions),
                from_day: days.from_day,
                to_day: days.to_day,
            })?;
            if agg.corrupt > 0 {
                tracing::warn!(
                    corrupt = agg.corrupt,
                    "stored cases that no longer decode were not counted"
                );
            }
            Ok(by_region(agg.rows, &regions))
        })
        .await?;
        let target = format!("{} rows", rows.len());
        self.record(who, Action::Aggregates, &target, "allowed")
            .await?;
        Ok(rows)
    }

    /// Every device's sync counters and what the store's start-up check found.
    pub async fn sync_status(&self, who: &Who) -> Result<SyncStatus, HubError> {
        let action = Action::SyncStatus;
        if let Err(why) = policy::sync_status(&who.caller) {
            return Err(self.deny(who, action, "", why).await);
        }
        let store = self.store.clone();
        let mut devices = blocking(move || Ok(store.devices()?)).await?;
        let missing = self.integrity.missing();
        // A device whose stats were lost with the store still shows, with its loss.
        for (clinic, device) in missing.keys() {
            if !devices
                .iter()
                .any(|d| d.clinic == *clinic && d.device == *device)
            {
                devices.push(DeviceStats {
                    clinic: clinic.clone(),
                    device: device.clone(),
                    ..Default::default()
                });
            }
        }
        let target = format!("{} devices", devices.len());
        self.record(who, action, &target, "allowed").await?;
        let report = &self.integrity.report;
        Ok(SyncStatus {
            devices: devices
                .into_iter()
                .map(|stats| DeviceSync {
                    missing: missing
                        .get(&(stats.clinic.clone(), stats.device.clone()))
                        .map_or(0, |s| s.len() as u64),
                    stats,
                })
                .collect(),
            missing: self.integrity.missing_total(),
            journal_damaged_lines: report.journal_damaged,
            corrupt_cases: report.corrupt_cases,
            store_set_aside: report.set_aside.clone(),
        })
    }
}
