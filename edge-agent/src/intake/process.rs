//! One stable inbox file, in three steps: `prepare` (blocking thread: open, checks,
//! attempt, read), the pool job (inference thread: decode, identity, id, model,
//! record; see `job`), and `settle` (blocking thread: store, stamp check, move). The
//! async task between them only waits, with a deadline, and keeps status honest.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pleura_inference::decode::file::{self as scan_file, ReadScanError};
use pleura_inference::AnalyzeError;
use pleura_shared::ScanRecord;

use super::attempts::Attempts;
use super::inbox::{FileId, Place, Stamp};
use super::job::{scan_job, shadow_job, Again, Analysed, Keep, ScanFacts};
use super::ANALYSIS_TICK;
use super::{off_async, wait_with_deadline, zone_from_name, Intake, Outcome, Waited};
use crate::models::live::Running;
use crate::outbox::OutboxError;

/// A file read and ready for the pool: its bytes (moved on, never copied), its stamp
/// when opened, and what is known of it.
struct Ready {
    at: Place,
    bytes: Vec<u8>,
    stamp: Stamp,
    facts: ScanFacts,
}

/// What came of handing a scan to the pool.
enum Finished {
    Done(Box<Result<Readings, JobError>>),
    /// Given up after `intake.max_analysis_s`: why, for the attempts' reason.
    TimedOut(String),
}

/// A scan's active reading, and what the candidate in shadow needs to read it too.
pub(super) struct Readings {
    pub record: ScanRecord,
    pub shadow: Option<ShadowWork>,
}

/// A shadow reading still to make: run only once the active reading is stored, so a
/// slow, hung or crashing candidate never delays or costs a clinical result.
pub(super) struct ShadowWork {
    candidate: Running,
    again: Again,
}

/// An analysis that failed, and the release it ran on (0: the built-in model).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub(super) struct JobError {
    pub error: AnalyzeError,
    pub release: u64,
}

impl Intake {
    /// The pool job for one scan: `bytes` and `facts` in, its record out (and, while a
    /// candidate release runs in shadow, what the candidate needs to read the scan).
    /// Once handed over, it holds a worker until it ends, even if no one waits for it.
    pub(super) fn pool_job(
        &self,
        bytes: Vec<u8>,
        facts: ScanFacts,
        with_shadow: bool,
    ) -> Pin<Box<impl Future<Output = Result<Readings, JobError>> + Send + 'static>> {
        let live = self.pool.clone();
        let running = live.running();
        let shadow = live.shadow().filter(|_| with_shadow);
        let keep = Keep::for_shadow(&running.pool, shadow.as_ref().map(|s| &*s.pool));
        Box::pin(async move {
            let release = running.version;
            let res = running
                .pool
                .run(move |w| scan_job(w, bytes, &facts, release, keep))
                .await
                .and_then(|r| r);
            live.observe(&res, release, pleura_shared::now_ms());
            let Analysed { record, again } = res.map_err(|error| JobError { error, release })?;
            let shadow = shadow
                .zip(again)
                .map(|(candidate, again)| ShadowWork { candidate, again });
            Ok(Readings { record, shadow })
        })
    }

    /// The candidate reads a scan whose active reading `active` is stored: within
    /// `intake.max_analysis_s`, or it counts as a fault of the candidate (which ends its
    /// shadow run); its reading is queued beside the active one.
    async fn read_in_shadow(self: &Arc<Self>, work: ShadowWork, active: ScanRecord) {
        let ShadowWork { candidate, again } = work;
        let version = candidate.version;
        let job = candidate
            .pool
            .run(move |w| shadow_job(w, again, &active, version));
        let max = Duration::from_secs(self.cfg.intake.max_analysis_s);
        let res = match tokio::time::timeout(max, job).await {
            Ok(res) => res.and_then(|r| r),
            Err(_) => {
                let why = format!("a shadow reading took longer than {} s", max.as_secs());
                self.pool.shadow_failed(version, why);
                return;
            }
        };
        self.pool.observe_shadow(&res, version);
        if let Ok(shadow) = res {
            let me = self.clone();
            let _ = off_async(move || me.queue_shadow(&shadow)).await;
        }
    }

    /// Analyses the file at `at` (listed as `listed`, if it was) and queues its result.
    pub(super) async fn process(
        self: &Arc<Self>,
        at: Place,
        path: &Path,
        listed: Option<FileId>,
        r: &str,
        mtime: SystemTime,
        attempts: &Attempts,
    ) -> Outcome {
        let (me, p, key, a) = (
            self.clone(),
            path.to_owned(),
            r.to_owned(),
            attempts.clone(),
        );
        let prepared = off_async(move || me.prepare(at, &p, listed, &key, mtime, &a)).await;
        let Ready {
            at,
            bytes,
            stamp,
            facts,
        } = match prepared.and_then(|p| p) {
            Ok(ready) => ready,
            Err(o) => return o,
        };
        let mut analysed = self.analyse(r, bytes, facts).await;
        // The candidate's reading waits until the active one is settled.
        let shadow = match &mut analysed {
            Finished::Done(done) => match done.as_mut() {
                Ok(Readings { record, shadow }) => shadow.take().map(|w| (w, record.clone())),
                Err(_) => None,
            },
            Finished::TimedOut(_) => None,
        };
        let (me, p, key, a) = (
            self.clone(),
            path.to_owned(),
            r.to_owned(),
            attempts.clone(),
        );
        let outcome = off_async(move || me.settle(&at, &p, &key, stamp, analysed, &a))
            .await
            .unwrap_or_else(|o| o);
        if let (Outcome::Done, Some((work, active))) = (&outcome, shadow) {
            self.read_in_shadow(work, active).await;
        }
        outcome
    }

    /// Opens and reads the file, after the checks that let it wait unread (every worker
    /// held, the outbox at its quota) or set it aside (too many attempts), and gathers
    /// its facts (the patient's vitals file read among them). Blocking.
    fn prepare(
        &self,
        at: Place,
        path: &Path,
        listed: Option<FileId>,
        r: &str,
        mtime: SystemTime,
        attempts: &Attempts,
    ) -> Result<Ready, Outcome> {
        let zone = zone_from_name(path);
        let zone = zone.as_deref().unwrap_or("-");
        let limit = self.cfg.intake.max_scan_bytes;
        let max = self.cfg.intake.max_attempts;
        let opened = scan_file::open_scan_at(&at.dir, &at.name, limit);
        let (file, meta) = match opened {
            Ok(f) => f,
            Err(ReadScanError::Vanished) => return Err(Outcome::Gone),
            Err(e @ (ReadScanError::PermissionDenied | ReadScanError::Io(_))) => {
                // The file's own failure: it counts against its budget.
                return Err(self.failed(&at, path, r, &format!("{e}"), attempts));
            }
            Err(e) => return Err(self.reject(&at, path, r, &format!("{e}"), attempts)),
        };
        {
            use std::os::unix::fs::MetadataExt;
            // Not the file the listing saw (replaced meanwhile): judged afresh next round.
            if listed.is_some_and(|id| id != (meta.dev(), meta.ino())) {
                return Err(Outcome::Gone);
            }
        }
        // Every worker is held by an analysis given up on: wait, without using an attempt.
        if self.abandoned.load(Ordering::SeqCst) >= self.cfg.inference.workers.max(1) {
            return Err(Outcome::Busy);
        }
        // The outbox is at its quota: wait without analysing (the scan could not be
        // stored), until acks free room.
        if !self.outbox.has_room() {
            return Err(Outcome::Quota);
        }
        if attempts.get(r) >= max {
            let reason = format!(
                "analysis failed or was interrupted {max} times (the agent stopped or ran out of memory while analysing it)"
            );
            self.status
                .update(|s| s.intake.rejected_after_attempts += 1);
            return Err(self.reject(&at, path, r, &reason, attempts));
        }
        // Durable before the first byte is read: a crash or OOM kill from here on counts.
        let n = match attempts.begin(r) {
            Ok(n) => n,
            Err(e) => return Err(Outcome::Storage(format!("recording the attempt: {e}"))),
        };
        tracing::debug!(scan = %r, zone, attempt = n, path = %self.shown(path), "analysing");
        let stamp = Stamp::of(&meta);
        let bytes = match scan_file::read_opened(file, &meta, limit) {
            Ok(b) => b,
            Err(ReadScanError::Vanished) => {
                attempts.clear(r);
                return Err(Outcome::Gone);
            }
            Err(e @ ReadScanError::Grew { .. }) => {
                return Err(self.reject(&at, path, r, &format!("{e}"), attempts))
            }
            Err(e) => return Err(self.failed_counted(&at, path, r, &format!("{e}"), attempts)),
        };
        Ok(Ready {
            at,
            bytes,
            stamp,
            facts: self.facts(path, mtime),
        })
    }

    /// Hands the scan to the pool and waits at most `intake.max_analysis_s`, showing
    /// it in status meanwhile.
    async fn analyse(&self, r: &str, bytes: Vec<u8>, facts: ScanFacts) -> Finished {
        let job = self.pool_job(bytes, facts, true);
        let max_s = self.cfg.intake.max_analysis_s;
        self.show_analysing(r, Some(Duration::ZERO));
        let waited = wait_with_deadline(job, Duration::from_secs(max_s), ANALYSIS_TICK, |e| {
            self.show_analysing(r, Some(e))
        })
        .await;
        self.show_analysing(r, None);
        match waited {
            Waited::Done(a) => Finished::Done(Box::new(a)),
            Waited::TimedOut(job) => {
                // The pool cannot cancel a job: stop waiting, and count the worker it
                // holds until it ends so new scans are not charged for the wait.
                let held = self.abandoned.clone();
                held.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = job.await;
                    held.fetch_sub(1, Ordering::SeqCst);
                });
                self.status.update(|s| s.intake.analyses_timed_out += 1);
                Finished::TimedOut(format!(
                    "analysis took longer than {max_s} s (intake.max_analysis_s) and was given up"
                ))
            }
        }
    }

    /// Stores the result durably, then moves the scan to processed/ (or sets it aside,
    /// or leaves it for another attempt). Blocking.
    fn settle(
        &self,
        at: &Place,
        path: &Path,
        r: &str,
        stamp: Stamp,
        analysed: Finished,
        attempts: &Attempts,
    ) -> Outcome {
        let zone = zone_from_name(path);
        let zone = zone.as_deref().unwrap_or("-");
        let done = match analysed {
            Finished::Done(done) => *done,
            // Counted against the file even on a pushed release: the deadline covers the
            // queue and the decoding too, so a timeout is no proof that the model hung.
            Finished::TimedOut(why) => return self.failed_counted(at, path, r, &why, attempts),
        };
        let Readings { record, .. } = match done.map_err(|e| (e.error, e.release)) {
            Ok(readings) => readings,
            Err((AnalyzeError::PoolClosed, _)) => {
                attempts.undo(r);
                return Outcome::Shutdown;
            }
            Err((e @ AnalyzeError::Decode(_), _)) => {
                return self.reject(at, path, r, &format!("{e}"), attempts)
            }
            // A pushed model release faulting (crash, non-finite or out-of-range output)
            // is the model's fault, not the file's: no attempt is used, and the scan is
            // analysed again once the guard has rolled the release back (`models::guard`).
            // The built-in model's faults count as before, so a hostile file is still set
            // aside.
            Err((
                e @ (AnalyzeError::Panicked
                | AnalyzeError::Model(
                    pleura_inference::ModelError::NonFinite { .. }
                    | pleura_inference::ModelError::OutOfRange { .. },
                )),
                release,
            )) if release > 0 => {
                attempts.undo(r);
                tracing::warn!(scan = %r, zone, release, error = %e,
                    "analysis failed on a model release; retried without using an attempt");
                return Outcome::Failed(e.to_string());
            }
            Err((e, _)) => return self.failed_counted(at, path, r, &format!("{e}"), attempts),
        };
        match self.outbox.put(&record) {
            Ok(_) => {}
            Err(OutboxError::QuotaExceeded { .. }) => {
                // Not the file's fault: it waits without using up its attempts.
                attempts.undo(r);
                return Outcome::Quota;
            }
            Err(e) => {
                attempts.undo(r);
                tracing::error!(scan = %r, zone, error = %e, "scan left in the inbox");
                return Outcome::Storage(e.to_string());
            }
        }
        let id = record.id;
        // Durable in the outbox: now the source may move. In processed/ it keeps its
        // place, its name prefixed with its result id: see `processed`.
        // The exporter may have replaced the file meanwhile: only the file analysed moves
        // under this result's id (a new one is judged afresh at the next round).
        if at.stamp().ok() != Some(stamp) {
            attempts.clear(r);
            tracing::warn!(scan = %r, zone, result_id = %id, "the scan changed while it was analysed; its new content is taken in at the next round");
            return Outcome::Gone;
        }
        let original = path.file_name().unwrap_or_default().to_string_lossy();
        let named = path.with_file_name(crate::processed::file_name(&id, &original));
        if let Err(e) = self.move_to(at, &named, &self.cfg.processed_dir(), None) {
            // Counts against the file's attempts: a scan that cannot leave the inbox must
            // not be analysed again on every poll.
            tracing::error!(scan = %r, zone, error = %e, "analysed, but cannot move to processed/");
            let why = format!("moving to processed/: {e}");
            return self.failed_counted(at, path, r, &why, attempts);
        }
        if let Some(log) = &self.scan_log {
            log.settled(&record, &self.cfg.inbox, &named, &self.cfg.processed_dir());
        }
        if let Some(media) = &self.media {
            media.settled(&record);
        }
        attempts.clear(r);
        self.status.update(|s| s.intake.analysed += 1);
        tracing::info!(result_id = %id, scan = %r, zone, path = %self.shown(path), flagged = record.analysis.flagged, "scan analysed and queued");
        self.queued.notify_one();
        Outcome::Done
    }

    /// Queues a candidate's shadow reading beside the active one. Best effort: without
    /// room (or on a storage error) the comparison has one scan fewer, and nothing else
    /// is affected. Never shown on the clinic page, never given media.
    fn queue_shadow(&self, shadow: &ScanRecord) {
        match self.outbox.put(shadow) {
            Ok(_) => {
                self.status.update(|s| s.models.shadow_results += 1);
                tracing::debug!(result_id = %shadow.id, release = shadow.release, "shadow reading queued");
            }
            Err(e) => {
                tracing::warn!(result_id = %shadow.id, release = shadow.release, error = %e, "shadow reading not kept")
            }
        }
    }
}
