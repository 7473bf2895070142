//! Starting the inference engine from command-line options.

use anyhow::{Context, Result};
use pleura_inference::{backend, BackendConfig, InferencePool, ModelFile, PoolConfig};

use crate::cli::EngineArgs;

pub fn init_backend(args: &EngineArgs) -> Result<()> {
    backend::init(&BackendConfig {
        kind: args.backend,
        onnxruntime_library: args.ort_library.clone(),
    })
    .context("starting the inference backend")?;
    Ok(())
}

pub fn load_model(args: &EngineArgs) -> Result<ModelFile> {
    ModelFile::load(&args.model).with_context(|| format!("loading model {}", args.model.display()))
}

pub fn start_pool(args: &EngineArgs, model: &ModelFile) -> Result<InferencePool> {
    let cfg = PoolConfig {
        workers: args.workers.max(1),
        ..PoolConfig::default()
    };
    InferencePool::start(model, cfg).context("starting the inference pool")
}
