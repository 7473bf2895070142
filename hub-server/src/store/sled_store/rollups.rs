//! The sled side of roll-ups (`store::rollup`): tree `rollups` maps `rollup::key(clinic,
//! day)` → JSON `Rollup`. `apply` runs inside every transaction that writes an
//! examination; a store written before roll-ups existed gets them built once from its
//! examinations at open (a marker in the default tree says it is done).

use sled::transaction::{ConflictableTransactionError as Cte, TransactionalTree};

use super::exams::decode_exam;
use super::{backend, SledStore};
use crate::store::exams::Exam;
use crate::store::rollup::{self, Rollup, RollupRow};
use crate::store::{AggregateQuery, StoreError};

/// Set in the default tree once the roll-ups hold every examination.
const BUILT: &[u8] = b"rollups-built-v2";

fn decode(k: &[u8], v: &[u8]) -> Option<Rollup> {
    match serde_json::from_slice(v) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(key = %hex::encode(k), error = %e, "stored roll-up no longer decodes");
            None
        }
    }
}

/// Moves an examination's contribution from `before` to `after` (same clinic and day).
pub(super) fn apply(
    tree: &TransactionalTree,
    before: Option<&Exam>,
    after: &Exam,
) -> Result<(), Cte<String>> {
    let old = before.map(Rollup::of_exam).unwrap_or_default();
    let new = Rollup::of_exam(after);
    if old == new {
        return Ok(());
    }
    let k = rollup::key(&after.clinic, after.day);
    let mut r = tree
        .get(&k)?
        .and_then(|v| decode(&k, &v))
        .unwrap_or_default();
    if !r.sub(&old) {
        tracing::warn!(key = %hex::encode(&k),
            "a roll-up held less than its examinations: rebuild it (hub-server repair)");
    }
    r.add(&new);
    if r.is_empty() {
        tree.remove(k)?;
    } else {
        let v = serde_json::to_vec(&r).map_err(|e| Cte::Abort(e.to_string()))?;
        tree.insert(k, v)?;
    }
    Ok(())
}

impl SledStore {
    /// Builds the roll-ups from the examinations, once (a store from before them).
    pub(super) fn rollups_if_missing(&self) -> Result<(), StoreError> {
        if self.db.get(BUILT).map_err(backend)?.is_some() {
            return Ok(());
        }
        let n = self.rebuild_rollups()?;
        tracing::info!(
            clinic_days = n,
            "ministry roll-ups built from the examinations"
        );
        Ok(())
    }

    /// Recomputes every roll-up from the stored examinations; returns how many
    /// clinic-days hold counts. Not atomic with commits: run with no writer (at open).
    pub(crate) fn rebuild_rollups(&self) -> Result<usize, StoreError> {
        let mut built: std::collections::BTreeMap<Vec<u8>, Rollup> = Default::default();
        for kv in self.exams.iter() {
            let (k, v) = kv.map_err(backend)?;
            if let Some(e) = decode_exam(&k, &v) {
                let r = Rollup::of_exam(&e);
                if !r.is_empty() {
                    built
                        .entry(rollup::key(&e.clinic, e.day))
                        .or_default()
                        .add(&r);
                }
            }
        }
        self.rollups.clear().map_err(backend)?;
        for (k, r) in &built {
            let v = serde_json::to_vec(r).map_err(backend)?;
            self.rollups.insert(k.as_slice(), v).map_err(backend)?;
        }
        self.db.insert(BUILT, &[][..]).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(built.len())
    }

    /// Adds `rows` to the stored roll-ups (merged with what each clinic-day holds, via
    /// `Rollup::add`), lists their clinics and marks the roll-ups built; one batch per
    /// tree, then a flush. For benchmarks that need a year of a country's roll-ups
    /// without committing its examinations (`ministry-bench`): rows loaded here have no
    /// examinations behind them, so a `rebuild_rollups` drops them.
    #[doc(hidden)]
    pub fn load_rollups(&self, rows: &[RollupRow]) -> Result<(), StoreError> {
        let mut merged: std::collections::BTreeMap<Vec<u8>, Rollup> = Default::default();
        let mut clinics = std::collections::BTreeSet::new();
        for row in rows.iter().filter(|r| !r.rollup.is_empty()) {
            let k = rollup::key(&row.clinic, row.day);
            if !merged.contains_key(&k) {
                let held = self.rollups.get(&k).map_err(backend)?;
                let held = held.and_then(|v| decode(&k, &v)).unwrap_or_default();
                merged.insert(k.clone(), held);
            }
            merged.entry(k).or_default().add(&row.rollup);
            clinics.insert(row.clinic.as_str());
        }
        let mut batch = sled::Batch::default();
        for (k, r) in &merged {
            batch.insert(k.as_slice(), serde_json::to_vec(r).map_err(backend)?);
        }
        self.rollups.apply_batch(batch).map_err(backend)?;
        let mut listed = sled::Batch::default();
        for c in clinics {
            listed.insert(c.as_bytes(), &[][..]);
        }
        self.exam_clinics.apply_batch(listed).map_err(backend)?;
        self.db.insert(BUILT, &[][..]).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    /// The roll-ups of the clinics in scope within the day range, by clinic then day.
    /// Each clinic's days are one range read; nothing outside the scope is touched.
    pub(super) fn rollup_rows(&self, q: &AggregateQuery) -> Result<Vec<RollupRow>, StoreError> {
        let mut out = Vec::new();
        let mut clinics = self.clinics_in(&q.scope)?;
        clinics.sort();
        for clinic in clinics {
            let from = rollup::key(&clinic, q.from_day.unwrap_or(0));
            let to = rollup::key(&clinic, q.to_day.unwrap_or(u32::MAX));
            for kv in self.rollups.range(from..=to) {
                let (k, v) = kv.map_err(backend)?;
                let (Some((c, day)), Some(rollup)) = (rollup::parse_key(&k), decode(&k, &v)) else {
                    continue;
                };
                if c == clinic {
                    out.push(RollupRow {
                        clinic: c,
                        day,
                        rollup,
                    });
                }
            }
        }
        Ok(out)
    }
}
