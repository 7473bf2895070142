//! `analyze` on the shipped fixtures and model: the same numbers as the Python
//! pipeline, named errors for bad inputs, and hostile files refused unread.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

mod support;
use support::*;

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

#[test]
fn analyze_reads_every_fixture_like_the_python_pipeline() {
    let out = lab(&["analyze", "--json", "fixtures/scans"]);
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
        let cells = v["localisation"].as_array().unwrap().len();
        let side = (cells as f64).sqrt() as usize;
        assert!(
            side >= 7 && side * side == cells,
            "{file}: square localisation map, got {cells} cells"
        );
        if let Some(want) = r["model"]["findings"].as_array() {
            let got = v["findings"]
                .as_object()
                .unwrap_or_else(|| panic!("{file}: no findings"));
            let got: Vec<f64> = [
                "a_lines",
                "b_lines",
                "consolidation",
                "effusion",
                "pleural_irregularity",
            ]
            .iter()
            .map(|k| got[*k].as_f64().unwrap())
            .collect();
            for (a, b) in got.iter().zip(want) {
                assert!(
                    (a - b.as_f64().unwrap()).abs() < 2e-3,
                    "{file}: findings rust {got:?} vs python {want:?}"
                );
            }
        }
    }
}

#[test]
fn onnxruntime_backend_agrees_with_tract() {
    let Some(lib) = ort_library() else { return };
    let tract = json_lines(&lab(&["analyze", "--json", "fixtures/scans"]));
    let out = lab(&[
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

    let out = lab(&["analyze", "--json", d.to_str().unwrap()]);
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
    let mut bytes = std::fs::read(root().join("models/pleura-lite.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&model, bytes).unwrap();
    std::fs::copy(
        root().join("models/pleura-lite.json"),
        dir.path().join("m.json"),
    )
    .unwrap();
    let out = lab(&[
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
    let out = lab(&[
        "analyze",
        "--model",
        "/nonexistent/model.onnx",
        "fixtures/scans/cb_frame.bmp",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.onnx"));
}

/// Peak RSS of `analyze` on `path`, and its output.
fn analyze_rss(path: &Path) -> (u64, Output) {
    let out = lab_cmd(&["analyze", "--json", path.to_str().unwrap()])
        .env("PLEURA_REPORT_PEAK_RSS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_kib in {stderr}"));
    (kib, out)
}

#[test]
fn analyze_refuses_fifos_devices_links_and_oversize_by_name_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mkfifo(&d.join("b_fifo.mp4"));
    std::os::unix::fs::symlink("/dev/zero", d.join("c_zero.mp4")).unwrap();
    std::os::unix::fs::symlink(d, d.join("d_loop")).unwrap();
    std::fs::copy(fixture("pocus_pneu_emdocs1.png"), d.join("e_good.png")).unwrap();
    let big = d.join("a_big.mp4");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();

    // Would hang on the FIFO, or loop, or grow without end, before.
    let out = lab(&["analyze", "--json", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    let err = |i: usize| lines[i]["error"].as_str().unwrap_or_default().to_string();
    assert!(err(0).contains("over the limit"), "{}", err(0));
    assert!(err(1).contains("FIFO"), "{}", err(1));
    assert!(err(2).contains("symbolic link"), "{}", err(2));
    assert!(err(3).contains("symbolic link"), "{}", err(3));
    assert!(lines[4]["class_probs"].is_object());
    if mknod_zero(&d.join("dev")) {
        let out = lab(&["analyze", d.join("dev").to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("character device"));
    }

    // The 3 GiB file is never read: peak memory stays that of the model.
    let (big_kib, out) = analyze_rss(&big);
    assert_eq!(out.status.code(), Some(2));
    let (small_kib, _) = analyze_rss(&fixture("pocus_pneu_emdocs1.png"));
    eprintln!("peak RSS: 3 GiB sparse file {big_kib} KiB, 134 KB PNG {small_kib} KiB");
    assert!(
        big_kib < 512 * 1024,
        "analyze on 3 GiB peaked at {big_kib} KiB"
    );
    // With the limit raised past the file it would be read; a lower one still refuses.
    let out = lab(&[
        "analyze",
        "--max-scan-bytes",
        "1000",
        fixture("pocus_pneu_emdocs1.png").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("over the limit of 1000 bytes"));
}
