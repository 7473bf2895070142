//! A bounded, named pool of inference threads. Each worker owns one model session and
//! does the whole CPU-heavy path for a scan — decode, preprocess, infer — so async
//! tasks only hand over bytes and await the answer. A caller with more to do with the
//! bytes (hashing them, reading a DICOM header) hands over a job (`run`) that does it
//! there too, with the worker's model (`Worker`). The queue holds twice the workers:
//! a caller that finds it full waits, so work and bytes handed over stay bounded.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::aggregate::{aggregate_video, frame_scores, localisation_map};
use crate::decode::{decode_scan_with_header, DecodeError, Decoded, DecodedScan, Format};
use crate::media::FrameScore;
use crate::model::{FrameOutputs, ModelError, ModelFile, ModelInfo};
use pleura_shared::ScanAnalysis;

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("inference pool is shut down")]
    PoolClosed,
    /// The job panicked (a decoder or model bug on this input). Its payload is not kept:
    /// it may quote the file's contents. The worker thread lives on.
    #[error("the analysis crashed on this file (a decoder or model fault)")]
    Panicked,
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
    /// Each analysed frame's reading, for the media preview.
    #[serde(skip)]
    pub frame_scores: Vec<FrameScore>,
    /// Side of each `frame_scores` map.
    #[serde(skip)]
    pub cam_size: usize,
}

/// Frames per model call when analysing a scan: one at a time keeps the edge's peak
/// memory low at almost no cost in speed (pleura-lite: 52 MB peak against 102 MB in
/// fours, pipeline 1.20× against 1.27× the bare model; see BENCHMARKS.md).
const FRAMES_PER_RUN: usize = 1;

/// A caller's job, run on an inference thread with that thread's model.
type RunJob = Box<dyn FnOnce(&mut Worker<'_>) + Send>;

enum Job {
    Run(RunJob),
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

/// Where a blocking caller waits for its answer (gone if it stopped waiting).
type Reply<T> = std::sync::mpsc::SyncSender<Result<T, AnalyzeError>>;

#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_threads: usize,
    /// Frames sampled from a scan; `None`: the model's (`input.max_frames`, else 32).
    pub max_frames: Option<usize>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            intra_threads: 1,
            max_frames: None,
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
        let max_frames = cfg.max_frames.unwrap_or(info.input.max_frames).max(1);
        let mut workers = Vec::new();
        for i in 0..workers_n {
            let session = model.session(cfg.intra_threads)?;
            let rx: Receiver<Job> = rx.clone();
            let info = info.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pleura-infer-{i}"))
                .spawn(move || worker(session, rx, &info, max_frames))
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
        self.submit(Job::Run(Box::new(move |w: &mut Worker<'_>| {
            let out =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.analyze_bytes(&bytes)));
            drop(tx.send(out.unwrap_or(Err(AnalyzeError::Panicked))))
        })))?;
        rx.recv().map_err(|_| AnalyzeError::PoolClosed)?
    }

    /// Async: decode + analyse a scan file's bytes (see `run`).
    pub async fn analyze_async(&self, bytes: Vec<u8>) -> Result<ScanReport, AnalyzeError> {
        self.run(move |w| w.analyze_bytes(&bytes)).await?
    }

    /// Async: runs `job` on an inference thread and returns what it returns. Never
    /// blocks the runtime: if the queue is full, a blocking thread waits for a slot.
    /// Fails only if the pool is shut down.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Worker<'_>) -> T + Send + 'static,
    ) -> Result<T, AnalyzeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The asker may have gone away (timeout, shutdown): nothing to do then.
        let job = Job::Run(Box::new(move |w: &mut Worker<'_>| {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(w)));
            drop(tx.send(out.map_err(|_| AnalyzeError::Panicked)))
        }));
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
        self.submit(Job::Frames { frames, reply: tx })?;
        rx.recv().map_err(|_| AnalyzeError::PoolClosed)?
    }

    /// Runs `frames` (k × side × side) through a model whose outputs are not Pleura's
    /// (benchmark baselines); returns when done.
    pub fn infer_raw(&self, frames: Vec<f32>, side: usize) -> Result<(), AnalyzeError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(Job::Raw {
            frames,
            side,
            reply: tx,
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
        // A job that panics loses its reply (its asker sees an error) but never the
        // thread: one hostile file must not shrink the pool for every later scan.
        let survived = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
            Job::Run(job) => job(&mut Worker {
                session: &mut session,
                info,
                max_frames,
            }),
            Job::Frames { frames, reply } => {
                drop(reply.send(session.run(&frames).map_err(AnalyzeError::from)))
            }
            Job::Raw {
                frames,
                side,
                reply,
            } => {
                let n = frames.len() / (side * side).max(1);
                drop(
                    reply.send(
                        session
                            .run_raw("frames", [n, 1, side, side], &frames[..n * side * side])
                            .map_err(AnalyzeError::from),
                    ),
                )
            }
        }));
        if survived.is_err() {
            tracing::error!("an inference job panicked; its scan fails, the worker goes on");
        }
    }
}

/// An inference thread's model, lent to a job running on that thread.
pub struct Worker<'a> {
    session: &'a mut crate::model::ModelSession,
    info: &'a ModelInfo,
    max_frames: usize,
}

impl Worker<'_> {
    /// Decodes a scan file (at most the pool's `max_frames`); a DICOM file comes back
    /// with its parsed header, so nothing needs to parse it again.
    pub fn decode(&self, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        decode_scan_with_header(bytes, self.max_frames, self.info.input_size())
    }

    /// Runs the model over a decoded scan (decoded for this model: `decode`).
    pub fn analyze(&mut self, scan: DecodedScan) -> Result<ScanReport, AnalyzeError> {
        if scan.side != self.info.input_size() {
            return Err(ModelError::Engine(format!(
                "scan decoded at {} px for a model taking {} px",
                scan.side,
                self.info.input_size()
            ))
            .into());
        }
        let out = self.session.run_chunked(&scan.frames, FRAMES_PER_RUN)?;
        Ok(ScanReport {
            format: scan.format,
            width: scan.width,
            height: scan.height,
            analysis: aggregate_video(&out, self.info, scan.frames_total)?,
            localisation: localisation_map(&out),
            localisation_size: out.cam_size,
            frame_scores: frame_scores(&out, &scan.indices),
            cam_size: out.cam_size,
        })
    }

    fn analyze_bytes(&mut self, bytes: &[u8]) -> Result<ScanReport, AnalyzeError> {
        let scan = self.decode(bytes)?.scan;
        self.analyze(scan)
    }
}
