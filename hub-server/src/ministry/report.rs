//! What a ministry is shown: every number in a [`Report`] has been through
//! `suppress` (tables) or [`small`] (single counts), and this is the only form the
//! dashboard, the gRPC `Aggregates` call and the exports read. Built by `query`.

use serde::Serialize;

use super::period::IsoWeek;
use super::suppress::{Cell, Published};

/// What the epidemic curve counts: examinations (one patient at one clinic on one
/// day, all zones), never scans, so a small count is a small number of *people* — one
/// patient's 12 zone clips are one, not 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Measure {
    /// Examinations with at least one current reading.
    Examinations,
    /// Examinations with a scan the model flagged for a specialist.
    Flagged,
    /// Examinations with a scan flagged as COVID-19 suspected.
    Covid,
    /// Examinations whose worst scan has severity 2 or 3.
    Severe,
    /// Flagged examinations a specialist reviewed.
    Reviewed,
    /// Flagged examinations whose verdict found disease.
    Confirmed,
}

impl Measure {
    pub const ALL: [Measure; 6] = [
        Measure::Examinations,
        Measure::Flagged,
        Measure::Covid,
        Measure::Severe,
        Measure::Reviewed,
        Measure::Confirmed,
    ];

    /// A stable identifier (CSV, JSON, DHIS2 mapping keys, HTML ids).
    pub fn id(self) -> &'static str {
        match self {
            Measure::Examinations => "examinations",
            Measure::Flagged => "flagged",
            Measure::Covid => "covid_suspected",
            Measure::Severe => "severity_2_plus",
            Measure::Reviewed => "reviewed",
            Measure::Confirmed => "confirmed",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Measure::Examinations => "Patients examined",
            Measure::Flagged => "Flagged for review",
            Measure::Covid => "COVID-19 suspected",
            Measure::Severe => "Severity 2-3",
            Measure::Reviewed => "Flagged examinations reviewed",
            Measure::Confirmed => "Flags confirmed by a specialist",
        }
    }
}

/// One published table: labels for its rows and columns, and its suppressed numbers.
#[derive(Debug, Clone, Serialize)]
pub struct NamedTable {
    /// Stable id, e.g. "curve.examinations.regions" or "curve.flagged.clinics.north".
    pub id: String,
    pub title: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub published: Published,
}

impl NamedTable {
    pub fn cell(&self, r: usize, c: usize) -> Cell {
        self.published.cells[r * self.published.cols + c]
    }
}

/// One measure over the weeks: rows are org units (regions, or a region's clinics).
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub measure: Measure,
    pub table: NamedTable,
}

/// A region's clinics over the weeks, one table per measure (its column totals are the
/// region's row of the region table).
#[derive(Debug, Clone, Serialize)]
pub struct RegionClinics {
    pub region: String,
    pub curves: Vec<Curve>,
}

/// Scans of one clinic in one week by severity (rows "0".."3") × age band and sex
/// (columns "0-4/female" …, "unknown/unknown"): DHIS2's category option combos.
#[derive(Debug, Clone, Serialize)]
pub struct Disaggregated {
    pub region: String,
    pub clinic: String,
    pub week: IsoWeek,
    pub table: NamedTable,
}

/// One device's reporting: when the hub last heard from it and what it still holds.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    pub region: String,
    pub clinic: String,
    pub device: String,
    /// Last batch of any kind (results, retractions, the hourly holdings check).
    pub last_contact_ms: Option<u64>,
    /// Last result received.
    pub last_result_ms: Option<u64>,
    /// Results waiting at the device, as it last reported (small counts suppressed).
    pub queue: Option<Cell>,
    /// When the oldest of them was analysed.
    pub oldest_pending_ms: Option<u64>,
    /// Not heard from for more than `Report::silent_days`.
    pub silent: bool,
}

/// One clinic's reporting in the report's last week.
#[derive(Debug, Clone, Serialize)]
pub struct ClinicRow {
    pub region: String,
    pub clinic: String,
    /// A result from it arrived during the last week of the report.
    pub reported_last_week: bool,
    pub last_contact_ms: Option<u64>,
    pub devices: usize,
    pub silent_devices: usize,
}

/// A rise above the expected level in one region (CDC EARS, `alerts`): where, when
/// and by which method, with no number. The day's count, the baseline mean and the
/// statistic would each give away counts the weekly tables suppress (the baseline mean
/// × 7 is a sum of seven days; the count is one day of a week), so none is published.
#[derive(Debug, Clone, Serialize)]
pub struct RegionAlert {
    pub region: String,
    pub measure: Measure,
    pub day: u32,
    /// "2026-11-30".
    pub date: String,
    pub method: &'static str,
    /// The statistic exceeded this (3 for C1 and C2, 2 for C3).
    pub threshold: f64,
}

/// Everything the ministry sees for a range of weeks.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at_ms: u64,
    /// Counts `0 < n < threshold` are suppressed (with complements).
    pub threshold: u64,
    pub weeks: Vec<IsoWeek>,
    pub regions: Vec<String>,
    /// Each measure by region (rows) and week (columns).
    pub curves: Vec<Curve>,
    /// Each region's clinics by week.
    pub clinics: Vec<RegionClinics>,
    /// Scans by region (rows) and severity 0-3 (columns), over the whole range.
    pub severity: NamedTable,
    /// Scans by model version (rows) and severity 0-3 (columns).
    pub severity_by_model: NamedTable,
    /// Examinations by region (rows) and lung-score bin (columns).
    pub lung_score: NamedTable,
    /// Per clinic and week, for DHIS2 (only when asked for: `ReportQuery::disaggregate`).
    pub disaggregated: Vec<Disaggregated>,
    pub devices: Vec<DeviceRow>,
    pub clinics_reporting: Vec<ClinicRow>,
    /// Devices silent for more than this many days are marked.
    pub silent_days: u32,
    pub alerts: Vec<RegionAlert>,
}

impl Report {
    pub fn curve(&self, m: Measure) -> Option<&NamedTable> {
        self.curves
            .iter()
            .find(|c| c.measure == m)
            .map(|c| &c.table)
    }
}

/// A single count as a ministry may see it: zero and counts at or above `threshold`
/// shown, others suppressed.
pub fn small(n: u64, threshold: u64) -> Cell {
    if n > 0 && n < threshold {
        Cell::Suppressed
    } else {
        Cell::Shown(n)
    }
}
