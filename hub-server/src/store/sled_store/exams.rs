//! The sled side of examinations. Trees: `exams` (exam id → JSON `Exam`), `worklist`
//! (clinic \0 flagged read tier deadline uncertainty exam → empty: priority order per
//! clinic), `patients` (clinic \0 patient key day exam → empty), `exam_clinics` (clinic
//! → empty), `claims` (exam → JSON `Claim`), `reads` (exam → JSON `Reads`) and
//! `reviewed` (read time, exam → JSON `Turnaround`). The first four change in the same
//! transaction as the results they index.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use pleura_shared::{ExamId, ScanRecord};
use sled::transaction::{ConflictableTransactionError as Cte, TransactionalTree};
use sled::Transactional;

use super::{backend, retraction_key, SledStore};
use crate::store::exams::{
    patient_key, worklist_prefix, Claim, ClaimOutcome, Exam, Read, ReadOutcome, Reads, Turnaround,
    Undelivered, Worklist, WorklistQuery, WorklistRow,
};
use crate::store::{ClinicScope, Retraction, StoreError};

type TxResult<T> = Result<T, Cte<String>>;

fn abort(e: impl std::fmt::Display) -> Cte<String> {
    Cte::Abort(e.to_string())
}

pub(super) fn decode_exam(key: &[u8], v: &[u8]) -> Option<Exam> {
    match serde_json::from_slice::<Exam>(v) {
        Ok(e) if e.id.as_bytes() == key => Some(e),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(exam = %hex::encode(key), error = %e, "stored examination no longer decodes");
            None
        }
    }
}

/// The exam trees a result commit writes, inside its transaction.
pub(super) struct ExamTx<'a> {
    pub exams: &'a TransactionalTree,
    pub worklist: &'a TransactionalTree,
    pub patients: &'a TransactionalTree,
    pub clinics: &'a TransactionalTree,
    /// Where a commit marks the results it supersedes (None: a retraction, which
    /// supersedes nothing).
    pub superseded: Option<&'a TransactionalTree>,
    /// The ministry's roll-ups, moved with every examination written.
    pub rollups: &'a TransactionalTree,
}

impl ExamTx<'_> {
    fn load(&self, id: &ExamId) -> TxResult<Option<Exam>> {
        Ok(self
            .exams
            .get(id.as_bytes())?
            .and_then(|v| decode_exam(id.as_bytes(), &v)))
    }

    /// Stores `e`, moving its worklist entry from where `before` had it.
    fn store(&self, before: Option<&Exam>, e: &Exam) -> TxResult<()> {
        let old = before.and_then(Exam::worklist_key);
        let new = e.worklist_key();
        if old != new {
            if let Some(k) = old {
                self.worklist.remove(k)?;
            }
            if let Some(k) = &new {
                self.worklist.insert(k.as_slice(), &[][..])?;
            }
        }
        super::rollups::apply(self.rollups, before, e)?;
        self.exams
            .insert(e.id.as_bytes(), serde_json::to_vec(e).map_err(abort)?)?;
        Ok(())
    }

    /// Adds a newly stored result to its examination.
    pub fn add(&self, r: &ScanRecord, received_at_ms: u64, retracted: bool) -> TxResult<()> {
        let id = Exam::id_of(r);
        let before = self.load(&id)?;
        let mut e = before.clone().unwrap_or_else(|| Exam::empty_for(r));
        if before.is_none() {
            self.clinics.insert(r.clinic.as_bytes(), &[][..])?;
            if let Some(p) = &r.patient_key {
                self.patients
                    .insert(patient_key(&r.clinic, p, r.scan_day, &id), &[][..])?;
            }
        }
        let superseded = e.add(r, received_at_ms, retracted);
        if let Some(t) = self.superseded {
            for id in &superseded {
                t.insert(id.as_bytes(), &[][..])?;
            }
        } else if !superseded.is_empty() {
            return Err(abort("a result added outside a commit superseded another"));
        }
        self.store(before.as_ref(), &e)
    }

    /// Takes a withdrawn result out of its examination's reading.
    pub fn retract(&self, r: &ScanRecord) -> TxResult<()> {
        let id = Exam::id_of(r);
        let Some(before) = self.load(&id)? else {
            return Ok(());
        };
        let mut e = before.clone();
        if e.retract(&r.id) {
            self.store(Some(&before), &e)?;
        }
        Ok(())
    }
}

/// A prefix scan of the worklist index, ordered by what follows the prefix.
struct Cursor {
    prefix_len: usize,
    iter: sled::Iter,
}

impl SledStore {
    /// Builds the examination index from the stored results (a store written before it
    /// existed). Runs once: only when there are results and no examinations.
    pub(super) fn index_exams_if_missing(&self) -> Result<(), StoreError> {
        if !self.exams.is_empty() || self.cases.is_empty() {
            return Ok(());
        }
        let mut built: BTreeMap<ExamId, Exam> = BTreeMap::new();
        let mut retracted: Vec<ScanRecord> = Vec::new();
        let mut superseded = Vec::new();
        self.each_case(|c| {
            let r = &c.record;
            let held = self
                .retractions
                .get(retraction_key(&r.id, &r.clinic, &r.device))
                .ok()
                .flatten()
                .is_some();
            superseded.extend(
                built
                    .entry(Exam::id_of(r))
                    .or_insert_with(|| Exam::empty_for(r))
                    .add(r, c.received_at_ms, held),
            );
            if held {
                retracted.push(r.clone());
            }
        });
        for id in &superseded {
            self.superseded
                .insert(id.as_bytes(), &[][..])
                .map_err(backend)?;
        }
        for e in built.values() {
            self.exam_clinics
                .insert(e.clinic.as_bytes(), &[][..])
                .map_err(backend)?;
            if let Some(p) = &e.patient_key {
                self.patients
                    .insert(patient_key(&e.clinic, p, e.day, &e.id), &[][..])
                    .map_err(backend)?;
            }
            if let Some(k) = e.worklist_key() {
                self.worklist.insert(k, &[][..]).map_err(backend)?;
            }
            let v = serde_json::to_vec(e).map_err(backend)?;
            self.exams.insert(e.id.as_bytes(), v).map_err(backend)?;
        }
        tracing::info!(
            exams = built.len(),
            "examination index built from the stored results"
        );
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    /// Applies recorded retractions to the examinations of the results they withdraw.
    pub(super) fn retract_from_exams(&self, retractions: &[Retraction]) -> Result<(), StoreError> {
        for r in retractions {
            let Some(case) = self.get_case_only(&r.id)? else {
                continue;
            };
            if case.clinic != r.clinic || case.device != r.device {
                continue;
            }
            (
                &self.exams,
                &self.worklist,
                &self.patients,
                &self.exam_clinics,
                &self.rollups,
            )
                .transaction(|(exams, worklist, patients, clinics, rollups)| {
                    ExamTx {
                        exams,
                        worklist,
                        patients,
                        clinics,
                        superseded: None,
                        rollups,
                    }
                    .retract(&case)
                })
                .map_err(backend)?;
        }
        Ok(())
    }

    pub(super) fn exam_get(&self, id: &ExamId) -> Result<Option<Exam>, StoreError> {
        Ok(self
            .exams
            .get(id.as_bytes())
            .map_err(backend)?
            .and_then(|v| decode_exam(id.as_bytes(), &v)))
    }

    pub(super) fn clinics_in(&self, scope: &ClinicScope) -> Result<Vec<String>, StoreError> {
        match scope {
            ClinicScope::Only(s) => Ok(s.iter().cloned().collect()),
            ClinicScope::All => self
                .exam_clinics
                .iter()
                .keys()
                .map(|k| {
                    k.map(|k| String::from_utf8_lossy(&k).into_owned())
                        .map_err(backend)
                })
                .collect(),
        }
    }

    /// Merges the per-clinic index ranges in priority order: reads only the entries a
    /// page needs (plus the ones it skips), never an out-of-scope clinic's.
    pub(super) fn exam_worklist(
        &self,
        q: &WorklistQuery,
        now_ms: u64,
    ) -> Result<Worklist, StoreError> {
        let limit = if q.limit == 0 { 50 } else { q.limit };
        let flags: &[bool] = match q.flagged {
            Some(true) => &[true],
            Some(false) => &[false],
            None => &[false, true],
        };
        let reads: &[bool] = match q.read {
            Some(true) => &[true],
            Some(false) => &[false],
            None => &[false, true],
        };
        let mut cursors = Vec::new();
        for clinic in self.clinics_in(&q.scope)? {
            for &f in flags {
                for &r in reads {
                    let prefix = worklist_prefix(&clinic, f, r);
                    cursors.push(Cursor {
                        prefix_len: prefix.len(),
                        iter: self.worklist.scan_prefix(prefix),
                    });
                }
            }
        }
        let mut heap: BinaryHeap<Reverse<(Vec<u8>, usize)>> = BinaryHeap::new();
        let next = |c: &mut Cursor| -> Result<Option<Vec<u8>>, StoreError> {
            match c.iter.next() {
                Some(kv) => {
                    let (k, _) = kv.map_err(backend)?;
                    Ok(Some(k[c.prefix_len..].to_vec()))
                }
                None => Ok(None),
            }
        };
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some(s) = next(c)? {
                heap.push(Reverse((s, i)));
            }
        }
        let mut out = Worklist::default();
        let mut skipped = 0;
        while let Some(Reverse((suffix, i))) = heap.pop() {
            if let Some(s) = next(&mut cursors[i])? {
                heap.push(Reverse((s, i)));
            }
            if skipped < q.offset {
                skipped += 1;
                continue;
            }
            if out.rows.len() == limit {
                out.more = true;
                break;
            }
            let Some(id) = ExamId::from_slice(&suffix[suffix.len() - 16..]) else {
                continue;
            };
            let Some(exam) = self.exam_get(&id)? else {
                continue;
            };
            out.rows.push(WorklistRow {
                priority: exam.priority(),
                claim: self.exam_claim(&id, now_ms)?,
                exam,
            });
        }
        Ok(out)
    }

    pub(super) fn exams_of_patient(
        &self,
        clinic: &str,
        patient: &[u8; 16],
    ) -> Result<Vec<Exam>, StoreError> {
        let mut prefix = clinic.as_bytes().to_vec();
        prefix.push(0);
        prefix.extend_from_slice(patient);
        let mut out = Vec::new();
        for k in self.patients.scan_prefix(&prefix).keys() {
            let k = k.map_err(backend)?;
            if let Some(e) = ExamId::from_slice(&k[k.len() - 16..])
                .map(|id| self.exam_get(&id))
                .transpose()?
                .flatten()
            {
                out.push(e);
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.day));
        Ok(out)
    }

    pub(super) fn exam_claim(&self, id: &ExamId, now_ms: u64) -> Result<Option<Claim>, StoreError> {
        Ok(self
            .claims
            .get(id.as_bytes())
            .map_err(backend)?
            .and_then(|v| serde_json::from_slice::<Claim>(&v).ok())
            .filter(|c| c.live(now_ms)))
    }

    pub(super) fn exam_take_claim(
        &self,
        id: &ExamId,
        user: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<ClaimOutcome, StoreError> {
        let res = (&self.claims, &self.exams).transaction(|(claims, exams)| {
            let Some(mut exam) = exams
                .get(id.as_bytes())?
                .and_then(|v| decode_exam(id.as_bytes(), &v))
            else {
                return Ok(ClaimOutcome::NoSuchExam);
            };
            let held = claims
                .get(id.as_bytes())?
                .and_then(|v| serde_json::from_slice::<Claim>(&v).ok())
                .filter(|c| c.live(now_ms));
            if let Some(c) = held.as_ref().filter(|c| c.user != user) {
                return Ok(ClaimOutcome::HeldBy(c.clone()));
            }
            let claim = Claim {
                user: user.to_string(),
                at_ms: held.map_or(now_ms, |c| c.at_ms),
                expires_at_ms: now_ms + ttl_ms,
            };
            claims.insert(id.as_bytes(), serde_json::to_vec(&claim).map_err(abort)?)?;
            if exam.claimed_at_ms.is_none() {
                exam.claimed_at_ms = Some(now_ms);
                exams.insert(id.as_bytes(), serde_json::to_vec(&exam).map_err(abort)?)?;
            }
            Ok(ClaimOutcome::Claimed(claim))
        });
        let out = res.map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(out)
    }

    pub(super) fn exam_release(&self, id: &ExamId, user: &str) -> Result<bool, StoreError> {
        let Some(v) = self.claims.get(id.as_bytes()).map_err(backend)? else {
            return Ok(false);
        };
        let mine = serde_json::from_slice::<Claim>(&v).is_ok_and(|c| c.user == user);
        if !mine {
            return Ok(false);
        }
        let swapped = self
            .claims
            .compare_and_swap(id.as_bytes(), Some(v), None::<&[u8]>)
            .map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(swapped.is_ok())
    }

    pub(super) fn exam_record_read(
        &self,
        id: &ExamId,
        read: Read,
    ) -> Result<ReadOutcome, StoreError> {
        let trees = (
            &self.reads,
            &self.exams,
            &self.worklist,
            &self.claims,
            &self.reviewed,
            &self.outbox,
            &self.rollups,
        );
        let res = trees.transaction(
            |(reads, exams, worklist, claims, reviewed, outbox, rollups)| {
                let Some(before) = exams
                    .get(id.as_bytes())?
                    .and_then(|v| decode_exam(id.as_bytes(), &v))
                else {
                    return Ok(ReadOutcome::NoSuchExam);
                };
                let held: Option<Reads> = reads
                    .get(id.as_bytes())?
                    .and_then(|v| serde_json::from_slice(&v).ok());
                // Results that arrived after the latest verdict take a new (not a second) one.
                let fresh = before.reads > 0 && before.new_since_read().next().is_some();
                let next = match (held, read.second_read) {
                    (None, false) => Reads {
                        first: read.clone(),
                        second: None,
                        later: Vec::new(),
                    },
                    (None, true) => return Ok(ReadOutcome::NoFirstRead),
                    (Some(mut r), false) if fresh => {
                        r.later.push(read.clone());
                        r
                    }
                    (Some(r), true) if r.first.reviewer == read.reviewer => {
                        return Ok(ReadOutcome::OwnRead)
                    }
                    (Some(r), true) if r.second.is_none() => Reads {
                        second: Some(read.clone()),
                        ..r
                    },
                    (Some(_), _) => return Ok(ReadOutcome::AlreadyRead),
                };
                reads.insert(id.as_bytes(), serde_json::to_vec(&next).map_err(abort)?)?;
                outbox.insert(Undelivered::of(id, &read).key(), &[][..])?;
                let mut e = before.clone();
                e.reads = if next.second.is_some() { 2 } else { 1 };
                e.verdict = Some(next.latest().impression);
                if !read.second_read {
                    e.mark_read();
                }
                if e.read_at_ms.is_none() {
                    e.read_at_ms = Some(read.at_ms);
                    let t = Turnaround {
                        clinic: e.clinic.clone(),
                        arrived_ms: e.first_received_ms,
                        claimed_ms: e.claimed_at_ms,
                        read_ms: read.at_ms,
                    };
                    let mut k = read.at_ms.to_be_bytes().to_vec();
                    k.extend_from_slice(id.as_bytes());
                    reviewed.insert(k, serde_json::to_vec(&t).map_err(abort)?)?;
                }
                let (old, new) = (before.worklist_key(), e.worklist_key());
                if old != new {
                    if let Some(k) = old {
                        worklist.remove(k)?;
                    }
                    if let Some(k) = new {
                        worklist.insert(k, &[][..])?;
                    }
                }
                super::rollups::apply(rollups, Some(&before), &e)?;
                exams.insert(id.as_bytes(), serde_json::to_vec(&e).map_err(abort)?)?;
                claims.remove(id.as_bytes())?;
                Ok(ReadOutcome::Recorded)
            },
        );
        let out = res.map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(out)
    }

    pub(super) fn exam_reads(&self, id: &ExamId) -> Result<Option<Reads>, StoreError> {
        Ok(self
            .reads
            .get(id.as_bytes())
            .map_err(backend)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    pub(super) fn exam_turnaround(
        &self,
        scope: &ClinicScope,
        since_ms: u64,
    ) -> Result<Vec<Turnaround>, StoreError> {
        let mut out = Vec::new();
        for kv in self.reviewed.range(since_ms.to_be_bytes()..) {
            let (_, v) = kv.map_err(backend)?;
            if let Ok(t) = serde_json::from_slice::<Turnaround>(&v) {
                if scope.allows(&t.clinic) {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
