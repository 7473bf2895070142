//! `eval` on small folders laid out like COVID-BLUES and POCUS.

use serde_json::Value;

mod support;
use support::*;

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
    let out = lab(&[
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
        "patient_auc_image",
        "patient_balanced_accuracy_image",
        "patient_sensitivity_image",
        "patient_specificity_image",
        "patient_auc_vitals",
        "severity_macro_f1",
        "severity_accuracy",
        "severity_qwk",
        "video_b_lines_auc",
        "patient_lung_score_spearman",
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
    let out = lab(&[
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
