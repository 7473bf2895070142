//! Pleura's lung-ultrasound reader: decode a scan, preprocess it exactly as in training,
//! run the ONNX model (tract or ONNX Runtime) on a bounded thread pool, and aggregate
//! frames to a video reading and videos to a patient summary.

pub mod aggregate;
pub mod backend;
pub mod decode;
pub mod engine;
mod fixed_batch;
pub mod media;
pub mod model;
pub mod patient;
pub mod pool;
pub mod pooling;
pub mod preprocess;

pub use backend::{BackendConfig, BackendKind};
pub use decode::dicom::{open as open_dicom, OpenDicomError};
pub use decode::{decode_scan, decode_scan_sized, DecodeError, DecodedScan, Format};
pub use engine::{Engine, EngineError, EngineSpec};
pub use model::{FrameOutputs, InputSpec, ModelError, ModelFile, ModelInfo};
pub use patient::Vitals;
pub use pool::{AnalyzeError, InferencePool, PoolConfig, ScanReport};
