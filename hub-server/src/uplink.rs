//! What devices send the hub besides results (`SignedUplink` on each device's uplink
//! topic): checked like a batch (signed by the enrolled key of the topic's device, the
//! body naming that same device, this schema), then routed: receipts to the
//! [`Downlink`] queue, media chunks and queries to the media receiver, whose
//! `MediaAck` goes back to the device at once (ephemeral, signed), model fetches and
//! reports to the model task (a fetch is answered at once with a `ModelChunk`).

use std::sync::Arc;

use pleura_shared::signing::{self, Domain, SignatureError};
use pleura_shared::wire::{
    downlink, uplink, MediaAck, MediaChunk, MediaQuery, ModelChunk, ModelFetch, ModelReport,
    SignedUplink, Uplink,
};
use pleura_shared::{topics, SCHEMA_VERSION};
use prost::Message;

use crate::ca::{Registry, TrustError};
use crate::downlink::Downlink;
use crate::error::HubError;
use crate::metrics::Metrics;

/// Where media uploads go (`hub_server::media::MediaReceiver` implements it). Each call
/// answers with what the hub now durably holds of the item.
pub trait MediaSink: Send + Sync {
    fn chunk(&self, clinic: &str, device: &str, chunk: MediaChunk) -> MediaAck;
    fn query(&self, clinic: &str, device: &str, query: MediaQuery) -> MediaAck;
}

/// Where model downloads and reports go (`hub_server::models::ModelControl`).
pub trait ModelSink: Send + Sync {
    fn fetch(&self, clinic: &str, device: &str, fetch: ModelFetch) -> ModelChunk;
    fn report(&self, clinic: &str, device: &str, report: ModelReport);
}

/// Why an uplink message was refused. `label` is the metrics reason.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("message on unexpected topic: {0}")]
    Topic(String),
    #[error("uplink message of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("payload is not a SignedUplink: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("unknown schema version {0} (this hub speaks {SCHEMA_VERSION})")]
    Schema(u32),
    #[error("message claims {claimed} but arrived on the topic of {topic}")]
    Mismatch { claimed: String, topic: String },
    #[error("uplink message with no content")]
    Empty,
    #[error("sender not trusted: {0}")]
    Untrusted(#[from] TrustError),
    #[error("unsigned uplink message from {0} (this hub requires signed messages)")]
    Unsigned(String),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("recording a receipt: {0}")]
    Store(HubError),
}

impl UplinkError {
    pub fn label(&self) -> &'static str {
        match self {
            UplinkError::Topic(_) => "topic",
            UplinkError::TooLarge(..) => "too_large",
            UplinkError::Decode(_) | UplinkError::Empty => "malformed",
            UplinkError::Schema(_) => "schema_version",
            UplinkError::Mismatch { .. } => "identity_mismatch",
            UplinkError::Untrusted(_) => "untrusted_device",
            UplinkError::Unsigned(_) | UplinkError::Signature(_) => "signature",
            UplinkError::Store(_) => "store",
        }
    }
}

pub struct UplinkDispatcher {
    /// Enrolled devices and their keys; None only in insecure development mode, where
    /// unsigned messages are accepted (as batches are).
    pub registry: Option<Arc<Registry>>,
    pub downlink: Arc<Downlink>,
    /// None until a media receiver is wired in: chunks and queries are then refused.
    pub media: Option<Arc<dyn MediaSink>>,
    /// None until the model task is wired in: fetches are then refused.
    pub models: Option<Arc<dyn ModelSink>>,
    pub metrics: Arc<Metrics>,
    /// Largest accepted message (config `mqtt.max_payload`).
    pub max_payload: usize,
}

impl UplinkDispatcher {
    /// Checks and acts on one message; counts and logs a refusal.
    pub fn handle(&self, topic: &str, payload: &[u8]) {
        Metrics::inc(&self.metrics.uplink_messages, 1);
        if let Err(e) = self.dispatch(topic, payload) {
            self.metrics.reject_uplink(e.label());
            let t: String = topic.chars().take(128).collect();
            tracing::warn!(topic = %t, reason = %e, "uplink message rejected");
        }
    }

    pub fn dispatch(&self, topic: &str, payload: &[u8]) -> Result<(), UplinkError> {
        let (clinic, device, body) = self.open(topic, payload)?;
        // It is online: its unreceipted downlink messages may go again.
        self.downlink.device_seen(&clinic, &device);
        match body.kind.ok_or(UplinkError::Empty)? {
            uplink::Kind::Receipt(r) => {
                let n = self
                    .downlink
                    .receipt(&clinic, &device, &r.message_ids)
                    .map_err(UplinkError::Store)?;
                tracing::debug!(clinic, device, removed = n, "downlink receipt");
            }
            uplink::Kind::MediaChunk(c) => {
                let ack = match &self.media {
                    Some(m) => m.chunk(&clinic, &device, c),
                    None => no_media(c.sha256),
                };
                self.downlink
                    .publish_ephemeral(&clinic, &device, downlink::Kind::MediaAck(ack));
            }
            uplink::Kind::MediaQuery(q) => {
                let ack = match &self.media {
                    Some(m) => m.query(&clinic, &device, q),
                    None => no_media(q.sha256),
                };
                self.downlink
                    .publish_ephemeral(&clinic, &device, downlink::Kind::MediaAck(ack));
            }
            uplink::Kind::ModelFetch(f) => {
                let chunk = match &self.models {
                    Some(m) => m.fetch(&clinic, &device, f),
                    None => ModelChunk {
                        release_version: f.release_version,
                        sha256: f.sha256,
                        offset: f.offset,
                        refused: "this hub does not serve models".into(),
                        ..Default::default()
                    },
                };
                self.downlink.publish_ephemeral(
                    &clinic,
                    &device,
                    downlink::Kind::ModelChunk(chunk),
                );
            }
            uplink::Kind::ModelReport(r) => match &self.models {
                Some(m) => m.report(&clinic, &device, r),
                None => tracing::debug!(clinic, device, "model report to a hub without models"),
            },
        }
        Ok(())
    }

    /// Decodes the message and checks that the enrolled, unrevoked device the topic
    /// names signed it, and that it names that device and this schema.
    pub fn open(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<(String, String, Uplink), UplinkError> {
        let (clinic, device) =
            topics::parse_uplink(topic).map_err(|e| UplinkError::Topic(e.to_string()))?;
        if payload.len() > self.max_payload {
            return Err(UplinkError::TooLarge(payload.len(), self.max_payload));
        }
        let signed = SignedUplink::decode(payload)?;
        let who = topics::client_id(&clinic, &device);
        if let Some(registry) = &self.registry {
            if signed.signature.is_empty() {
                return Err(UplinkError::Unsigned(who));
            }
            let dev = registry.trusted(&clinic, &device, None)?;
            let key = hex::decode(&dev.public_key).map_err(|e| {
                TrustError::Registry(format!("public key of {who} in the registry: {e}"))
            })?;
            signing::verify_in(Domain::Uplink, &key, &signed.body, &signed.signature, &who)?;
        }
        let body = Uplink::decode(signed.body.as_slice())?;
        if body.schema_version != SCHEMA_VERSION {
            return Err(UplinkError::Schema(body.schema_version));
        }
        if body.clinic_id != clinic || body.device_id != device {
            return Err(UplinkError::Mismatch {
                claimed: format!("{}/{}", body.clinic_id, body.device_id),
                topic: format!("{clinic}/{device}"),
            });
        }
        Ok((clinic, device, body))
    }
}

fn no_media(sha256: Vec<u8>) -> MediaAck {
    MediaAck {
        sha256,
        held: 0,
        complete: false,
        refused: "this hub does not take media".into(),
    }
}

#[cfg(test)]
mod tests;
