//! The primary transport: batches published on the device's results topic, the hub's
//! answers read from its ack topic, over the shared MQTT link (pleura-runtime), which
//! keeps the connection and paces reconnects. The same link carries the hub <-> device
//! channel (crate::downlink): it subscribes the downlink topic too and hands what arrives
//! there to the channel's receiver, and the channel publishes through its publisher.

use std::sync::Arc;
use std::time::Duration;

use pleura_runtime::mqtt_link::{Backoff, LinkConfig, LinkEvent, MqttLink};
use pleura_shared::topics;
use pleura_shared::wire::{ResultAck, SignedBatch};
use pleura_shared::SCHEMA_VERSION;
use prost::Message;
use rumqttc::{MqttOptions, QoS};
use tokio::sync::mpsc;

use super::{Answers, Event, Sent, Transport, TransportError};
use crate::config::EdgeConfig;
use crate::downlink::Channel;

pub struct Mqtt {
    link: MqttLink,
    events: mpsc::Receiver<LinkEvent>,
    results: String,
    acks: String,
    channel: Option<Arc<Channel>>,
}

impl Mqtt {
    /// Starts connecting at once (needs a Tokio runtime).
    pub fn start(
        cfg: &EdgeConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
        channel: Option<Arc<Channel>>,
    ) -> anyhow::Result<Self> {
        let (host, port) = crate::config::parse_mqtt_url(&cfg.hub.mqtt_url)?;
        let mut opts = MqttOptions::new(topics::client_id(&cfg.clinic, &cfg.device), host, port);
        opts.set_keep_alive(Duration::from_secs(20))
            .set_clean_session(false)
            .set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some(tls) = tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let acks = topics::acks(&cfg.clinic, &cfg.device);
        let backoff = Backoff::new(
            Duration::from_millis(cfg.sync.backoff_min_ms),
            Duration::from_millis(cfg.sync.backoff_max_ms),
        );
        let mut subscriptions = vec![(acks.clone(), QoS::AtLeastOnce)];
        if let Some(ch) = &channel {
            subscriptions.push((ch.downlink_topic(), QoS::AtLeastOnce));
        }
        let mut link_cfg = LinkConfig::new(subscriptions, backoff);
        // Room for a whole in-flight window of batches plus the holdings check and
        // retractions, so a full request queue (`send` fails, see below) is rare.
        let window = cfg.sync.max_in_flight.div_ceil(cfg.sync.batch_size.max(1));
        link_cfg.requests = link_cfg.requests.max(window + 8);
        let (link, events) = MqttLink::start(opts, link_cfg);
        if let Some(ch) = &channel {
            ch.attach(link.publisher());
        }
        Ok(Self {
            link,
            events,
            results: topics::results(&cfg.clinic, &cfg.device),
            acks,
            channel,
        })
    }
}

impl Transport for Mqtt {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn answers(&self) -> Answers {
        Answers::Later
    }

    /// Queues the batch without waiting: the worker sending also reads the link's
    /// events, and waiting on the link here could wedge both (see
    /// pleura_runtime::mqtt_link). A full queue (`PublishError::Busy`) is a failed
    /// send: the batch stays in the outbox and goes out on a later round.
    async fn send(&mut self, batch: SignedBatch) -> Result<Sent, TransportError> {
        let payload = batch.encode_to_vec();
        let bytes = payload.len() + self.results.len() + 4;
        self.link
            .publisher()
            .publish(self.results.as_str(), QoS::AtLeastOnce, payload)
            .map_err(TransportError::new)?;
        Ok(Sent {
            bytes,
            answer: None,
        })
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            let ev = self.events.recv().await?;
            if let Some(ch) = &self.channel {
                match &ev {
                    LinkEvent::Up => ch.set_up(true),
                    LinkEvent::Down { .. } => ch.set_up(false),
                    LinkEvent::Message { .. } => {}
                }
            }
            match ev {
                LinkEvent::Up => return Some(Event::Up),
                LinkEvent::Down { error, .. } => return Some(Event::Down(error)),
                LinkEvent::Message { topic, payload } if topic == self.acks => {
                    if let Some(ack) = decode_ack(&payload) {
                        return Some(Event::Answer(ack));
                    }
                }
                // Never waits: the receiver runs in a task of its own.
                LinkEvent::Message { topic, payload } => match &self.channel {
                    Some(ch) if topic == ch.downlink_topic() => ch.deliver(payload),
                    _ => {}
                },
            }
        }
    }

    async fn stop(self) {
        if let Some(ch) = &self.channel {
            ch.set_up(false);
        }
        self.link.stop().await;
    }
}

fn decode_ack(payload: &[u8]) -> Option<ResultAck> {
    match ResultAck::decode(payload) {
        Ok(ack) if ack.schema_version == SCHEMA_VERSION => Some(ack),
        Ok(ack) => {
            tracing::warn!(
                version = ack.schema_version,
                "ack with unknown schema version ignored"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "undecodable ack ignored");
            None
        }
    }
}
