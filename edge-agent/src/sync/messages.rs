//! The batches the worker sends, each signed with the device key: results (cut to the
//! hub's batch limit), the holdings check (anti-entropy) and retractions. Every one
//! carries the queue as it stands (`QueueReport`: the hub's fleet view).

use std::collections::HashSet;

use pleura_shared::record::batch_fit;
use pleura_shared::wire::{QueueReport, ResultBatch, Retraction, SignedBatch};
use pleura_shared::{ResultId, ScanRecord, SCHEMA_VERSION};

use super::{reconcile, retractions, Session, SyncWorker};
use crate::outbox::QueueDepth;
use crate::status::now_ms;

impl SyncWorker {
    /// The next results to send, cut to what one batch may carry (the hub refuses a
    /// larger one on either transport); the rest stay queued for the next batch.
    pub(super) async fn next_batch(
        &self,
        limit: usize,
        skip: HashSet<ResultId>,
    ) -> Vec<ScanRecord> {
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.next_batch(limit, &|id| skip.contains(id)))
            .await
        {
            Ok(Ok(mut b)) => {
                b.truncate(batch_fit(&b, &self.cfg.clinic, &self.cfg.device));
                b
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the outbox");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox task failed");
                Vec::new()
            }
        }
    }

    /// A batch from this device: schema, clinic, device and the queue report set; the
    /// caller fills in results, retractions or holdings.
    pub(super) async fn batch(&self) -> ResultBatch {
        ResultBatch {
            schema_version: SCHEMA_VERSION,
            clinic_id: self.cfg.clinic.clone(),
            device_id: self.cfg.device.clone(),
            queue: self.queue_report().await,
            ..Default::default()
        }
    }

    /// The queue as it stands now (None, logged, if the outbox cannot say: the batch
    /// goes without it rather than not at all).
    async fn queue_report(&self) -> Option<QueueReport> {
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.queue_depth()).await {
            Ok(Ok(d)) => Some(queue_report(d, now_ms())),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the queue depth for the hub");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue depth task failed");
                None
            }
        }
    }

    /// The batch, encoded and signed with the device key (unsigned only without one).
    pub(super) fn sign(&self, batch: ResultBatch) -> SignedBatch {
        match &self.creds.signer {
            Some(signer) => signer.seal(&batch),
            None => SignedBatch {
                batch: prost::Message::encode_to_vec(&batch),
                signature: Vec::new(),
            },
        }
    }

    pub(super) async fn results_message(&self, records: &[ScanRecord]) -> SignedBatch {
        let mut b = self.batch().await;
        b.results = records.iter().map(ScanRecord::to_wire).collect();
        self.sign(b)
    }

    /// The holdings check: no results, the digests of what the hub acknowledged.
    pub(super) async fn holdings_message(&self) -> anyhow::Result<SignedBatch> {
        let outbox = self.outbox.clone();
        let h = tokio::task::spawn_blocking(move || outbox.holdings()).await??;
        let mut b = self.batch().await;
        b.holdings = Some(reconcile::to_wire(&h));
        Ok(self.sign(b))
    }

    /// Pending retractions not in flight, as much as one batch carries (None: none).
    pub(super) async fn retractions_message(
        &self,
        sess: &mut Session,
    ) -> anyhow::Result<Option<(SignedBatch, Vec<ResultId>)>> {
        if !sess.retractions.dirty {
            return Ok(None);
        }
        let outbox = self.outbox.clone();
        let mut items = tokio::task::spawn_blocking(move || outbox.retractions()).await??;
        items.retain(|(id, _)| !sess.retractions.in_flight(id));
        let n = retractions::fit(&items, &self.cfg.clinic, &self.cfg.device);
        sess.retractions.dirty = n < items.len();
        if n == 0 {
            return Ok(None);
        }
        items.truncate(n);
        let mut b = self.batch().await;
        b.retractions = items
            .iter()
            .map(|(id, reason)| Retraction {
                result_id: id.0.to_vec(),
                reason: reason.clone(),
            })
            .collect();
        Ok(Some((
            self.sign(b),
            items.into_iter().map(|i| i.0).collect(),
        )))
    }
}

/// A queue depth as the wire carries it (0: no oldest, nothing queued).
pub(super) fn queue_report(d: QueueDepth, now_ms: u64) -> QueueReport {
    QueueReport {
        pending: d.pending,
        oldest_pending_ms: d.oldest_pending_ms.unwrap_or(0),
        reported_at_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use pleura_shared::record::sample_record;
    use prost::Message;

    use super::super::{policy, reconcile, retractions, round, state};
    use super::*;
    use crate::config::EdgeConfig;
    use crate::credentials::Credentials;
    use crate::outbox::{Outbox, SledOutbox};

    fn queue_of(msg: &SignedBatch) -> QueueReport {
        ResultBatch::decode(msg.batch.as_slice())
            .unwrap()
            .queue
            .expect("every batch carries the queue report")
    }

    #[tokio::test]
    async fn every_batch_carries_the_queue_as_it_stands() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg: EdgeConfig = toml::from_str(&EdgeConfig::example()).unwrap();
        cfg.data_dir = tmp.path().to_path_buf();
        let outbox: Arc<dyn Outbox> = Arc::new(SledOutbox::open(tmp.path(), 1 << 30).unwrap());
        let worker = SyncWorker {
            cfg: cfg.clone(),
            outbox: outbox.clone(),
            status: Default::default(),
            queued: Default::default(),
            creds: Credentials {
                mqtt_tls: None,
                grpc_tls: None,
                signer: None,
            },
        };
        let before = now_ms();

        // Nothing queued: the holdings check says so.
        let q = queue_of(&worker.holdings_message().await.unwrap());
        assert_eq!((q.pending, q.oldest_pending_ms), (0, 0));
        assert!(q.reported_at_ms >= before && q.reported_at_ms <= now_ms());

        // The oldest queued result is the least urgent one, not the first sent.
        let mut records = Vec::new();
        for (severity, flagged, at) in [(3, true, 5_000), (0, false, 1_000), (1, false, 3_000)] {
            let mut r = sample_record(&cfg.clinic, &cfg.device, severity, flagged);
            r.analysed_at_ms = at;
            outbox.put(&r).unwrap();
            records.push(r);
        }
        let batch = worker.next_batch(1, HashSet::new()).await;
        assert_eq!(batch[0].id, records[0].id, "most urgent first");
        let msg = worker.results_message(&batch).await;
        assert_eq!(
            ResultBatch::decode(msg.batch.as_slice())
                .unwrap()
                .results
                .len(),
            1
        );
        let q = queue_of(&msg);
        assert_eq!((q.pending, q.oldest_pending_ms), (3, 1_000));

        // Once the oldest is acknowledged, the next report moves on.
        outbox.remove(&[records[1].id]).unwrap();
        let q = queue_of(&worker.holdings_message().await.unwrap());
        assert_eq!((q.pending, q.oldest_pending_ms), (2, 3_000));

        // Retraction batches carry it too.
        outbox.retract(&records[0].id, "wrong patient").unwrap();
        let ack_timeout = Duration::from_secs(15);
        let mut sess = Session {
            flight: state::InFlight::new(8, ack_timeout),
            retractions: retractions::Pending::new(ack_timeout),
            reconcile: reconcile::Schedule::new(ack_timeout, ack_timeout, Instant::now()),
            tally: round::Tally::default(),
            policy: policy::Policy::new(3, None),
            fallback_busy: false,
        };
        let (msg, ids) = worker
            .retractions_message(&mut sess)
            .await
            .unwrap()
            .expect("a retraction to send");
        assert_eq!(ids, vec![records[0].id]);
        let q = queue_of(&msg);
        assert_eq!((q.pending, q.oldest_pending_ms), (2, 3_000));
    }
}
