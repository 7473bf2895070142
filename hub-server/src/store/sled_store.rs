//! sled backend: `cases` maps result id → received-at (8 bytes BE) + encoded record;
//! `devices` maps "clinic/device" → JSON stats; `retractions` maps result id +
//! "clinic/device" → JSON `Retraction`. One transaction and one flush per batch.
//! Listing and aggregation scan every case (sled has no secondary indexes); fine for a
//! regional hub, and the reason the trait hands the whole query to the backend.
//! Examinations (`exams`) are indexed on commit, in the same transaction.

mod current;
mod exams;
mod fleet;
mod outbox;
mod rollups;

use std::collections::HashMap;
use std::path::Path;

use pleura_shared::{ResultId, ScanRecord};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use self::exams::ExamTx;
use super::exams::{
    Claim, ClaimOutcome, Exam, Read, ReadOutcome, Reads, Turnaround, Undelivered, Worklist,
    WorklistQuery,
};
use super::rollup::RollupRow;
use super::{
    AggregateQuery, Aggregates, CaseFilter, CaseSummary, ClinicDay, ClinicScope, Commit,
    DeviceStats, HubStore, Listing, Retraction, Scan, StoreError, StoredCase,
};
use pleura_shared::ExamId;

/// The store's folder inside the hub's data directory.
pub const STORE_DIR: &str = "cases.sled";

pub struct SledStore {
    db: sled::Db,
    cases: sled::Tree,
    devices: sled::Tree,
    retractions: sled::Tree,
    exams: sled::Tree,
    worklist: sled::Tree,
    patients: sled::Tree,
    exam_clinics: sled::Tree,
    claims: sled::Tree,
    reads: sled::Tree,
    reviewed: sled::Tree,
    /// Reads not yet queued to every device: `Undelivered::key` → empty.
    outbox: sled::Tree,
    /// Results another analysis of their scan superseded: result id → empty. Written
    /// in the commit that supersedes them, so listings skip them without the exams.
    superseded: sled::Tree,
    /// The ministry's roll-ups: `rollup::key(clinic, day)` → JSON `Rollup`.
    rollups: sled::Tree,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Whether an error opening the store is the machine's (a second hub holding the lock,
/// permissions, a full disk), not damaged files: such a store must not be set aside.
fn environmental(e: &sled::Error) -> bool {
    let sled::Error::Io(io) = e else {
        return false;
    };
    matches!(io.kind(), std::io::ErrorKind::PermissionDenied)
        || matches!(
            io.raw_os_error(),
            Some(
                libc::ENOSPC
                    | libc::EDQUOT
                    | libc::EROFS
                    | libc::EMFILE
                    | libc::ENFILE
                    | libc::EACCES
            )
        )
        || pleura_shared::sled_open::is_lock_error(e)
}

fn open_error(e: sled::Error) -> StoreError {
    if environmental(&e) {
        StoreError::Backend(e.to_string())
    } else {
        StoreError::Damaged(e.to_string())
    }
}

/// Whether `new` is `held` rebuilt by its device (re-analysed from the same scan after
/// the edge's store was damaged): byte-identical to the stored record once its
/// `analysed_at_ms` and demographics are set back, which also means the same clinic and
/// device.
fn rebuilt(held: &ScanRecord, new: &ScanRecord) -> bool {
    if held.clinic != new.clinic || held.device != new.device {
        return false;
    }
    let mut again = new.clone();
    again.analysed_at_ms = held.analysed_at_ms;
    // The clinic may record the patient's age or sex after the first analysis.
    again.demographics = held.demographics;
    again.encode() == held.encode()
}

/// A stored retraction value, or None (with a warning) if it no longer decodes: such a
/// value is skipped, counted, and overwritten when its device records it again.
fn decode_retraction(key: &[u8], v: &[u8]) -> Option<Retraction> {
    match serde_json::from_slice(v) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(key = %hex::encode(key), error = %e,
                "stored retraction no longer decodes; skipped until its device records it again");
            None
        }
    }
}

fn retraction_key(id: &ResultId, clinic: &str, device: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.extend_from_slice(format!("{clinic}/{device}").as_bytes());
    k
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = pleura_shared::sled_open::open(&sled::Config::new().path(dir.join(STORE_DIR)))
            .map_err(open_error)?;
        let tree = |name: &str| db.open_tree(name).map_err(open_error);
        let store = Self {
            cases: tree("cases")?,
            devices: tree("devices")?,
            retractions: tree("retractions")?,
            exams: tree("exams")?,
            worklist: tree("worklist")?,
            patients: tree("patients")?,
            exam_clinics: tree("exam_clinics")?,
            claims: tree("claims")?,
            reads: tree("reads")?,
            reviewed: tree("reviewed")?,
            outbox: tree("outbox")?,
            superseded: tree("superseded")?,
            rollups: tree("rollups")?,
            db,
        };
        store.index_exams_if_missing()?;
        store.rollups_if_missing()?;
        Ok(store)
    }

    /// The stored record of `id`, without its retraction.
    fn get_case_only(&self, id: &ResultId) -> Result<Option<ScanRecord>, StoreError> {
        match self.cases.get(id.as_bytes()).map_err(backend)? {
            Some(v) => Ok(Some(Self::decode(id.as_bytes(), &v)?.record)),
            None => Ok(None),
        }
    }

    fn decode(key: &[u8], v: &[u8]) -> Result<StoredCase, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: hex::encode(key),
            reason,
        };
        if v.len() < 8 {
            return Err(corrupt("shorter than its header".into()));
        }
        let received_at_ms = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        let record = ScanRecord::decode(&v[8..]).map_err(|e| corrupt(e.to_string()))?;
        if record.id.as_bytes() != key {
            return Err(corrupt("stored under another id".into()));
        }
        Ok(StoredCase {
            record,
            received_at_ms,
            retraction: None,
        })
    }

    /// Every readable retraction by its key, and how many stored ones no longer decode.
    fn retractions_by_key(&self) -> Result<(HashMap<Vec<u8>, Retraction>, u64), StoreError> {
        let (all, corrupt) = self.all_retractions()?;
        let by_key = all
            .into_iter()
            .map(|r| (retraction_key(&r.id, &r.clinic, &r.device), r))
            .collect();
        Ok((by_key, corrupt))
    }

    /// Calls `f` with every readable case; returns how many could not be read.
    fn each_case(&self, mut f: impl FnMut(StoredCase)) -> u64 {
        let mut corrupt = 0;
        for kv in self.cases.iter() {
            let Ok((k, v)) = kv else {
                // sled's iterator cannot step past a damaged page.
                return corrupt + 1;
            };
            match Self::decode(&k, &v) {
                Ok(c) => f(c),
                Err(e) => {
                    tracing::warn!(error = %e, "stored case skipped");
                    corrupt += 1;
                }
            }
        }
        corrupt
    }

    /// Every readable retraction, and how many stored ones no longer decode.
    fn all_retractions(&self) -> Result<(Vec<Retraction>, u64), StoreError> {
        let mut out = (Vec::new(), 0);
        for kv in self.retractions.iter() {
            let (k, v) = kv.map_err(backend)?;
            match decode_retraction(&k, &v) {
                Some(r) => out.0.push(r),
                None => out.1 += 1,
            }
        }
        Ok(out)
    }
}

impl HubStore for SledStore {
    fn commit(
        &self,
        records: &[ScanRecord],
        received_at_ms: u64,
    ) -> Result<Vec<Commit>, StoreError> {
        let trees = (
            &self.cases,
            &self.devices,
            &self.retractions,
            &self.exams,
            &self.worklist,
            &self.patients,
            &self.exam_clinics,
            &self.superseded,
            &self.rollups,
        );
        let result = trees.transaction(|t| {
            let (
                cases,
                devices,
                retractions,
                exams,
                worklist,
                patients,
                clinics,
                superseded,
                rollups,
            ) = t;
            let exam_tx = ExamTx {
                exams,
                worklist,
                patients,
                clinics,
                superseded: Some(superseded),
                rollups,
            };
            let mut outcome = Vec::with_capacity(records.len());
            let mut stats: HashMap<String, DeviceStats> = HashMap::new();
            for r in records {
                let dev_key = format!("{}/{}", r.clinic, r.device);
                if !stats.contains_key(&dev_key) {
                    let s = match devices.get(dev_key.as_bytes())? {
                        Some(v) => serde_json::from_slice(&v).unwrap_or_default(),
                        None => DeviceStats {
                            clinic: r.clinic.clone(),
                            device: r.device.clone(),
                            ..Default::default()
                        },
                    };
                    stats.insert(dev_key.clone(), s);
                }
                let s = stats.get_mut(&dev_key).expect("inserted above");
                s.last_received_ms = received_at_ms;
                let encoded = r.encode();
                if let Some(old) = cases.get(r.id.as_bytes())? {
                    // Same bytes means same clinic, device and content. A value that no
                    // longer decodes was damaged on disk: the re-sent record replaces it.
                    if old.get(8..) == Some(encoded.as_slice()) {
                        s.duplicates += 1;
                        outcome.push(Commit::Duplicate);
                        continue;
                    }
                    if let Ok(held) = Self::decode(r.id.as_bytes(), &old) {
                        if rebuilt(&held.record, r) {
                            // Re-analysed at the edge from its scan: the stored one stands.
                            s.duplicates += 1;
                            outcome.push(Commit::Duplicate);
                        } else {
                            s.conflicts += 1;
                            outcome.push(Commit::Conflict);
                        }
                        continue;
                    }
                }
                let mut v = received_at_ms.to_be_bytes().to_vec();
                v.extend_from_slice(&encoded);
                cases.insert(r.id.as_bytes(), v)?;
                let retracted = retractions
                    .get(retraction_key(&r.id, &r.clinic, &r.device))?
                    .is_some();
                exam_tx.add(r, received_at_ms, retracted)?;
                s.results += 1;
                outcome.push(Commit::New);
            }
            for (k, s) in stats {
                let v = serde_json::to_vec(&s)
                    .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                devices.insert(k.as_bytes(), v)?;
            }
            Ok(outcome)
        });
        let outcome = result.map_err(|e: TransactionError<String>| backend(e))?;
        // Durable before anyone is told it is committed.
        self.db.flush().map_err(backend)?;
        Ok(outcome)
    }

    fn get(&self, id: &ResultId) -> Result<Option<StoredCase>, StoreError> {
        let Some(v) = self.cases.get(id.as_bytes()).map_err(backend)? else {
            return Ok(None);
        };
        let mut case = Self::decode(id.as_bytes(), &v)?;
        case.retraction = self.retraction(id, &case.record.clinic, &case.record.device)?;
        Ok(Some(case))
    }

    fn list(&self, filter: &CaseFilter) -> Result<Listing, StoreError> {
        let (retracted, corrupt) = self.retractions_by_key()?;
        let superseded = self.superseded_ids()?;
        let mut out = Listing {
            corrupt,
            ..Default::default()
        };
        out.corrupt += self.each_case(|mut case| {
            if filter.matches(&case.record, superseded.contains(&case.record.id)) {
                let r = &case.record;
                case.retraction = retracted
                    .get(&retraction_key(&r.id, &r.clinic, &r.device))
                    .cloned();
                out.cases.push(case);
            }
        });
        out.cases.sort_by(|a, b| {
            (b.record.scan_day, b.received_at_ms).cmp(&(a.record.scan_day, a.received_at_ms))
        });
        out.cases.drain(..filter.offset.min(out.cases.len()));
        if filter.limit > 0 {
            out.cases.truncate(filter.limit);
        }
        Ok(out)
    }

    fn aggregates(&self, query: &AggregateQuery) -> Result<Aggregates, StoreError> {
        let rows = self
            .rollup_rows(query)?
            .into_iter()
            .map(|r| ClinicDay {
                clinic: r.clinic,
                day: r.day,
                counts: r.rollup.counts(),
            })
            .filter(|r| r.counts.scans > 0)
            .collect();
        Ok(Aggregates { rows, corrupt: 0 })
    }

    fn rollups(&self, query: &AggregateQuery) -> Result<Vec<RollupRow>, StoreError> {
        self.rollup_rows(query)
    }

    fn devices(&self) -> Result<Vec<DeviceStats>, StoreError> {
        self.devices
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    id: String::from_utf8_lossy(&k).into_owned(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    fn note_contact(
        &self,
        clinic: &str,
        device: &str,
        c: &super::Contact,
    ) -> Result<(), StoreError> {
        self.fleet_note_contact(clinic, device, c)
    }

    fn count(&self) -> Result<u64, StoreError> {
        Ok(self.cases.len() as u64)
    }

    fn retract(&self, retractions: &[Retraction]) -> Result<(), StoreError> {
        for r in retractions {
            let v = serde_json::to_vec(r).map_err(backend)?;
            let k = retraction_key(&r.id, &r.clinic, &r.device);
            // The first recording stands (its time and reason are what was audited),
            // unless what is stored no longer decodes: then this one replaces it.
            let swapped = self
                .retractions
                .compare_and_swap(&k, None::<&[u8]>, Some(v.clone()))
                .map_err(backend)?;
            if let Err(cas) = swapped {
                if let Some(bad) = cas.current.filter(|c| decode_retraction(&k, c).is_none()) {
                    let _ = self
                        .retractions
                        .compare_and_swap(&k, Some(bad), Some(v))
                        .map_err(backend)?;
                }
            }
        }
        self.retract_from_exams(retractions)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn retraction(
        &self,
        id: &ResultId,
        clinic: &str,
        device: &str,
    ) -> Result<Option<Retraction>, StoreError> {
        let k = retraction_key(id, clinic, device);
        Ok(self
            .retractions
            .get(&k)
            .map_err(backend)?
            .and_then(|v| decode_retraction(&k, &v)))
    }

    fn exam(&self, id: &ExamId) -> Result<Option<Exam>, StoreError> {
        self.exam_get(id)
    }

    fn worklist(&self, q: &WorklistQuery, now_ms: u64) -> Result<Worklist, StoreError> {
        self.exam_worklist(q, now_ms)
    }

    fn patient_exams(&self, clinic: &str, patient: &[u8; 16]) -> Result<Vec<Exam>, StoreError> {
        self.exams_of_patient(clinic, patient)
    }

    fn claim(
        &self,
        exam: &ExamId,
        user: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<ClaimOutcome, StoreError> {
        self.exam_take_claim(exam, user, now_ms, ttl_ms)
    }

    fn release(&self, exam: &ExamId, user: &str) -> Result<bool, StoreError> {
        self.exam_release(exam, user)
    }

    fn claim_of(&self, exam: &ExamId, now_ms: u64) -> Result<Option<Claim>, StoreError> {
        self.exam_claim(exam, now_ms)
    }

    fn record_read(&self, exam: &ExamId, read: Read) -> Result<ReadOutcome, StoreError> {
        self.exam_record_read(exam, read)
    }

    fn reads(&self, exam: &ExamId) -> Result<Option<Reads>, StoreError> {
        self.exam_reads(exam)
    }

    fn undelivered(&self, exam: Option<&ExamId>) -> Result<Vec<Undelivered>, StoreError> {
        self.outbox_list(exam)
    }

    fn delivered(&self, read: &Undelivered) -> Result<(), StoreError> {
        self.outbox_remove(read)
    }

    fn turnaround(
        &self,
        scope: &ClinicScope,
        since_ms: u64,
    ) -> Result<Vec<Turnaround>, StoreError> {
        self.exam_turnaround(scope, since_ms)
    }

    fn reviewed_exams(&self) -> Result<Vec<(Exam, Reads)>, StoreError> {
        self.exams_with_reads()
    }

    fn scan(&self) -> Result<Scan, StoreError> {
        let (retractions, corrupt_retractions) = self.all_retractions()?;
        let mut scan = Scan {
            retractions,
            corrupt_retractions,
            ..Default::default()
        };
        for kv in self.cases.iter() {
            let (k, v) = kv.map_err(backend)?;
            match Self::decode(&k, &v) {
                Ok(c) => scan.cases.push(CaseSummary::of(&c.record)),
                Err(e) => {
                    tracing::warn!(error = %e, "stored case no longer decodes");
                    if let Ok(id) = ResultId::from_slice(&k) {
                        scan.corrupt.push(id);
                    }
                }
            }
        }
        Ok(scan)
    }
}

#[cfg(test)]
mod tests;
