//! The hub's MQTT side: the shared MQTT link (pleura-runtime) keeps the broker
//! session; its events go to one ingest task, which commits received result messages
//! in groups and publishes the acks (never from the link's polling task). Uplink
//! messages (media, receipts) go on to a task of their own (`uplink`), which also
//! re-publishes unreceipted downlink messages whenever the link comes up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pleura_runtime::mqtt_link::{
    Backoff, LinkConfig, LinkEvent, MqttLink, PublishError, Publisher,
};
use pleura_shared::topics;
use prost::Message;
use rumqttc::{MqttOptions, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::downlink::Downlink;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::uplink::UplinkDispatcher;

pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub share_group: Option<String>,
    pub max_payload: usize,
    /// TLS towards an external broker (`mqtts://`), presenting the hub's certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Keeps the hub's broker session until `shutdown`. `subscribed` fires when the link
/// first comes up, i.e. once the broker granted the results subscription: until then
/// a broker (rumqttd at least) drops every result a device publishes, since no
/// subscription matches it.
pub async fn run(
    settings: MqttSettings,
    ingest: Arc<Ingest>,
    uplink: Arc<UplinkDispatcher>,
    shutdown: CancellationToken,
    subscribed: oneshot::Sender<()>,
) -> anyhow::Result<()> {
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
    let filter = topics::results_subscription(settings.share_group.as_deref());
    let uplink_filter = topics::uplink_subscription(settings.share_group.as_deref());
    let mut cfg = LinkConfig::new(
        vec![
            (filter, QoS::AtLeastOnce),
            (uplink_filter, QoS::AtLeastOnce),
        ],
        Backoff::new(Duration::from_millis(100), Duration::from_secs(3)),
    );
    cfg.requests = 1024;
    cfg.events = 1024;
    // Test hook: widens the window between connecting and subscribing, so the e2e test
    // of the first batch after a start (issue #11 item 7) does not depend on timing.
    cfg.subscribe_delay = std::env::var("PLEURA_TEST_SUBSCRIBE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let (link, events) = MqttLink::start(opts, cfg);
    uplink.downlink.attach(link.publisher());
    let (uplink_tx, uplink_rx) = mpsc::channel(UPLINK_QUEUE);
    let uplink_worker = tokio::spawn(uplink_loop(uplink_rx, uplink.clone()));
    let republisher = tokio::spawn(
        uplink
            .downlink
            .clone()
            .republish_periodically(shutdown.clone()),
    );
    let worker = tokio::spawn(ingest_loop(
        events,
        link.publisher(),
        ingest,
        uplink_tx,
        uplink.downlink.clone(),
        Some(subscribed),
    ));
    shutdown.cancelled().await;
    // The link's events end with it; the ingest task then drains what came before.
    link.stop().await;
    let _ = worker.await;
    let _ = uplink_worker.await;
    let _ = republisher.await;
    Ok(())
}

/// Most messages committed together in one durable write.
const GROUP_COMMIT: usize = 64;

/// Uplink messages waiting for the uplink task; more are dropped (counted): a device
/// sends an unanswered media message again, and a lost receipt is asked again by the
/// next re-publish.
const UPLINK_QUEUE: usize = 1024;

enum UplinkWork {
    Message(String, bytes::Bytes),
    LinkUp,
}

/// Checks and dispatches uplink messages (blocking work off the async workers), and
/// re-publishes unreceipted downlink messages after every (re)connect.
async fn uplink_loop(mut rx: mpsc::Receiver<UplinkWork>, uplink: Arc<UplinkDispatcher>) {
    while let Some(first) = rx.recv().await {
        let mut work = vec![first];
        while work.len() < GROUP_COMMIT {
            match rx.try_recv() {
                Ok(w) => work.push(w),
                Err(_) => break,
            }
        }
        let up = uplink.clone();
        let res = tokio::task::spawn_blocking(move || {
            for w in work {
                match w {
                    UplinkWork::Message(topic, payload) => up.handle(&topic, &payload),
                    UplinkWork::LinkUp => {
                        let n = up.downlink.republish_all();
                        if n > 0 {
                            tracing::info!(
                                messages = n,
                                "re-published unreceipted downlink messages"
                            );
                        }
                    }
                }
            }
        })
        .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "uplink task failed");
        }
    }
}

async fn ingest_loop(
    mut events: mpsc::Receiver<LinkEvent>,
    publisher: Publisher,
    ingest: Arc<Ingest>,
    uplink: mpsc::Sender<UplinkWork>,
    downlink: Arc<Downlink>,
    mut subscribed: Option<oneshot::Sender<()>>,
) {
    let metrics = ingest.metrics.clone();
    // Link news is acted on at once; result messages are returned for ingest, uplink
    // messages passed to their task (never waiting: see pleura_runtime::mqtt_link).
    let mut take = |ev: LinkEvent| match ev {
        LinkEvent::Message { topic, payload } if topics::parse_uplink(&topic).is_ok() => {
            if uplink
                .try_send(UplinkWork::Message(topic, payload))
                .is_err()
            {
                metrics.reject_uplink("queue_full");
            }
            None
        }
        LinkEvent::Message { topic, payload } => {
            Metrics::inc(&metrics.mqtt_messages, 1);
            Some((topic, payload))
        }
        LinkEvent::Up => {
            tracing::info!("hub connected to the broker and subscribed");
            metrics.mqtt_connected.store(1, Ordering::Relaxed);
            if uplink.try_send(UplinkWork::LinkUp).is_err() {
                tracing::warn!("uplink task behind: unreceipted downlink messages go at the next periodic re-publish");
            }
            if let Some(tx) = subscribed.take() {
                let _ = tx.send(());
            }
            None
        }
        LinkEvent::Down { error, retry_in } => {
            metrics.mqtt_connected.store(0, Ordering::Relaxed);
            tracing::warn!(%error, ?retry_in, "broker connection lost");
            None
        }
    };
    while let Some(ev) = events.recv().await {
        let Some(first) = take(ev) else { continue };
        // Group commit: whatever else is already waiting shares the same flush.
        let mut messages = vec![first];
        while messages.len() < GROUP_COMMIT {
            match events.try_recv() {
                Ok(ev) => messages.extend(take(ev)),
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
        // Never waits for the link (it would wait for this task in turn: see
        // pleura_runtime::mqtt_link). An ack not queued is dropped, which is safe: the
        // device sends the batch again after its ack timeout, and the hub acks the
        // redelivery without storing it twice.
        let mut dropped = 0u64;
        let mut last_error = None;
        for out in outcomes {
            // A device whose results arrived is online: see `Downlink::device_seen`.
            downlink.device_seen(&out.clinic, &out.device);
            let ack_topic = topics::acks(&out.clinic, &out.device);
            match publisher.publish(ack_topic, QoS::AtLeastOnce, out.ack.encode_to_vec()) {
                Ok(()) => Metrics::inc(&ingest.metrics.acks_published, 1),
                Err(e) => {
                    dropped += 1;
                    last_error = Some(e);
                }
            }
        }
        if let Some(e) = last_error {
            match e {
                PublishError::Busy => tracing::warn!(
                    dropped,
                    "ack(s) dropped, the MQTT link's request queue is full; \
                     the devices resend after their ack timeout"
                ),
                e => tracing::warn!(error = %e, dropped, "could not queue ack(s)"),
            }
        }
    }
}
