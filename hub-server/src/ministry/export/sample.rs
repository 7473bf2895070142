//! A small report built by hand for the exporters' tests, independent of `query`.
//!
//! Every count that suppression hides first (`0 < n < 5`) is a 3, and no shown number
//! anywhere in the report is a 3, so a 3 in any export is a leak ([`LEAK`]).

use crate::ministry::period::IsoWeek;
use crate::ministry::report::{
    ClinicRow, Curve, DeviceRow, Disaggregated, Measure, NamedTable, RegionAlert, RegionClinics,
    Report,
};
use crate::ministry::suppress::{self, Cell, Table};

/// The value every primarily suppressed cell holds; never shown.
pub const LEAK: u64 = 3;

pub const NORTH: &str = "North";
/// A region whose name needs CSV quoting.
pub const COAST: &str = "South, Coast";
pub const CLINIC_A: &str = "Clinic \"A\"";
pub const CLINIC_B: &str = "Clinic B";
pub const CLINIC_C: &str = "Coast, Clinic C";
/// A clinic the DHIS2 mapping of the tests leaves out.
pub const CLINIC_D: &str = "Clinic D";

pub fn weeks() -> Vec<IsoWeek> {
    vec![
        IsoWeek {
            year: 2026,
            week: 48,
        },
        IsoWeek {
            year: 2026,
            week: 49,
        },
    ]
}

pub fn table(id: &str, rows: &[&str], cols: &[String], data: &[Vec<u64>]) -> NamedTable {
    let t = Table::from_rows(data).expect("a rectangular table");
    NamedTable {
        id: id.to_string(),
        title: id.to_string(),
        rows: rows.iter().map(|r| r.to_string()).collect(),
        cols: cols.to_vec(),
        published: suppress::suppress(&t, 5).published(),
    }
}

fn curve(measure: Measure, id: &str, rows: &[&str], data: &[Vec<u64>]) -> Curve {
    let cols: Vec<String> = weeks().iter().map(|w| w.label()).collect();
    Curve {
        measure,
        table: table(id, rows, &cols, data),
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The sample: two regions, two weeks, four clinics (one of them unmapped in DHIS2).
pub fn report() -> Report {
    let w = weeks();
    let sev = strs(&["0", "1", "2", "3"]);
    let curves = vec![
        curve(
            Measure::Examinations,
            "curve.examinations.regions",
            &[NORTH, COAST],
            &[vec![40, 27], vec![LEAK, 16]],
        ),
        curve(
            Measure::Flagged,
            "curve.flagged.regions",
            &[NORTH, COAST],
            &[vec![12, 9], vec![0, 6]],
        ),
    ];
    let clinics = vec![
        RegionClinics {
            region: NORTH.into(),
            curves: vec![
                curve(
                    Measure::Examinations,
                    "curve.examinations.clinics.north",
                    &[CLINIC_A, CLINIC_B, CLINIC_D],
                    &[vec![20, 11], vec![LEAK, 8], vec![17, 8]],
                ),
                curve(
                    Measure::Flagged,
                    "curve.flagged.clinics.north",
                    &[CLINIC_A, CLINIC_B, CLINIC_D],
                    &[vec![6, 9], vec![6, 0], vec![0, 0]],
                ),
            ],
        },
        RegionClinics {
            region: COAST.into(),
            curves: vec![curve(
                Measure::Examinations,
                "curve.examinations.clinics.coast",
                &[CLINIC_C],
                &[vec![LEAK, 16]],
            )],
        },
    ];
    let disagg_cols = strs(&["50-64/female", "unknown/unknown"]);
    let disaggregated = vec![Disaggregated {
        region: NORTH.into(),
        clinic: CLINIC_A.into(),
        week: w[0],
        table: table(
            "disaggregated.clinic-a.2026W48",
            &["0", "1", "2", "3"],
            &disagg_cols,
            &[vec![6, 0], vec![LEAK, 7], vec![0, 0], vec![0, 0]],
        ),
    }];
    Report {
        generated_at_ms: 1_796_000_000_000,
        threshold: 5,
        weeks: w.clone(),
        regions: strs(&[NORTH, COAST]),
        curves,
        clinics,
        severity: table(
            "severity.regions",
            &[NORTH, COAST],
            &sev,
            &[vec![30, 20, 9, LEAK], vec![10, 6, 0, 0]],
        ),
        severity_by_model: table(
            "severity.models",
            &["lus-1.2"],
            &sev,
            &[vec![40, 26, 9, LEAK]],
        ),
        lung_score: table(
            "lung_score.regions",
            &[NORTH, COAST],
            &strs(&["0-6", "7-12", "13-18", "19-24"]),
            &[vec![20, 10, 6, 0], vec![LEAK, 8, 0, 0]],
        ),
        disaggregated,
        devices: vec![
            DeviceRow {
                region: NORTH.into(),
                clinic: CLINIC_A.into(),
                device: "dev-1".into(),
                last_contact_ms: Some(1_795_999_000_000),
                last_result_ms: Some(1_795_998_000_000),
                queue: Some(Cell::Suppressed),
                oldest_pending_ms: Some(1_795_900_000_000),
                silent: false,
            },
            DeviceRow {
                region: COAST.into(),
                clinic: CLINIC_C.into(),
                device: "dev,2".into(),
                last_contact_ms: None,
                last_result_ms: None,
                queue: Some(Cell::Shown(12)),
                oldest_pending_ms: None,
                silent: true,
            },
        ],
        clinics_reporting: vec![ClinicRow {
            region: NORTH.into(),
            clinic: CLINIC_A.into(),
            reported_last_week: true,
            last_contact_ms: Some(1_795_999_000_000),
            devices: 1,
            silent_devices: 0,
        }],
        silent_days: 7,
        alerts: vec![
            RegionAlert {
                region: COAST.into(),
                measure: Measure::Examinations,
                day: 20_787,
                date: "2026-12-01".into(),
                method: "C2",
                threshold: 3.0,
            },
            RegionAlert {
                region: NORTH.into(),
                measure: Measure::Flagged,
                day: 20_788,
                date: "2026-12-02".into(),
                method: "C1",
                threshold: 3.0,
            },
        ],
    }
}

/// Every published number of every table of the report: (table id, cell or total).
pub fn all_cells(r: &Report) -> Vec<(String, Cell)> {
    let mut out = Vec::new();
    // In the order of the CSV: each row's cells then its total, the column totals, the
    // grand total.
    let mut add = |t: &NamedTable| {
        let p = &t.published;
        for r in 0..p.rows {
            for c in &p.cells[r * p.cols..(r + 1) * p.cols] {
                out.push((t.id.clone(), *c));
            }
            out.push((t.id.clone(), p.row_totals[r]));
        }
        for c in p.col_totals.iter().chain(std::iter::once(&p.grand_total)) {
            out.push((t.id.clone(), *c));
        }
    };
    r.curves.iter().for_each(|c| add(&c.table));
    r.clinics
        .iter()
        .flat_map(|rc| &rc.curves)
        .for_each(|c| add(&c.table));
    add(&r.severity);
    add(&r.severity_by_model);
    add(&r.lung_score);
    r.disaggregated.iter().for_each(|d| add(&d.table));
    out
}

#[test]
fn the_sample_never_shows_the_leak_value_and_does_suppress() {
    let r = report();
    let cells = all_cells(&r);
    assert!(cells.iter().all(|(_, c)| *c != Cell::Shown(LEAK)));
    assert!(cells.iter().any(|(_, c)| *c == Cell::Suppressed));
    for (id, _) in &cells {
        assert!(r.curves.iter().all(|c| c.table.published.rows > 0), "{id}");
    }
}
