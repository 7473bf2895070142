//! How signed batches reach the hub and its answers come back, behind one trait the
//! sync worker talks to. MQTT (mqtt.rs) is the primary transport: the hub answers
//! later, on the device's ack topic. gRPC (grpc.rs) is the fallback: the answer is the
//! call's reply. A new transport (NATS, say) is one module implementing [`Transport`]
//! and the line in `SyncWorker::run` that builds it.

pub mod grpc;
pub mod mqtt;

use std::future::Future;

use pleura_shared::wire::{ResultAck, SignedBatch};

/// How the hub's answer to a batch comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// Later, as [`Event::Answer`]: the worker keeps many batches in flight.
    Later,
    /// In the reply to `send` ([`Sent::answer`]): one batch per round.
    Inline,
}

/// What a transport reports on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Ready: batches sent from now on will be answered (MQTT: connected and
    /// subscribed to the acks). Whatever was unanswered should go again.
    Up,
    /// Lost or unable to connect; the transport retries by itself.
    Down(String),
    /// The hub's answer: committed, parked, retracted, days to resend.
    Answer(ResultAck),
}

/// A batch handed over.
#[derive(Debug, Default)]
pub struct Sent {
    /// Its size on the wire (roughly: payload and topic or framing).
    pub bytes: usize,
    /// The hub's answer, for [`Answers::Inline`] transports.
    pub answer: Option<ResultAck>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(String);

impl TransportError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }

    /// The error and its causes on one line ("transport error: tcp connect error: …").
    pub fn chain(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut s = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        Self(s)
    }
}

pub trait Transport: Send {
    /// As status and the log name it: "mqtt", "grpc".
    fn name(&self) -> &'static str;

    fn answers(&self) -> Answers;

    /// Sends one signed batch (for [`Answers::Later`], queues it: sent is not received).
    fn send(
        &mut self,
        batch: SignedBatch,
    ) -> impl Future<Output = Result<Sent, TransportError>> + Send;

    /// The next event; pending while there is none, None once the transport is gone.
    /// Cancel-safe (the worker selects on it).
    fn next_event(&mut self) -> impl Future<Output = Option<Event>> + Send;

    /// Closes the transport (MQTT: DISCONNECT).
    fn stop(self) -> impl Future<Output = ()> + Send;
}

/// The next event of an optional transport (pending without one).
pub async fn next_event_of<T: Transport>(t: &mut Option<T>) -> Option<Event> {
    match t {
        Some(t) => t.next_event().await,
        None => std::future::pending().await,
    }
}
