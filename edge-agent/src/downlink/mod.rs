//! The agent's side of the hub <-> device channel (issue #13). The hub sends
//! `SignedDownlink` messages on this device's downlink topic, signed with its downlink
//! key (`[tls] hub_key`); the device sends `SignedUplink` messages on its uplink topic,
//! signed with its enrolment key. Both travel on the sync worker's MQTT link.
//!
//! - [`Channel`]: signs and publishes uplink messages (media chunks, queries, receipts).
//! - [`receive`]: checks each downlink message (signature, clinic/device, schema),
//!   drops repeats by message id, stores verdicts ([`VerdictStore`]) and clip requests
//!   ([`ClipRequests`]) durably, and only then sends the Receipt that stops the hub
//!   re-sending. Media acks and clip requests go on to the media module by channel.
//! - Model lifecycle (`models.rs`): an offer is verified and persisted as a pending
//!   download, a command stored, before the receipt; chunks go to the model worker.

mod channel;
mod clips;
#[cfg(test)]
mod model_tests;
mod models;
pub mod receive;
#[cfg(test)]
mod tests;
mod verdicts;

pub use crate::status::DownlinkStatus;
pub use channel::Channel;
pub use clips::{ClipRequests, PendingClip};
pub use receive::{DownlinkCounters, HubTrust, Receiver, Rejected};
pub use verdicts::{StoredVerdict, VerdictStore, VerdictView, ZoneView};

/// A store of the channel failed (sled). Nothing was receipted.
#[derive(Debug, thiserror::Error)]
pub enum DownlinkError {
    #[error("downlink store: {0}")]
    Store(#[from] sled::Error),
    #[error("downlink store: {0}")]
    Transaction(String),
    #[error("downlink store holds an undecodable entry: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error(transparent)]
    Models(#[from] crate::models::ModelsError),
}

/// How long a downlink message id is remembered (a repeat older than this would be
/// taken again; the hub re-sends only until the receipt).
pub const SEEN_KEEP_MS: u64 = 365 * 86_400_000;

/// Tree names in the agent's sled db (`SledOutbox::tree`).
pub const SEEN_TREE: &str = "downlink_seen";
pub const VERDICT_TREE: &str = "verdicts";
pub const CLIP_TREE: &str = "clip_requests";

/// Opens the channel's stores in the outbox's sled db.
pub fn open_stores(
    outbox: &crate::outbox::SledOutbox,
) -> Result<(VerdictStore, ClipRequests, sled::Tree), DownlinkError> {
    Ok((
        VerdictStore::new(outbox.tree(VERDICT_TREE)?),
        ClipRequests::new(outbox.tree(CLIP_TREE)?),
        outbox.tree(SEEN_TREE)?,
    ))
}

/// The hub's downlink public key from the text of a `hub-downlink.pub` file (the raw
/// 32-byte Ed25519 key, hex, as `hub-server enroll` writes it).
pub fn parse_hub_key(text: &str) -> Result<Vec<u8>, String> {
    let key = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    if key.len() != 32 {
        return Err(format!("{} bytes, an Ed25519 key has 32", key.len()));
    }
    Ok(key)
}

/// The channel as the daemon starts it: the [`Channel`] (for the sync worker's MQTT
/// link and the media uploader), the stores, and the media module's two inputs.
pub struct Started {
    pub channel: std::sync::Arc<Channel>,
    pub verdicts: VerdictStore,
    pub clips: ClipRequests,
    pub media_acks: tokio::sync::mpsc::Receiver<pleura_shared::wire::MediaAck>,
    pub clip_requests: tokio::sync::mpsc::Receiver<pleura_shared::wire::ClipRequest>,
    pub counters: std::sync::Arc<DownlinkCounters>,
}

/// Opens the channel's stores in the agent's sled db and spawns the receiver on
/// `tracker`. `keys`: `credentials::channel_keys`.
pub fn start(
    cfg: &crate::config::EdgeConfig,
    (signer, trust): (Option<pleura_shared::signing::BatchSigner>, HubTrust),
    outbox: &crate::outbox::SledOutbox,
    status: std::sync::Arc<crate::status::Shared>,
    models: Option<(
        std::sync::Arc<crate::models::ModelStore>,
        tokio::sync::mpsc::Sender<crate::models::ModelEvent>,
    )>,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Started> {
    use std::sync::Arc;
    let (channel, inbound) = Channel::new(&cfg.clinic, &cfg.device, signer);
    let channel = Arc::new(channel);
    let stores = open_stores(outbox)?;
    let (verdicts, clips) = (stores.0.clone(), stores.1.clone());
    let (ack_tx, media_acks) = tokio::sync::mpsc::channel(64);
    let (clip_tx, clip_requests) = tokio::sync::mpsc::channel(64);
    let mut receiver = Receiver::new(&cfg.clinic, &cfg.device, trust, stores, ack_tx, clip_tx);
    if let Some((store, events)) = models {
        receiver = receiver.with_models(store, events);
    }
    let receiver = Arc::new(receiver);
    let forgotten = receiver
        .forget_seen_before(pleura_shared::now_ms().saturating_sub(SEEN_KEEP_MS))
        .map_err(|e| anyhow::anyhow!("pruning the downlink seen set: {e}"))?;
    if forgotten > 0 {
        tracing::info!(forgotten, "forgot downlink message ids older than a year");
    }
    let counters = receiver.counters.clone();
    tracker.spawn(receiver.run(inbound, channel.clone(), status, shutdown));
    Ok(Started {
        channel,
        verdicts,
        clips,
        media_acks,
        clip_requests,
        counters,
    })
}
