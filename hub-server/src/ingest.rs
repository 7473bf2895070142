//! Turning an MQTT message or gRPC upload into committed results and an ack. No I/O
//! here except through the store, so every rejection path has a plain unit test.

use std::sync::Arc;
use std::time::Instant;

use pleura_shared::signing::{self, SignatureError};
use pleura_shared::wire::{Rejection, ResultAck, ResultBatch, SignedBatch};
use pleura_shared::{now_ms, topics, ScanRecord, SCHEMA_VERSION};
use prost::Message;

use crate::ca::{Registry, TrustError};
use crate::metrics::Metrics;
use crate::store::{Commit, HubStore, StoreError};

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
    #[error("empty batch")]
    Empty,
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
            IngestError::Decode(_) => "malformed",
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
}

impl Ingest {
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
        if batch.results.is_empty() {
            return Err(IngestError::Empty);
        }
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
        for r in &rejected {
            tracing::warn!(clinic, device, reason = %r.reason, "result rejected");
        }
        Ok(Prepared {
            clinic,
            device,
            good,
            rejected,
        })
    }

    /// Commits every prepared message in one durable write; one ack per message.
    pub fn commit(&self, prepared: Vec<Prepared>) -> Result<Vec<Outcome>, IngestError> {
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
                Outcome {
                    ack: ResultAck {
                        schema_version: SCHEMA_VERSION,
                        committed,
                        rejected: p.rejected,
                    },
                    clinic: p.clinic,
                    device: p.device,
                }
            })
            .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use pleura_shared::record::sample_record;

    fn ingest(dir: &std::path::Path) -> Ingest {
        Ingest {
            store: Arc::new(SledStore::open(dir).unwrap()),
            metrics: Arc::new(Metrics::default()),
            max_payload: 4096,
            max_records: 500,
            registry: None,
        }
    }

    fn batch(clinic: &str, device: &str, recs: &[ScanRecord]) -> ResultBatch {
        ResultBatch {
            schema_version: SCHEMA_VERSION,
            clinic_id: clinic.into(),
            device_id: device.into(),
            results: recs.iter().map(|r| r.to_wire()).collect(),
        }
    }

    /// An unsigned envelope (insecure mode).
    fn env(b: &ResultBatch) -> Vec<u8> {
        SignedBatch {
            batch: b.encode_to_vec(),
            signature: vec![],
        }
        .encode_to_vec()
    }

    fn signed(b: &ResultBatch, key: &std::path::Path) -> SignedBatch {
        let batch = b.encode_to_vec();
        let signature = signing::BatchSigner::from_pem_file(key)
            .unwrap()
            .sign(&batch);
        SignedBatch { batch, signature }
    }

    #[test]
    fn only_the_enrolled_unrevoked_device_can_vouch_for_its_batches() {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        let pki = crate::ca::Pki::init(&pki_dir, "t", &["localhost".into()]).unwrap();
        let now = (now_ms() / 1000) as i64;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        pki.enroll("c1", "a", "north", now - 60, now + 3600, &a)
            .unwrap();
        pki.enroll("c2", "b", "south", now - 60, now + 3600, &b)
            .unwrap();
        let mut ing = ingest(&dir.path().join("store"));
        ing.registry = Some(Arc::new(Registry::new(&pki_dir).unwrap()));
        let r = sample_record("c1", "a", 2, true);
        let good = batch("c1", "a", std::slice::from_ref(&r));
        let label = |res: Result<Outcome, IngestError>| res.err().map(|e| e.label());

        // Unsigned, or signed by another device's key, or claiming another device.
        assert_eq!(
            label(ing.upload(SignedBatch::decode(env(&good).as_slice()).unwrap(), None)),
            Some("signature")
        );
        assert_eq!(
            label(ing.upload(signed(&good, &b.join("device.key")), None)),
            Some("signature")
        );
        let forged = batch("c2", "b", &[sample_record("c2", "b", 2, true)]);
        assert_eq!(
            label(ing.upload(
                signed(&forged, &a.join("device.key")),
                Some(("c1".into(), "a".into()))
            )),
            Some("signature")
        );
        // Correctly signed by b but sent over a's connection: the transport identity wins.
        assert_eq!(
            label(ing.upload(
                signed(&forged, &b.join("device.key")),
                Some(("c1".into(), "a".into()))
            )),
            Some("identity_mismatch")
        );
        // Tampered after signing.
        let mut t = signed(&good, &a.join("device.key"));
        let last = t.batch.len() - 1;
        t.batch[last] ^= 1;
        assert!(ing.upload(t, None).is_err());
        assert_eq!(ing.store.count().unwrap(), 0);

        let out = ing
            .upload(signed(&good, &a.join("device.key")), None)
            .unwrap();
        assert_eq!(out.ack.committed.len(), 1);

        std::thread::sleep(std::time::Duration::from_millis(20));
        pki.revoke("c1", "a").unwrap();
        assert_eq!(
            label(ing.upload(signed(&good, &a.join("device.key")), None)),
            Some("untrusted_device")
        );
    }

    #[test]
    fn a_device_cannot_preempt_another_devices_result_id() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        let genuine = sample_record("c2", "b", 3, true);
        // Device a sends a record of its own under b's future result id.
        let mut squat = sample_record("c1", "a", 0, false);
        squat.id = genuine.id;
        ing.mqtt_message(
            &topics::results("c1", "a"),
            &env(&batch("c1", "a", &[squat])),
        )
        .unwrap();
        // b's genuine severity-3 result: not acked, not counted as a duplicate.
        let send_b = || {
            ing.mqtt_message(
                &topics::results("c2", "b"),
                &env(&batch("c2", "b", std::slice::from_ref(&genuine))),
            )
            .unwrap()
        };
        let out = send_b();
        assert!(out.ack.committed.is_empty(), "acked as if committed");
        assert_eq!(out.ack.rejected.len(), 1);
        assert!(out.ack.rejected[0].reason.contains("conflict"));
        assert_eq!(ing.metrics.results_duplicate.load(Relaxed), 0);
        assert_eq!(ing.metrics.results_conflict.load(Relaxed), 1);
        // Redelivered, still refused; nothing overwritten either way.
        assert!(send_b().ack.committed.is_empty());
        assert_eq!(
            ing.store.get(&genuine.id).unwrap().unwrap().record.device,
            "a"
        );

        // The same device re-using an id for different content is a conflict as well.
        let first = sample_record("c2", "b", 1, false);
        let mut changed = first.clone();
        changed.analysis.flagged = true;
        let topic = topics::results("c2", "b");
        ing.mqtt_message(
            &topic,
            &env(&batch("c2", "b", std::slice::from_ref(&first))),
        )
        .unwrap();
        let out = ing
            .mqtt_message(&topic, &env(&batch("c2", "b", &[changed, first.clone()])))
            .unwrap();
        assert_eq!(out.ack.committed, vec![first.id.0.to_vec()]);
        assert_eq!(out.ack.rejected.len(), 1);
        assert_eq!(ing.metrics.results_conflict.load(Relaxed), 3);
        assert_eq!(ing.store.get(&first.id).unwrap().unwrap().record, first);
    }

    #[test]
    fn one_batch_limit_holds_for_mqtt_and_grpc() {
        use pleura_shared::record::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
        let dir = tempfile::tempdir().unwrap();
        let mut ing = ingest(dir.path());
        ing.max_payload = MAX_BATCH_BYTES;
        ing.max_records = MAX_BATCH_RECORDS;
        let topic = topics::results("c1", "d1");
        let recs = |n: usize| -> Vec<ScanRecord> {
            (0..n)
                .map(|_| sample_record("c1", "d1", 1, false))
                .collect()
        };
        let grpc = |ing: &Ingest, b: &ResultBatch| {
            ing.upload(SignedBatch::decode(env(b).as_slice()).unwrap(), None)
                .err()
                .map(|e| e.label())
        };
        // The 1,500-result batch gRPC used to take: refused on both paths.
        let big = batch("c1", "d1", &recs(1500));
        assert!(env(&big).len() > 250_000);
        assert_eq!(grpc(&ing, &big), Some("too_large"));
        assert_eq!(
            ing.mqtt_message(&topic, &env(&big))
                .err()
                .map(|e| e.label()),
            Some("too_large")
        );
        // Past the count limit, even under the byte limit.
        ing.max_payload = 1 << 20;
        let many = batch("c1", "d1", &recs(MAX_BATCH_RECORDS + 1));
        assert_eq!(grpc(&ing, &many), Some("too_many_records"));
        assert_eq!(
            ing.mqtt_message(&topic, &env(&many))
                .err()
                .map(|e| e.label()),
            Some("too_many_records")
        );
        assert_eq!(ing.store.count().unwrap(), 0);
        // What the edge sends by default (50 results) passes; ~300 fit in the byte limit.
        ing.max_payload = MAX_BATCH_BYTES;
        let per = env(&batch("c1", "d1", &recs(100))).len() / 100;
        assert!(MAX_BATCH_BYTES / per >= 250, "{per} bytes a result");
        assert_eq!(grpc(&ing, &batch("c1", "d1", &recs(50))), None);
        assert_eq!(grpc(&ing, &batch("c1", "d1", &recs(250))), None);
        assert_eq!(ing.store.count().unwrap(), 300);
    }

    #[test]
    fn bad_messages_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        let topic = topics::results("c1", "d1");
        let r = sample_record("c1", "d1", 2, true);
        let label = |res: Result<Outcome, IngestError>| res.err().map(|e| e.label());
        assert_eq!(
            label(ing.mqtt_message(&topic, b"\xff\xff garbage")),
            Some("malformed")
        );
        assert_eq!(
            label(ing.mqtt_message(&topic, &vec![0; 5000])),
            Some("too_large")
        );
        assert_eq!(
            label(ing.mqtt_message("pleura/v1/other", b"")),
            Some("topic")
        );
        let mut b = batch("c1", "d1", std::slice::from_ref(&r));
        b.schema_version = 99;
        assert_eq!(
            label(ing.mqtt_message(&topic, &env(&b))),
            Some("schema_version")
        );
        let b = batch("c2", "d1", std::slice::from_ref(&r));
        assert_eq!(
            label(ing.mqtt_message(&topic, &env(&b))),
            Some("identity_mismatch")
        );
        assert_eq!(ing.store.count().unwrap(), 0);

        // A valid message afterwards still goes through.
        let out = ing
            .mqtt_message(&topic, &env(&batch("c1", "d1", std::slice::from_ref(&r))))
            .unwrap();
        assert_eq!(out.ack.committed, vec![r.id.0.to_vec()]);
        assert_eq!(ing.store.count().unwrap(), 1);
    }

    #[test]
    fn a_bad_record_is_rejected_alone_and_duplicates_are_acked_again() {
        let dir = tempfile::tempdir().unwrap();
        let ing = ingest(dir.path());
        let good = sample_record("c1", "d1", 1, false);
        let foreign = sample_record("c9", "d1", 1, false);
        let mut b = batch("c1", "d1", &[good.clone(), foreign.clone()]);
        b.results.push({
            let mut w = good.to_wire();
            w.result_id = vec![1; 16];
            w.severity = 7;
            w
        });
        let out = ing
            .upload(SignedBatch::decode(env(&b).as_slice()).unwrap(), None)
            .unwrap();
        assert_eq!(out.ack.committed.len(), 1);
        assert_eq!(out.ack.rejected.len(), 2);
        assert!(out.ack.rejected[0].reason.contains("c9/d1"));
        assert!(out.ack.rejected[1].reason.contains("severity"));
        let again = ing
            .upload(
                SignedBatch::decode(
                    env(&batch("c1", "d1", std::slice::from_ref(&good))).as_slice(),
                )
                .unwrap(),
                None,
            )
            .unwrap();
        assert_eq!(again.ack.committed, vec![good.id.0.to_vec()]);
        assert_eq!(
            ing.metrics
                .results_duplicate
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(ing.store.count().unwrap(), 1);
    }
}
