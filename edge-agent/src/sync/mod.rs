//! The sync worker: sends queued results to the hub and removes them from the outbox
//! only on the hub's own acknowledgement (sent after the hub committed them). MQTT
//! first; gRPC when MQTT has failed `grpc_fallback_after` times in a row.

mod grpc;
mod mqtt;
pub mod state;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pleura_shared::record::batch_fit;
use pleura_shared::wire::{ResultAck, ResultBatch, SignedBatch};
use pleura_shared::{ResultId, ScanRecord, SCHEMA_VERSION};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::EdgeConfig;
use crate::credentials::Credentials;
use crate::outbox::Outbox;
use crate::status::{now_ms, Shared};
use state::{Backoff, InFlight};

/// What the MQTT event-loop task reports to the worker.
#[derive(Debug)]
pub enum LinkEvent {
    Connected,
    Disconnected(String),
    Ack(bytes::Bytes),
}

pub struct SyncWorker {
    pub cfg: EdgeConfig,
    pub outbox: Arc<dyn Outbox>,
    pub status: Arc<Shared>,
    pub queued: Arc<Notify>,
    pub creds: Credentials,
}

impl SyncWorker {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (host, port) = crate::config::parse_mqtt_url(&self.cfg.hub.mqtt_url)?;
        let (events_tx, mut events) = mpsc::channel(256);
        let link = mqtt::Link::start(
            &self.cfg,
            host,
            port,
            self.creds.mqtt_tls.clone(),
            events_tx,
            shutdown.clone(),
        );
        let mut grpc = self
            .cfg
            .hub
            .grpc_url
            .clone()
            .map(|u| grpc::Fallback::new(u, self.creds.grpc_tls.clone()));
        let mut grpc_backoff = Backoff::new(
            Duration::from_millis(self.cfg.sync.backoff_min_ms),
            Duration::from_millis(self.cfg.sync.backoff_max_ms),
        );
        let mut grpc_next = Instant::now();
        let mut flight = InFlight::new(self.cfg.sync.max_in_flight, self.cfg.sync.ack_timeout());
        let mut connected = false;
        let mut mqtt_failures = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => match ev {
                    Some(LinkEvent::Connected) => {
                        connected = true;
                        mqtt_failures = 0;
                        // Whatever was unacknowledged goes again; the hub deduplicates.
                        flight.clear();
                        self.status.update(|s| {
                            s.sync.mqtt_connected = true;
                            s.sync.transport = "mqtt".into();
                            s.sync.reconnects += 1;
                            s.sync.last_error = None;
                        });
                    }
                    Some(LinkEvent::Disconnected(e)) => {
                        connected = false;
                        mqtt_failures += 1;
                        self.status.update(|s| {
                            s.sync.mqtt_connected = false;
                            s.sync.state = "backing-off".into();
                            s.sync.last_error = Some(e);
                        });
                    }
                    Some(LinkEvent::Ack(payload)) => self.on_ack(&payload, &mut flight).await,
                    None => break,
                },
                _ = tick.tick() => {}
                _ = self.queued.notified() => {}
            }
            let resent = flight.expire(Instant::now());
            if resent > 0 {
                tracing::info!(resent, "no hub ack in time; results will be sent again");
                self.status.update(|s| s.sync.resends += resent as u64);
            }
            if connected {
                self.send_mqtt(&link, &mut flight).await;
            } else if mqtt_failures >= self.cfg.sync.grpc_fallback_after
                && Instant::now() >= grpc_next
            {
                if let Some(g) = grpc.as_mut() {
                    match self.send_grpc(g).await {
                        Ok(_) => grpc_backoff.reset(),
                        Err(e) => {
                            let d = grpc_backoff.next_delay(rand::random());
                            grpc_next = Instant::now() + d;
                            tracing::debug!(error = %e, retry_in = ?d, "gRPC fallback failed");
                        }
                    }
                }
            }
            self.status.update(|s| {
                s.sync.in_flight = flight.len();
                if connected {
                    s.sync.state = if flight.is_empty() { "idle" } else { "sending" }.into();
                }
            });
        }
        link.stop().await;
        Ok(())
    }

    /// The next results to send, cut to what one batch may carry (the hub refuses a
    /// larger one on either transport); the rest stay queued for the next batch.
    async fn next_batch(&self, limit: usize, skip: HashSet<ResultId>) -> Vec<ScanRecord> {
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

    /// The batch, encoded and signed with the device key (unsigned only without one).
    fn batch_message(&self, records: &[ScanRecord]) -> SignedBatch {
        use prost::Message;
        let batch = ResultBatch {
            schema_version: SCHEMA_VERSION,
            clinic_id: self.cfg.clinic.clone(),
            device_id: self.cfg.device.clone(),
            results: records.iter().map(ScanRecord::to_wire).collect(),
        }
        .encode_to_vec();
        let signature = self
            .creds
            .signer
            .as_ref()
            .map(|s| s.sign(&batch))
            .unwrap_or_default();
        SignedBatch { batch, signature }
    }

    async fn send_mqtt(&self, link: &mqtt::Link, flight: &mut InFlight) {
        while flight.room() > 0 {
            let skip: HashSet<ResultId> = flight.ids().collect();
            let limit = self.cfg.sync.batch_size.min(flight.room());
            let batch = self.next_batch(limit, skip).await;
            if batch.is_empty() {
                return;
            }
            let msg = self.batch_message(&batch);
            let bytes = match link.publish(&msg).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed");
                    return;
                }
            };
            flight.mark_sent(batch.iter().map(|r| r.id), Instant::now());
            self.status.update(|s| {
                s.sync.batches_sent += 1;
                s.sync.bytes_sent += bytes as u64;
            });
        }
    }

    async fn send_grpc(&self, g: &mut grpc::Fallback) -> anyhow::Result<usize> {
        let batch = self
            .next_batch(self.cfg.sync.batch_size, HashSet::new())
            .await;
        if batch.is_empty() {
            return Ok(0);
        }
        let msg = self.batch_message(&batch);
        let ack = g.upload(msg).await?;
        self.status.update(|s| s.sync.transport = "grpc".into());
        self.apply_ack(ack, None).await;
        Ok(batch.len())
    }

    async fn on_ack(&self, payload: &[u8], flight: &mut InFlight) {
        use prost::Message;
        match ResultAck::decode(payload) {
            Ok(ack) if ack.schema_version == SCHEMA_VERSION => {
                self.apply_ack(ack, Some(flight)).await
            }
            Ok(ack) => tracing::warn!(
                version = ack.schema_version,
                "ack with unknown schema version ignored"
            ),
            Err(e) => tracing::warn!(error = %e, "undecodable ack ignored"),
        }
    }

    /// Applies the hub's ack; `flight` is None for gRPC, whose acks answer the call.
    async fn apply_ack(&self, ack: ResultAck, flight: Option<&mut InFlight>) {
        let committed: Vec<ResultId> = ack
            .committed
            .iter()
            .filter_map(|b| ResultId::from_slice(b).ok())
            .collect();
        let rejected: Vec<(ResultId, String)> = ack
            .rejected
            .into_iter()
            .filter_map(|r| {
                ResultId::from_slice(&r.result_id)
                    .ok()
                    .map(|id| (id, r.reason))
            })
            .collect();
        let outbox = self.outbox.clone();
        let c = committed.clone();
        let rj = rejected.clone();
        let res =
            tokio::task::spawn_blocking(move || -> Result<usize, crate::outbox::OutboxError> {
                let n = outbox.remove(&c)?;
                for (id, reason) in &rj {
                    outbox.park(id, reason)?;
                }
                Ok(n)
            })
            .await;
        match res {
            Ok(Ok(removed)) => {
                if let Some(flight) = flight {
                    flight.settle(&committed);
                    flight.settle(&rejected.iter().map(|r| r.0).collect::<Vec<_>>());
                }
                for (id, reason) in &rejected {
                    tracing::error!(result_id = %id, %reason, "hub rejected a result; parked");
                }
                self.status.update(|s| {
                    s.sync.synced_total += removed as u64;
                    s.sync.last_sync_ms = Some(now_ms());
                });
            }
            Ok(Err(e)) => tracing::error!(error = %e, "could not apply hub ack; will resend"),
            Err(e) => tracing::error!(error = %e, "ack task failed"),
        }
    }
}
