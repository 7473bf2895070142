//! Publishing uplink messages on the sync worker's MQTT link, and handing what arrives
//! on the downlink topic to the receiver task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use pleura_runtime::mqtt_link::{PublishError, Publisher};
use pleura_shared::signing::{BatchSigner, Domain};
use pleura_shared::wire::{uplink, SignedUplink, Uplink};
use pleura_shared::{now_ms, topics, SCHEMA_VERSION};
use prost::Message;
use rumqttc::QoS;
use tokio::sync::mpsc;

/// Downlink messages waiting for the receiver; more are dropped (the hub re-sends
/// whatever is not receipted).
const INBOUND: usize = 256;

/// The agent's side of the channel, handed to the media uploader.
pub struct Channel {
    clinic: String,
    device: String,
    /// The device's enrolment key; None in insecure development mode (unsigned).
    signer: Option<BatchSigner>,
    publisher: Mutex<Option<Publisher>>,
    up: AtomicBool,
    inbound: mpsc::Sender<Bytes>,
}

impl Channel {
    /// The channel and the stream of raw downlink payloads for [`super::Receiver::run`].
    pub fn new(
        clinic: &str,
        device: &str,
        signer: Option<BatchSigner>,
    ) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(INBOUND);
        let ch = Self {
            clinic: clinic.into(),
            device: device.into(),
            signer,
            publisher: Mutex::new(None),
            up: AtomicBool::new(false),
            inbound: tx,
        };
        (ch, rx)
    }

    /// Signs `kind` and publishes it on this device's uplink topic (QoS 1). Never waits:
    /// `Busy` while the link cannot take it (or is not started yet): try again later.
    pub fn send(&self, kind: uplink::Kind) -> Result<(), PublishError> {
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(PublishError::Busy)?;
        publisher.publish(
            topics::uplink(&self.clinic, &self.device),
            QoS::AtLeastOnce,
            self.seal(kind).encode_to_vec(),
        )
    }

    /// Connected to the broker and subscribed to the downlink topic.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn downlink_topic(&self) -> String {
        topics::downlink(&self.clinic, &self.device)
    }

    pub(crate) fn seal(&self, kind: uplink::Kind) -> SignedUplink {
        let body = Uplink {
            schema_version: SCHEMA_VERSION,
            clinic_id: self.clinic.clone(),
            device_id: self.device.clone(),
            sent_at_ms: now_ms(),
            kind: Some(kind),
        }
        .encode_to_vec();
        let signature = self
            .signer
            .as_ref()
            .map(|s| s.sign_in(Domain::Uplink, &body))
            .unwrap_or_default();
        SignedUplink { body, signature }
    }

    /// The MQTT transport's publisher (set when the link starts).
    pub fn attach(&self, publisher: Publisher) {
        *self.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(publisher);
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// A message from the downlink topic, for the receiver task. Never waits (it is
    /// called from the sync worker's event loop); a full queue drops it.
    pub fn deliver(&self, payload: Bytes) {
        if self.inbound.try_send(payload).is_err() {
            tracing::warn!(
                "downlink message dropped: the receiver is behind (the hub sends it again)"
            );
        }
    }
}
