//! The ministry's report through the case service: the role check, the audit entry and
//! the store reads (roll-ups, device reports, the region directory) off the async
//! workers; `ministry::query` builds the suppressed report from them.

use crate::error::HubError;
use crate::ministry::period::IsoWeek;
use crate::ministry::query::{self, ClinicDetail, ReportQuery};
use crate::ministry::report::Report;
use crate::ministry::suppress::DEFAULT_THRESHOLD;
use crate::store::{AggregateQuery, ClinicScope};

use super::policy::{self, Action};
use super::{blocking, CaseService, Who};

/// Longest report: three years of weeks (a wider table helps no one at a glance, and
/// bounds the work one request can ask for).
pub const MAX_WEEKS: usize = 157;
/// Weeks a report covers unless asked otherwise.
pub const DEFAULT_WEEKS: u32 = 12;

/// The hub's ministry settings (`[ministry]` in hub.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinistrySettings {
    pub threshold: u64,
    pub silent_days: u32,
}

impl Default for MinistrySettings {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_THRESHOLD,
            silent_days: 3,
        }
    }
}

/// What a caller asks for; absent weeks default to the last [`DEFAULT_WEEKS`].
#[derive(Debug, Clone, Default)]
pub struct ReportRequest {
    pub from: Option<IsoWeek>,
    pub to: Option<IsoWeek>,
    pub clinics_of: Option<ClinicDetail>,
    pub disaggregate: bool,
    /// What it is for, as the audit log says: "page", "csv", "fhir", "dhis2", "grpc"…
    pub purpose: &'static str,
}

impl CaseService {
    pub fn with_ministry(mut self, settings: MinistrySettings) -> Self {
        self.ministry = settings;
        self
    }

    pub fn ministry_settings(&self) -> MinistrySettings {
        self.ministry
    }

    /// The ministry's report for `who` (ministry viewers and operators), audited.
    pub async fn ministry_report(&self, who: &Who, req: ReportRequest) -> Result<Report, HubError> {
        let action = Action::MinistryReport;
        let now_ms = pleura_shared::now_ms();
        let to = req
            .to
            .unwrap_or_else(|| IsoWeek::of_day((now_ms / 86_400_000) as u32));
        let from = req.from.unwrap_or_else(|| to.minus(DEFAULT_WEEKS - 1));
        let detail = match &req.clinics_of {
            Some(ClinicDetail::Region(r)) => format!(" clinics of {r}"),
            Some(ClinicDetail::All) => " all clinics".into(),
            Some(ClinicDetail::None) | None => String::new(),
        };
        let target = format!(
            "{} {}..{}{detail}",
            if req.purpose.is_empty() {
                "report"
            } else {
                req.purpose
            },
            from.label(),
            to.label()
        );
        if let Err(why) = policy::ministry_report(&who.caller) {
            return Err(self.deny(who, action, &target, why).await);
        }
        let weeks = from.through(to).len();
        if weeks == 0 || weeks > MAX_WEEKS {
            let why = format!("a report covers 1 to {MAX_WEEKS} weeks; {target} is {weeks}");
            self.record(who, action, &target, &format!("invalid: {why}"))
                .await?;
            return Err(HubError::Invalid(why));
        }
        let q = ReportQuery {
            from,
            to,
            threshold: self.ministry.threshold,
            silent_days: self.ministry.silent_days,
            clinics_of: req.clinics_of.unwrap_or(ClinicDetail::None),
            disaggregate: req.disaggregate,
            now_ms,
        };
        let (store, directory) = (self.store.clone(), self.directory.clone());
        let report = blocking(move || {
            let regions = directory.regions();
            let (from_day, to_day) = q.days();
            let rows = store.rollups(&AggregateQuery {
                scope: ClinicScope::All,
                from_day: Some(from_day),
                to_day: Some(to_day),
            })?;
            let devices = store.devices()?;
            Ok(query::build(&q, &rows, &regions, &devices))
        })
        .await?;
        self.record(who, action, &target, "allowed").await?;
        Ok(report)
    }
}
