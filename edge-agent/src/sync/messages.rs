//! The batches the worker sends, each signed with the device key: results (cut to the
//! hub's batch limit), the holdings check (anti-entropy) and retractions.

use std::collections::HashSet;

use pleura_shared::record::batch_fit;
use pleura_shared::wire::{ResultBatch, Retraction, SignedBatch};
use pleura_shared::{ResultId, ScanRecord, SCHEMA_VERSION};

use super::{reconcile, retractions, Session, SyncWorker};

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

    /// A batch from this device: schema, clinic and device set; the caller fills in
    /// results, retractions or holdings.
    pub(super) fn batch(&self) -> ResultBatch {
        ResultBatch {
            schema_version: SCHEMA_VERSION,
            clinic_id: self.cfg.clinic.clone(),
            device_id: self.cfg.device.clone(),
            ..Default::default()
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

    pub(super) fn results_message(&self, records: &[ScanRecord]) -> SignedBatch {
        let mut b = self.batch();
        b.results = records.iter().map(ScanRecord::to_wire).collect();
        self.sign(b)
    }

    /// The holdings check: no results, the digests of what the hub acknowledged.
    pub(super) async fn holdings_message(&self) -> anyhow::Result<SignedBatch> {
        let outbox = self.outbox.clone();
        let h = tokio::task::spawn_blocking(move || outbox.holdings()).await??;
        let mut b = self.batch();
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
        let mut b = self.batch();
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
