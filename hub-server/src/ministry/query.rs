//! The one query layer behind the ministry's dashboard, the gRPC `Aggregates` call and
//! the exports: roll-up rows (`store::rollup`, per clinic and day) + the region
//! directory + the devices' last reports → a [`Report`] in which every count has been
//! suppressed (`suppress`) or banded ([`small`]). Pure: the caller reads the store.
//!
//! Fixed periods only: tables are by ISO week and by org unit (region, or a region's
//! clinics), so two queries never differ by a single day or an arbitrary clinic set.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::directory::UNASSIGNED;
use crate::store::rollup::{slot_parts, Rollup, RollupRow, LUNG_SCORE_BINS};
use crate::store::DeviceStats;

use super::alerts;
use super::hierarchy::{suppress_hierarchy, Hierarchy};
use super::period::{date_label, IsoWeek};
use super::report::{
    small, ClinicRow, Curve, DeviceRow, Disaggregated, Measure, NamedTable, RegionAlert,
    RegionClinics, Report,
};
use super::suppress::{suppress, Cell, Published, Table};

const DAY_MS: u64 = 86_400_000;
/// Days before the first week that alerts need as their baseline (EARS C3: 11).
pub const ALERT_HISTORY_DAYS: u32 = 14;
/// Measures the alerts watch, per region and day.
pub const ALERT_MEASURES: [Measure; 2] = [Measure::Flagged, Measure::Covid];

/// What to report.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub from: IsoWeek,
    pub to: IsoWeek,
    pub threshold: u64,
    /// Devices not heard from for longer are marked silent.
    pub silent_days: u32,
    /// Clinic tables for these regions (all regions: the exports; one: the dashboard's
    /// drill-down; none: the overview).
    pub clinics_of: ClinicDetail,
    /// The per clinic-week severity × age × sex tables DHIS2 takes.
    pub disaggregate: bool,
    pub now_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClinicDetail {
    None,
    Region(String),
    All,
}

impl ReportQuery {
    /// The day range of roll-up rows the report needs (alert baselines included).
    pub fn days(&self) -> (u32, u32) {
        (
            self.from.first_day().saturating_sub(ALERT_HISTORY_DAYS),
            self.to.last_day(),
        )
    }
}

pub fn measure_value(m: Measure, r: &Rollup) -> u64 {
    match m {
        Measure::Examinations => r.exams,
        Measure::Flagged => r.flagged_exams,
        Measure::Covid => r.covid_exams,
        Measure::Severe => r.severe_exams,
        Measure::Reviewed => r.reviewed_flagged,
        Measure::Confirmed => r.confirmed,
    }
}

fn table(
    id: String,
    title: String,
    rows: Vec<String>,
    cols: Vec<String>,
    cells: &[Vec<u64>],
    threshold: u64,
) -> NamedTable {
    let published = match Table::from_rows(cells) {
        Ok(t) => suppress(&t, threshold).published(),
        // Only counts summing past u64 get here: publish nothing rather than a wrong total.
        Err(e) => {
            tracing::error!(table = %id, error = %e, "table withheld");
            withheld(rows.len(), cols.len())
        }
    };
    NamedTable {
        id,
        title,
        rows,
        cols,
        published,
    }
}

fn withheld(rows: usize, cols: usize) -> Published {
    Published {
        rows,
        cols,
        cells: vec![Cell::Suppressed; rows * cols],
        row_totals: vec![Cell::Suppressed; rows],
        col_totals: vec![Cell::Suppressed; cols],
        grand_total: Cell::Suppressed,
    }
}

/// Per-measure counts of one org unit in one week.
type Weekly = [u64; Measure::ALL.len()];

fn weekly(r: &Rollup) -> Weekly {
    Measure::ALL.map(|m| measure_value(m, r))
}

/// Builds the ministry's report from roll-up rows (any clinics, any days: rows outside
/// [`ReportQuery::days`] are ignored), the clinic → region map and the devices' stats.
pub fn build(
    q: &ReportQuery,
    rows: &[RollupRow],
    regions_of: &HashMap<String, String>,
    devices: &[DeviceStats],
) -> Report {
    let weeks = q.from.through(q.to);
    let (first, last) = (q.from.first_day(), q.to.last_day());
    let week_ix = |day: u32| ((day - first) / 7) as usize;
    let region_of = |c: &str| {
        regions_of
            .get(c)
            .cloned()
            .unwrap_or_else(|| UNASSIGNED.into())
    };

    let mut clinics_by_region: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (c, r) in regions_of {
        clinics_by_region
            .entry(r.clone())
            .or_default()
            .insert(c.clone());
    }
    for r in rows {
        clinics_by_region
            .entry(region_of(&r.clinic))
            .or_default()
            .insert(r.clinic.clone());
    }
    for d in devices {
        clinics_by_region
            .entry(region_of(&d.clinic))
            .or_default()
            .insert(d.clinic.clone());
    }
    let regions: Vec<String> = clinics_by_region.keys().cloned().collect();
    let rix: HashMap<&str, usize> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_str(), i))
        .collect();

    // One pass over the rows: everything the tables need.
    let mut region_weeks = vec![vec![Weekly::default(); weeks.len()]; regions.len()];
    let mut clinic_weeks: HashMap<String, Vec<Weekly>> = HashMap::new();
    let mut severity = vec![vec![0u64; 4]; regions.len()];
    let mut lung = vec![vec![0u64; LUNG_SCORE_BINS.len()]; regions.len()];
    let mut by_model: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    let mut demo: BTreeMap<(String, usize), BTreeMap<u16, u64>> = BTreeMap::new();
    let mut daily: BTreeMap<(usize, usize), BTreeMap<u32, u64>> = BTreeMap::new();
    for row in rows {
        let ri = rix[region_of(&row.clinic).as_str()];
        let r = &row.rollup;
        for (mi, m) in ALERT_MEASURES.iter().enumerate() {
            if row.day <= last {
                *daily
                    .entry((ri, mi))
                    .or_default()
                    .entry(row.day)
                    .or_default() += measure_value(*m, r);
            }
        }
        if row.day < first || row.day > last {
            continue;
        }
        let w = week_ix(row.day);
        let add = |acc: &mut Weekly| {
            for (a, b) in acc.iter_mut().zip(weekly(r)) {
                *a += b;
            }
        };
        add(&mut region_weeks[ri][w]);
        add(&mut clinic_weeks
            .entry(row.clinic.clone())
            .or_insert_with(|| vec![Weekly::default(); weeks.len()])[w]);
        for (a, b) in severity[ri].iter_mut().zip(r.exams_by_severity) {
            *a += b;
        }
        for (a, b) in lung[ri].iter_mut().zip(r.lung_score) {
            *a += b;
        }
        for (model, v) in &r.exams_by_model {
            for (a, b) in by_model.entry(model.clone()).or_default().iter_mut().zip(v) {
                *a += b;
            }
        }
        if q.disaggregate {
            let d = demo.entry((row.clinic.clone(), w)).or_default();
            for (slot, n) in &r.exams_by_demographic {
                *d.entry(*slot).or_default() += n;
            }
        }
    }

    let t = q.threshold;
    // Every measure's region table and all its clinic tables, suppressed together
    // (`hierarchy`), whatever the caller drills into: each view publishes the same.
    let names: Vec<Vec<String>> = regions
        .iter()
        .map(|r| clinics_by_region[r].iter().cloned().collect())
        .collect();
    let week_labels: Vec<String> = weeks.iter().map(|w| w.label()).collect();
    let zero = vec![Weekly::default(); weeks.len()];
    let mut curves = Vec::new();
    let mut clinic_curves: Vec<Vec<Curve>> = vec![Vec::new(); regions.len()];
    for (mi, m) in Measure::ALL.iter().enumerate() {
        let of = |rows: &[Vec<Weekly>]| -> Vec<Vec<u64>> {
            rows.iter()
                .map(|row| row.iter().map(|w| w[mi]).collect())
                .collect()
        };
        let region_cells = of(&region_weeks);
        let clinic_cells: Vec<Vec<Vec<u64>>> = names
            .iter()
            .map(|cs| {
                let rows: Vec<Vec<Weekly>> = cs
                    .iter()
                    .map(|c| clinic_weeks.get(c).unwrap_or(&zero).clone())
                    .collect();
                of(&rows)
            })
            .collect();
        let h = Hierarchy {
            regions: &region_cells,
            clinics: &clinic_cells,
        };
        let (rp, cps) = match suppress_hierarchy(&h, t) {
            Ok(s) => (s.regions, s.clinics),
            Err(e) => {
                tracing::error!(measure = m.id(), error = %e, "tables withheld");
                let cps = names
                    .iter()
                    .map(|n| withheld(n.len(), weeks.len()))
                    .collect();
                (withheld(regions.len(), weeks.len()), cps)
            }
        };
        curves.push(Curve {
            measure: *m,
            table: NamedTable {
                id: format!("curve.{}.regions", m.id()),
                title: format!("{} by region and week", m.title()),
                rows: regions.clone(),
                cols: week_labels.clone(),
                published: rp,
            },
        });
        for (ri, published) in cps.into_iter().enumerate() {
            let region = &regions[ri];
            clinic_curves[ri].push(Curve {
                measure: *m,
                table: NamedTable {
                    id: format!("curve.{}.clinics.{region}", m.id()),
                    title: format!("{} by clinic and week, region {region}", m.title()),
                    rows: names[ri].clone(),
                    cols: week_labels.clone(),
                    published,
                },
            });
        }
    }
    // A clinic-week's severity × age × sex split is published only where its
    // examinations and severity 2-3 cells are shown and not small: otherwise its margins
    // (or its lone non-zero cell) would give away what the clinic table hides.
    let mut splittable: HashSet<(String, usize)> = HashSet::new();
    for (ri, curves) in clinic_curves.iter().enumerate() {
        let shown = |m: Measure, row: usize, w: usize| {
            curves
                .iter()
                .find(|c| c.measure == m)
                .map(|c| c.table.cell(row, w))
        };
        for (row, clinic) in names[ri].iter().enumerate() {
            for w in 0..weeks.len() {
                let exams = shown(Measure::Examinations, row, w);
                let severe = shown(Measure::Severe, row, w);
                if matches!(exams, Some(Cell::Shown(n)) if n >= t)
                    && matches!(severe, Some(Cell::Shown(_)))
                {
                    splittable.insert((clinic.clone(), w));
                }
            }
        }
    }
    let clinics = regions
        .iter()
        .zip(clinic_curves)
        .filter(|(r, _)| match &q.clinics_of {
            ClinicDetail::None => false,
            ClinicDetail::Region(x) => x == *r,
            ClinicDetail::All => true,
        })
        .map(|(region, curves)| RegionClinics {
            region: region.clone(),
            curves,
        })
        .collect();
    let sev_cols: Vec<String> = (0..4).map(|s| s.to_string()).collect();
    let severity = table(
        "severity.regions".into(),
        "Examinations by region and worst severity".into(),
        regions.clone(),
        sev_cols.clone(),
        &severity,
        t,
    );
    let (models, model_cells) = top_models(by_model);
    let severity_by_model = table(
        "severity.models".into(),
        "Examinations by model version and worst severity".into(),
        models,
        sev_cols.clone(),
        &model_cells,
        t,
    );
    let lung_score = table(
        "lung_score.regions".into(),
        "Examinations by region and lung score".into(),
        regions.clone(),
        LUNG_SCORE_BINS
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect(),
        &lung,
        t,
    );
    let disaggregated = demo
        .into_iter()
        .filter(|(key, _)| splittable.contains(key))
        .map(|((clinic, w), slots)| disaggregated(&region_of(&clinic), clinic, weeks[w], &slots, t))
        .collect();
    let (devices, clinics_reporting) = completeness(q, regions_of, devices, last);
    let alerts = region_alerts(q, &regions, &daily);
    Report {
        generated_at_ms: q.now_ms,
        threshold: t,
        weeks,
        regions,
        curves,
        clinics,
        severity,
        severity_by_model,
        lung_score,
        disaggregated,
        devices,
        clinics_reporting,
        silent_days: q.silent_days,
        alerts,
    }
}

/// Age band × sex column labels, in slot order: "0-4/female" … "unknown/unknown".
pub fn demographic_columns() -> Vec<String> {
    (0..18u16)
        .map(|slot| {
            let (_, age, sex) = slot_parts(slot);
            format!(
                "{}/{}",
                age.map_or("unknown", |a| a.label()),
                sex.map_or("unknown", |s| s.label())
            )
        })
        .collect()
}

/// Model versions shown by name, most examinations first; the rest are one row. The
/// label comes from the device, so a rogue one must not grow the table without bound.
pub const MAX_MODEL_ROWS: usize = 8;

fn top_models(by_model: BTreeMap<String, [u64; 4]>) -> (Vec<String>, Vec<Vec<u64>>) {
    let mut all: Vec<(String, [u64; 4])> = by_model.into_iter().collect();
    all.sort_by(|a, b| {
        b.1.iter()
            .sum::<u64>()
            .cmp(&a.1.iter().sum())
            .then(a.0.cmp(&b.0))
    });
    let rest = all.split_off(all.len().min(MAX_MODEL_ROWS));
    let mut rows: Vec<(String, [u64; 4])> = all;
    if !rest.is_empty() {
        let mut other = [0u64; 4];
        for (_, v) in &rest {
            for (a, b) in other.iter_mut().zip(v) {
                *a += b;
            }
        }
        rows.push((format!("{} other versions", rest.len()), other));
    }
    rows.into_iter().map(|(m, v)| (m, v.to_vec())).unzip()
}

/// A clinic-week's split with its margins withheld: its cells sum to the clinic's
/// shown examinations, and its severity rows to other tables' cells.
fn disaggregated(
    region: &str,
    clinic: String,
    week: IsoWeek,
    slots: &BTreeMap<u16, u64>,
    t: u64,
) -> Disaggregated {
    let mut cells = vec![vec![0u64; 18]; 4];
    for (slot, n) in slots {
        let (sev, _, _) = slot_parts(*slot);
        cells[usize::from(sev)][usize::from(*slot) % 18] += n;
    }
    let mut table = table(
        format!("demographics.{clinic}.{}", week.label()),
        format!(
            "Examinations by worst severity, age band and sex, {clinic}, {}",
            week.label()
        ),
        (0..4).map(|s| s.to_string()).collect(),
        demographic_columns(),
        &cells,
        t,
    );
    let p = &mut table.published;
    for c in p
        .row_totals
        .iter_mut()
        .chain(p.col_totals.iter_mut())
        .chain([&mut p.grand_total])
    {
        *c = Cell::Suppressed;
    }
    Disaggregated {
        region: region.to_string(),
        week,
        table,
        clinic,
    }
}

/// Devices and clinics: who reported in the report's last week, who is silent, what
/// waits at the edge.
fn completeness(
    q: &ReportQuery,
    regions_of: &HashMap<String, String>,
    devices: &[DeviceStats],
    last_day: u32,
) -> (Vec<DeviceRow>, Vec<ClinicRow>) {
    let region_of = |c: &str| {
        regions_of
            .get(c)
            .cloned()
            .unwrap_or_else(|| UNASSIGNED.into())
    };
    let silent_after = q.now_ms.saturating_sub(u64::from(q.silent_days) * DAY_MS);
    let last_week_ms = u64::from(q.to.first_day()) * DAY_MS..(u64::from(last_day) + 1) * DAY_MS;
    let nonzero = |v: u64| (v > 0).then_some(v);
    let mut rows: Vec<(DeviceRow, bool)> = devices
        .iter()
        .map(|d| {
            let contact = d.last_seen_ms.max(d.last_received_ms);
            let row = DeviceRow {
                region: region_of(&d.clinic),
                clinic: d.clinic.clone(),
                device: d.device.clone(),
                last_contact_ms: nonzero(contact),
                last_result_ms: nonzero(d.last_received_ms),
                queue: (d.queue_reported_ms > 0).then(|| small(d.queue_pending, q.threshold)),
                oldest_pending_ms: nonzero(d.oldest_pending_ms),
                silent: contact < silent_after,
            };
            (row, last_week_ms.contains(&d.last_received_ms))
        })
        .collect();
    rows.sort_by(|(a, _), (b, _)| {
        (&a.region, &a.clinic, &a.device).cmp(&(&b.region, &b.clinic, &b.device))
    });
    let empty = |region: &str, clinic: &str| ClinicRow {
        region: region.to_string(),
        clinic: clinic.to_string(),
        reported_last_week: false,
        last_contact_ms: None,
        devices: 0,
        silent_devices: 0,
    };
    let mut clinics: BTreeMap<(String, String), ClinicRow> = regions_of
        .iter()
        .map(|(c, r)| ((r.clone(), c.clone()), empty(r, c)))
        .collect();
    for (d, reported) in &rows {
        let row = clinics
            .entry((d.region.clone(), d.clinic.clone()))
            .or_insert_with(|| empty(&d.region, &d.clinic));
        row.devices += 1;
        row.silent_devices += usize::from(d.silent);
        row.last_contact_ms = row.last_contact_ms.max(d.last_contact_ms);
        row.reported_last_week |= reported;
    }
    (
        rows.into_iter().map(|(d, _)| d).collect(),
        clinics.into_values().collect(),
    )
}

/// EARS C1-C3 on each region's daily counts of the watched measures; alerts on days
/// inside the report's weeks.
fn region_alerts(
    q: &ReportQuery,
    regions: &[String],
    daily: &BTreeMap<(usize, usize), BTreeMap<u32, u64>>,
) -> Vec<RegionAlert> {
    let (from, to) = (q.from.first_day(), q.to.last_day());
    let start = from.saturating_sub(ALERT_HISTORY_DAYS);
    let mut out = Vec::new();
    for ((ri, mi), days) in daily {
        // A dense series over the whole window, so a quiet start counts as zeros.
        let mut series = vec![0u64; (to - start + 1) as usize];
        for (d, n) in days.range(start..=to) {
            series[(d - start) as usize] += n;
        }
        for a in alerts::alerts_all(start, &series) {
            if a.day < from {
                continue;
            }
            out.push(RegionAlert {
                region: regions[*ri].clone(),
                measure: ALERT_MEASURES[*mi],
                day: a.day,
                date: date_label(a.day),
                method: a.method.name(),
                threshold: a.threshold,
            });
        }
    }
    out.sort_by(|a, b| (b.day, &a.region, a.method).cmp(&(a.day, &b.region, b.method)));
    out
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
