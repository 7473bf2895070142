//! The sync worker: sends queued results to the hub and moves them out of the queue
//! only on the hub's own acknowledgement (sent after the hub committed them). The
//! transports sit behind one trait (transport/): MQTT first, gRPC when MQTT has failed
//! `grpc_fallback_after` times in a row; which one a round uses is decided by the pure
//! policy.rs. Besides results it sends retractions (retractions.rs) and, after each
//! (re)connect and every `sync.reconcile_interval_s`, the holdings the hub should have
//! (reconcile.rs). Batches are built in messages.rs, sent in send.rs, and acks applied
//! in acks.rs. `status` shows the link per transport (state.rs `describe`); the log has
//! one line per sync round (round.rs).

mod acks;
mod messages;
pub mod policy;
mod reconcile;
mod retractions;
mod round;
mod send;
pub mod state;
pub mod transport;
#[cfg(test)]
mod worker_tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pleura_shared::holdings::day_of_ms;
use pleura_shared::wire::ResultAck;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::EdgeConfig;
use crate::credentials::Credentials;
use crate::outbox::Outbox;
use crate::status::{now_ms, Shared};
use policy::{Policy, Route};
use state::{Backoff, InFlight};
use transport::{next_event_of, Event, Transport};

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
    policy: Policy,
    /// Results still queued after the last fallback call (its "sending").
    fallback_busy: bool,
}

impl SyncWorker {
    /// Syncs over MQTT, with gRPC as the fallback when `hub.grpc_url` is set.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.run_with_channel(None, shutdown).await
    }

    /// `run`, with the hub <-> device channel on the MQTT link (crate::downlink).
    pub async fn run_with_channel(
        self,
        channel: Option<Arc<crate::downlink::Channel>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let primary =
            transport::mqtt::Mqtt::start(&self.cfg, self.creds.mqtt_tls.clone(), channel)?;
        let fallback = self
            .cfg
            .hub
            .grpc_url
            .clone()
            .map(|u| transport::grpc::Grpc::new(u, self.creds.grpc_tls.clone()));
        self.run_on(primary, fallback, shutdown).await
    }

    /// Syncs over `primary` (answers later), falling back to `fallback` (answers
    /// inline) as the policy says, until `shutdown`.
    pub async fn run_on<P: Transport, F: Transport>(
        self,
        mut primary: P,
        mut fallback: Option<F>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let s = &self.cfg.sync;
        let backoff = Backoff::new(
            Duration::from_millis(s.backoff_min_ms),
            Duration::from_millis(s.backoff_max_ms),
        );
        let mut sess = Session {
            flight: InFlight::new(s.max_in_flight, s.ack_timeout()),
            retractions: retractions::Pending::new(s.ack_timeout()),
            reconcile: reconcile::Schedule::new(
                Duration::from_secs(s.reconcile_interval_s),
                s.ack_timeout(),
                Instant::now(),
            ),
            tally: round::Tally::default(),
            policy: Policy::new(s.grpc_fallback_after, fallback.as_ref().map(|_| backoff)),
            fallback_busy: false,
        };
        self.seed_counters(&mut sess);
        let mut next_spool = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut active = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = primary.next_event() => match ev {
                    Some(ev) => active |= self.on_primary_event(primary.name(), ev, &mut sess).await,
                    None => break,
                },
                Some(ev) = next_event_of(&mut fallback) => {
                    // A fallback answers inline; an answer of its own is still an answer.
                    if let (Event::Answer(ack), Some(f)) = (ev, fallback.as_ref()) {
                        active = true;
                        self.take_answer(ack, f.name(), &mut sess).await;
                    }
                }
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
                sess.tally.touch(now, primary.name());
                sess.tally.resent += resent as u64;
                self.status.update(|s| s.sync.resends += resent as u64);
            }
            sess.retractions.expire(now);
            match (sess.policy.route(now), fallback.as_mut()) {
                (Route::Primary, _) => active |= self.round(&mut primary, &mut sess).await,
                (Route::Fallback, Some(f)) => active |= self.round(f, &mut sess).await,
                _ => {}
            }
            self.publish_state(&sess);
            if let Some(line) = sess.tally.finish(Instant::now(), active) {
                tracing::info!("{line}");
            }
        }
        primary.stop().await;
        if let Some(f) = fallback {
            f.stop().await;
        }
        Ok(())
    }

    /// Connection news and answers from the primary transport; true when an answer.
    async fn on_primary_event(&self, name: &'static str, ev: Event, sess: &mut Session) -> bool {
        match ev {
            Event::Up => {
                if sess.policy.primary_up(now_ms()) {
                    tracing::info!(transport = name, "connected to the hub");
                }
                // Whatever was unacknowledged goes again; the hub deduplicates.
                sess.flight.clear();
                sess.retractions.reset();
                sess.reconcile.on_connect(Instant::now());
                self.status.update(|s| s.sync.reconnects += 1);
                false
            }
            Event::Down(e) => {
                if sess.policy.primary_down(e.clone()) {
                    tracing::info!(transport = name, error = %e, "link to the hub down; retrying with backoff");
                }
                false
            }
            Event::Answer(ack) => {
                self.take_answer(ack, name, sess).await;
                true
            }
        }
    }

    /// The link as `status` shows it, from what each transport did last.
    fn publish_state(&self, sess: &Session) {
        let p = &sess.policy;
        let busy = if p.primary.up {
            !sess.flight.is_empty()
        } else {
            sess.fallback_busy
        };
        let view = p.describe(busy);
        self.status.update(|s| {
            let y = &mut s.sync;
            y.in_flight = sess.flight.len();
            y.mqtt_connected = p.primary.up;
            y.state = view.state.into();
            y.transport = view.transport.into();
            y.reachable = view.reachable;
            y.summary = view.summary;
            y.mqtt = p.primary.clone();
            y.grpc = p.fallback.clone();
            y.last_error = p
                .primary
                .last_error
                .clone()
                .filter(|_| !view.reachable || view.transport == "grpc");
        });
    }

    async fn take_answer(&self, ack: ResultAck, transport: &'static str, sess: &mut Session) {
        sess.tally.touch(Instant::now(), transport);
        self.take_ack(ack, sess).await
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
        sess.policy.primary.last_ok_ms = p.mqtt.last_ok_ms;
        sess.policy.fallback.last_ok_ms = p.grpc.last_ok_ms;
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
