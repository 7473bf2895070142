//! Sending what is due: over MQTT as much as the in-flight bound allows (acks come
//! back as link events), over gRPC one call per tick while MQTT is down (the ack is the
//! call's answer).

use std::collections::HashSet;
use std::time::Instant;

use pleura_shared::ResultId;

use super::{grpc, mqtt, Session, SyncWorker};
use crate::status::now_ms;

impl SyncWorker {
    /// Sends what is due over MQTT: the holdings check, retractions, then results up to
    /// the in-flight bound. Returns whether anything was sent.
    pub(super) async fn send_mqtt(&self, link: &mqtt::Link, sess: &mut Session) -> bool {
        let mut sent = false;
        let now = Instant::now();
        if sess.reconcile.due(now) {
            match self.holdings_message().await {
                Ok(msg) => match link.publish(&msg).await {
                    Ok(_) => {
                        sess.reconcile.sent(now);
                        sess.tally.touch(now, "mqtt");
                        sess.tally.reconciles += 1;
                        sent = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "publishing the holdings check failed"),
                },
                Err(e) => tracing::error!(error = %e, "reading the outbox's holdings"),
            }
        }
        match self.retractions_message(sess).await {
            Ok(Some((msg, ids))) => match link.publish(&msg).await {
                Ok(_) => {
                    sess.tally.touch(now, "mqtt");
                    sess.tally.retractions_sent += ids.len() as u64;
                    sess.retractions.mark_sent(ids, now);
                    sent = true;
                }
                Err(e) => {
                    sess.retractions.dirty = true;
                    tracing::warn!(error = %e, "publishing retractions failed");
                }
            },
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reading pending retractions"),
        }
        while sess.flight.room() > 0 {
            let skip: HashSet<ResultId> = sess.flight.ids().collect();
            let limit = self.cfg.sync.batch_size.min(sess.flight.room());
            let batch = self.next_batch(limit, skip).await;
            if batch.is_empty() {
                break;
            }
            let msg = self.results_message(&batch);
            let bytes = match link.publish(&msg).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed");
                    break;
                }
            };
            sess.flight
                .mark_sent(batch.iter().map(|r| r.id), Instant::now());
            sess.tally.touch(now, "mqtt");
            sess.tally.batches += 1;
            sess.tally.sent += batch.len() as u64;
            sent = true;
            self.status.update(|s| {
                s.sync.batches_sent += 1;
                s.sync.bytes_sent += bytes as u64;
            });
        }
        sent
    }

    /// One gRPC call while MQTT is down: the holdings check when due or while gRPC is
    /// not known to work (it doubles as the probe, so status knows whether the hub
    /// answers even with nothing queued), else pending retractions, else the next
    /// results. Ok(true) when something was sent.
    pub(super) async fn grpc_round(
        &self,
        g: &mut grpc::Fallback,
        sess: &mut Session,
    ) -> anyhow::Result<bool> {
        let now = Instant::now();
        let (msg, what) = if sess.reconcile.due(now) || !sess.grpc.up {
            (self.holdings_message().await?, Sent::Holdings)
        } else if let Some((msg, ids)) = self.retractions_message(sess).await? {
            (msg, Sent::Retractions(ids))
        } else {
            let batch = self
                .next_batch(self.cfg.sync.batch_size, HashSet::new())
                .await;
            if batch.is_empty() {
                sess.grpc_busy = false;
                return Ok(false);
            }
            (self.results_message(&batch), Sent::Results(batch.len()))
        };
        let upload = g.upload(msg).await;
        let ack = match upload {
            Ok(ack) => ack,
            Err(e) => {
                if let Sent::Retractions(_) = what {
                    sess.retractions.dirty = true;
                }
                return Err(e);
            }
        };
        // The first answer after MQTT went down is the holdings check: gRPC's "connect".
        if sess.grpc.ok(now_ms()) {
            tracing::info!("reached the hub by gRPC (MQTT is down)");
        }
        sess.tally.touch(now, "grpc");
        match what {
            Sent::Holdings => {
                sess.reconcile.sent(now);
                sess.tally.reconciles += 1;
            }
            Sent::Retractions(ids) => {
                sess.tally.retractions_sent += ids.len() as u64;
                // Settled by the ack below; sent again after the timeout if it is not.
                sess.retractions.mark_sent(ids, now);
            }
            Sent::Results(n) => {
                sess.tally.batches += 1;
                sess.tally.sent += n as u64;
                sess.grpc_busy = true;
                self.status.update(|s| s.sync.batches_sent += 1);
            }
        }
        self.take_ack(ack, sess).await;
        Ok(true)
    }
}

/// What one gRPC call carried.
enum Sent {
    Holdings,
    Retractions(Vec<ResultId>),
    Results(usize),
}
