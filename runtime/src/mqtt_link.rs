//! The MQTT connection both daemons keep: connect, subscribe (ready only once the
//! broker granted every subscription), poll, and on any failure back off
//! ([`Backoff`], jittered and bounded) and reconnect, for as long as the link lives.
//!
//! One dedicated task polls rumqttc's event loop without pause and only polls it:
//! it never publishes (publishing from the polling task can deadlock, rumqtt #1025),
//! and it subscribes through a short-lived task of its own. Users publish through a
//! [`Publisher`] from their own tasks and read [`LinkEvent`]s from a channel.
//!
//! No cycle of waits: the polling task waits for the user to take events (the events
//! channel is bounded), so nothing the user does may wait for the polling task.
//! rumqttc reads its request channel only while polled, hence [`Publisher::publish`]
//! never waits on it: a full request channel is [`PublishError::Busy`] at once, and
//! the user drops or retries the message (QoS 1 users resend what is not acked).

mod backoff;
#[cfg(test)]
mod tests;

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use backoff::Backoff;

/// How long [`MqttLink::stop`] lets a connected link send its DISCONNECT.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What the link reports, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected, and the broker granted every subscription: from here on nothing
    /// published to them is missed. Sent again after every reconnect.
    Up,
    /// Connecting failed, the connection was lost, or the broker refused a
    /// subscription; the link tries again after `retry_in`.
    Down { error: String, retry_in: Duration },
    /// A message on one of the subscriptions.
    Message { topic: String, payload: Bytes },
}

/// How the link behaves beyond rumqttc's own `MqttOptions`.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Filters subscribed on every connect (a restarted broker forgot them).
    pub subscriptions: Vec<(String, QoS)>,
    /// The pause before each reconnect.
    pub backoff: Backoff,
    /// Capacity of rumqttc's request channel (publishes waiting for the event loop);
    /// [`Publisher::publish`] fails with [`PublishError::Busy`] while it is full.
    pub requests: usize,
    /// Capacity of the [`LinkEvent`] channel; a full one holds the event loop back.
    pub events: usize,
    /// Waits this long after connecting before subscribing (a test hook).
    pub subscribe_delay: Option<Duration>,
}

impl LinkConfig {
    pub fn new(subscriptions: Vec<(String, QoS)>, backoff: Backoff) -> Self {
        Self {
            subscriptions,
            backoff,
            requests: 64,
            events: 256,
            subscribe_delay: None,
        }
    }
}

/// Why a message was not queued; nothing of it was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// rumqttc's request channel is full (the event loop is behind, or waits for the
    /// user to take events): try again later, or drop the message.
    #[error("the MQTT link's request queue is full")]
    Busy,
    /// The link was stopped (its event loop is gone).
    #[error("the MQTT link is stopped")]
    Stopped,
    /// Not a topic one can publish to (empty, or with a wildcard).
    #[error("not a valid topic to publish to: {0:?}")]
    InvalidTopic(String),
}

/// Publishes through the link from any task, the one reading its events included.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    stop: CancellationToken,
}

impl Publisher {
    /// Queues a message for the event loop, or fails at once: never waits, so a task
    /// that also reads the link's events cannot stall the link (see the module docs).
    /// Queued is not delivered: the broker may still lose it.
    pub fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), PublishError> {
        let topic = topic.into();
        if topic.is_empty() || !rumqttc::valid_topic(&topic) {
            return Err(PublishError::InvalidTopic(topic));
        }
        if self.stop.is_cancelled() {
            return Err(PublishError::Stopped);
        }
        // rumqttc tells a full channel from a closed one only by its error's text; the
        // channel closes only once the polling task ended, after `stop` was cancelled.
        match self.client.try_publish(topic, qos, false, payload) {
            Ok(()) => Ok(()),
            Err(_) if self.stop.is_cancelled() => Err(PublishError::Stopped),
            Err(_) => Err(PublishError::Busy),
        }
    }
}

/// A running link; stop it with [`MqttLink::stop`] (dropping it ends the task too,
/// without a DISCONNECT).
pub struct MqttLink {
    publisher: Publisher,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl MqttLink {
    /// Starts the polling task; the receiver yields what the link reports. Needs a
    /// Tokio runtime.
    pub fn start(options: MqttOptions, cfg: LinkConfig) -> (Self, mpsc::Receiver<LinkEvent>) {
        let (host, port) = options.broker_address();
        let span = tracing::info_span!("mqtt_link", client = %options.client_id(), %host, port);
        let (client, eventloop) = AsyncClient::new(options, cfg.requests.max(1));
        let (tx, rx) = mpsc::channel(cfg.events.max(1));
        let stop = CancellationToken::new();
        let poller = Poller {
            client: client.clone(),
            events: tx,
            stop: stop.clone(),
            cfg,
        };
        let task = tokio::spawn(poller.run(eventloop).instrument(span));
        let link = Self {
            publisher: Publisher {
                client,
                stop: stop.clone(),
            },
            stop,
            task: Some(task),
        };
        (link, rx)
    }

    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Sends a DISCONNECT if connected (waiting at most a second for it), then ends
    /// the polling task. Events not yet delivered are dropped.
    pub async fn stop(mut self) {
        let _ = self.publisher.client.try_disconnect();
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MqttLink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The polling task's state.
struct Poller {
    client: AsyncClient,
    events: mpsc::Sender<LinkEvent>,
    stop: CancellationToken,
    cfg: LinkConfig,
}

impl Poller {
    async fn run(mut self, mut eventloop: EventLoop) {
        let mut connected = false;
        // A SUBSCRIBE sent on this connection not yet answered.
        let mut awaiting_suback = false;
        let mut stop_by: Option<tokio::time::Instant> = None;
        loop {
            let polled = tokio::select! {
                _ = self.stop.cancelled(), if stop_by.is_none() => {
                    if !connected {
                        return;
                    }
                    stop_by = Some(tokio::time::Instant::now() + STOP_GRACE);
                    continue;
                }
                _ = sleep_until(stop_by) => return,
                ev = eventloop.poll() => ev,
            };
            let failure = match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    tracing::debug!("connected to the broker");
                    if self.cfg.subscriptions.is_empty() {
                        self.report_up().await;
                    } else {
                        awaiting_suback = true;
                        self.subscribe();
                    }
                    None
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) if awaiting_suback => {
                    awaiting_suback = false;
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        // Reconnecting after a backoff retries the subscription.
                        eventloop.clean();
                        Some(format!(
                            "the broker refused the subscription to {}",
                            self.filters()
                        ))
                    } else {
                        self.report_up().await;
                        None
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.deliver(LinkEvent::Message {
                        topic: p.topic,
                        payload: p.payload,
                    })
                    .await;
                    None
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) if self.stop.is_cancelled() => return,
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            let Some(error) = failure else { continue };
            connected = false;
            awaiting_suback = false;
            if self.stop.is_cancelled() {
                return;
            }
            let retry_in = self.cfg.backoff.next_random();
            tracing::debug!(%error, ?retry_in, "broker unreachable");
            self.deliver(LinkEvent::Down { error, retry_in }).await;
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(retry_in) => {}
            }
        }
    }

    async fn report_up(&mut self) {
        self.cfg.backoff.reset();
        tracing::debug!("subscribed; link up");
        self.deliver(LinkEvent::Up).await;
    }

    /// Subscribes from a task of its own: waiting on a full request channel here would
    /// stop the polling that empties it.
    fn subscribe(&self) {
        let client = self.client.clone();
        let delay = self.cfg.subscribe_delay;
        let filters: Vec<rumqttc::SubscribeFilter> = self
            .cfg
            .subscriptions
            .iter()
            .map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), *q))
            .collect();
        tokio::spawn(
            async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::warn!(error = %e, "subscribing failed");
                }
            }
            .in_current_span(),
        );
    }

    fn filters(&self) -> String {
        let f: Vec<&str> = self
            .cfg
            .subscriptions
            .iter()
            .map(|(f, _)| f.as_str())
            .collect();
        f.join(", ")
    }

    /// Hands an event to the user; dropped once the link is stopping or the user gone.
    async fn deliver(&self, ev: LinkEvent) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            r = self.events.send(ev) => {
                if r.is_err() {
                    // Nobody listens: end the link as if stopped.
                    self.stop.cancel();
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
