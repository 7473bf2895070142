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
//!
//! Where the work runs: this loop, on an async task, only decides and waits. Every
//! filesystem call (listing, opening, reading, the attempts file, moves, the outbox)
//! runs on a blocking thread (`off_async`), and everything heavy about a scan's
//! content — decoding, the DICOM header, the result-id hash, the model — runs once,
//! in one pool job on an inference thread (`job`). One scan is in flight at a time
//! (plus at most one per worker given up after `intake.max_analysis_s`), so a burst
//! of big files waits in the inbox, not in memory.

mod attempts;
mod identity;
mod inbox;
pub(crate) mod job;
mod process;
mod recover;
mod report;
mod setaside;

pub use identity::{entry_ref, result_id, zone_from_name};

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pleura_shared::PseudonymKey;
use tokio_util::sync::CancellationToken;

use crate::config::EdgeConfig;
use crate::outbox::Outbox;
use crate::status::Shared;
use attempts::Attempts;
use inbox::{list_inbox, open_place, Entry, FileId, Place, PlaceError};

pub struct Intake {
    pub cfg: EdgeConfig,
    /// The running model release's pool (issue #15): each scan takes the current one,
    /// and crashes and non-finite outputs count toward an automatic rollback.
    pub pool: Arc<crate::models::LivePool>,
    pub outbox: Arc<dyn Outbox>,
    pub key: std::sync::Arc<PseudonymKey>,
    pub status: Arc<Shared>,
    /// Wakes the sync worker when something new is queued.
    pub queued: Arc<tokio::sync::Notify>,
    /// Analyses given up after `intake.max_analysis_s` that still hold a pool worker
    /// (a pool job cannot be cancelled). New scans wait while they hold every worker.
    pub abandoned: Arc<AtomicUsize>,
    /// The clinic's local scan log (`scanlog`), written as each result settles.
    pub scan_log: Option<crate::scanlog::ScanLog>,
    /// Schedules a flagged result's preview and clip once its scan is in processed/.
    pub media: Option<crate::media::MediaHook>,
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

/// Runs `f` (filesystem work) on a blocking thread, never on an async worker. A step
/// that panicked, or a runtime shutting down, is storage trouble: the scan waits.
async fn off_async<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Outcome> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Outcome::Storage(e.to_string()))
}

/// An inbox entry as listed, with its keyed digest, and whether it was copied out
/// once already but could not be removed (then it is skipped: `left_in_inbox`).
struct Listed {
    entry: Entry,
    r: String,
    kept: bool,
}

/// One listing of the inbox: its entries, and the inbox folder's descriptor, or why
/// it cannot be listed.
type Listing = Result<(Vec<Listed>, Arc<File>), String>;

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
        let me = Arc::new(self);
        let file = me.cfg.attempts_file();
        let Ok(attempts) = off_async(move || Attempts::load(file)).await else {
            tracing::error!("cannot load the intake attempts file");
            return;
        };
        let mut seen: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
        // Consecutive rounds in which an entry could be neither analysed nor set aside.
        let mut failing: HashMap<String, u32> = HashMap::new();
        let poll = Duration::from_millis(me.cfg.inference.poll_ms);
        let mut last_inbox_error = None;
        let mut rebuild_failed = HashSet::new();
        let mut tended: Option<std::time::Instant> = None;
        loop {
            let lost = me.outbox.lost();
            let due = tended.is_none_or(|t| t.elapsed() >= TEND_EVERY)
                || lost.iter().any(|id| !rebuild_failed.contains(id));
            if due {
                let pass = me.tend_processed(&mut rebuild_failed).await;
                let me = me.clone();
                // Reads the store's stats: off the async workers too.
                let _ = off_async(move || me.report_processed(&pass)).await;
                tended = Some(std::time::Instant::now());
            }
            let (entries, top, inbox_error) = match me.list().await {
                Ok((f, top)) => (f, Some(top), None),
                Err(e) => (Vec::new(), None, Some(e)),
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
            for listed in entries {
                if shutdown.is_cancelled() {
                    return;
                }
                let Some(top) = top.as_ref() else { break };
                let r = listed.r.clone();
                present.insert(r.clone());
                let Some(outcome) = me.take(top, listed, &seen, &mut next_seen, &attempts).await
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
                    Outcome::Shutdown => {
                        tracing::info!("intake stops: the inference pool is shut down");
                        return;
                    }
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
                let a = attempts.clone();
                let _ = off_async(move || a.retain(|k| present.contains(k))).await;
            }
            let stuck = failing
                .values()
                .filter(|n| **n >= me.cfg.intake.max_attempts)
                .count();
            me.report(&round, inbox_error, stuck);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Lists the inbox (on a blocking thread), each entry with its digest and whether
    /// it is one to skip.
    async fn list(self: &Arc<Self>) -> Listing {
        let me = self.clone();
        let listed = off_async(move || {
            let top = open_inbox(&me.cfg.inbox).map_err(|e| e.to_string())?;
            let entries = list_inbox(&me.cfg.inbox).map_err(|e| e.to_string())?;
            let listed = entries
                .into_iter()
                .map(|entry| {
                    let r = me.scan_ref(entry.path());
                    let kept = me.left_in_inbox(&r, &entry);
                    Listed { entry, r, kept }
                })
                .collect();
            Ok((listed, Arc::new(top)))
        });
        listed
            .await
            .unwrap_or_else(|_| Err("listing the inbox failed".into()))
    }

    /// One listed entry: set aside, analysed, or (still being written, or copied out
    /// once already) left for the next round (`None`). Everything is opened and moved
    /// relative to `top`, the inbox folder's descriptor, and the patient folder opened
    /// from it without following links: an entry swapped for a link after the listing
    /// is never followed.
    async fn take(
        self: &Arc<Self>,
        top: &Arc<File>,
        listed: Listed,
        seen: &HashMap<PathBuf, (u64, SystemTime)>,
        next_seen: &mut HashMap<PathBuf, (u64, SystemTime)>,
        attempts: &Attempts,
    ) -> Option<Outcome> {
        let Listed { entry, r, kept } = listed;
        if kept {
            return None;
        }
        Some(match entry {
            Entry::Odd { path, kind, folder } => {
                let (me, top, attempts) = (self.clone(), top.clone(), attempts.clone());
                let set_aside = move || match me.place(&top, &path, folder) {
                    Ok(at) => {
                        let reason = format!("{kind}: not read; scans must be regular files");
                        me.reject(&at, &path, &r, &reason, &attempts)
                    }
                    Err(o) => o,
                };
                off_async(set_aside).await.unwrap_or_else(|o| o)
            }
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
                let (me, top, p) = (self.clone(), top.clone(), path.clone());
                let placed = off_async(move || me.place(&top, &p, folder)).await;
                let o = match placed.and_then(|p| p) {
                    Ok(at) => self.process(at, &path, Some(id), &r, mtime, attempts).await,
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
}

pub use pleura_shared::fsutil::private_dir;

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
