//! The agent's MQTT link. One task polls rumqttc's event loop without pause (as
//! rumqttc requires) and reports connects, losses and hub acks to the sync worker;
//! it also paces reconnects with jittered exponential backoff.

use std::time::Duration;

use pleura_shared::topics;
use pleura_shared::wire::SignedBatch;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::Backoff;
use super::LinkEvent;
use crate::config::EdgeConfig;

pub struct Link {
    client: AsyncClient,
    topic: String,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    pub fn start(
        cfg: &EdgeConfig,
        host: String,
        port: u16,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
        events: mpsc::Sender<LinkEvent>,
        shutdown: CancellationToken,
    ) -> Self {
        let mut opts = MqttOptions::new(topics::client_id(&cfg.clinic, &cfg.device), host, port);
        opts.set_keep_alive(Duration::from_secs(20))
            .set_clean_session(false)
            .set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some(tls) = tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, eventloop) = AsyncClient::new(opts, 64);
        let backoff = Backoff::new(
            Duration::from_millis(cfg.sync.backoff_min_ms),
            Duration::from_millis(cfg.sync.backoff_max_ms),
        );
        let acks = topics::acks(&cfg.clinic, &cfg.device);
        let task = tokio::spawn(poll_loop(
            eventloop,
            client.clone(),
            acks,
            backoff,
            events,
            shutdown,
        ));
        Self {
            client,
            topic: topics::results(&cfg.clinic, &cfg.device),
            task,
        }
    }

    /// Queues a batch for the event loop; returns its size on the wire.
    pub async fn publish(&self, batch: &SignedBatch) -> Result<usize, rumqttc::ClientError> {
        let payload = batch.encode_to_vec();
        let n = payload.len() + self.topic.len() + 4;
        self.client
            .publish(&self.topic, QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(n)
    }

    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

async fn poll_loop(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    acks: String,
    mut backoff: Backoff,
    events: mpsc::Sender<LinkEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = eventloop.poll() => ev,
        };
        let report = match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                // Subscribe on every connect: a restarted broker forgot the session.
                let c = client.clone();
                let t = acks.clone();
                tokio::spawn(async move {
                    if let Err(e) = c.subscribe(t, QoS::AtLeastOnce).await {
                        tracing::warn!(error = %e, "subscribing to acks failed");
                    }
                });
                None
            }
            // Ready once the ack subscription is in place, so no ack can be missed.
            Ok(Event::Incoming(Packet::SubAck(_))) => Some(LinkEvent::Connected),
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == acks => {
                Some(LinkEvent::Ack(p.payload))
            }
            Ok(_) => None,
            Err(e) => {
                let delay = backoff.next_delay(rand::random());
                // The worker logs the transition once (info); each retry only at debug.
                tracing::debug!(error = %e, retry_in = ?delay, "hub broker unreachable");
                if events
                    .send(LinkEvent::Disconnected(e.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                None
            }
        };
        if let Some(r) = report {
            if events.send(r).await.is_err() {
                return;
            }
        }
    }
}
