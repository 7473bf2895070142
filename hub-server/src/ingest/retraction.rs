//! Retractions: a device withdrawing one of its results (a mistaken export, e.g. a scan
//! filed under the wrong patient). The hub keeps the case, marks it retracted (shown in
//! GetCase/ListCases, left out of aggregates), journals it and audits it once. Only the
//! device that sent a result may retract it; a retraction naming a result the hub does
//! not hold yet is recorded and applies when that device's result arrives.

use pleura_shared::wire::{self as pb, Rejection};
use pleura_shared::ResultId;

use crate::ingest::{Ingest, IngestError};
use crate::metrics::Metrics;
use crate::store::{Retraction, StoreError};

/// Longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// Checks one retraction from `clinic`/`device`: a 16-byte id and a reason of 1-200
/// characters once control characters are removed.
pub fn validate(
    w: pb::Retraction,
    clinic: &str,
    device: &str,
    now_ms: u64,
) -> Result<Retraction, Rejection> {
    let refuse = |why: String| Rejection {
        result_id: w.result_id.clone(),
        reason: format!("retraction refused: {why}"),
    };
    let id = ResultId::from_slice(&w.result_id).map_err(|e| refuse(e.to_string()))?;
    let reason: String = w
        .reason
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_string();
    let n = reason.chars().count();
    if n == 0 {
        return Err(refuse("a reason is required".into()));
    }
    if n > MAX_REASON_CHARS {
        return Err(refuse(format!(
            "reason of {n} characters (at most {MAX_REASON_CHARS})"
        )));
    }
    Ok(Retraction {
        id,
        clinic: clinic.into(),
        device: device.into(),
        reason,
        at_ms: now_ms,
    })
}

impl Ingest {
    /// Applies `items` from `clinic`/`device`: returns the ids to acknowledge as
    /// retracted (new and repeated alike) and adds refusals to `rejected`. Each new
    /// retraction is audited before it is recorded; one that cannot be audited,
    /// recorded or journaled is not acknowledged (the device sends it again), and a
    /// failure never reaches beyond the retractions it concerns.
    pub(crate) fn retract(
        &self,
        clinic: &str,
        device: &str,
        items: &[Retraction],
        rejected: &mut Vec<Rejection>,
    ) -> Vec<Vec<u8>> {
        if items.is_empty() {
            return Vec::new();
        }
        let _one_at_a_time = self.retracting.lock().unwrap_or_else(|e| e.into_inner());
        let failed = |r: &Retraction, e: &dyn std::fmt::Display| {
            tracing::error!(clinic, device, result_id = %r.id, error = %e,
                "could not record a retraction; not acknowledged, the device sends it again");
        };
        // Recorded before (acknowledged again, once journaled), and new.
        let mut repeats: Vec<Retraction> = Vec::new();
        let mut fresh: Vec<Retraction> = Vec::new();
        for r in items {
            if fresh.iter().chain(&repeats).any(|f| f.id == r.id) {
                continue;
            }
            match self.store.retraction(&r.id, clinic, device) {
                Ok(Some(stored)) => {
                    repeats.push(stored);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    failed(r, &e);
                    continue;
                }
            }
            let holder = match self.store.get(&r.id) {
                Ok(c) => c.map(|c| (c.record.clinic, c.record.device)),
                // Unreadable here means lost: it can only come back from its device.
                Err(StoreError::Corrupt { .. }) => None,
                Err(e) => {
                    failed(r, &e);
                    continue;
                }
            };
            let target = r.id.to_string();
            if let Some((c, d)) = holder.filter(|(c, d)| c != clinic || d != device) {
                Metrics::inc(&self.metrics.retractions_denied, 1);
                tracing::warn!(clinic, device, result_id = %r.id, held_by = %format!("{c}/{d}"),
                    "retraction refused: the result is another device's");
                self.audit_retraction(
                    clinic,
                    device,
                    &target,
                    "denied: the result is another device's",
                );
                rejected.push(Rejection {
                    result_id: r.id.0.to_vec(),
                    reason: "retraction refused: the hub holds this result from another device"
                        .into(),
                });
                continue;
            }
            let outcome = format!("allowed: {}", r.reason);
            if !self.audit_retraction(clinic, device, &target, &outcome) {
                continue;
            }
            fresh.push(r.clone());
        }
        let mut acked = Vec::new();
        // A repeat is acknowledged only once it is journaled too (a no-op when it is).
        match self.integrity.retracted(&repeats) {
            Ok(()) => acked.extend(repeats.iter().map(|r| r.id.0.to_vec())),
            Err(e) => repeats.iter().for_each(|r| failed(r, &e)),
        }
        if fresh.is_empty() {
            return acked;
        }
        let recorded = self
            .store
            .retract(&fresh)
            .map_err(IngestError::Store)
            .and_then(|()| {
                self.integrity
                    .retracted(&fresh)
                    .map_err(IngestError::Journal)
            });
        match recorded {
            Ok(()) => {
                Metrics::inc(&self.metrics.retractions, fresh.len() as u64);
                for r in &fresh {
                    tracing::info!(clinic, device, result_id = %r.id, "result retracted");
                    acked.push(r.id.0.to_vec());
                }
            }
            Err(e) => fresh.iter().for_each(|r| failed(r, &e)),
        }
        acked
    }

    /// One audit entry for a retraction by `clinic`/`device`; false if it could not be
    /// written (no audit log configured counts as written: unit tests only).
    fn audit_retraction(&self, clinic: &str, device: &str, target: &str, outcome: &str) -> bool {
        let Some(audit) = &self.audit else {
            return true;
        };
        let who = format!("{clinic}/{device}");
        match audit.append(&who, "device", "retract", target, outcome, "", 1) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, result_id = %target, "could not audit a retraction; not recorded");
                false
            }
        }
    }
}
