//! The inference pools analyses run on, swappable between analyses: callers take the
//! current pool for one job (`current`), so a job in progress finishes on the pool it
//! started on while the next one gets the new model. A candidate release in shadow mode
//! has its own pool beside it (`shadow`). Faults of a running model (crashed jobs,
//! non-finite or out-of-range outputs) are counted here for the guard, against the
//! release that ran them: a late fault of a model already replaced counts for nothing.

use std::sync::{Arc, Mutex, RwLock};

use pleura_inference::{AnalyzeError, InferencePool, ModelError};
use tokio::sync::Notify;

use super::guard::FaultWindow;

/// A pool and the release it runs (0: the built-in model).
#[derive(Clone)]
pub struct Running {
    pub pool: Arc<InferencePool>,
    pub version: u64,
}

pub struct LivePool {
    active: RwLock<Running>,
    shadow: RwLock<Option<Running>>,
    faults: Mutex<FaultWindow>,
    /// Woken when the fault window trips: the worker rolls back.
    pub tripped: Notify,
    /// The release that tripped: a wake-up stored while the worker was busy (switching,
    /// or already rolling back) must not roll back the release that replaced it.
    tripped_version: Mutex<Option<u64>>,
    last_fault: Mutex<Option<String>>,
    /// Woken when the shadow release faults: the worker drops it and reports.
    pub shadow_tripped: Notify,
    shadow_fault: Mutex<Option<(u64, String)>>,
}

impl LivePool {
    pub fn new(pool: Arc<InferencePool>, version: u64) -> Self {
        Self {
            active: RwLock::new(Running { pool, version }),
            shadow: RwLock::new(None),
            faults: Mutex::new(FaultWindow::default()),
            tripped: Notify::new(),
            tripped_version: Mutex::new(None),
            last_fault: Mutex::new(None),
            shadow_tripped: Notify::new(),
            shadow_fault: Mutex::new(None),
        }
    }

    pub fn current(&self) -> Arc<InferencePool> {
        self.running().pool
    }

    /// The active pool and its release, read together.
    pub fn running(&self) -> Running {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn version(&self) -> u64 {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .version
    }

    /// Puts `pool` in for the next jobs; the old one is dropped (its threads end) once
    /// the last job holding it returns.
    pub fn swap(&self, pool: Arc<InferencePool>, version: u64) {
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Running { pool, version };
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = FaultWindow::default();
        let mut shadow = self.shadow.write().unwrap_or_else(|e| e.into_inner());
        // The candidate just became the active model: it no longer runs beside itself.
        if shadow.as_ref().is_some_and(|s| s.version == version) {
            *shadow = None;
        }
    }

    /// The candidate release running in shadow, if any.
    pub fn shadow(&self) -> Option<Running> {
        self.shadow
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_shadow(&self, shadow: Option<Running>) {
        *self.shadow.write().unwrap_or_else(|e| e.into_inner()) = shadow;
    }

    /// Looks at an analysis's outcome on release `version`: a crash, non-finite or
    /// out-of-range output counts as a fault of that release while it is still the
    /// active one (a file that cannot be decoded does not).
    pub fn observe<T>(&self, res: &Result<T, AnalyzeError>, version: u64, now_ms: u64) {
        let Some((why, at_once)) = fault_of(res) else {
            return;
        };
        if version != self.version() {
            tracing::debug!(version, reason = why, "fault of a model no longer active");
            return;
        }
        self.fault(why, at_once, now_ms);
    }

    /// Looks at a shadow analysis's outcome: any fault of the candidate ends its shadow
    /// run (it must not be promoted), without touching the active model.
    pub fn observe_shadow<T>(&self, res: &Result<T, AnalyzeError>, version: u64) {
        let why = match res {
            Err(AnalyzeError::Decode(_)) | Err(AnalyzeError::PoolClosed) | Ok(_) => return,
            Err(e) => fault_of(res).map_or(e.to_string(), |(why, _)| why.to_string()),
        };
        self.shadow_failed(version, why);
    }

    /// The candidate `version` failed in shadow (a fault, a reading past its deadline).
    pub fn shadow_failed(&self, version: u64, why: String) {
        tracing::warn!(version, reason = %why, "shadow model fault");
        *self.shadow_fault.lock().unwrap_or_else(|e| e.into_inner()) = Some((version, why));
        self.shadow_tripped.notify_one();
    }

    /// The shadow release's last fault (version, why), taken.
    pub fn take_shadow_fault(&self) -> Option<(u64, String)> {
        self.shadow_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Records a fault; wakes the worker when the window trips, or `at_once` (wrong
    /// outputs are never a passing accident, unlike one crash).
    pub fn fault(&self, why: &str, at_once: bool, now_ms: u64) {
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
        if trip || at_once {
            *self
                .tripped_version
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(self.version());
            self.tripped.notify_one();
        }
    }

    /// Whether the release that tripped the guard is still the active one (taken: one
    /// trip, one rollback).
    pub fn take_trip(&self) -> bool {
        let tripped = self
            .tripped_version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        tripped == Some(self.version())
    }

    pub fn last_fault(&self) -> Option<String> {
        self.last_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Why an outcome is the model's fault, and whether it trips the guard at once.
fn fault_of<T>(res: &Result<T, AnalyzeError>) -> Option<(&'static str, bool)> {
    match res {
        Err(AnalyzeError::Panicked) => Some(("inference jobs crashed", false)),
        Err(AnalyzeError::Model(ModelError::NonFinite { .. })) => {
            Some(("the model produced non-finite outputs", true))
        }
        Err(AnalyzeError::Model(ModelError::OutOfRange { .. })) => {
            Some(("the model produced out-of-range outputs", true))
        }
        _ => None,
    }
}
