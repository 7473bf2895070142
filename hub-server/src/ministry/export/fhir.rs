//! FHIR R4 (4.0.1) `MeasureReport`s of a [`Report`]: a `Bundle` (type `collection`)
//! with one summary report per region and ISO week, one `group` per measure whose
//! `initial-population` count is the region's published count that week.
//!
//! A suppressed count is never sent as a number: the population has no `count`, and its
//! primitive extension (`_count`) carries the standard `data-absent-reason` extension
//! with the code `masked` ("the information is not available because of security,
//! privacy or related reasons"), as FHIR does for any absent primitive value.

use serde_json::{json, Value};

use super::csv::timestamp;
use crate::ministry::period::{date_label, IsoWeek};
use crate::ministry::report::{Measure, NamedTable, Report};
use crate::ministry::suppress::Cell;

/// The standard extension for why a value is absent.
pub const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
/// HL7's code system of measure populations.
pub const MEASURE_POPULATION: &str = "http://terminology.hl7.org/CodeSystem/measure-population";
/// The Measure every report answers, below the configured base URL.
pub const MEASURE_PATH: &str = "Measure/pleura-lus-weekly";
/// Pleura's code system for the measures (codes are `Measure::id()`).
pub const CODE_SYSTEM_PATH: &str = "CodeSystem/pleura-measure";

/// The Bundle of MeasureReports, one per region and week of the report (in the order of
/// `report.regions`, then `report.weeks`). `measure_base_url` is the canonical base of
/// Pleura's FHIR definitions, e.g. `https://fhir.example.org/pleura`.
pub fn measure_reports(report: &Report, measure_base_url: &str) -> Value {
    let base = measure_base_url.trim_end_matches('/');
    let date = timestamp(Some(report.generated_at_ms));
    let mut entries = Vec::new();
    for region in &report.regions {
        for (wi, &week) in report.weeks.iter().enumerate() {
            let groups: Vec<Value> = report
                .curves
                .iter()
                .filter_map(|c| {
                    let n = count(&c.table, region, week, wi)?;
                    Some(group(base, c.measure, n))
                })
                .collect();
            let resource = json!({
                "resourceType": "MeasureReport",
                "identifier": [{
                    "system": format!("{base}/identifier/measure-report"),
                    "value": format!("{region}/{}", week.label()),
                }],
                "status": "complete",
                "type": "summary",
                "measure": format!("{base}/{MEASURE_PATH}"),
                "date": date,
                "reporter": {"display": region},
                "period": {
                    "start": date_label(week.first_day()),
                    "end": date_label(week.last_day()),
                },
                "group": groups,
            });
            entries.push(json!({ "resource": resource }));
        }
    }
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": date,
        "entry": entries,
    })
}

/// The published count of `region` in `week` (column `wi`) of a table whose rows are
/// regions and columns weeks; None when the table has no such row or column.
pub fn count(t: &NamedTable, region: &str, week: IsoWeek, wi: usize) -> Option<Cell> {
    let r = t.rows.iter().position(|x| x == region)?;
    let c = week_column(t, week, wi)?;
    Some(t.cell(r, c))
}

/// The column of `week`: by label ("2026-W48" or "2026W48"), else by position when the
/// table has one column per report week.
pub fn week_column(t: &NamedTable, week: IsoWeek, wi: usize) -> Option<usize> {
    let (label, dhis2) = (week.label(), week.dhis2());
    t.cols
        .iter()
        .position(|c| *c == label || *c == dhis2)
        .or_else(|| {
            (wi < t.published.cols && t.cols.iter().all(|c| IsoWeek::parse(c).is_err()))
                .then_some(wi)
        })
}

fn group(base: &str, m: Measure, n: Cell) -> Value {
    let mut population = json!({
        "code": {"coding": [{
            "system": MEASURE_POPULATION,
            "code": "initial-population",
            "display": "Initial Population",
        }]},
    });
    match n {
        Cell::Shown(n) => population["count"] = json!(n),
        Cell::Suppressed => {
            population["_count"] = json!({"extension": [{
                "url": DATA_ABSENT_REASON,
                "valueCode": "masked",
            }]})
        }
    }
    json!({
        "code": {
            "coding": [{
                "system": format!("{base}/{CODE_SYSTEM_PATH}"),
                "code": m.id(),
                "display": m.title(),
            }],
            "text": m.title(),
        },
        "population": [population],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ministry::export::sample;

    const BASE: &str = "https://fhir.example.org/pleura/";

    fn reports(b: &Value) -> Vec<&Value> {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .collect()
    }

    #[test]
    fn one_report_per_region_and_week_with_a_group_per_measure() {
        let r = sample::report();
        let b = measure_reports(&r, BASE);
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "collection");
        let mrs = reports(&b);
        assert_eq!(mrs.len(), r.regions.len() * r.weeks.len());
        let first = mrs[0];
        assert_eq!(first["status"], "complete");
        assert_eq!(first["type"], "summary");
        assert_eq!(
            first["measure"],
            "https://fhir.example.org/pleura/Measure/pleura-lus-weekly"
        );
        assert_eq!(first["reporter"]["display"], sample::NORTH);
        assert_eq!(first["period"]["start"], "2026-11-23");
        assert_eq!(first["period"]["end"], "2026-11-29");
        assert_eq!(first["group"].as_array().unwrap().len(), r.curves.len());
        let g = &first["group"][0];
        assert_eq!(g["code"]["coding"][0]["code"], "examinations");
        assert_eq!(
            g["code"]["coding"][0]["system"],
            "https://fhir.example.org/pleura/CodeSystem/pleura-measure"
        );
        let p = &g["population"][0];
        assert_eq!(p["code"]["coding"][0]["system"], MEASURE_POPULATION);
        assert_eq!(p["code"]["coding"][0]["code"], "initial-population");
        assert_eq!(p["count"], r.curves[0].table.cell(0, 0).shown_json());
    }

    trait ShownJson {
        fn shown_json(self) -> Value;
    }
    impl ShownJson for Cell {
        fn shown_json(self) -> Value {
            match self {
                Cell::Shown(n) => json!(n),
                Cell::Suppressed => Value::Null,
            }
        }
    }

    #[test]
    fn a_suppressed_count_is_masked_and_never_a_number() {
        let r = sample::report();
        let b = measure_reports(&r, BASE);
        let mut masked = 0;
        for mr in reports(&b) {
            for g in mr["group"].as_array().unwrap() {
                let p = &g["population"][0];
                match p.get("count") {
                    Some(n) => assert_ne!(n, &json!(sample::LEAK), "{p}"),
                    None => {
                        let ext = &p["_count"]["extension"][0];
                        assert_eq!(ext["url"], DATA_ABSENT_REASON);
                        assert_eq!(ext["valueCode"], "masked");
                        masked += 1;
                    }
                }
            }
        }
        // The Coast's scans in week 48 are a 3, and whatever suppression hid with it.
        assert!(masked >= 1);
        let coast_w48 = reports(&b)[2];
        assert_eq!(coast_w48["reporter"]["display"], sample::COAST);
        assert!(coast_w48["group"][0]["population"][0]
            .get("count")
            .is_none());
    }
}
