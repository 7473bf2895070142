//! The shipped ONNX model, its metadata sidecar, and one session running it.

use std::path::{Path, PathBuf};

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::backend::{self, BackendKind};
use crate::patient::PatientModel;
use crate::pooling::{Calibration, Heads, FINDINGS};
use crate::preprocess::{DEFAULT_INPUT_SIZE, MAX_FRAMES};

/// `models/<stem>.json`, written by the training pipeline next to the model. Every
/// model-v2 field is optional: a sidecar without them reads as today's model.
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
    /// The model's input; a sidecar without it means 112 px and 32 frames.
    #[serde(default)]
    pub input: InputSpec,
    /// Names of the findings head's columns (v2): exactly [`FINDINGS`] when given.
    #[serde(default)]
    pub findings: Vec<String>,
    /// Per finding, the probability from which it counts as present (v2).
    #[serde(default)]
    pub finding_thresholds: Vec<f32>,
    #[serde(default)]
    pub calibration: Calibration,
    /// Ordinal cut-points of the severity latent (v2), 3 values.
    #[serde(default)]
    pub severity_cutpoints: Vec<f32>,
    /// The patient combiner (v2); without it, a patient's probability is the mean of
    /// the videos'.
    #[serde(default)]
    pub patient: Option<PatientModel>,
}

/// The sidecar's `input` block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InputSpec {
    #[serde(default = "default_input_name")]
    pub name: String,
    /// Side of the square input, pixels.
    #[serde(default = "default_input_size")]
    pub size: usize,
    /// Frames sampled from one video.
    #[serde(default = "default_max_frames")]
    pub max_frames: usize,
}

impl Default for InputSpec {
    fn default() -> Self {
        Self {
            name: default_input_name(),
            size: DEFAULT_INPUT_SIZE,
            max_frames: MAX_FRAMES,
        }
    }
}

fn default_input_name() -> String {
    "frames".into()
}
fn default_input_size() -> usize {
    DEFAULT_INPUT_SIZE
}
fn default_max_frames() -> usize {
    MAX_FRAMES
}

fn default_uncertainty_flag() -> f32 {
    0.9
}

impl ModelInfo {
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Side of the model's square input.
    pub fn input_size(&self) -> usize {
        self.input.size
    }

    /// A sidecar's metadata, parsed and checked (`validate`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let info: ModelInfo = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        info.validate()?;
        Ok(info)
    }

    /// Checks the model-v2 fields agree with each other; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=4096).contains(&self.input.size) {
            return Err(format!(
                "input.size {} is outside 1..=4096",
                self.input.size
            ));
        }
        if !(1..=1024).contains(&self.input.max_frames) {
            return Err(format!(
                "input.max_frames {} is outside 1..=1024",
                self.input.max_frames
            ));
        }
        if !self.findings.is_empty() && self.findings != FINDINGS {
            return Err(format!(
                "findings {:?} must be {:?} in that order",
                self.findings, FINDINGS
            ));
        }
        if !self.finding_thresholds.is_empty() && self.finding_thresholds.len() != 5 {
            return Err(format!(
                "finding_thresholds has {} values, expected 5",
                self.finding_thresholds.len()
            ));
        }
        if let Some(t) = self
            .finding_thresholds
            .iter()
            .find(|t| !(0.0..=1.0).contains(*t))
        {
            return Err(format!("finding_thresholds value {t} is outside 0..1"));
        }
        self.calibration.validate()?;
        if !self.severity_cutpoints.is_empty() && self.severity_cutpoints.len() != 3 {
            return Err(format!(
                "severity_cutpoints has {} values, expected 3",
                self.severity_cutpoints.len()
            ));
        }
        if self.severity_cutpoints.iter().any(|c| !c.is_finite()) {
            return Err("severity_cutpoints holds a non-finite value".into());
        }
        if let Some(p) = &self.patient {
            p.validate()?;
        }
        Ok(())
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
    #[error("model output {name} holds a non-finite value (NaN or infinity)")]
    NonFinite { name: &'static str },
    #[error("model output {name} holds {value}, outside 0..1 (not a probability)")]
    OutOfRange { name: &'static str, value: f32 },
    #[error(transparent)]
    Pool(#[from] crate::pooling::PoolError),
    #[error("model has output {has} but not {missing}: the v2 heads come together")]
    PartialHeads {
        has: &'static str,
        missing: &'static str,
    },
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
        let info = ModelInfo::from_json(&meta).map_err(|reason| ModelError::Metadata {
            path: meta_path.clone(),
            reason,
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
        // Both engines: without it ort-tract only types the graph and runs it unoptimised.
        let mut builder = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| ModelError::Engine(e.to_string()))?;
        if kind == BackendKind::OnnxRuntime {
            builder = builder
                .with_intra_threads(intra_threads.max(1))
                .map_err(|e| ModelError::Engine(e.to_string()))?
                .with_inter_threads(1)
                .map_err(|e| ModelError::Engine(e.to_string()))?;
        }
        let one_frame_per_run = kind == BackendKind::Tract;
        let session = if one_frame_per_run {
            builder
                .commit_from_memory(&crate::fixed_batch::batch_of_one(&self.bytes).map_err(
                    |e| ModelError::Engine(format!("fixing the batch dimension: {e}")),
                )?)?
        } else {
            builder.commit_from_memory(&self.bytes)?
        };
        Ok(ModelSession {
            session,
            input: self.info.input.clone(),
            one_frame_per_run,
        })
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
    /// Model v2's raw heads, when the model has them.
    pub heads: Option<Heads>,
}

/// The v2 outputs; a model has all of them or none.
const V2_OUTPUTS: [&str; 4] = [
    "class_logits",
    "severity_latent",
    "finding_logits",
    "attention",
];

/// Softmax outputs may round a hair past 0 or 1; anything further is a broken model.
const PROBABILITY_SLACK: f32 = 1e-4;

fn probabilities(name: &'static str, values: Vec<f32>) -> Result<Vec<f32>, ModelError> {
    match values
        .iter()
        .find(|v| !(-PROBABILITY_SLACK..=1.0 + PROBABILITY_SLACK).contains(*v))
    {
        Some(&value) => Err(ModelError::OutOfRange { name, value }),
        // Within the slack: clamped, so every consumer (the hub checks 0..1) sees a
        // probability.
        None => Ok(values.into_iter().map(|v| v.clamp(0.0, 1.0)).collect()),
    }
}

pub struct ModelSession {
    session: Session,
    input: InputSpec,
    /// The session's graph takes one frame per call (tract: see [`crate::fixed_batch`]).
    one_frame_per_run: bool,
}

impl ModelSession {
    /// Runs `frames` (k × S × S with S the model's input side, values 0..255) through
    /// the model. Every output must be finite; the error names the one that is not.
    pub fn run(&mut self, frames: &[f32]) -> Result<FrameOutputs, ModelError> {
        if self.one_frame_per_run {
            self.run_chunked(frames, 1)
        } else {
            self.run_once(frames)
        }
    }

    fn run_once(&mut self, frames: &[f32]) -> Result<FrameOutputs, ModelError> {
        let side = self.input.size;
        let px = side * side;
        let n = frames.len() / px;
        let input = TensorRef::from_array_view(([n, 1, side, side], &frames[..n * px]))?;
        let out = self
            .session
            .run(ort::inputs![self.input.name.as_str() => input])?;
        let get = |name: &'static str, per: usize| -> Result<Vec<f32>, ModelError> {
            let (shape, data) = out[name].try_extract_tensor::<f32>()?;
            if data.len() != n * per {
                return Err(ModelError::Output {
                    name,
                    shape: shape.to_vec(),
                });
            }
            if data.iter().any(|v| !v.is_finite()) {
                return Err(ModelError::NonFinite { name });
            }
            Ok(data.to_vec())
        };
        let cp = probabilities("class_probs", get("class_probs", 3)?)?;
        let sp = probabilities("severity_probs", get("severity_probs", 4)?)?;
        let uncertainty = get("uncertainty", 1)?;
        let (cam_shape, cam) = out["cam"].try_extract_tensor::<f32>()?;
        let cam_size = cam_shape.get(2).copied().unwrap_or(0) as usize;
        if cam.len() != n * 3 * cam_size * cam_size {
            return Err(ModelError::Output {
                name: "cam",
                shape: cam_shape.to_vec(),
            });
        }
        if cam.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { name: "cam" });
        }
        let present: Vec<&'static str> = V2_OUTPUTS
            .into_iter()
            .filter(|o| out.contains_key(o))
            .collect();
        let heads = match present.len() {
            0 => None,
            4 => {
                let cl = get("class_logits", 3)?;
                let fl = get("finding_logits", 5)?;
                Some(Heads {
                    class_logits: cl.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect(),
                    severity_latent: get("severity_latent", 1)?,
                    finding_logits: fl
                        .chunks_exact(5)
                        .map(|c| [c[0], c[1], c[2], c[3], c[4]])
                        .collect(),
                    attention: get("attention", 1)?,
                })
            }
            _ => {
                return Err(ModelError::PartialHeads {
                    has: present[0],
                    missing: V2_OUTPUTS
                        .into_iter()
                        .find(|o| !present.contains(o))
                        .unwrap_or("attention"),
                })
            }
        };
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
            heads,
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
        let px = self.input.size * self.input.size;
        let chunk = if self.one_frame_per_run {
            1
        } else {
            chunk.max(1)
        };
        let mut all: Option<FrameOutputs> = None;
        for part in frames.chunks(px * chunk) {
            let o = self.run_once(part)?;
            match all.as_mut() {
                None => all = Some(o),
                Some(a) => {
                    a.n += o.n;
                    a.class_probs.extend(o.class_probs);
                    a.severity_probs.extend(o.severity_probs);
                    a.uncertainty.extend(o.uncertainty);
                    a.cam.extend(o.cam);
                    match (a.heads.as_mut(), o.heads) {
                        (Some(h), Some(oh)) => h.extend(oh),
                        (None, None) => {}
                        _ => return Err(ModelError::Engine("v2 heads in some runs only".into())),
                    }
                }
            }
        }
        match all {
            Some(a) => Ok(a),
            None if self.one_frame_per_run => Err(ModelError::Engine("no frame to run".into())),
            None => self.run_once(frames),
        }
    }

    /// Runs an arbitrary single-input model (benchmark baselines); returns nothing.
    pub fn run_raw(
        &mut self,
        input_name: &str,
        shape: [usize; 4],
        data: &[f32],
    ) -> Result<(), ModelError> {
        if self.one_frame_per_run && shape[0] > 1 {
            let one = shape[1] * shape[2] * shape[3];
            for frame in data.chunks_exact(one).take(shape[0]) {
                self.run_raw(input_name, [1, shape[1], shape[2], shape[3]], frame)?;
            }
            return Ok(());
        }
        let input = TensorRef::from_array_view((shape, data))?;
        self.session.run(ort::inputs![input_name => input])?;
        Ok(())
    }
}
