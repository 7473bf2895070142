//! Opening the case store at start, whatever state its files are in: the store is
//! opened and read once in full (inside `catch_unwind`: sled can panic on damaged
//! files), compared with the journal, and an unopenable store is moved aside for a
//! fresh one. The hub always starts; a loss is said loudly (an `error!` line per
//! device, metrics, SyncStatus) and repaired by anti-entropy.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pleura_shared::journal;
use pleura_shared::{now_ms, ResultId};

use crate::antientropy::AntiEntropy;
use crate::metrics::Metrics;
use crate::store::integrity::{
    compare, drop_torn_tail, DeviceKey, Integrity, Report, JOURNAL_FILE,
};
use crate::store::STORE_DIR;
use crate::store::{HubStore, Scan, SledStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("reading the case journal {path}: {source}")]
    Journal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening the case store: {0}")]
    Store(StoreError),
    #[error("moving the damaged case store {from} aside: {source}")]
    SetAside {
        from: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the case journal {path}: {source}")]
    Backfill {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The store, checked, with what the hub needs to keep checking it.
pub struct Recovered {
    pub store: SledStore,
    pub integrity: Integrity,
    pub holdings: AntiEntropy,
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Opens the store and reads it once, turning a panic into `Damaged`.
fn open_and_scan(data_dir: &Path) -> Result<(SledStore, Scan), StoreError> {
    catch_unwind(AssertUnwindSafe(|| {
        let store = SledStore::open(data_dir)?;
        let scan = store.scan().map_err(|e| match e {
            StoreError::Backend(m) => StoreError::Damaged(m),
            e => e,
        })?;
        Ok((store, scan))
    }))
    .unwrap_or_else(|p| {
        Err(StoreError::Damaged(format!(
            "the store panicked while opening: {}",
            panic_text(p.as_ref())
        )))
    })
}

/// Opens `<data_dir>/cases.sled` and checks it against `<data_dir>/cases.journal`.
/// Errors only for what is not damage (the journal unreadable, a second hub holding the
/// store's lock, a full disk): a damaged store never stops the hub.
pub fn open_checked(data_dir: &Path, metrics: Arc<Metrics>) -> Result<Recovered, RecoveryError> {
    let jpath = data_dir.join(JOURNAL_FILE);
    let replay = journal::read(&jpath).map_err(|source| RecoveryError::Journal {
        path: jpath.clone(),
        source,
    })?;
    if replay.torn_tail {
        drop_torn_tail(&jpath).map_err(|source| RecoveryError::Backfill {
            path: jpath.clone(),
            source,
        })?;
    }
    let mut report = Report {
        journal_lines: replay.lines.len() as u64,
        journal_damaged: replay.damaged,
        journal_torn_tail: replay.torn_tail,
        ..Default::default()
    };
    let (store, scan) = match open_and_scan(data_dir) {
        Ok(x) => x,
        Err(StoreError::Damaged(why)) => {
            let from = data_dir.join(STORE_DIR);
            let to = data_dir.join(format!("{STORE_DIR}.damaged-{}", now_ms()));
            tracing::error!(store = %from.display(), kept_as = %to.display(), error = %why,
                "the case store cannot be opened; it is set aside and a fresh store started");
            std::fs::rename(&from, &to).map_err(|source| RecoveryError::SetAside {
                from: from.clone(),
                source,
            })?;
            report.set_aside = Some(to);
            open_and_scan(data_dir).map_err(RecoveryError::Store)?
        }
        Err(e) => return Err(RecoveryError::Store(e)),
    };
    // Undecodable retractions count with the cases: skipped, and recorded again by the
    // journal's restore below or by their device.
    report.corrupt_cases = scan.corrupt.len() as u64 + scan.corrupt_retractions;
    let cmp = compare(&replay.lines, &scan);
    report.journal_damaged += cmp.unreadable;

    if !cmp.restore.is_empty() {
        // A retraction the store lost is recorded again from the journal.
        match store.retract(&cmp.restore) {
            Ok(()) => report.restored_retractions = cmp.restore.len() as u64,
            Err(e) => tracing::error!(error = %e, "could not restore lost retractions"),
        }
    }
    if !cmp.backfill.is_empty() {
        let text: Vec<String> = cmp.backfill.iter().map(|l| l.encode()).collect();
        journal::Journal::open(&jpath)
            .and_then(|mut j| j.append(&text))
            .map_err(|source| RecoveryError::Backfill {
                path: jpath.clone(),
                source,
            })?;
        tracing::info!(
            lines = text.len(),
            "stored results and retractions missing from the case journal were added to it"
        );
    }
    say(&report, &cmp.missing);
    let holdings = AntiEntropy::from_cases(&scan.cases);
    let integrity =
        Integrity::new(&jpath, &replay.lines, &cmp, report, metrics).map_err(|source| {
            RecoveryError::Backfill {
                path: jpath.clone(),
                source,
            }
        })?;
    Ok(Recovered {
        store,
        integrity,
        holdings,
    })
}

/// The start-up verdict, in the log.
fn say(report: &Report, missing: &BTreeMap<DeviceKey, BTreeSet<ResultId>>) {
    let total: usize = missing.values().map(|s| s.len()).sum();
    for ((clinic, device), ids) in missing {
        tracing::error!(
            clinic,
            device,
            missing = ids.len(),
            "the case store lacks results this hub acknowledged (damaged store?); \
             they are requested again from the device by anti-entropy"
        );
    }
    if report.journal_damaged > 0 {
        tracing::error!(
            damaged_lines = report.journal_damaged,
            "the case journal has damaged lines; results they named cannot be checked"
        );
    }
    if report.corrupt_cases > 0 {
        tracing::error!(
            corrupt = report.corrupt_cases,
            "stored cases no longer decode; they are skipped until re-sent"
        );
    }
    if total > 0 || report.set_aside.is_some() {
        tracing::error!(
            missing = total,
            devices = missing.len(),
            set_aside = ?report.set_aside,
            "CASE STORE LOSS: {total} acknowledged results are missing from the store"
        );
    } else {
        tracing::info!(
            journal_lines = report.journal_lines,
            "case store checked against its journal: nothing missing"
        );
    }
}

#[cfg(test)]
mod tests;
