//! The Rust decoding + preprocessing of every shipped fixture matches the Python
//! reference pipeline the model was trained with (`training/pleura_train/preprocess.py`).

use std::path::PathBuf;

use pleura_inference::decode_scan_sized;
use pleura_inference::preprocess::DEFAULT_INPUT_SIZE;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Mean and max absolute difference in gray levels (0..255) that each format may show.
/// Lossless formats and H.264 (a bit-exact standard) must match to float rounding;
/// JPEG decoders may differ by an IDCT rounding step.
fn tolerance(file: &str) -> (f32, f32) {
    if file.ends_with(".jpg") {
        (0.5, 3.0)
    } else {
        (1e-3, 1e-2)
    }
}

#[test]
fn rust_preprocessing_matches_python_reference() {
    let dir = fixtures().join("reference");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures/reference") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        // Other reference data lives here too (pooling_cases.json): only scan references.
        let Some(file) = meta["file"].as_str().map(str::to_string) else {
            continue;
        };
        let expected: Vec<f32> = std::fs::read(dir.join(format!("{file}.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let bytes = std::fs::read(fixtures().join("scans").join(&file)).unwrap();
        // The model input side the reference was made for (v1 fixtures do not say: 112).
        let side = meta["size"]
            .as_u64()
            .map_or(DEFAULT_INPUT_SIZE, |s| s as usize);
        let scan = decode_scan_sized(&bytes, meta["frames"].as_u64().unwrap() as usize, side)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            scan.frames_total as u64,
            meta["frames_total"].as_u64().unwrap(),
            "{file}: frame count"
        );
        assert_eq!(
            (scan.width as u64, scan.height as u64),
            (
                meta["width"].as_u64().unwrap(),
                meta["height"].as_u64().unwrap()
            ),
            "{file}"
        );
        assert_eq!(scan.frames.len(), expected.len(), "{file}: sampled frames");
        let diffs: Vec<f32> = scan
            .frames
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let max = diffs.iter().cloned().fold(0.0, f32::max);
        let (tol_mean, tol_max) = tolerance(&file);
        eprintln!(
            "{file}: mean |Δ| {mean:.5}, max |Δ| {max:.4} over {} px",
            diffs.len()
        );
        assert!(
            mean <= tol_mean && max <= tol_max,
            "{file}: mean {mean} max {max} exceed {tol_mean}/{tol_max}"
        );
        assert_eq!(scan.side, side);
        assert_eq!(scan.frames.len() % (side * side), 0);
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} reference fixtures found");
}
