//! Model v2's pooling and patient combiner agree with the Python side
//! (`training/pleura_train/pooling.py`, `patient.py`): `fixtures/reference/
//! pooling_cases.json`, written by the training pipeline, holds inputs and the Python
//! answers, with the sidecar (`model_json`, relative to the repository root) they used.
//!
//! ```text
//! {"model_json": "models/pleura-lite.json",
//!  "cases": [{"attention": [n], "class_logits": [[3] x n], "severity_latent": [n],
//!             "finding_logits": [[5] x n],
//!             "expect": {"class_probs": [3], "severity_probs": [4], "severity": k,
//!                        "findings": [5]}}],
//!  "patients": [{"zones": [{"zone": "L1", "covid_prob": p, "findings": [5],
//!                           "severity_probs": [4]}],
//!                "vitals": {...vitals.json form, optional...},
//!                "expect_image": p, "expect_vitals": p_or_null}]}
//! ```
//!
//! Until the file exists the test says so and passes.

use std::path::{Path, PathBuf};

use pleura_inference::patient::{combine, Vitals, ZoneReading};
use pleura_inference::pooling::{video_from_heads, Heads, PoolParams};
use pleura_inference::ModelInfo;
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn floats(v: &Value, what: &str) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: not an array"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("{what}: not a number")) as f32)
        .collect()
}

fn fixed<const N: usize>(v: &Value, what: &str) -> [f32; N] {
    floats(v, what)
        .try_into()
        .unwrap_or_else(|v: Vec<f32>| panic!("{what}: {} values, expected {N}", v.len()))
}

fn rows<const N: usize>(v: &Value, what: &str) -> Vec<[f32; N]> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: not an array"))
        .iter()
        .map(|r| fixed::<N>(r, what))
        .collect()
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - *w as f64).abs() <= TOLERANCE,
            "{what}[{i}]: Rust {g} vs Python {w}"
        );
    }
}

fn load_info(doc: &Value, file: &Path) -> ModelInfo {
    let rel = doc["model_json"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no model_json", file.display()));
    let path = [root().join(rel), file.parent().unwrap().join(rel)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{}: sidecar {rel} not found", file.display()));
    ModelInfo::from_json(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn pooling_and_patient_combiner_match_python() {
    // PLEURA_POOLING_CASES names another file (checking a freshly exported model).
    let file = std::env::var_os("PLEURA_POOLING_CASES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("fixtures/reference/pooling_cases.json"));
    if !file.exists() {
        println!(
            "skipped: {} not present (written by the v2 training pipeline)",
            file.display()
        );
        return;
    }
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let info = load_info(&doc, &file);
    let params = PoolParams {
        calibration: &info.calibration,
        cutpoints: &info.severity_cutpoints,
        finding_thresholds: &info.finding_thresholds,
    };
    let cases = doc["cases"].as_array().cloned().unwrap_or_default();
    for (i, c) in cases.iter().enumerate() {
        let what = format!("case {i}");
        let heads = Heads {
            class_logits: rows::<3>(&c["class_logits"], &what),
            severity_latent: floats(&c["severity_latent"], &what),
            finding_logits: rows::<5>(&c["finding_logits"], &what),
            attention: floats(&c["attention"], &what),
        };
        let v = video_from_heads(&heads, &params).unwrap_or_else(|e| panic!("{what}: {e}"));
        let e = &c["expect"];
        close(
            &format!("{what} class_probs"),
            &v.class_probs,
            &floats(&e["class_probs"], &what),
        );
        close(
            &format!("{what} severity_probs"),
            &v.severity_probs,
            &floats(&e["severity_probs"], &what),
        );
        assert_eq!(
            Some(v.severity as u64),
            e["severity"].as_u64(),
            "{what}: severity"
        );
        close(
            &format!("{what} findings"),
            &v.findings,
            &floats(&e["findings"], &what),
        );
    }
    let patients = doc["patients"].as_array().cloned().unwrap_or_default();
    for (i, p) in patients.iter().enumerate() {
        let what = format!("patient {i}");
        let model = info
            .patient
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: the sidecar has no patient block"));
        let zones: Vec<ZoneReading> = p["zones"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: zones"))
            .iter()
            .map(|z| ZoneReading {
                zone: z["zone"].as_str().expect("zone name").to_string(),
                covid_prob: z["covid_prob"].as_f64().expect("covid_prob") as f32,
                findings: fixed::<5>(&z["findings"], &what),
                severity_probs: fixed::<4>(&z["severity_probs"], &what),
            })
            .collect();
        let vitals: Option<Vitals> = match &p["vitals"] {
            Value::Null => None,
            v => Some(
                Vitals::from_json(v.to_string().as_bytes())
                    .unwrap_or_else(|e| panic!("{what}: {e}")),
            ),
        };
        let c = combine(&zones, vitals.as_ref(), model, &info.finding_thresholds);
        let want_image = p["expect_image"].as_f64().expect("expect_image") as f32;
        close(
            &format!("{what} image probability"),
            &[c.image_probability],
            &[want_image],
        );
        match (p["expect_vitals"].as_f64(), c.vitals_probability) {
            (None, None) => {}
            (Some(w), Some(g)) => close(&format!("{what} vitals probability"), &[g], &[w as f32]),
            (w, g) => panic!("{what}: vitals probability Rust {g:?} vs Python {w:?}"),
        }
    }
    println!(
        "{} pooling case(s) and {} patient(s) match Python",
        cases.len(),
        patients.len()
    );
}
