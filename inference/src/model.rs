//! The shipped ONNX model, its metadata sidecar, and one session running it.

use std::path::{Path, PathBuf};

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::backend::{self, BackendKind};
use crate::preprocess::INPUT_SIZE;

/// `models/lusnet-s.json`, written by the training pipeline next to the model.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub classes: Vec<String>,
    pub covid_threshold: f32,
    #[serde(default = "default_uncertainty_flag")]
    pub uncertainty_flag: f32,
    pub parameters: u64,
    pub macs_per_frame: u64,
}

fn default_uncertainty_flag() -> f32 {
    0.9
}

impl ModelInfo {
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("reading model {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model metadata {path}: {reason}")]
    Metadata { path: PathBuf, reason: String },
    #[error("model {path} has SHA-256 {actual}, metadata expects {expected}: refusing to load")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("no inference backend initialised; call backend::init first")]
    NoBackend,
    #[error("onnx engine: {0}")]
    Engine(String),
    #[error("model output {name} has unexpected shape {shape:?}")]
    Output { name: &'static str, shape: Vec<i64> },
}

impl From<ort::Error> for ModelError {
    fn from(e: ort::Error) -> Self {
        ModelError::Engine(e.to_string())
    }
}

/// A model file plus its verified metadata, ready to open sessions from.
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub path: PathBuf,
    pub info: ModelInfo,
    bytes: std::sync::Arc<Vec<u8>>,
}

impl ModelFile {
    /// Loads `path` and its sidecar (`<stem>.json`) and checks the SHA-256 they agree on.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.into(),
            source,
        })?;
        let meta_path = path.with_extension("json");
        let meta = std::fs::read(&meta_path).map_err(|source| ModelError::Read {
            path: meta_path.clone(),
            source,
        })?;
        let info: ModelInfo = serde_json::from_slice(&meta).map_err(|e| ModelError::Metadata {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        Self::from_parts(path.into(), bytes, info)
    }

    /// A model without a sidecar (benchmark baselines); it is not checksummed.
    pub fn unverified(path: PathBuf, bytes: Vec<u8>, info: ModelInfo) -> Self {
        Self {
            path,
            info,
            bytes: std::sync::Arc::new(bytes),
        }
    }

    /// Verifies `bytes` against `info.sha256`.
    pub fn from_parts(path: PathBuf, bytes: Vec<u8>, info: ModelInfo) -> Result<Self, ModelError> {
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&info.sha256) {
            return Err(ModelError::Checksum {
                path,
                expected: info.sha256,
                actual,
            });
        }
        Ok(Self {
            path,
            info,
            bytes: std::sync::Arc::new(bytes),
        })
    }

    /// Opens a session. `intra_threads` applies to ONNX Runtime; tract runs single-threaded.
    pub fn session(&self, intra_threads: usize) -> Result<ModelSession, ModelError> {
        let kind = backend::active().ok_or(ModelError::NoBackend)?;
        let env = backend::environment().ok_or(ModelError::NoBackend)?;
        let mut builder = Session::builder(env)?;
        if kind == BackendKind::OnnxRuntime {
            builder = builder
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| ModelError::Engine(e.to_string()))?
                .with_intra_threads(intra_threads.max(1))
                .map_err(|e| ModelError::Engine(e.to_string()))?
                .with_inter_threads(1)
                .map_err(|e| ModelError::Engine(e.to_string()))?;
        }
        let session = builder.commit_from_memory(&self.bytes)?;
        Ok(ModelSession { session })
    }
}

/// Per-frame outputs of one model run over `n` frames.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameOutputs {
    pub n: usize,
    pub class_probs: Vec<[f32; 3]>,
    pub severity_probs: Vec<[f32; 4]>,
    pub uncertainty: Vec<f32>,
    /// Class activation maps, `n × 3 × cam_size × cam_size`.
    pub cam: Vec<f32>,
    pub cam_size: usize,
}

pub struct ModelSession {
    session: Session,
}

impl ModelSession {
    /// Runs `frames` (k × 112 × 112, values 0..255) through the model.
    pub fn run(&mut self, frames: &[f32]) -> Result<FrameOutputs, ModelError> {
        let px = INPUT_SIZE * INPUT_SIZE;
        let n = frames.len() / px;
        let input =
            TensorRef::from_array_view(([n, 1, INPUT_SIZE, INPUT_SIZE], &frames[..n * px]))?;
        let out = self.session.run(ort::inputs!["frames" => input])?;
        let get = |name: &'static str, per: usize| -> Result<Vec<f32>, ModelError> {
            let (shape, data) = out[name].try_extract_tensor::<f32>()?;
            if data.len() != n * per {
                return Err(ModelError::Output {
                    name,
                    shape: shape.to_vec(),
                });
            }
            Ok(data.to_vec())
        };
        let cp = get("class_probs", 3)?;
        let sp = get("severity_probs", 4)?;
        let uncertainty = get("uncertainty", 1)?;
        let (cam_shape, cam) = out["cam"].try_extract_tensor::<f32>()?;
        let cam_size = cam_shape.get(2).copied().unwrap_or(0) as usize;
        if cam.len() != n * 3 * cam_size * cam_size {
            return Err(ModelError::Output {
                name: "cam",
                shape: cam_shape.to_vec(),
            });
        }
        Ok(FrameOutputs {
            n,
            class_probs: cp.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect(),
            severity_probs: sp
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect(),
            uncertainty,
            cam: cam.to_vec(),
            cam_size,
        })
    }

    /// Runs `frames` `chunk` frames at a time and joins the outputs. Frames are
    /// independent in the model, so the result equals one big run; peak memory for
    /// the activations falls with the chunk size (32 frames at once cost ~100 MB).
    pub fn run_chunked(
        &mut self,
        frames: &[f32],
        chunk: usize,
    ) -> Result<FrameOutputs, ModelError> {
        let px = INPUT_SIZE * INPUT_SIZE;
        let mut all: Option<FrameOutputs> = None;
        for part in frames.chunks(px * chunk.max(1)) {
            let o = self.run(part)?;
            match all.as_mut() {
                None => all = Some(o),
                Some(a) => {
                    a.n += o.n;
                    a.class_probs.extend(o.class_probs);
                    a.severity_probs.extend(o.severity_probs);
                    a.uncertainty.extend(o.uncertainty);
                    a.cam.extend(o.cam);
                }
            }
        }
        match all {
            Some(a) => Ok(a),
            None => self.run(frames),
        }
    }

    /// Runs an arbitrary single-input model (benchmark baselines); returns nothing.
    pub fn run_raw(
        &mut self,
        input_name: &str,
        shape: [usize; 4],
        data: &[f32],
    ) -> Result<(), ModelError> {
        let input = TensorRef::from_array_view((shape, data))?;
        self.session.run(ort::inputs![input_name => input])?;
        Ok(())
    }
}
