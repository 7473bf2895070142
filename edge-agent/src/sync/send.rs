//! Sending what is due on the transport the policy chose. A transport that answers
//! later (MQTT) gets as much as the in-flight bound allows, its answers arriving as
//! events; one that answers inline (gRPC) gets one call per round, its reply applied
//! at once.

use std::collections::HashSet;
use std::time::Instant;

use pleura_shared::wire::SignedBatch;
use pleura_shared::ResultId;

use super::transport::{Answers, Transport, TransportError};
use super::{Session, SyncWorker};
use crate::status::now_ms;

impl SyncWorker {
    /// One round on `t`; whether anything was sent.
    pub(super) async fn round<T: Transport>(&self, t: &mut T, sess: &mut Session) -> bool {
        match t.answers() {
            Answers::Later => self.fill_window(t, sess).await,
            Answers::Inline => match self.call(t, sess).await {
                Ok(sent) => sent,
                Err(e) => {
                    let (news, retry_in) =
                        sess.policy
                            .fallback_failed(e.to_string(), rand::random(), Instant::now());
                    if news {
                        tracing::info!(transport = t.name(), error = %e, "fallback to the hub failing; retrying with backoff");
                    }
                    tracing::debug!(transport = t.name(), error = %e, ?retry_in, "fallback call failed");
                    false
                }
            },
        }
    }

    /// Sends the holdings check, retractions, then results up to the in-flight bound.
    async fn fill_window<T: Transport>(&self, t: &mut T, sess: &mut Session) -> bool {
        let mut sent = false;
        let now = Instant::now();
        let name = t.name();
        if sess.reconcile.due(now) {
            match self.holdings_message().await {
                Ok(msg) => match t.send(msg).await {
                    Ok(_) => {
                        sess.reconcile.sent(now);
                        sess.tally.touch(now, name);
                        sess.tally.reconciles += 1;
                        sent = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "sending the holdings check failed"),
                },
                Err(e) => tracing::error!(error = %e, "reading the outbox's holdings"),
            }
        }
        match self.retractions_message(sess).await {
            Ok(Some((msg, ids))) => match t.send(msg).await {
                Ok(_) => {
                    sess.tally.touch(now, name);
                    sess.tally.retractions_sent += ids.len() as u64;
                    sess.retractions.mark_sent(ids, now);
                    sent = true;
                }
                Err(e) => {
                    sess.retractions.dirty = true;
                    tracing::warn!(error = %e, "sending retractions failed");
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
            let msg = self.results_message(&batch).await;
            let bytes = match t.send(msg).await {
                Ok(s) => s.bytes,
                Err(e) => {
                    tracing::warn!(error = %e, "sending results failed");
                    break;
                }
            };
            sess.flight
                .mark_sent(batch.iter().map(|r| r.id), Instant::now());
            sess.tally.touch(now, name);
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

    /// One call: the holdings check when due or while the transport is not known to
    /// work (it doubles as the probe, so status knows whether the hub answers even
    /// with nothing queued), else pending retractions, else the next results.
    /// Ok(true) when something was sent.
    async fn call<T: Transport>(
        &self,
        t: &mut T,
        sess: &mut Session,
    ) -> Result<bool, TransportError> {
        let now = Instant::now();
        let (msg, what) = self.next_call(sess, now).await?;
        let Some(msg) = msg else {
            sess.fallback_busy = false;
            return Ok(false);
        };
        let answer = match t.send(msg).await {
            Ok(s) => s.answer,
            Err(e) => {
                if let Carried::Retractions(_) = what {
                    sess.retractions.dirty = true;
                }
                return Err(e);
            }
        };
        // The first answer after MQTT went down is the holdings check: the "connect".
        if sess.policy.fallback_ok(now_ms()) {
            tracing::info!(
                transport = t.name(),
                "reached the hub by the fallback (MQTT is down)"
            );
        }
        sess.tally.touch(now, t.name());
        match what {
            Carried::Holdings => {
                sess.reconcile.sent(now);
                sess.tally.reconciles += 1;
            }
            Carried::Retractions(ids) => {
                sess.tally.retractions_sent += ids.len() as u64;
                // Settled by the answer below; sent again after the timeout if it is not.
                sess.retractions.mark_sent(ids, now);
            }
            Carried::Results(n) => {
                sess.tally.batches += 1;
                sess.tally.sent += n as u64;
                sess.fallback_busy = true;
                self.status.update(|s| s.sync.batches_sent += 1);
            }
        }
        if let Some(ack) = answer {
            self.take_ack(ack, sess).await;
        }
        Ok(true)
    }

    /// What the next call carries (None: nothing to send).
    async fn next_call(
        &self,
        sess: &mut Session,
        now: Instant,
    ) -> Result<(Option<SignedBatch>, Carried), TransportError> {
        let read = |e: anyhow::Error| TransportError::new(format!("{e:#}"));
        if sess.reconcile.due(now) || !sess.policy.fallback.up {
            let msg = self.holdings_message().await.map_err(read)?;
            return Ok((Some(msg), Carried::Holdings));
        }
        if let Some((msg, ids)) = self.retractions_message(sess).await.map_err(read)? {
            return Ok((Some(msg), Carried::Retractions(ids)));
        }
        let batch = self
            .next_batch(self.cfg.sync.batch_size, HashSet::new())
            .await;
        if batch.is_empty() {
            return Ok((None, Carried::Results(0)));
        }
        Ok((
            Some(self.results_message(&batch).await),
            Carried::Results(batch.len()),
        ))
    }
}

/// What one call carried.
enum Carried {
    Holdings,
    Retractions(Vec<ResultId>),
    Results(usize),
}
