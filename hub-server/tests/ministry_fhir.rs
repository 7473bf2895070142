//! The FHIR export validated by a real FHIR R4 model: fhir.resources 6.4.0 (R4 4.0.1)
//! in the test venv that scripts/test.sh builds (tests/fhir_validate.py). Skipped with a
//! message where the venv is missing, unless PLEURA_REQUIRE_ORT=1 (as scripts/test.sh
//! and CI set), where a missing validator fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use hub_server::ministry::export::fhir::measure_reports;
use hub_server::ministry::period::IsoWeek;
use hub_server::ministry::report::{Curve, Measure, NamedTable, RegionClinics, Report};
use hub_server::ministry::suppress::{self, Cell, Table};
use serde_json::{json, Value};

fn table(id: &str, rows: &[&str], cols: &[&str], data: &[Vec<u64>]) -> NamedTable {
    NamedTable {
        id: id.into(),
        title: id.into(),
        rows: rows.iter().map(|s| s.to_string()).collect(),
        cols: cols.iter().map(|s| s.to_string()).collect(),
        published: suppress::suppress(&Table::from_rows(data).unwrap(), 5).published(),
    }
}

/// Two regions, two weeks, two measures; the Coast's week-48 scans are a 3.
fn report() -> Report {
    let weeks = ["2026-W48", "2026-W49"];
    let regions = ["North", "South, Coast"];
    let sev = ["0", "1", "2", "3"];
    let curve = |m: Measure, data: &[Vec<u64>]| Curve {
        measure: m,
        table: table(&format!("curve.{}.regions", m.id()), &regions, &weeks, data),
    };
    Report {
        generated_at_ms: 1_796_000_000_000,
        threshold: 5,
        weeks: weeks.iter().map(|w| IsoWeek::parse(w).unwrap()).collect(),
        regions: regions.iter().map(|s| s.to_string()).collect(),
        curves: vec![
            curve(Measure::Examinations, &[vec![40, 27], vec![3, 16]]),
            curve(Measure::Flagged, &[vec![12, 0], vec![0, 6]]),
        ],
        clinics: Vec::<RegionClinics>::new(),
        severity: table(
            "severity",
            &regions,
            &sev,
            &[vec![30, 20, 9, 8], vec![10, 6, 0, 3]],
        ),
        severity_by_model: table("severity.models", &["m"], &sev, &[vec![40, 26, 9, 11]]),
        lung_score: table("lung", &regions, &["0-6"], &[vec![7], vec![9]]),
        disaggregated: vec![],
        devices: vec![],
        clinics_reporting: vec![],
        silent_days: 7,
        alerts: vec![],
    }
}

/// The venv's python when it has the validator; None (skip) or a panic when required.
fn validator() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv-test/bin/python");
    let ok = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "import fhir.resources, sys; sys.exit(fhir.resources.__fhir_version__ != '4.0.1')",
            ])
            .status()
            .is_ok_and(|s| s.success());
    match ok {
        true => Some(python),
        false if std::env::var("PLEURA_REQUIRE_ORT").is_ok_and(|v| v == "1") => {
            panic!("PLEURA_REQUIRE_ORT=1 but {} lacks fhir.resources 6.4.0 (scripts/test.sh installs it)", python.display())
        }
        false => {
            eprintln!("no .venv-test with fhir.resources: skipping the FHIR R4 validation (scripts/test.sh builds it)");
            None
        }
    }
}

/// Runs the validator on `doc`: (passed, its output).
fn validate(python: &Path, doc: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundle.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fhir_validate.py");
    let out = Command::new(python)
        .arg(script)
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_measure_report_bundle_is_valid_fhir_r4() {
    let r = report();
    // The sample does hide something.
    assert_eq!(r.curves[0].table.cell(1, 0), Cell::Suppressed);
    let bundle = measure_reports(&r, "https://fhir.example.org/pleura");
    assert!(bundle.to_string().contains("\"valueCode\":\"masked\""));
    let Some(python) = validator() else { return };
    let (ok, out) = validate(&python, &bundle);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "ok 4");
}

#[test]
fn the_validator_rejects_broken_measure_reports() {
    let Some(python) = validator() else { return };
    let good = measure_reports(&report(), "https://fhir.example.org/pleura");
    type Spoil = Box<dyn Fn(&mut Value)>;
    let broken: Vec<(&str, Spoil)> = vec![
        (
            "a count that is not a number",
            Box::new(|b| {
                b["entry"][0]["resource"]["group"][0]["population"][0]["count"] =
                    json!("suppressed")
            }),
        ),
        (
            "no measure",
            Box::new(|b| {
                b["entry"][0]["resource"]
                    .as_object_mut()
                    .unwrap()
                    .remove("measure");
            }),
        ),
        (
            "an unknown element",
            Box::new(|b| b["entry"][1]["resource"]["score"] = json!(1)),
        ),
        (
            "a bad date",
            Box::new(|b| b["entry"][0]["resource"]["period"]["start"] = json!("2026-13-40")),
        ),
        (
            "a bad status code",
            Box::new(|b| b["entry"][0]["resource"]["status"] = json!("final")),
        ),
        (
            "a suppressed count with no reason",
            Box::new(|b| {
                let p = &mut b["entry"][2]["resource"]["group"][0]["population"][0];
                p.as_object_mut().unwrap().remove("_count");
            }),
        ),
    ];
    for (what, spoil) in broken {
        let mut doc = good.clone();
        spoil(&mut doc);
        let (ok, out) = validate(&python, &doc);
        assert!(!ok, "{what} passed: {out}");
    }
}
