//! The hub's MQTT side: one task polls the event loop without pause; received result
//! messages go to the ingest task over a channel; acks are published from there.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pleura_shared::topics;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingest;
use crate::metrics::Metrics;

pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub share_group: Option<String>,
    pub max_payload: usize,
    /// TLS towards an external broker (`mqtts://`), presenting the hub's certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Polls the hub's broker session until `shutdown`. `subscribed` fires at the first
/// SubAck that grants the results subscription: until then a broker (rumqttd at least)
/// drops every result a device publishes, since no subscription matches it.
pub async fn run(
    settings: MqttSettings,
    ingest: Arc<Ingest>,
    shutdown: CancellationToken,
    subscribed: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut subscribed = Some(subscribed);
    let mut opts = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    opts.set_keep_alive(Duration::from_secs(15))
        .set_clean_session(false)
        // Let oversized messages through to our own check, which counts and logs them.
        .set_max_packet_size(
            settings.max_payload * 4 + 1024,
            settings.max_payload * 4 + 1024,
        );
    if let Some(tls) = &settings.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let (tx, rx) = mpsc::channel::<(String, bytes::Bytes)>(1024);
    let metrics = ingest.metrics.clone();
    let worker = tokio::spawn(ingest_loop(rx, client.clone(), ingest));
    let filter = topics::results_subscription(settings.share_group.as_deref());
    // Test hook: widens the window between connecting and subscribing, so the e2e test
    // of the first batch after a start (issue #11 item 7) does not depend on timing.
    let subscribe_delay = std::env::var("PLEURA_TEST_SUBSCRIBE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                tracing::info!(host = %settings.host, port = settings.port, "hub connected to the broker");
                // Subscribe on every connect: a restarted broker has forgotten us.
                let c = client.clone();
                let f = filter.clone();
                tokio::spawn(async move {
                    if let Some(d) = subscribe_delay {
                        tokio::time::sleep(d).await;
                    }
                    if let Err(e) = c.subscribe(f, QoS::AtLeastOnce).await {
                        tracing::warn!(error = %e, "subscribe failed");
                    }
                });
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!(filter = %filter, "the broker refused the hub's results subscription");
                    continue;
                }
                metrics.mqtt_connected.store(1, Ordering::Relaxed);
                if let Some(tx) = subscribed.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                Metrics::inc(&metrics.mqtt_messages, 1);
                if tx.send((p.topic, p.payload)).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_connected.store(0, Ordering::Relaxed);
                failures += 1;
                let delay = Duration::from_millis((100u64 << failures.min(5)).min(3000));
                tracing::warn!(error = %e, retry_in = ?delay, "broker connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let _ = client.disconnect().await;
    drop(tx);
    let _ = worker.await;
    Ok(())
}

/// Most messages committed together in one durable write.
const GROUP_COMMIT: usize = 64;

async fn ingest_loop(
    mut rx: mpsc::Receiver<(String, bytes::Bytes)>,
    client: AsyncClient,
    ingest: Arc<Ingest>,
) {
    while let Some(first) = rx.recv().await {
        // Group commit: whatever else is already waiting shares the same flush.
        let mut messages = vec![first];
        while messages.len() < GROUP_COMMIT {
            match rx.try_recv() {
                Ok(m) => messages.push(m),
                Err(_) => break,
            }
        }
        let ing = ingest.clone();
        // Validation, sled commit and fsync block: keep them off the async workers.
        let res = tokio::task::spawn_blocking(move || {
            let mut prepared = Vec::with_capacity(messages.len());
            for (topic, payload) in &messages {
                match ing.prepare_mqtt(topic, payload) {
                    Ok(p) => prepared.push(p),
                    Err(e) => {
                        ing.metrics.reject_message(e.label());
                        let t: String = topic.chars().take(128).collect();
                        tracing::warn!(topic = %t, reason = %e, "message rejected");
                    }
                }
            }
            ing.commit(prepared)
        })
        .await;
        let outcomes = match res {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                // Nothing acked: the devices resend after their ack timeout.
                tracing::error!(error = %e, "commit failed");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "ingest task failed");
                continue;
            }
        };
        for out in outcomes {
            let ack_topic = topics::acks(&out.clinic, &out.device);
            match client
                .publish(ack_topic, QoS::AtLeastOnce, false, out.ack.encode_to_vec())
                .await
            {
                Ok(()) => Metrics::inc(&ingest.metrics.acks_published, 1),
                Err(e) => tracing::warn!(error = %e, "could not queue ack"),
            }
        }
    }
}
