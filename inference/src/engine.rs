//! Starting the engine: the backend, the verified model and its pool of inference
//! threads, in that order. The clinic daemon and the research tools both start here.

use std::path::PathBuf;

use crate::{
    backend, BackendConfig, BackendKind, InferencePool, ModelError, ModelFile, PoolConfig,
};

/// Which engine and model to start, with how many inference threads.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    pub backend: BackendKind,
    /// Path to `libonnxruntime.so*` for the onnxruntime backend (else `ORT_DYLIB_PATH`).
    pub onnxruntime_library: Option<PathBuf>,
    /// The ONNX model; its `<stem>.json` metadata must sit beside it.
    pub model: PathBuf,
    /// Inference threads, each running one scan at a time (at least one is started).
    pub workers: usize,
}

/// A started engine: the model (its metadata labels every result) and its pool.
pub struct Engine {
    pub model: ModelFile,
    pub pool: InferencePool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("starting the inference backend")]
    Backend(#[source] backend::BackendError),
    #[error("loading model {}", path.display())]
    Model {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("starting the inference pool")]
    Pool(#[source] ModelError),
}

/// `models/pleura-lite.onnx` under the working directory, else under the source checkout.
pub fn default_model() -> PathBuf {
    let local = PathBuf::from("models/pleura-lite.onnx");
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/pleura-lite.onnx")
}

impl EngineSpec {
    /// Backend, model and a pool of `workers` threads.
    pub fn start(&self) -> Result<Engine, EngineError> {
        let model = self.load()?;
        let pool = start_pool(&model, self.workers)?;
        Ok(Engine { model, pool })
    }

    /// Backend and model only, for callers that start their own pools (several fold
    /// models, pools of different sizes).
    pub fn load(&self) -> Result<ModelFile, EngineError> {
        backend::init(&BackendConfig {
            kind: self.backend,
            onnxruntime_library: self.onnxruntime_library.clone(),
        })
        .map_err(EngineError::Backend)?;
        ModelFile::load(&self.model).map_err(|source| EngineError::Model {
            path: self.model.clone(),
            source,
        })
    }
}

/// A pool of `workers` threads (at least one) on an already started backend.
pub fn start_pool(model: &ModelFile, workers: usize) -> Result<InferencePool, EngineError> {
    InferencePool::start(
        model,
        PoolConfig {
            workers: workers.max(1),
            ..PoolConfig::default()
        },
    )
    .map_err(EngineError::Pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_is_named() {
        let spec = EngineSpec {
            backend: BackendKind::Tract,
            onnxruntime_library: None,
            model: "/nonexistent/model.onnx".into(),
            workers: 1,
        };
        let e = spec.start().err().expect("no model there");
        assert!(matches!(e, EngineError::Model { .. }), "{e:?}");
        assert_eq!(e.to_string(), "loading model /nonexistent/model.onnx");
    }
}
