//! The inference pool analyses run on, swappable between analyses: callers take the
//! current pool for one job (`current`), so a job in progress finishes on the pool it
//! started on while the next one gets the new model. Faults of the running model
//! (crashed jobs, non-finite outputs) are counted here for the guard.

use std::sync::{Arc, Mutex, RwLock};

use pleura_inference::{AnalyzeError, InferencePool, ModelError};
use tokio::sync::Notify;

use super::guard::FaultWindow;

pub struct LivePool {
    pool: RwLock<Arc<InferencePool>>,
    /// Release version of the running model (0: built-in).
    version: std::sync::atomic::AtomicU64,
    faults: Mutex<FaultWindow>,
    /// Woken when the fault window trips: the worker rolls back.
    pub tripped: Notify,
    last_fault: Mutex<Option<String>>,
}

impl LivePool {
    pub fn new(pool: Arc<InferencePool>, version: u64) -> Self {
        Self {
            pool: RwLock::new(pool),
            version: version.into(),
            faults: Mutex::new(FaultWindow::default()),
            tripped: Notify::new(),
            last_fault: Mutex::new(None),
        }
    }

    pub fn current(&self) -> Arc<InferencePool> {
        self.pool.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Puts `pool` in for the next jobs; the old one is dropped (its threads end) once
    /// the last job holding it returns.
    pub fn swap(&self, pool: Arc<InferencePool>, version: u64) {
        *self.pool.write().unwrap_or_else(|e| e.into_inner()) = pool;
        self.version
            .store(version, std::sync::atomic::Ordering::SeqCst);
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = FaultWindow::default();
    }

    /// Looks at an analysis's outcome: a crash or non-finite output counts as a fault
    /// of the running model (a file that cannot be decoded does not).
    pub fn observe<T>(&self, res: &Result<T, AnalyzeError>, now_ms: u64) {
        let why = match res {
            Err(AnalyzeError::Panicked) => "inference jobs crashed",
            Err(AnalyzeError::Model(ModelError::NonFinite { .. })) => {
                "the model produced non-finite outputs"
            }
            _ => return,
        };
        self.fault(why, now_ms);
    }

    /// Records a fault; wakes the worker when the window trips.
    pub fn fault(&self, why: &str, now_ms: u64) {
        let trip = self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now_ms);
        *self.last_fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
        tracing::warn!(
            version = self.version(),
            reason = why,
            "model fault in service"
        );
        if trip || why.contains("non-finite") {
            self.tripped.notify_one();
        }
    }

    pub fn last_fault(&self) -> Option<String> {
        self.last_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
