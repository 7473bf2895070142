//! The inference pool on the shipped model, with the default (tract) backend.

use std::path::PathBuf;

use pleura_inference::{backend, BackendConfig, InferencePool, ModelFile, PoolConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pool(workers: usize) -> InferencePool {
    backend::init(&BackendConfig::default()).unwrap();
    let model = ModelFile::load(&root().join("models/pleura-lite.onnx")).unwrap();
    InferencePool::start(
        &model,
        PoolConfig {
            workers,
            ..PoolConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn async_callers_get_the_same_answers_as_blocking_ones() {
    let pool = pool(2);
    let files = [
        "cb_patient29_L2.mp4",
        "pocus_cov_atlas45.gif",
        "cb_multiframe.dcm",
        "pocus_pneu_emdocs1.png",
    ];
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(root().join("fixtures/scans").join(f)).unwrap())
        .collect();
    let blocking: Vec<_> = bytes
        .iter()
        .map(|b| pool.analyze(b.clone()).unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // on a single-threaded runtime, a blocking call inside would stall every other task
    let asynced = rt.block_on(async {
        let futs = bytes.iter().map(|b| pool.analyze_async(b.clone()));
        futures_join(futs).await
    });
    for ((a, b), f) in blocking.iter().zip(&asynced).zip(files) {
        let b = b.as_ref().unwrap();
        assert_eq!(a.analysis, b.analysis, "{f}");
    }
}

async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(f);
    }
    let mut out = Vec::new();
    for f in set {
        out.push(f.await);
    }
    out
}

#[test]
fn frames_of_one_scan_give_per_frame_outputs() {
    let pool = pool(1);
    let side = pool.info().input_size();
    let frames = vec![128.0f32; 3 * side * side];
    let out = pool.infer_frames(frames).unwrap();
    assert_eq!(out.n, 3);
    assert_eq!(out.cam.len(), 3 * 3 * out.cam_size * out.cam_size);
    for p in &out.class_probs {
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
    assert!(out.uncertainty.iter().all(|u| (0.0..=1.0).contains(u)));
}

#[test]
fn a_job_decodes_a_dicom_once_and_gets_its_header_with_the_frames() {
    use pleura_inference::decode::dicom::parses_on_this_thread;
    let pool = pool(1);
    let bytes = std::fs::read(root().join("fixtures/scans/cb_multiframe.dcm")).unwrap();
    let want = pool.analyze(bytes.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (parses, header, got) = rt
        .block_on(pool.run(move |w| {
            let before = parses_on_this_thread();
            let d = w.decode(&bytes).unwrap();
            let header = d.dicom.is_some();
            let report = w.analyze(d.scan).unwrap();
            (parses_on_this_thread() - before, header, report)
        }))
        .unwrap();
    assert_eq!(parses, 1, "one parse gives the header and the frames");
    assert!(header);
    assert_eq!(got.analysis, want.analysis);
}

#[test]
fn a_job_that_panics_fails_alone_and_its_worker_goes_on() {
    let pool = pool(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let png = std::fs::read(root().join("fixtures/scans/pocus_pneu_emdocs1.png")).unwrap();
    rt.block_on(async {
        let crashed = pool
            .run(|_w| -> u32 { panic!("a decoder bug reached by a hostile file") })
            .await;
        assert!(
            matches!(crashed, Err(pleura_inference::AnalyzeError::Panicked)),
            "{crashed:?}"
        );
        // The only worker survived: the next scan is analysed, not refused as "shut down".
        let next = pool.analyze_async(png.clone()).await;
        assert!(next.is_ok(), "{next:?}");
    });
    assert!(pool.analyze(png).is_ok());
}
