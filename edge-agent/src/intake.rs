//! The inbox: scans the ultrasound device exported are analysed, turned into
//! de-identified records, stored durably in the outbox, and only then moved to
//! `processed/` (or to `rejected/` with a reason file). A crash at any point leaves
//! the scan in the inbox or its result in the outbox; the result id is derived from
//! the file's content, so analysing it again cannot create a second result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pleura_inference::{InferencePool, ScanReport};
use pleura_shared::record::is_zone;
use pleura_shared::{PseudonymKey, ResultId, ScanRecord};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::EdgeConfig;
use crate::outbox::{Outbox, OutboxError};
use crate::status::{now_ms, Shared};

pub struct Intake {
    pub cfg: EdgeConfig,
    pub pool: Arc<InferencePool>,
    pub outbox: Arc<dyn Outbox>,
    pub key: PseudonymKey,
    pub status: Arc<Shared>,
    /// Wakes the sync worker when something new is queued.
    pub queued: Arc<tokio::sync::Notify>,
}

/// Content-derived result id: the same scan re-analysed after a crash keeps its id.
pub fn result_id(clinic: &str, device: &str, bytes: &[u8]) -> ResultId {
    let mut h = Sha256::new();
    h.update(b"pleura-result-v1\0");
    h.update(clinic.as_bytes());
    h.update([0]);
    h.update(device.as_bytes());
    h.update([0]);
    h.update(bytes);
    ResultId::from_slice(&h.finalize()[..16]).expect("16 bytes")
}

/// "L1".."R6" from the file name (e.g. `scan_R2.mp4`), if present.
pub fn zone_from_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_string_lossy().to_uppercase();
    stem.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|t| is_zone(t))
        .map(str::to_string)
}

fn day_of(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as u32)
        .unwrap_or(0)
}

impl Intake {
    pub fn build_record(
        &self,
        path: &Path,
        bytes: &[u8],
        report: &ScanReport,
        modified: SystemTime,
    ) -> ScanRecord {
        // inbox/<patient>/<file>: the folder is the device's patient identifier.
        let patient = path
            .parent()
            .filter(|p| *p != self.cfg.inbox)
            .and_then(|p| p.file_name())
            .map(|n| self.key.pseudonym(&n.to_string_lossy()));
        // A DICOM header names the patient and the study day better than the folder
        // and the file time; only the pseudonym and the day are kept.
        let dicom = (report.format == pleura_inference::Format::Dicom)
            .then(|| crate::deid::dicom_identity(bytes, &self.key).ok())
            .flatten()
            .unwrap_or_default();
        ScanRecord {
            id: result_id(&self.cfg.clinic, &self.cfg.device, bytes),
            clinic: self.cfg.clinic.clone(),
            device: self.cfg.device.clone(),
            patient_key: dicom.patient_key.or(patient),
            zone: zone_from_name(path),
            scan_day: dicom.scan_day.unwrap_or_else(|| day_of(modified)),
            analysed_at_ms: now_ms(),
            format: report.format.to_string(),
            analysis: report.analysis.clone(),
            localisation: ScanRecord::quantise_map(&report.localisation),
            localisation_size: report.localisation_size as u32,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut seen: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
        let poll = Duration::from_millis(self.cfg.inference.poll_ms);
        loop {
            let files = match list_inbox(&self.cfg.inbox) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(inbox = %self.cfg.inbox.display(), error = %e, "cannot read inbox");
                    Vec::new()
                }
            };
            let mut waiting = 0;
            let mut next_seen = HashMap::new();
            for (path, size, mtime) in files {
                if shutdown.is_cancelled() {
                    return;
                }
                // Only files unchanged since the last look: the device may still be writing.
                let stable = seen.get(&path) == Some(&(size, mtime));
                next_seen.insert(path.clone(), (size, mtime));
                if !stable {
                    continue;
                }
                match self.process(&path, mtime).await {
                    Ok(()) => {
                        next_seen.remove(&path);
                    }
                    Err(ProcessError::Quota(e)) => {
                        waiting += 1;
                        tracing::warn!(file = %path.display(), "{e}");
                    }
                    Err(ProcessError::Io(e)) => {
                        tracing::error!(file = %path.display(), error = %e, "scan left in the inbox");
                    }
                }
            }
            seen = next_seen;
            self.status.update(|s| {
                s.intake.waiting_for_quota = waiting;
                s.alarms.retain(|a| !a.starts_with("outbox full"));
                if waiting > 0 {
                    s.alarms.push(format!(
                        "outbox full: {waiting} scan(s) wait in the inbox until results reach the hub"
                    ));
                }
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    async fn process(&self, path: &Path, mtime: SystemTime) -> Result<(), ProcessError> {
        let bytes = tokio::fs::read(path).await.map_err(ProcessError::Io)?;
        let report = match self.pool.analyze_async(bytes.clone()).await {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("{e}");
                tracing::warn!(file = %path.display(), %reason, "scan rejected");
                self.move_to(path, &self.cfg.rejected_dir(), Some(&reason))
                    .map_err(ProcessError::Io)?;
                self.status.update(|s| s.intake.rejected += 1);
                return Ok(());
            }
        };
        let record = self.build_record(path, &bytes, &report, mtime);
        let outbox = self.outbox.clone();
        let id = record.id;
        let put = tokio::task::spawn_blocking(move || outbox.put(&record))
            .await
            .map_err(|e| ProcessError::Io(std::io::Error::other(e)))?;
        match put {
            Ok(_) => {}
            Err(e @ OutboxError::QuotaExceeded { .. }) => return Err(ProcessError::Quota(e)),
            Err(e) => return Err(ProcessError::Io(std::io::Error::other(e))),
        }
        // Durable in the outbox: now the source may move.
        self.move_to(path, &self.cfg.processed_dir(), None)
            .map_err(ProcessError::Io)?;
        self.status.update(|s| s.intake.analysed += 1);
        tracing::info!(result_id = %id, file = %path.display(), flagged = report.analysis.flagged, "scan analysed and queued");
        self.queued.notify_one();
        Ok(())
    }

    fn move_to(&self, path: &Path, dir: &Path, reason: Option<&str>) -> std::io::Result<()> {
        let rel = path.strip_prefix(&self.cfg.inbox).unwrap_or(path);
        let mut dest = dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if dest.exists() {
            let name = dest
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            dest.set_file_name(format!("{}-{name}", now_ms()));
        }
        if let Some(reason) = reason {
            let mut r = dest.clone().into_os_string();
            r.push(".reason.txt");
            std::fs::write(PathBuf::from(r), format!("{reason}\n"))?;
        }
        std::fs::rename(path, &dest)
    }
}

enum ProcessError {
    Quota(OutboxError),
    Io(std::io::Error),
}

/// Files in the inbox (one level of patient folders), skipping hidden and partial ones.
fn list_inbox(inbox: &Path) -> std::io::Result<Vec<(PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    let skip = |p: &Path| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        n.starts_with('.') || n.ends_with(".part") || n.ends_with(".tmp")
    };
    for dir_entry in std::fs::read_dir(inbox)? {
        let p = dir_entry?.path();
        if skip(&p) {
            continue;
        }
        let meta = std::fs::metadata(&p)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                let q = e?.path();
                let m = std::fs::metadata(&q)?;
                if m.is_file() && !skip(&q) {
                    out.push((q, m.len(), m.modified()?));
                }
            }
        } else if meta.is_file() {
            out.push((p, meta.len(), meta.modified()?));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_and_ids() {
        assert_eq!(
            zone_from_name(Path::new("in/p7/scan_r2.mp4")).as_deref(),
            Some("R2")
        );
        assert_eq!(zone_from_name(Path::new("in/clip.mp4")), None);
        let a = result_id("c", "d", b"scan");
        assert_eq!(a, result_id("c", "d", b"scan"));
        assert_ne!(a, result_id("c", "d2", b"scan"));
        assert_ne!(a, result_id("c", "d", b"scan2"));
    }
}
