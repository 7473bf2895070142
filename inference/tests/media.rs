//! Previews and clips of every shipped fixture, from the pool's real per-frame scores:
//! within their byte limits, decodable, and (clips) read back by Pleura's own decoder.
//! `--nocapture` prints the sizes (BENCHMARKS.md).

use std::path::PathBuf;
use std::time::Instant;

use pleura_inference::media::{prepare_clip, prepare_preview, KeyRole, MediaLimits};
use pleura_inference::preprocess::sample_indices;
use pleura_inference::{backend, decode_scan, BackendConfig, InferencePool, ModelFile, PoolConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(root().join("fixtures/scans"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.push((
        "synthetic_phi.dcm".into(),
        std::fs::read(root().join("fixtures/phi/synthetic_phi.dcm")).unwrap(),
    ));
    out.sort();
    out
}

#[test]
fn every_fixture_gives_a_bounded_preview_and_a_clip_that_decodes_back() {
    backend::init(&BackendConfig::default()).unwrap();
    let model = ModelFile::load(&root().join("models/pleura-lite.onnx")).unwrap();
    let pool = InferencePool::start(&model, PoolConfig::default()).unwrap();
    let limits = MediaLimits::default();
    let files = fixtures();
    assert!(files.len() >= 10);
    for (name, bytes) in files {
        let report = pool.analyze(bytes.clone()).unwrap();
        let total = report.analysis.frames_total as usize;
        let indices: Vec<usize> = report.frame_scores.iter().map(|s| s.index).collect();
        assert_eq!(indices, sample_indices(total, 32), "{name}: scored frames");
        assert!(report.cam_size > 0);
        for s in &report.frame_scores {
            assert_eq!(s.cam.len(), report.cam_size * report.cam_size);
            assert!((0.0..=1.0).contains(&s.pathology));
            assert!(s.cam.iter().all(|v| (0.0..=1.0).contains(v)));
        }

        let t = Instant::now();
        let preview = prepare_preview(&bytes, &report.frame_scores, report.cam_size, &limits)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let preview_ms = t.elapsed().as_millis();
        assert!(
            preview.bytes() <= limits.preview_max_bytes,
            "{name}: {}",
            preview.bytes()
        );
        assert_eq!(preview.frames_total as usize, total);
        let expected_frames = if total == 1 { 1 } else { limits.key_frames };
        assert_eq!(preview.frames.len(), expected_frames, "{name}");
        assert!(preview
            .frames
            .iter()
            .any(|f| f.role == KeyRole::Pathological));
        let most = report
            .frame_scores
            .iter()
            .max_by(|a, b| a.pathology.total_cmp(&b.pathology))
            .unwrap();
        assert!(
            preview
                .frames
                .iter()
                .any(|f| f.index as usize == most.index),
            "{name}"
        );
        for f in &preview.frames {
            assert!(f.width.max(f.height) <= limits.preview_max_side);
            let jpeg = image::load_from_memory(&f.jpeg).unwrap();
            assert_eq!((jpeg.width(), jpeg.height()), (f.width, f.height));
            assert_eq!(jpeg.color(), image::ColorType::L8, "{name}: grayscale JPEG");
            let overlay = image::load_from_memory(&f.overlay_png).unwrap();
            assert_eq!((overlay.width(), overlay.height()), (f.width, f.height));
            assert_eq!(overlay.color(), image::ColorType::Rgba8);
        }

        let t = Instant::now();
        let clip = prepare_clip(&bytes, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
        let clip_ms = t.elapsed().as_millis();
        assert!(clip.mp4.len() <= limits.clip_max_bytes);
        assert!(clip.width.is_multiple_of(2) && clip.height.is_multiple_of(2));
        assert!(clip.width.max(clip.height) <= limits.clip_max_side);
        let back = decode_scan(&clip.mp4, 1).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back.frames_total as u32, clip.frames, "{name}: clip frames");
        assert_eq!(
            (back.width as u32, back.height as u32),
            (clip.width, clip.height)
        );
        assert_eq!(
            clip.frames as usize,
            total.min(limits.clip_max_frames),
            "{name}"
        );
        eprintln!(
            "{name:32} original {:>8} B | preview {:>6} B ({} frames, {preview_ms} ms) | clip {:>8} B ({}x{}, {} frames @ {:.1} fps, {clip_ms} ms)",
            bytes.len(),
            preview.bytes(),
            preview.frames.len(),
            clip.mp4.len(),
            clip.width,
            clip.height,
            clip.frames,
            clip.fps
        );
    }
}

/// Writes each fixture's clip and preview images to `$PLEURA_MEDIA_OUT` for a look in a
/// browser (`cargo test --release -p pleura-inference --test media -- --ignored`).
#[test]
#[ignore]
fn write_media_for_a_browser() {
    let out = PathBuf::from(std::env::var("PLEURA_MEDIA_OUT").expect("PLEURA_MEDIA_OUT"));
    std::fs::create_dir_all(&out).unwrap();
    let limits = MediaLimits::default();
    for (name, bytes) in fixtures() {
        let clip = prepare_clip(&bytes, &limits).unwrap();
        std::fs::write(out.join(format!("{name}.mp4")), &clip.mp4).unwrap();
        let preview = prepare_preview(&bytes, &[], 0, &limits).unwrap();
        for f in &preview.frames {
            std::fs::write(out.join(format!("{name}.{}.jpg", f.index)), &f.jpeg).unwrap();
        }
    }
}
