//! `edge-agent model self-test-vectors`: the expected outputs a release's self-test
//! checks, computed with this agent's engine on frames decoded and preprocessed as the
//! pipeline does (the hub has no inference engine).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ModelAction {
    /// Run a model on image or scan files (one frame each) and write
    /// `{tolerance, vectors:[{frame_hex, expected}]}` for `hub-server model publish
    /// --self-test`.
    SelfTestVectors {
        /// The ONNX model; its `<stem>.json` sidecar must sit beside it.
        #[arg(long)]
        model: PathBuf,
        /// Image or scan files; the first frame of each is used.
        #[arg(long, num_args = 1.., required = true)]
        frames: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Benchmarks: a release downloaded over a slow link with cuts (`--download`),
    /// analysis throughput while shadowing (`--shadow`); both without either flag.
    Bench(super::model_bench::BenchArgs),
}

pub fn run(action: ModelAction) -> Result<ExitCode> {
    match action {
        ModelAction::SelfTestVectors { model, frames, out } => vectors(&model, &frames, &out),
        ModelAction::Bench(args) => super::model_bench::run(args),
    }
}

fn vectors(model: &Path, frames: &[PathBuf], out: &Path) -> Result<ExitCode> {
    let spec = pleura_inference::EngineSpec {
        backend: pleura_inference::BackendKind::Tract,
        onnxruntime_library: None,
        model: model.to_path_buf(),
        workers: 1,
    };
    let file = spec.load()?;
    let side = file.info.input_size();
    let mut inputs = Vec::new();
    for f in frames {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let scan = pleura_inference::decode_scan_sized(&bytes, 1, side)
            .with_context(|| format!("decoding {}", f.display()))?;
        let px = side * side;
        let frame: Vec<u8> = scan
            .frames
            .get(..px)
            .with_context(|| format!("{} gave no frame", f.display()))?
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        inputs.push(frame);
    }
    let test = crate::models::install::compute_vectors(&file, &inputs)?;
    let json = serde_json::to_vec_pretty(&test)?;
    std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} self-test vectors ({} px) to {}",
        test.vectors.len(),
        side,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_from_a_fixture_frame_pass_the_models_own_self_test() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("v.json");
        let model = pleura_inference::engine::default_model();
        let frame =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scans/cb_frame.bmp");
        vectors(&model, &[frame], &out).unwrap();
        let test: pleura_shared::release::SelfTest =
            serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(test.tolerance, 1e-3);
        assert_eq!(test.vectors.len(), 1);
        let v = &test.vectors[0];
        assert_eq!(v.expected["class_probs"].len(), 3);
        assert_eq!(v.expected["severity_probs"].len(), 4);
        assert_eq!(v.expected["uncertainty"].len(), 1);
        let file = pleura_inference::ModelFile::load(&model).unwrap();
        let again =
            crate::models::install::compute_vectors(&file, &[hex::decode(&v.frame_hex).unwrap()])
                .unwrap();
        test.check(0, &again.vectors[0].expected).unwrap();
    }
}
