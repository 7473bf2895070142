//! Turning an MQTT message or gRPC upload into committed results and an ack. No I/O
//! here except through the store, its journal and the audit log, so every rejection
//! path has a plain unit test. A batch carries results, retractions (`retraction`)
//! and/or the device's holdings (`antientropy`); one with none of the three is refused.
//! Every batch that passes is also a contact (fleet health, `store::fleet`): its
//! sender's last-seen time and queue report are recorded before the commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pleura_shared::holdings::{Holdings, HoldingsError};
use pleura_shared::signing::{self, SignatureError};
use pleura_shared::wire::{Rejection, ResultAck, ResultBatch, SignedBatch};
use pleura_shared::{now_ms, topics, ScanRecord, SCHEMA_VERSION};
use prost::Message;

use crate::antientropy::AntiEntropy;
use crate::audit::AuditLog;
use crate::ca::{Registry, TrustError};
use crate::metrics::Metrics;
use crate::recovery::Recovered;
use crate::store::{Commit, Contact, HubStore, Integrity, QueueState, Retraction, StoreError};

/// Why a whole message was refused. `label` is the metrics reason.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("message on unexpected topic: {0}")]
    Topic(String),
    #[error("batch of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("batch of {0} results exceeds the limit of {1} per batch")]
    TooMany(usize, usize),
    #[error("payload is not a ResultBatch: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("unknown schema version {0} (this hub speaks {SCHEMA_VERSION})")]
    Schema(u32),
    #[error("batch claims {claimed} but arrived on the topic of {topic}")]
    Mismatch { claimed: String, topic: String },
    #[error("empty batch: no results, retractions or holdings")]
    Empty,
    #[error("malformed holdings: {0}")]
    Holdings(#[from] HoldingsError),
    #[error("batch of {0} retractions exceeds the limit of {1} per batch")]
    TooManyRetractions(usize, usize),
    #[error("the case journal could not be written (nothing acknowledged): {0}")]
    Journal(std::io::Error),
    #[error("sender not trusted: {0}")]
    Untrusted(#[from] TrustError),
    #[error("unsigned batch from {0} (this hub requires signed batches)")]
    Unsigned(String),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IngestError {
    pub fn label(&self) -> &'static str {
        match self {
            IngestError::Topic(_) => "topic",
            IngestError::TooLarge(..) => "too_large",
            IngestError::TooMany(..) => "too_many_records",
            IngestError::Decode(_) | IngestError::Holdings(_) => "malformed",
            IngestError::TooManyRetractions(..) => "too_many_records",
            IngestError::Journal(_) => "store",
            IngestError::Schema(_) => "schema_version",
            IngestError::Mismatch { .. } => "identity_mismatch",
            IngestError::Empty => "empty",
            IngestError::Untrusted(_) => "untrusted_device",
            IngestError::Unsigned(_) | IngestError::Signature(_) => "signature",
            IngestError::Store(_) => "store",
        }
    }
}

pub struct Ingest {
    pub store: Arc<dyn HubStore>,
    pub metrics: Arc<Metrics>,
    /// Largest batch, bytes (the signed envelope), on every path: MQTT payloads and gRPC
    /// uploads alike. Config `mqtt.max_payload`; default `MAX_BATCH_BYTES`.
    pub max_payload: usize,
    /// Most results in one batch, on every path.
    pub max_records: usize,
    /// Enrolled devices and their keys; None only in insecure development mode, where
    /// unsigned batches are accepted.
    pub registry: Option<Arc<Registry>>,
    /// The journal of what was acknowledged, and what the store lost.
    pub integrity: Arc<Integrity>,
    /// What the hub holds per device, for anti-entropy.
    pub holdings: Arc<AntiEntropy>,
    /// Where retractions (and refused ones) are recorded; None only in unit tests.
    pub audit: Option<Arc<AuditLog>>,
    /// Retractions are checked, audited and recorded one batch at a time, so that a
    /// retraction arriving twice at once is audited once.
    pub(crate) retracting: Mutex<()>,
}

/// A committed batch: the ack to send and to which device.
pub struct Outcome {
    pub clinic: String,
    pub device: String,
    pub ack: ResultAck,
}

/// A message that passed validation, waiting to be committed (possibly together with
/// others: one durable flush for many messages is what makes ingest fast).
pub struct Prepared {
    pub clinic: String,
    pub device: String,
    pub good: Vec<ScanRecord>,
    pub rejected: Vec<Rejection>,
    pub retractions: Vec<Retraction>,
    pub holdings: Option<Holdings>,
    /// The queue the device reported with the batch (None from agents before #16).
    pub queue: Option<QueueState>,
}

impl Ingest {
    /// Ingest over a checked store (`recovery::open_checked`), with the default
    /// batch limits and no audit log (set `audit` to record retractions).
    pub fn new(
        recovered: Recovered,
        metrics: Arc<Metrics>,
        registry: Option<Arc<Registry>>,
    ) -> Self {
        Self {
            store: Arc::new(recovered.store),
            metrics,
            max_payload: pleura_shared::record::MAX_BATCH_BYTES,
            max_records: pleura_shared::record::MAX_BATCH_RECORDS,
            registry,
            integrity: Arc::new(recovered.integrity),
            holdings: Arc::new(recovered.holdings),
            audit: None,
            retracting: Mutex::new(()),
        }
    }

    /// An MQTT message: the topic names the sender's clinic and device.
    pub fn mqtt_message(&self, topic: &str, payload: &[u8]) -> Result<Outcome, IngestError> {
        let p = self.prepare_mqtt(topic, payload)?;
        Ok(self.commit(vec![p])?.remove(0))
    }

    /// A signed batch from gRPC; `sender` is the device its TLS certificate names.
    pub fn upload(
        &self,
        signed: SignedBatch,
        sender: Option<(String, String)>,
    ) -> Result<Outcome, IngestError> {
        let batch = self.open(&signed)?;
        let p = self.prepare(batch, sender)?;
        Ok(self.commit(vec![p])?.remove(0))
    }

    pub fn prepare_mqtt(&self, topic: &str, payload: &[u8]) -> Result<Prepared, IngestError> {
        let sender = topics::parse_results(topic).map_err(|e| IngestError::Topic(e.to_string()))?;
        if payload.len() > self.max_payload {
            return Err(IngestError::TooLarge(payload.len(), self.max_payload));
        }
        let batch = self.open(&SignedBatch::decode(payload)?)?;
        self.prepare(batch, Some(sender))
    }

    /// Decodes the batch and checks it was signed by the enrolled, unrevoked key of
    /// the clinic/device it claims. Whatever carried it (any broker, any topic), a
    /// batch that passes came from that device.
    pub fn open(&self, signed: &SignedBatch) -> Result<ResultBatch, IngestError> {
        let size = signed.encoded_len();
        if size > self.max_payload {
            return Err(IngestError::TooLarge(size, self.max_payload));
        }
        let batch = ResultBatch::decode(signed.batch.as_slice())?;
        if batch.results.len() > self.max_records {
            return Err(IngestError::TooMany(batch.results.len(), self.max_records));
        }
        if batch.retractions.len() > self.max_records {
            return Err(IngestError::TooManyRetractions(
                batch.retractions.len(),
                self.max_records,
            ));
        }
        if batch.schema_version != SCHEMA_VERSION {
            return Err(IngestError::Schema(batch.schema_version));
        }
        let Some(registry) = &self.registry else {
            return Ok(batch);
        };
        let who = topics::client_id(&batch.clinic_id, &batch.device_id);
        if signed.signature.is_empty() {
            return Err(IngestError::Unsigned(who));
        }
        let dev = registry.trusted(&batch.clinic_id, &batch.device_id, None)?;
        let key = hex::decode(&dev.public_key).map_err(|e| {
            TrustError::Registry(format!("public key of {who} in the registry: {e}"))
        })?;
        signing::verify(&key, &signed.batch, &signed.signature, &who)?;
        Ok(batch)
    }

    /// Validates a batch that `open` let through; `sender` is the identity the transport
    /// vouches for. Private: nothing may skip the signature and schema checks in `open`.
    fn prepare(
        &self,
        batch: ResultBatch,
        sender: Option<(String, String)>,
    ) -> Result<Prepared, IngestError> {
        let (clinic, device) = sender.unwrap_or((batch.clinic_id.clone(), batch.device_id.clone()));
        if batch.clinic_id != clinic || batch.device_id != device {
            return Err(IngestError::Mismatch {
                claimed: format!("{}/{}", batch.clinic_id, batch.device_id),
                topic: format!("{clinic}/{device}"),
            });
        }
        if batch.results.is_empty() && batch.retractions.is_empty() && batch.holdings.is_none() {
            return Err(IngestError::Empty);
        }
        let holdings = batch
            .holdings
            .as_ref()
            .map(Holdings::from_wire)
            .transpose()?;
        let queue = batch.queue.as_ref().map(QueueState::from_wire);
        let mut retractions = Vec::with_capacity(batch.retractions.len());
        let mut good = Vec::with_capacity(batch.results.len());
        let mut rejected = Vec::new();
        for w in batch.results {
            let id = w.result_id.clone();
            match ScanRecord::from_wire(w) {
                Ok(r) if r.clinic == clinic && r.device == device => good.push(r),
                Ok(r) => rejected.push(Rejection {
                    result_id: id,
                    reason: format!(
                        "record claims {}/{}, sender is {clinic}/{device}",
                        r.clinic, r.device
                    ),
                }),
                Err(e) => rejected.push(Rejection {
                    result_id: id,
                    reason: e.to_string(),
                }),
            }
        }
        let now = now_ms();
        for w in batch.retractions {
            match crate::ingest::retraction::validate(w, &clinic, &device, now) {
                Ok(r) => retractions.push(r),
                Err(rej) => rejected.push(rej),
            }
        }
        for r in &rejected {
            tracing::warn!(clinic, device, reason = %r.reason, "result rejected");
        }
        Ok(Prepared {
            clinic,
            device,
            good,
            rejected,
            retractions,
            holdings,
            queue,
        })
    }

    /// Commits every prepared message in one durable write; one ack per message.
    pub fn commit(&self, prepared: Vec<Prepared>) -> Result<Vec<Outcome>, IngestError> {
        // First, so that the commit's flush takes them to disk too.
        self.note_contacts(&prepared);
        let all: Vec<ScanRecord> = prepared
            .iter()
            .flat_map(|p| p.good.iter().cloned())
            .collect();
        let started = Instant::now();
        let outcome = if all.is_empty() {
            vec![]
        } else {
            self.store.commit(&all, now_ms())?
        };
        Metrics::inc(&self.metrics.commit_batches, 1);
        Metrics::inc(
            &self.metrics.commit_micros,
            started.elapsed().as_micros() as u64,
        );
        // The holdings mirror the store: what it now holds counts whatever the journal
        // write below does. (Added after it, a failed append would leave these out for
        // good: their re-sending comes back as Duplicate, which never adds.)
        for (r, c) in all.iter().zip(&outcome) {
            match c {
                Commit::New => self.holdings.add(r),
                Commit::Duplicate => self.follow_rebuilt(r),
                Commit::Conflict => {}
            }
        }
        // Journaled (and synced) before any ack: what was acked is known even if the
        // store later loses it.
        let held: Vec<&ScanRecord> = all
            .iter()
            .zip(&outcome)
            .filter(|(_, c)| **c != Commit::Conflict)
            .map(|(r, _)| r)
            .collect();
        self.integrity
            .committed(&held)
            .map_err(IngestError::Journal)?;
        let count = |k: Commit| outcome.iter().filter(|c| **c == k).count() as u64;
        Metrics::inc(&self.metrics.results_committed, count(Commit::New));
        Metrics::inc(&self.metrics.results_duplicate, count(Commit::Duplicate));
        Metrics::inc(&self.metrics.results_conflict, count(Commit::Conflict));
        let mut outcome = outcome.into_iter();
        Ok(prepared
            .into_iter()
            .map(|mut p| {
                let mut committed = Vec::with_capacity(p.good.len());
                for r in &p.good {
                    // An empty outcome (nothing to commit) cannot happen for a record.
                    match outcome.next().unwrap_or(Commit::Conflict) {
                        Commit::New | Commit::Duplicate => committed.push(r.id.0.to_vec()),
                        Commit::Conflict => p.rejected.push(self.conflict(r)),
                    }
                }
                Metrics::inc(&self.metrics.results_rejected, p.rejected.len() as u64);
                // Per message, after its results are stored: a retraction that cannot be
                // recorded is left unacknowledged (the device sends it again); it never
                // costs this or any other message its results' acks.
                let retracted = self.retract(&p.clinic, &p.device, &p.retractions, &mut p.rejected);
                let resend_days = p
                    .holdings
                    .as_ref()
                    .map(|h| self.resend_days(&p.clinic, &p.device, h))
                    .unwrap_or_default();
                Outcome {
                    ack: ResultAck {
                        schema_version: SCHEMA_VERSION,
                        committed,
                        rejected: p.rejected,
                        retracted,
                        resend_days,
                    },
                    clinic: p.clinic,
                    device: p.device,
                }
            })
            .collect())
    }

    /// Records each sender's contact and queue report, one store write per device (the
    /// latest report of its messages). Advisory: a failure is logged, never the batch's.
    fn note_contacts(&self, prepared: &[Prepared]) {
        let at_ms = now_ms();
        let mut by_device: BTreeMap<(&str, &str), Contact> = BTreeMap::new();
        for p in prepared {
            let c = Contact {
                at_ms,
                queue: p.queue,
            };
            by_device
                .entry((p.clinic.as_str(), p.device.as_str()))
                .and_modify(|held| held.merge(&c))
                .or_insert(c);
        }
        for ((clinic, device), c) in by_device {
            if let Err(e) = self.store.note_contact(clinic, device, &c) {
                tracing::warn!(clinic, device, error = %e, "could not record the device's contact (fleet health)");
            }
        }
    }

    /// Days whose results the hub lacks, for the ack: those where the hub's holdings
    /// fall short of `theirs`, and the days of this device's results the journal names
    /// and the store lost (`Integrity::missing`), as long as `theirs` names that day or
    /// it lies within the days `theirs` spans. The second catches a hub loss the digests
    /// cannot show: the device holding no more results of that day than the hub (the
    /// edge lost some acknowledged records too).
    fn resend_days(&self, clinic: &str, device: &str, theirs: &Holdings) -> Vec<u32> {
        Metrics::inc(&self.metrics.holdings_checks, 1);
        let mut days: BTreeSet<u32> = self
            .holdings
            .lacking(clinic, device, theirs)
            .into_iter()
            .collect();
        if let (Some(first), Some(last)) = (theirs.0.keys().next(), theirs.0.keys().last()) {
            days.extend(
                self.integrity
                    .missing_days(clinic, device)
                    .into_iter()
                    .filter(|d| (first..=last).contains(&d)),
            );
        }
        let days: Vec<u32> = days.into_iter().collect();
        if !days.is_empty() {
            Metrics::inc(&self.metrics.resend_requests, 1);
            Metrics::inc(&self.metrics.resend_days, days.len() as u64);
            tracing::info!(
                clinic,
                device,
                days = ?days,
                "the hub lacks results the device holds as acknowledged; asking for these days again"
            );
        }
        days
    }

    /// A duplicate may be a copy rebuilt at the edge with another `analysed_at_ms`,
    /// filed there under another day: the holdings count it where the device does.
    fn follow_rebuilt(&self, sent: &ScanRecord) {
        if let Ok(Some(held)) = self.store.get(&sent.id) {
            if held.record.analysed_at_ms != sent.analysed_at_ms {
                self.holdings.rebuilt(&held.record, sent);
            }
        }
    }

    /// A result whose id another record holds: never acked as committed, never stored
    /// over the other; the operator is alarmed (log + `pleura_hub_results_conflict_total`)
    /// and the device parks it.
    fn conflict(&self, r: &ScanRecord) -> Rejection {
        let holder = self
            .store
            .get(&r.id)
            .ok()
            .flatten()
            .map(|c| format!("{}/{}", c.record.clinic, c.record.device))
            .unwrap_or_else(|| "unknown".into());
        tracing::error!(
            clinic = %r.clinic,
            device = %r.device,
            result_id = %r.id,
            held_by = %holder,
            "result id conflict: the hub holds a different record under this id; refused"
        );
        Rejection {
            result_id: r.id.0.to_vec(),
            reason: "result id conflict: the hub holds a different record under this id \
                     (refused, reported to the hub operator)"
                .into(),
        }
    }
}

pub mod retraction;
#[cfg(test)]
mod tests;
