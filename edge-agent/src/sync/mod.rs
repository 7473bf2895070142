//! The sync worker: sends queued results to the hub and moves them out of the queue
//! only on the hub's own acknowledgement (sent after the hub committed them). MQTT
//! first; gRPC when MQTT has failed `grpc_fallback_after` times in a row. Besides
//! results it sends retractions (retractions.rs) and, after each (re)connect and every
//! `sync.reconcile_interval_s`, the holdings the hub should have (reconcile.rs). Batches
//! are built in messages.rs, sent in send.rs, and acks applied in acks.rs. `status`
//! shows the link per transport (state.rs `describe`); the log has one line per sync
//! round (round.rs).

mod acks;
mod grpc;
mod messages;
mod mqtt;
mod reconcile;
mod retractions;
mod round;
mod send;
pub mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pleura_shared::holdings::day_of_ms;
use pleura_shared::wire::ResultAck;
use pleura_shared::SCHEMA_VERSION;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::EdgeConfig;
use crate::credentials::Credentials;
use crate::outbox::Outbox;
use crate::status::{now_ms, Shared};
use state::{Backoff, InFlight, LinkStatus};

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

/// The worker's state between rounds.
struct Session {
    flight: InFlight,
    retractions: retractions::Pending,
    reconcile: reconcile::Schedule,
    tally: round::Tally,
    mqtt: LinkStatus,
    grpc: LinkStatus,
    /// Results still queued after the last gRPC call (gRPC's "sending").
    grpc_busy: bool,
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
        let s = &self.cfg.sync;
        let mut sess = Session {
            flight: InFlight::new(s.max_in_flight, s.ack_timeout()),
            retractions: retractions::Pending::new(s.ack_timeout()),
            reconcile: reconcile::Schedule::new(
                Duration::from_secs(s.reconcile_interval_s),
                s.ack_timeout(),
                Instant::now(),
            ),
            tally: round::Tally::default(),
            mqtt: LinkStatus::default(),
            grpc: LinkStatus::default(),
            grpc_busy: false,
        };
        self.seed_counters(&mut sess);
        let mut next_spool = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut active = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = events.recv() => match ev {
                    Some(LinkEvent::Connected) => {
                        if sess.mqtt.ok(now_ms()) {
                            tracing::info!("connected to the hub by MQTT");
                        }
                        // gRPC is not in use while MQTT is: its "up" would go stale.
                        sess.grpc.up = false;
                        // Whatever was unacknowledged goes again; the hub deduplicates.
                        sess.flight.clear();
                        sess.retractions.reset();
                        sess.reconcile.on_connect(Instant::now());
                        self.status.update(|s| s.sync.reconnects += 1);
                    }
                    Some(LinkEvent::Disconnected(e)) => {
                        if sess.mqtt.failed(e.clone()) {
                            tracing::info!(error = %e, "MQTT link to the hub down; retrying with backoff");
                        }
                    }
                    Some(LinkEvent::Ack(payload)) => {
                        active = true;
                        self.on_mqtt_ack(&payload, &mut sess).await;
                    }
                    None => break,
                },
                _ = tick.tick() => {}
                _ = self.queued.notified() => {}
            }
            let now = Instant::now();
            if now >= next_spool {
                next_spool = now + Duration::from_secs(1);
                if self.take_spool().await > 0 {
                    sess.retractions.dirty = true;
                }
            }
            if sess.reconcile.prune_due(now) {
                self.prune().await;
            }
            let resent = sess.flight.expire(now);
            if resent > 0 {
                active = true;
                sess.tally.touch(now, "mqtt");
                sess.tally.resent += resent as u64;
                self.status.update(|s| s.sync.resends += resent as u64);
            }
            sess.retractions.expire(now);
            if sess.mqtt.up {
                active |= self.send_mqtt(&link, &mut sess).await;
            } else if sess.mqtt.failures >= self.cfg.sync.grpc_fallback_after && now >= grpc_next {
                if let Some(g) = grpc.as_mut() {
                    match self.grpc_round(g, &mut sess).await {
                        Ok(did) => {
                            grpc_backoff.reset();
                            active |= did;
                        }
                        Err(e) => {
                            let d = grpc_backoff.next_delay(rand::random());
                            grpc_next = Instant::now() + d;
                            if sess.grpc.failed(format!("{e:#}")) {
                                tracing::info!(error = %format!("{e:#}"), "gRPC fallback to the hub failing; retrying with backoff");
                            }
                            tracing::debug!(error = %e, retry_in = ?d, "gRPC fallback failed");
                        }
                    }
                }
            }
            self.publish_state(&sess);
            if let Some(line) = sess.tally.finish(Instant::now(), active) {
                tracing::info!("{line}");
            }
        }
        link.stop().await;
        Ok(())
    }

    /// The link as `status` shows it, from what each transport did last.
    fn publish_state(&self, sess: &Session) {
        let busy = if sess.mqtt.up {
            !sess.flight.is_empty()
        } else {
            sess.grpc_busy
        };
        let grpc = self.cfg.hub.grpc_url.as_ref().map(|_| &sess.grpc);
        let view = state::describe(&sess.mqtt, grpc, busy, self.cfg.sync.grpc_fallback_after);
        self.status.update(|s| {
            let y = &mut s.sync;
            y.in_flight = sess.flight.len();
            y.mqtt_connected = sess.mqtt.up;
            y.state = view.state.into();
            y.transport = view.transport.into();
            y.reachable = view.reachable;
            y.summary = view.summary;
            y.mqtt = sess.mqtt.clone();
            y.grpc = sess.grpc.clone();
            y.last_error = sess
                .mqtt
                .last_error
                .clone()
                .filter(|_| !view.reachable || view.transport == "grpc");
        });
    }

    async fn on_mqtt_ack(&self, payload: &[u8], sess: &mut Session) {
        use prost::Message;
        match ResultAck::decode(payload) {
            Ok(ack) if ack.schema_version == SCHEMA_VERSION => {
                sess.tally.touch(Instant::now(), "mqtt");
                self.take_ack(ack, sess).await
            }
            Ok(ack) => tracing::warn!(
                version = ack.schema_version,
                "ack with unknown schema version ignored"
            ),
            Err(e) => tracing::warn!(error = %e, "undecodable ack ignored"),
        }
    }

    /// Applies the hub's ack (either transport) to the outbox, the flight and status.
    async fn take_ack(&self, ack: ResultAck, sess: &mut Session) {
        let parts = acks::AckParts::from_ack(ack);
        if parts.answers_holdings_only() {
            sess.reconcile.answered();
            self.status
                .update(|s| s.sync.last_reconcile_ms = Some(now_ms()));
        }
        let applied = match acks::apply_async(self.outbox.clone(), parts.clone()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "could not apply the hub's ack; will resend");
                return;
            }
        };
        sess.flight.settle(&parts.settled_results());
        sess.retractions.settle(&parts.settled_retractions());
        for (id, reason) in &parts.parked {
            tracing::error!(result_id = %id, %reason, "hub rejected a result; parked");
        }
        for (id, reason) in &parts.refused_retractions {
            tracing::error!(result_id = %id, %reason, "hub refused a retraction; dropped");
        }
        if applied.requeued > 0 {
            tracing::info!(
                results = applied.requeued,
                days = parts.resend_days.len(),
                "the hub lacks acknowledged results; queued them again"
            );
            self.queued.notify_one();
        }
        let t = &mut sess.tally;
        t.acked += applied.acked as u64;
        t.parked += applied.parked as u64;
        t.requeued += applied.requeued as u64;
        t.retracted += parts.retracted.len() as u64;
        t.retractions_refused += parts.refused_retractions.len() as u64;
        self.status.update(|s| {
            let y = &mut s.sync;
            y.synced_total += applied.acked as u64;
            y.last_sync_ms = Some(now_ms());
            y.resent_for_hub += applied.requeued as u64;
            y.retractions_recorded += parts.retracted.len() as u64;
            y.retractions_refused += parts.refused_retractions.len() as u64;
        });
    }

    /// The sync counters added for anti-entropy and retractions count since
    /// installation too, and each transport's last contact is kept: seeded from the
    /// last status file (the daemon seeds the other counters).
    fn seed_counters(&self, sess: &mut Session) {
        let Ok(prev) = crate::status::file::read(&self.cfg.status_file()) else {
            return;
        };
        let p = prev.sync;
        sess.mqtt.last_ok_ms = p.mqtt.last_ok_ms;
        sess.grpc.last_ok_ms = p.grpc.last_ok_ms;
        self.status.update(|s| {
            let y = &mut s.sync;
            y.resent_for_hub = y.resent_for_hub.max(p.resent_for_hub);
            y.retractions_recorded = y.retractions_recorded.max(p.retractions_recorded);
            y.retractions_refused = y.retractions_refused.max(p.retractions_refused);
            y.last_reconcile_ms = y.last_reconcile_ms.max(p.last_reconcile_ms);
        });
    }

    /// Takes `edge-agent retract` requests into the outbox; how many.
    async fn take_spool(&self) -> usize {
        let outbox = self.outbox.clone();
        let dir = self.cfg.data_dir.clone();
        match tokio::task::spawn_blocking(move || retractions::take_spool(outbox.as_ref(), &dir))
            .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "taking spooled retraction requests");
                0
            }
            Err(e) => {
                tracing::error!(error = %e, "retraction spool task failed");
                0
            }
        }
    }

    /// Forgets acknowledged results past `sync.acked_retention_days`.
    async fn prune(&self) {
        let before =
            reconcile::prune_before(day_of_ms(now_ms()), self.cfg.sync.acked_retention_days);
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.prune_acked(before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                results = n,
                "acknowledged results past their retention forgotten"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "pruning acknowledged results"),
            Err(e) => tracing::error!(error = %e, "prune task failed"),
        }
    }
}
