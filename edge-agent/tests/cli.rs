//! End-to-end tests of the `edge-agent` binary on the shipped fixtures and model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("running edge-agent")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn probs(v: &Value) -> Vec<f64> {
    let c = &v["class_probs"];
    vec![
        c["covid"].as_f64().unwrap(),
        c["other_pneumonia"].as_f64().unwrap(),
        c["normal"].as_f64().unwrap(),
    ]
}

fn reference(file: &str) -> Value {
    let p = root()
        .join("fixtures/reference")
        .join(format!("{file}.json"));
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// ONNX Runtime's library, when this machine has one (CI installs it from PyPI).
fn ort_library() -> Option<String> {
    match std::env::var("ORT_DYLIB_PATH") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var("PLEURA_REQUIRE_ORT").is_ok_and(|v| v == "1") => {
            panic!("PLEURA_REQUIRE_ORT=1 but ORT_DYLIB_PATH is not set")
        }
        _ => {
            eprintln!("ORT_DYLIB_PATH not set: skipping the ONNX Runtime comparison (scripts/test.sh sets it)");
            None
        }
    }
}

#[test]
fn analyze_reads_every_fixture_like_the_python_pipeline() {
    let out = agent(&["analyze", "--json", "fixtures/scans"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 9, "one line per fixture");
    for v in &lines {
        let file = Path::new(v["file"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let p = probs(v);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{file}: {p:?}");
        let r = reference(&file);
        let want: Vec<f64> = r["model"]["class_probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (a, b) in p.iter().zip(&want) {
            assert!(
                (a - b).abs() < 2e-3,
                "{file}: rust {p:?} vs python {want:?}"
            );
        }
        assert_eq!(
            v["severity"].as_u64(),
            r["model"]["severity"].as_u64(),
            "{file}: severity"
        );
        let u = v["uncertainty"].as_f64().unwrap();
        assert!(
            (u - r["model"]["uncertainty"].as_f64().unwrap()).abs() < 2e-3,
            "{file}: uncertainty {u}"
        );
        let reasons = v["flag_reasons"].as_array().unwrap();
        assert_eq!(
            v["flagged"].as_bool().unwrap(),
            !reasons.is_empty(),
            "{file}: flag needs a reason"
        );
        assert_eq!(
            v["localisation"].as_array().unwrap().len(),
            49,
            "{file}: 7x7 localisation map"
        );
    }
}

#[test]
fn onnxruntime_backend_agrees_with_tract() {
    let Some(lib) = ort_library() else { return };
    let tract = json_lines(&agent(&["analyze", "--json", "fixtures/scans"]));
    let out = agent(&[
        "analyze",
        "--json",
        "--backend",
        "onnxruntime",
        "--ort-library",
        &lib,
        "fixtures/scans",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ort = json_lines(&out);
    assert_eq!(tract.len(), ort.len());
    for (t, o) in tract.iter().zip(&ort) {
        assert_eq!(t["file"], o["file"]);
        for (a, b) in probs(t).iter().zip(probs(o)) {
            assert!(
                (a - b).abs() < 1e-4,
                "{}: tract {a} vs onnxruntime {b}",
                t["file"]
            );
        }
        assert_eq!(t["severity"], o["severity"]);
        assert_eq!(t["flagged"], o["flagged"]);
    }
}

#[test]
fn bad_inputs_get_named_errors_and_do_not_stop_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(
        root().join("fixtures/scans/pocus_pneu_emdocs1.png"),
        d.join("a_good.png"),
    )
    .unwrap();
    let mut avi = b"RIFF\x10\0\0\0AVI LIST".to_vec();
    avi.resize(256, 0);
    std::fs::write(d.join("b_clip.avi"), avi).unwrap();
    let mp4 = std::fs::read(root().join("fixtures/scans/cb_patient29_L2.mp4")).unwrap();
    std::fs::write(d.join("c_truncated.mp4"), &mp4[..mp4.len() / 3]).unwrap();
    std::fs::write(d.join("d_notes.txt"), "patient notes").unwrap();
    let png = std::fs::read(root().join("fixtures/scans/pocus_pneu_emdocs1.png")).unwrap();
    std::fs::write(d.join("e_cut.png"), &png[..200]).unwrap();

    let out = agent(&["analyze", "--json", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "some files failed");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 5);
    assert!(
        lines[0]["class_probs"].is_object(),
        "the good file is still analysed"
    );
    let err = |i: usize| lines[i]["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err(1).contains("AVI video") && err(1).contains("supported formats"),
        "{}",
        err(1)
    );
    assert!(err(2).contains("MP4/MOV"), "{}", err(2));
    assert!(err(3).contains("unrecognised data"), "{}", err(3));
    assert!(err(4).contains("PNG"), "{}", err(4));
}

#[test]
fn a_tampered_or_missing_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    let mut bytes = std::fs::read(root().join("models/lusnet-s.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&model, bytes).unwrap();
    std::fs::copy(
        root().join("models/lusnet-s.json"),
        dir.path().join("m.json"),
    )
    .unwrap();
    let out = agent(&[
        "analyze",
        "--model",
        model.to_str().unwrap(),
        "fixtures/scans/cb_frame.bmp",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHA-256"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent(&[
        "analyze",
        "--model",
        "/nonexistent/model.onnx",
        "fixtures/scans/cb_frame.bmp",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.onnx"));
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn eval_covid_blues_layout_reports_patient_and_severity_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("lus_videos")).unwrap();
    for (src, dst) in [
        ("cb_patient29_L2.mp4", "patient_901_L2.mp4"),
        ("cb_patient16_R1.mp4", "patient_902_R1.mp4"),
        ("cb_patient16_R1.mp4", "patient_902_R2.mp4"),
    ] {
        std::fs::copy(
            root().join("fixtures/scans").join(src),
            d.join("lus_videos").join(dst),
        )
        .unwrap();
    }
    write(
        &d.join("clinical_variables.csv"),
        "patient_id,cov_test\n901,1\n902,0\n",
    );
    write(&d.join("severity.csv"), "video_file,Severity Score,A-lines,B-lines,comments\npatient_901_L2,3.0,no,yes,\"x\"\npatient_902_R1,0.0,yes,no,\"\"\npatient_902_R2,0.0,yes,no,\"\"\n");
    let out = agent(&[
        "eval",
        "--dataset",
        "covid-blues",
        "--root",
        d.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &doc["metrics"];
    assert_eq!(doc["evaluated"], 3);
    assert_eq!(m["patients"], 2);
    assert_eq!(m["severity_videos"], 3);
    for key in [
        "patient_covid_auc",
        "patient_balanced_accuracy",
        "patient_sensitivity",
        "patient_specificity",
        "severity_macro_f1",
        "severity_accuracy",
        "patient_covid_ece",
    ] {
        assert!(m[key].is_number(), "{key} missing: {m}");
    }
    let confusion: u64 = m["severity_confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(confusion, 3);
}

#[test]
fn eval_pocus_layout_skips_unreadable_files_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conv = d.join("pocus_videos/convex");
    std::fs::create_dir_all(&conv).unwrap();
    std::fs::create_dir_all(d.join("pocus_images/convex")).unwrap();
    std::fs::copy(
        root().join("fixtures/scans/pocus_reg_alines.mov"),
        conv.join("Reg_a.mov"),
    )
    .unwrap();
    std::fs::copy(
        root().join("fixtures/scans/pocus_cov_atlas45.gif"),
        conv.join("Cov_b.gif"),
    )
    .unwrap();
    std::fs::copy(
        root().join("fixtures/scans/pocus_pneu_emdocs1.png"),
        d.join("pocus_images/convex/Pneu_c.png"),
    )
    .unwrap();
    let mut avi = b"RIFF\x10\0\0\0AVI LIST".to_vec();
    avi.resize(256, 0);
    std::fs::write(conv.join("Vir_d.avi"), avi).unwrap();
    write(&d.join("dataset_metadata.csv"), "Filename,Label,Lung Severity Score,Source ID,Patient ID / Name\nReg_a,regular,0,1,\nCov_b,COVID-19,3,2,\nPneu_c,Bacterial pneumonia,,3,\nVir_d,Viral pneumonia,,4,\n");
    let out = agent(&[
        "eval",
        "--dataset",
        "pocus",
        "--root",
        d.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["evaluated"], 3);
    assert_eq!(doc["metrics"]["videos"], 3);
    assert_eq!(doc["metrics"]["severity_videos"], 2);
    let skipped = doc["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0]["reason"].as_str().unwrap().contains("AVI video"));
}
