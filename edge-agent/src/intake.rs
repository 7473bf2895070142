//! The inbox: scans the ultrasound device exported are analysed, turned into
//! de-identified records, stored durably in the outbox, and only then moved to
//! `processed/` (or to `rejected/` with a reason file). A crash at any point leaves
//! the scan in the inbox or its result in the outbox; the result id is derived from
//! the file's content, so analysing it again cannot create a second result.
//!
//! The inbox is written by another machine, so every entry is untrusted: links, FIFOs,
//! devices, sockets and oversized files are set aside unread with a reason, one bad
//! entry never stops the others, and a file that keeps failing (or keeps taking the
//! agent down) goes to `rejected/` after `intake.max_attempts`. Logs name an entry by
//! a keyed digest of its path (`scan`) and its zone, never by its path: folder names
//! are patient identifiers.

mod attempts;
mod identity;
mod inbox;
mod recover;
mod report;
mod setaside;

pub use identity::{entry_ref, result_id, zone_from_name};

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pleura_inference::decode::file::{self as scan_file, ReadScanError};
use pleura_inference::{AnalyzeError, InferencePool};
use pleura_shared::PseudonymKey;
use tokio_util::sync::CancellationToken;

use crate::config::EdgeConfig;
use crate::outbox::{Outbox, OutboxError};
use crate::status::Shared;
use attempts::Attempts;
use inbox::{list_inbox, open_place, Entry, FileId, Place, PlaceError};

pub struct Intake {
    pub cfg: EdgeConfig,
    pub pool: Arc<InferencePool>,
    pub outbox: Arc<dyn Outbox>,
    pub key: PseudonymKey,
    pub status: Arc<Shared>,
    /// Wakes the sync worker when something new is queued.
    pub queued: Arc<tokio::sync::Notify>,
    /// Analyses given up after `intake.max_analysis_s` that still hold a pool worker
    /// (a pool job cannot be cancelled). New scans wait while they hold every worker.
    pub abandoned: Arc<AtomicUsize>,
}

/// How often processed/ is checked for lost results to rebuild and scans to prune.
const TEND_EVERY: Duration = Duration::from_secs(600);
/// How long a scan may be in analysis before status raises an alarm naming it.
const SLOW_ALARM_AFTER: Duration = Duration::from_secs(30);
/// Status is refreshed this often while a scan is in analysis.
const ANALYSIS_TICK: Duration = Duration::from_secs(1);
const SLOW_ALARM: &str = "scan ";

/// What waiting for an analysis with a deadline came to.
pub(crate) enum Waited<F: Future> {
    Done(F::Output),
    /// Past the deadline: the job, still running, is handed back (to be detached).
    TimedOut(Pin<Box<F>>),
}

/// Waits for `job` at most `max`, calling `on_tick` with the time spent every `tick`
/// meanwhile (so status is honest while it runs, not only at the end of a round).
pub(crate) async fn wait_with_deadline<F: Future>(
    mut job: Pin<Box<F>>,
    max: Duration,
    tick: Duration,
    mut on_tick: impl FnMut(Duration),
) -> Waited<F> {
    let start = tokio::time::Instant::now();
    loop {
        let left = max.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Waited::TimedOut(job);
        }
        tokio::select! {
            biased;
            out = &mut job => return Waited::Done(out),
            _ = tokio::time::sleep(tick.min(left)) => on_tick(start.elapsed()),
        }
    }
}

/// The inbox folder, opened once per pass: every entry is opened and moved relative to it.
fn open_inbox(inbox: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(inbox)
}

impl Intake {
    /// A keyed digest of the entry's place in the inbox: names it in logs and in the
    /// attempts file without naming the patient.
    pub fn scan_ref(&self, path: &Path) -> String {
        entry_ref(&self.key, &self.cfg.inbox, path)
    }

    /// The path for a log line: only with `intake.log_paths`.
    fn shown(&self, path: &Path) -> String {
        if self.cfg.intake.log_paths {
            path.display().to_string()
        } else {
            "-".into()
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut attempts = Attempts::load(self.cfg.attempts_file());
        let mut seen: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
        // Consecutive rounds in which an entry could be neither analysed nor set aside.
        let mut failing: HashMap<String, u32> = HashMap::new();
        let poll = Duration::from_millis(self.cfg.inference.poll_ms);
        let mut last_inbox_error = None;
        let mut rebuild_failed = HashSet::new();
        let mut tended: Option<std::time::Instant> = None;
        loop {
            let lost = self.outbox.lost();
            let due = tended.is_none_or(|t| t.elapsed() >= TEND_EVERY)
                || lost.iter().any(|id| !rebuild_failed.contains(id));
            if due {
                let pass = self.tend_processed(&mut rebuild_failed).await;
                self.report_processed(&pass);
                tended = Some(std::time::Instant::now());
            }
            let listed =
                open_inbox(&self.cfg.inbox).and_then(|top| Ok((list_inbox(&self.cfg.inbox)?, top)));
            let (entries, top, inbox_error) = match listed {
                Ok((f, top)) => (f, Some(top), None),
                Err(e) => (Vec::new(), None, Some(e.to_string())),
            };
            // Once per change, not every poll: the alarm in status stays up meanwhile.
            if inbox_error != last_inbox_error {
                match &inbox_error {
                    Some(e) => tracing::error!(error = %e, "cannot read the inbox folder"),
                    None => tracing::info!("the inbox folder is readable"),
                }
                last_inbox_error = inbox_error.clone();
            }
            let mut round = Round::default();
            let mut next_seen = HashMap::new();
            let mut present = HashSet::new();
            for entry in entries {
                if shutdown.is_cancelled() {
                    return;
                }
                let Some(top) = top.as_ref() else { break };
                let r = self.scan_ref(entry.path());
                present.insert(r.clone());
                let Some(outcome) = self
                    .take(top, entry, &r, &seen, &mut next_seen, &mut attempts)
                    .await
                else {
                    continue;
                };
                match outcome {
                    Outcome::Done | Outcome::Gone => {
                        failing.remove(&r);
                    }
                    Outcome::Quota => round.waiting += 1,
                    Outcome::Busy => round.busy += 1,
                    Outcome::Storage(e) => round.storage = Some(e),
                    Outcome::Shutdown => return,
                    Outcome::Failed(e) => {
                        round.errors += 1;
                        round.last_error = Some(e);
                        *failing.entry(r).or_default() += 1;
                    }
                }
            }
            seen = next_seen;
            failing.retain(|k, _| present.contains(k));
            if !attempts.is_empty() && inbox_error.is_none() {
                attempts.retain(|k| present.contains(k));
            }
            let stuck = failing
                .values()
                .filter(|n| **n >= self.cfg.intake.max_attempts)
                .count();
            self.report(&round, inbox_error, stuck);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One listed entry: set aside, analysed, or (still being written) left for the
    /// next round (`None`). Everything is opened and moved relative to `top`, the
    /// inbox folder's descriptor, and the patient folder opened from it without
    /// following links: an entry swapped for a link after the listing is never followed.
    async fn take(
        &self,
        top: &File,
        entry: Entry,
        r: &str,
        seen: &HashMap<PathBuf, (u64, SystemTime)>,
        next_seen: &mut HashMap<PathBuf, (u64, SystemTime)>,
        attempts: &mut Attempts,
    ) -> Option<Outcome> {
        if self.left_in_inbox(r, &entry) {
            return None;
        }
        Some(match entry {
            Entry::Odd { path, kind, folder } => match self.place(top, &path, folder) {
                Ok(at) => {
                    let reason = format!("{kind}: not read; scans must be regular files");
                    self.reject(&at, &path, r, &reason, attempts)
                }
                Err(o) => o,
            },
            Entry::Unreadable { error, .. } => Outcome::Failed(error.to_string()),
            Entry::File {
                path,
                size,
                mtime,
                id,
                folder,
            } => {
                // Only files unchanged since the last look: the device may still be writing.
                let stable = seen.get(&path) == Some(&(size, mtime));
                next_seen.insert(path.clone(), (size, mtime));
                if !stable {
                    return None;
                }
                let o = match self.place(top, &path, folder) {
                    Ok(at) => self.process(&at, &path, Some(id), r, mtime, attempts).await,
                    Err(o) => o,
                };
                if matches!(o, Outcome::Done | Outcome::Gone) {
                    next_seen.remove(&path);
                }
                o
            }
        })
    }

    fn place(&self, top: &File, path: &Path, folder: Option<FileId>) -> Result<Place, Outcome> {
        match open_place(top, &self.cfg.inbox, path, folder) {
            Ok(p) => Ok(p),
            // Swapped or gone since the listing: judged afresh at the next listing.
            Err(PlaceError::Changed) => Err(Outcome::Gone),
            Err(PlaceError::Io(e)) => Err(Outcome::Failed(format!("opening its folder: {e}"))),
        }
    }

    async fn process(
        &self,
        at: &Place,
        path: &Path,
        listed: Option<FileId>,
        r: &str,
        mtime: SystemTime,
        attempts: &mut Attempts,
    ) -> Outcome {
        let zone = zone_from_name(path);
        let zone = zone.as_deref().unwrap_or("-");
        let limit = self.cfg.intake.max_scan_bytes;
        let max = self.cfg.intake.max_attempts;
        let opened = scan_file::open_scan_at(&at.dir, &at.name, limit);
        let (file, meta) = match opened {
            Ok(f) => f,
            Err(ReadScanError::Vanished) => return Outcome::Gone,
            Err(e @ (ReadScanError::PermissionDenied | ReadScanError::Io(_))) => {
                // The file's own failure: it counts against its budget.
                return self.failed(at, path, r, &format!("{e}"), attempts);
            }
            Err(e) => return self.reject(at, path, r, &format!("{e}"), attempts),
        };
        {
            use std::os::unix::fs::MetadataExt;
            // Not the file the listing saw (replaced meanwhile): judged afresh next round.
            if listed.is_some_and(|id| id != (meta.dev(), meta.ino())) {
                return Outcome::Gone;
            }
        }
        // Every worker is held by an analysis given up on: wait, without using an attempt.
        if self.abandoned.load(Ordering::SeqCst) >= self.cfg.inference.workers.max(1) {
            return Outcome::Busy;
        }
        // The outbox is at its quota: wait without analysing (the scan could not be
        // stored), until acks free room.
        if !self.outbox.has_room() {
            return Outcome::Quota;
        }
        if attempts.get(r) >= max {
            let reason = format!(
                "analysis failed or was interrupted {max} times (the agent stopped or ran out of memory while analysing it)"
            );
            self.status
                .update(|s| s.intake.rejected_after_attempts += 1);
            return self.reject(at, path, r, &reason, attempts);
        }
        // Durable before the first byte is read: a crash or OOM kill from here on counts.
        let n = match attempts.begin(r) {
            Ok(n) => n,
            Err(e) => return Outcome::Storage(format!("recording the attempt: {e}")),
        };
        tracing::debug!(scan = %r, zone, attempt = n, path = %self.shown(path), "analysing");
        let stamp = inbox::Stamp::of(&meta);
        let bytes =
            match tokio::task::spawn_blocking(move || scan_file::read_opened(file, &meta, limit))
                .await
            {
                Ok(Ok(b)) => b,
                Ok(Err(ReadScanError::Vanished)) => {
                    attempts.clear(r);
                    return Outcome::Gone;
                }
                Ok(Err(e @ ReadScanError::Grew { .. })) => {
                    return self.reject(at, path, r, &format!("{e}"), attempts)
                }
                Ok(Err(e)) => return self.failed_counted(at, path, r, &format!("{e}"), attempts),
                Err(e) => {
                    attempts.undo(r);
                    return Outcome::Storage(e.to_string());
                }
            };
        let (id, dicom) = self.identify(path, &bytes);
        let pool = self.pool.clone();
        let job = Box::pin(async move { pool.analyze_async(bytes).await });
        let max_s = self.cfg.intake.max_analysis_s;
        self.show_analysing(r, Some(Duration::ZERO));
        let waited = wait_with_deadline(job, Duration::from_secs(max_s), ANALYSIS_TICK, |e| {
            self.show_analysing(r, Some(e))
        })
        .await;
        self.show_analysing(r, None);
        let analysed = match waited {
            Waited::Done(a) => a,
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
                let why = format!(
                    "analysis took longer than {max_s} s (intake.max_analysis_s) and was given up"
                );
                return self.failed_counted(at, path, r, &why, attempts);
            }
        };
        let report = match analysed {
            Ok(r) => r,
            Err(AnalyzeError::PoolClosed) => {
                attempts.undo(r);
                return Outcome::Shutdown;
            }
            Err(e @ AnalyzeError::Decode(_)) => {
                return self.reject(at, path, r, &format!("{e}"), attempts)
            }
            Err(e) => return self.failed_counted(at, path, r, &format!("{e}"), attempts),
        };
        let record = self.build_record(path, id, dicom, &report, mtime);
        let outbox = self.outbox.clone();
        let put = tokio::task::spawn_blocking(move || outbox.put(&record)).await;
        match put {
            Ok(Ok(_)) => {}
            Ok(Err(OutboxError::QuotaExceeded { .. })) => {
                // Not the file's fault: it waits without using up its attempts.
                attempts.undo(r);
                return Outcome::Quota;
            }
            Ok(Err(e)) => {
                attempts.undo(r);
                tracing::error!(scan = %r, zone, error = %e, "scan left in the inbox");
                return Outcome::Storage(e.to_string());
            }
            Err(e) => {
                attempts.undo(r);
                return Outcome::Storage(e.to_string());
            }
        }
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
            return self.failed_counted(
                at,
                path,
                r,
                &format!("moving to processed/: {e}"),
                attempts,
            );
        }
        attempts.clear(r);
        self.status.update(|s| s.intake.analysed += 1);
        tracing::info!(result_id = %id, scan = %r, zone, path = %self.shown(path), flagged = report.analysis.flagged, "scan analysed and queued");
        self.queued.notify_one();
        Outcome::Done
    }
}

/// Creates `dir` (and missing parents) readable by the agent only.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[derive(Default)]
struct Round {
    waiting: u64,
    busy: u64,
    errors: u64,
    last_error: Option<String>,
    storage: Option<String>,
}

enum Outcome {
    /// Left the inbox: analysed, or set aside in rejected/.
    Done,
    /// Vanished before it could be read.
    Gone,
    /// The outbox is full; the scan waits.
    Quota,
    /// Every analysis worker is held by a job given up after `intake.max_analysis_s`.
    Busy,
    /// Disk or store trouble not caused by the file; the scan waits, no attempt used.
    Storage(String),
    Shutdown,
    /// Failed and stays in the inbox for another attempt.
    Failed(String),
}

#[cfg(test)]
mod tests;
