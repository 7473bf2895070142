//! The engine options every lab command takes.

use std::path::PathBuf;

use clap::Args;
use pleura_inference::engine::{default_model, EngineSpec};
use pleura_inference::BackendKind;

/// Which model and engine, shared by every command.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// ONNX model; its `<name>.json` metadata must sit beside it.
    #[arg(long, default_value_os_t = default_model())]
    pub model: PathBuf,
    /// Inference engine: tract (pure Rust, default) or onnxruntime (shared library).
    #[arg(long, default_value = "tract")]
    pub backend: BackendKind,
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH).
    #[arg(long)]
    pub ort_library: Option<PathBuf>,
    /// Inference threads (each runs one scan at a time).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

impl EngineArgs {
    pub fn spec(&self) -> EngineSpec {
        EngineSpec {
            backend: self.backend,
            onnxruntime_library: self.ort_library.clone(),
            model: self.model.clone(),
            workers: self.workers,
        }
    }
}
