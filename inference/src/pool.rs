//! A bounded, named pool of inference threads. Each worker owns one model session and
//! does the whole CPU-heavy path for a scan — decode, preprocess, infer — so async
//! tasks only hand over bytes and await the answer.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::aggregate::{aggregate_video, localisation_map};
use crate::decode::{decode_scan, DecodeError, DecodedScan, Format};
use crate::model::{FrameOutputs, ModelError, ModelFile, ModelInfo};
use crate::preprocess::MAX_FRAMES;
use pleura_shared::ScanAnalysis;

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("inference pool is shut down")]
    PoolClosed,
}

/// Everything the model says about one scan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScanReport {
    pub format: Format,
    pub width: usize,
    pub height: usize,
    #[serde(flatten)]
    pub analysis: ScanAnalysis,
    /// Coarse map (side `localisation_size`) of where the pathological pattern is, 0..1.
    pub localisation: Vec<f32>,
    pub localisation_size: usize,
}

/// Frames per model call when analysing a scan: small batches keep the edge's peak
/// memory low at almost no cost in speed (see BENCHMARKS.md).
const FRAMES_PER_RUN: usize = 4;

enum Job {
    Analyze {
        bytes: Vec<u8>,
        reply: Reply<ScanReport>,
    },
    Frames {
        frames: Vec<f32>,
        reply: Reply<FrameOutputs>,
    },
    /// A model with one `frames` input of side `side` whose outputs are ignored
    /// (benchmark baselines such as the VGG network).
    Raw {
        frames: Vec<f32>,
        side: usize,
        reply: Reply<()>,
    },
}

enum Reply<T> {
    Sync(std::sync::mpsc::SyncSender<Result<T, AnalyzeError>>),
    Async(tokio::sync::oneshot::Sender<Result<T, AnalyzeError>>),
}

impl<T> Reply<T> {
    fn send(self, v: Result<T, AnalyzeError>) {
        // the asker may have gone away (timeout, shutdown): nothing to do then
        match self {
            Reply::Sync(tx) => drop(tx.send(v)),
            Reply::Async(tx) => drop(tx.send(v)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_threads: usize,
    pub max_frames: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            intra_threads: 1,
            max_frames: MAX_FRAMES,
        }
    }
}

pub struct InferencePool {
    tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    info: Arc<ModelInfo>,
}

impl InferencePool {
    /// Starts `cfg.workers` threads; fails if any cannot open a session.
    pub fn start(model: &ModelFile, cfg: PoolConfig) -> Result<Self, ModelError> {
        let workers_n = cfg.workers.max(1);
        // Twice the workers: enough to keep them busy, small enough to push back on callers.
        let (tx, rx) = bounded::<Job>(workers_n * 2);
        let info = Arc::new(model.info.clone());
        let mut workers = Vec::new();
        for i in 0..workers_n {
            let session = model.session(cfg.intra_threads)?;
            let rx: Receiver<Job> = rx.clone();
            let info = info.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pleura-infer-{i}"))
                .spawn(move || worker(session, rx, &info, cfg.max_frames))
                .map_err(|e| ModelError::Engine(format!("spawning inference thread: {e}")))?;
            workers.push(handle);
        }
        Ok(Self {
            tx: Some(tx),
            workers,
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn submit(&self, job: Job) -> Result<(), AnalyzeError> {
        self.tx
            .as_ref()
            .ok_or(AnalyzeError::PoolClosed)?
            .send(job)
            .map_err(|_| AnalyzeError::PoolClosed)
    }

    /// Blocking: decode + analyse a scan file's bytes.
    pub fn analyze(&self, bytes: Vec<u8>) -> Result<ScanReport, AnalyzeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(Job::Analyze {
            bytes,
            reply: Reply::Sync(tx),
        })?;
        rx.recv().map_err(|_| AnalyzeError::PoolClosed)?
    }

    /// Async: never blocks the runtime; waits for a free slot in the queue on a blocking thread only if full.
    pub async fn analyze_async(&self, bytes: Vec<u8>) -> Result<ScanReport, AnalyzeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Analyze {
            bytes,
            reply: Reply::Async(tx),
        };
        let sender = self.tx.as_ref().ok_or(AnalyzeError::PoolClosed)?;
        match sender.try_send(job) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(job)) => {
                let sender = sender.clone();
                tokio::task::spawn_blocking(move || sender.send(job))
                    .await
                    .map_err(|_| AnalyzeError::PoolClosed)?
                    .map_err(|_| AnalyzeError::PoolClosed)?;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                return Err(AnalyzeError::PoolClosed)
            }
        }
        rx.await.map_err(|_| AnalyzeError::PoolClosed)?
    }

    /// Blocking: run already preprocessed frames (benchmarks, evaluation).
    pub fn infer_frames(&self, frames: Vec<f32>) -> Result<FrameOutputs, AnalyzeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(Job::Frames {
            frames,
            reply: Reply::Sync(tx),
        })?;
        rx.recv().map_err(|_| AnalyzeError::PoolClosed)?
    }

    /// Runs `frames` (k × side × side) through a model whose outputs are not Pleura's
    /// (benchmark baselines); returns when done.
    pub fn infer_raw(&self, frames: Vec<f32>, side: usize) -> Result<(), AnalyzeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(Job::Raw {
            frames,
            side,
            reply: Reply::Sync(tx),
        })?;
        rx.recv().map_err(|_| AnalyzeError::PoolClosed)?
    }
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(
    mut session: crate::model::ModelSession,
    rx: Receiver<Job>,
    info: &ModelInfo,
    max_frames: usize,
) {
    for job in rx {
        match job {
            Job::Analyze { bytes, reply } => {
                let result = decode_scan(&bytes, max_frames)
                    .map_err(AnalyzeError::from)
                    .and_then(|scan| report(&mut session, info, scan));
                reply.send(result);
            }
            Job::Frames { frames, reply } => {
                reply.send(session.run(&frames).map_err(AnalyzeError::from))
            }
            Job::Raw {
                frames,
                side,
                reply,
            } => {
                let n = frames.len() / (side * side).max(1);
                reply.send(
                    session
                        .run_raw("frames", [n, 1, side, side], &frames[..n * side * side])
                        .map_err(AnalyzeError::from),
                )
            }
        }
    }
}

fn report(
    session: &mut crate::model::ModelSession,
    info: &ModelInfo,
    scan: DecodedScan,
) -> Result<ScanReport, AnalyzeError> {
    let out = session.run_chunked(&scan.frames, FRAMES_PER_RUN)?;
    Ok(ScanReport {
        format: scan.format,
        width: scan.width,
        height: scan.height,
        analysis: aggregate_video(&out, info, scan.frames_total),
        localisation: localisation_map(&out),
        localisation_size: out.cam_size,
    })
}
