//! Keeping processed/ honest: a result the outbox lost (its store was damaged) is
//! rebuilt by analysing its scan again from processed/, and scans whose result the hub
//! has acknowledged are pruned within the configured budget. Scans whose result is
//! still queued, parked or lost are never pruned.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pleura_shared::{result_id_for, ResultId};

use super::{off_async, wait_with_deadline, Intake, Waited, ANALYSIS_TICK};
use crate::outbox::{Held, OutboxError};

/// Why a lost result was not rebuilt this pass.
enum Rebuild {
    /// No room in the outbox or on the disk: tried again at the next pass.
    Wait(String),
    Failed(String),
}

impl From<String> for Rebuild {
    fn from(e: String) -> Self {
        Rebuild::Failed(e)
    }
}

impl From<&str> for Rebuild {
    fn from(e: &str) -> Self {
        Rebuild::Failed(e.to_string())
    }
}
use crate::processed;

/// A scan in processed/.
#[derive(Debug, Clone)]
pub struct Kept {
    pub path: PathBuf,
    pub id: Option<ResultId>,
    pub size: u64,
    pub modified: SystemTime,
}

/// Every regular file below `dir` (links and odd entries are left alone).
pub fn walk(dir: &Path) -> std::io::Result<Vec<Kept>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let meta = e.path().symlink_metadata()?;
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                out.push(Kept {
                    id: processed::id_of(&e.path()),
                    path: e.path(),
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
    Ok(out)
}

/// What one pass over processed/ did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub rebuilt: u64,
    pub pruned: u64,
    pub pruned_bytes: u64,
    /// Lost results with no scan left to rebuild them from.
    pub unrecoverable: u64,
    /// Bytes of scans that must be kept (result not yet acknowledged).
    pub pinned_bytes: u64,
    pub failed: u64,
}

/// What a look at processed/ found, before any rebuild.
#[derive(Default)]
struct Survey {
    pass: Pass,
    /// Lost results to rebuild from their scans, in order.
    lost: Vec<(Kept, ResultId)>,
    prunable: Vec<Kept>,
    present: HashSet<ResultId>,
}

impl Intake {
    /// Rebuilds lost results from processed/ and prunes it. `failed` remembers scans
    /// whose rebuild failed this run, so one bad file is not analysed on every pass.
    /// The walk, the store look-ups and the pruning run on blocking threads.
    pub(super) async fn tend_processed(self: &Arc<Self>, failed: &mut HashSet<ResultId>) -> Pass {
        let me = self.clone();
        let skip = failed.clone();
        let survey = match off_async(move || me.survey(&skip)).await {
            Ok(Some(s)) => s,
            Ok(None) | Err(_) => return Pass::default(),
        };
        let Survey {
            mut pass,
            lost,
            prunable,
            present,
        } = survey;
        for (k, id) in lost {
            match self.rebuild(&k, id).await {
                Ok(()) => pass.rebuilt += 1,
                // No room: the rebuild waits like a new scan, and is not a failure.
                Err(Rebuild::Wait(e)) => {
                    tracing::warn!(result_id = %id, error = %e, "rebuilding a lost result waits for room");
                    break;
                }
                Err(Rebuild::Failed(e)) => {
                    tracing::error!(result_id = %id, error = %e, "cannot rebuild a lost result from its scan");
                    failed.insert(id);
                    pass.failed += 1;
                }
            }
        }
        let unrecoverable: Vec<ResultId> = self
            .outbox
            .lost()
            .into_iter()
            .filter(|id| !present.contains(id))
            .collect();
        pass.unrecoverable = unrecoverable.len() as u64;
        // Not looked for again at every poll: only at the next periodic pass.
        failed.extend(unrecoverable);
        let me = self.clone();
        off_async(move || me.prune(prunable, pass))
            .await
            .unwrap_or_default()
    }

    /// Walks processed/ and sorts its scans: lost results to rebuild (except those in
    /// `failed`), scans that may be pruned, and bytes that must be kept. Blocking.
    fn survey(&self, failed: &HashSet<ResultId>) -> Option<Survey> {
        let kept = match walk(&self.cfg.processed_dir()) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot list processed/");
                return None;
            }
        };
        let mut s = Survey::default();
        for k in kept {
            let Some(id) = k.id else {
                // From before results were named in processed/: judged by age and size.
                s.prunable.push(k);
                continue;
            };
            s.present.insert(id);
            let held = self.outbox.held(&id).unwrap_or(Some(Held::Queued));
            match held {
                Some(Held::Acked) => s.prunable.push(k),
                // Lost by the store (or unknown to store and journal both, or forgotten
                // after its retention): analysed again; the hub deduplicates.
                Some(Held::Lost) | None => {
                    s.pass.pinned_bytes += k.size;
                    if !failed.contains(&id) {
                        s.lost.push((k, id));
                    }
                }
                Some(Held::Queued) | Some(Held::Parked) => s.pass.pinned_bytes += k.size,
            }
        }
        Some(s)
    }

    /// Removes acknowledged scans older than `intake.processed_keep_days`, and more,
    /// oldest first, while processed/ is over its budget. Blocking.
    fn prune(&self, mut prunable: Vec<Kept>, mut pass: Pass) -> Pass {
        let keep_for = Duration::from_secs(u64::from(self.cfg.intake.processed_keep_days) * 86_400);
        let now = SystemTime::now();
        prunable.sort_by_key(|k| k.modified);
        let mut total: u64 = pass.pinned_bytes + prunable.iter().map(|k| k.size).sum::<u64>();
        for k in prunable {
            let old = now.duration_since(k.modified).unwrap_or_default() > keep_for;
            if !old && total <= self.cfg.intake.processed_budget_bytes {
                continue;
            }
            match std::fs::remove_file(&k.path) {
                Ok(()) => {
                    total -= k.size;
                    pass.pruned += 1;
                    pass.pruned_bytes += k.size;
                }
                Err(e) => tracing::warn!(error = %e, "cannot prune a scan from processed/"),
            }
        }
        if pass.pruned > 0 {
            tracing::info!(
                scans = pass.pruned,
                bytes = pass.pruned_bytes,
                "pruned acknowledged scans from processed/"
            );
        }
        pass
    }

    /// Analyses a scan in processed/ again (one pool job, as for a new scan) and
    /// queues its result under its own id.
    async fn rebuild(self: &Arc<Self>, k: &Kept, id: ResultId) -> Result<(), Rebuild> {
        let inbox_path = processed::inbox_path(&self.cfg.processed_dir(), &self.cfg.inbox, &k.path)
            .ok_or("not a processed/ scan name")?;
        let (me, path, modified) = (self.clone(), k.path.clone(), k.modified);
        let limit = self.cfg.intake.max_scan_bytes;
        // The facts read the patient's vitals: on the blocking thread too.
        let (bytes, facts) = tokio::task::spawn_blocking(move || {
            let bytes = read_limited(&path, limit);
            (bytes, me.facts(&inbox_path, modified))
        })
        .await
        .map_err(|e| e.to_string())?;
        let bytes = bytes.map_err(|e| format!("reading it: {e}"))?;
        let job = self.pool_job(bytes, facts, false);
        let max = Duration::from_secs(self.cfg.intake.max_analysis_s);
        let record = match wait_with_deadline(job, max, ANALYSIS_TICK, |_| {}).await {
            Waited::Done(r) => r.map_err(|e| e.to_string())?.record,
            Waited::TimedOut(_) => return Err("analysis took too long".into()),
        };
        // Named by the release running now, or by another that read it before (the
        // built-in model, or an earlier or later release: a rollback happened since).
        if record.id != id && !named_by_a_release(&record.scan, record.release, &id) {
            return Err(Rebuild::Failed(format!(
                "its content or identity no longer gives result {id} (clinic, device or pseudonym key changed?)"
            )));
        }
        // Read again by a release: a new result (the hub keeps both, the newer current),
        // and the scan in processed/ is renamed to it so it is tracked from now on.
        if record.id != id {
            self.rename_processed(&k.path, &record.id)?;
        }
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.put(&record)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e @ (OutboxError::QuotaExceeded { .. } | OutboxError::DiskFull(_)))) => {
                return Err(Rebuild::Wait(e.to_string()))
            }
            Ok(Err(e)) => return Err(Rebuild::Failed(e.to_string())),
            Err(e) => return Err(Rebuild::Failed(e.to_string())),
        }
        tracing::warn!(result_id = %id, "result lost by the outbox store rebuilt from its scan in processed/");
        self.queued.notify_one();
        Ok(())
    }
}

impl Intake {
    fn rename_processed(&self, path: &Path, id: &ResultId) -> Result<(), Rebuild> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(processed::parse_name)
            .map(|(_, original)| processed::file_name(id, original))
            .ok_or("not a processed/ scan name")?;
        std::fs::rename(path, path.with_file_name(name))
            .map_err(|e| Rebuild::Failed(format!("renaming it in processed/: {e}")))
    }
}

/// Whether `id` is a release's active reading of `scan`, for a release near `now` (the
/// one running) or among the first thousand: releases are numbered upwards, and a lost
/// result is one of the last read. One hash per release tried.
fn named_by_a_release(scan: &ResultId, now: u64, id: &ResultId) -> bool {
    const SPAN: u64 = 1_000;
    (0..=SPAN)
        .chain(now.saturating_sub(SPAN)..=now.saturating_add(SPAN))
        .any(|r| result_id_for(scan, r, false) == *id)
}

fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut out = Vec::new();
    f.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other("larger than intake.max_scan_bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
