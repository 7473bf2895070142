//! Checking and keeping what the hub sends. A message is acted on only if it verifies
//! against the hub's downlink key and names this clinic and device; a durable one
//! (message id set) is stored, with its id in the seen set, in one sled transaction and
//! flushed before its Receipt goes out, so a verdict is kept once however often the
//! hub (or the broker) delivers it, and never receipted without being kept.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pleura_shared::signing::{verify_in, Domain};
use pleura_shared::wire::{
    downlink, uplink, ClipRequest, Downlink, MediaAck, Receipt, SignedDownlink,
};
use pleura_shared::{now_ms, SCHEMA_VERSION};
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{clips, verdicts, Channel, ClipRequests, DownlinkError, VerdictStore};
use crate::status::{DownlinkStatus, Shared};

/// What the agent trusts downlink messages by.
#[derive(Debug, Clone)]
pub enum HubTrust {
    /// No [tls] bundle (development mode): messages are taken unchecked, as the
    /// insecure hub takes unsigned batches.
    Insecure,
    /// A bundle without `hub_key`: nothing from the hub can be trusted; all dropped.
    Missing,
    /// The hub's raw Ed25519 downlink public key.
    Key(Vec<u8>),
}

/// Why a downlink message was dropped; `label` is the status counter's name.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("no [tls] hub_key configured: downlink messages cannot be trusted")]
    NoHubKey,
    #[error("not a SignedDownlink: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("signature does not verify against the hub's downlink key")]
    Signature,
    #[error("unknown schema version {0} (this agent speaks {SCHEMA_VERSION})")]
    Schema(u32),
    #[error("message for {0}, not this device")]
    OtherDevice(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] DownlinkError),
}

impl Rejected {
    pub fn label(&self) -> &'static str {
        match self {
            Rejected::NoHubKey => "no_hub_key",
            Rejected::Decode(_) | Rejected::Malformed(_) => "malformed",
            Rejected::Signature => "signature",
            Rejected::Schema(_) => "schema_version",
            Rejected::OtherDevice(_) => "other_device",
            Rejected::Store(_) => "store",
        }
    }
}

/// What became of an accepted message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Newly and durably stored; the receipt may go out now.
    Stored { receipt: [u8; 16] },
    /// Seen before (the hub did not get the receipt): receipt it again.
    Duplicate { receipt: [u8; 16] },
    /// An ephemeral message, passed on.
    Forwarded,
}

#[derive(Default)]
pub struct DownlinkCounters {
    pub received: AtomicU64,
    pub verdicts: AtomicU64,
    pub clip_requests: AtomicU64,
    pub media_acks: AtomicU64,
    pub duplicates: AtomicU64,
    pub receipts_sent: AtomicU64,
    dropped: Mutex<BTreeMap<&'static str, u64>>,
}

impl DownlinkCounters {
    pub fn drop_reason(&self, reason: &'static str) {
        if let Ok(mut m) = self.dropped.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped
            .lock()
            .map(|m| m.get(reason).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn snapshot(&self, trust: &HubTrust) -> DownlinkStatus {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DownlinkStatus {
            trust: match trust {
                HubTrust::Insecure => "insecure",
                HubTrust::Missing => "missing",
                HubTrust::Key(_) => "hub_key",
            }
            .into(),
            received: g(&self.received),
            verdicts: g(&self.verdicts),
            clip_requests: g(&self.clip_requests),
            media_acks: g(&self.media_acks),
            duplicates: g(&self.duplicates),
            receipts_sent: g(&self.receipts_sent),
            dropped: self
                .dropped
                .lock()
                .map(|m| m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                .unwrap_or_default(),
        }
    }
}

pub struct Receiver {
    pub clinic: String,
    pub device: String,
    pub trust: HubTrust,
    /// message id (16) → received_at_ms (8, big-endian).
    pub seen: sled::Tree,
    pub verdicts: VerdictStore,
    pub clips: ClipRequests,
    pub media_acks: mpsc::Sender<MediaAck>,
    pub clip_requests: mpsc::Sender<ClipRequest>,
    pub counters: Arc<DownlinkCounters>,
    /// The model store and worker (`with_models`); without them model messages are
    /// receipted and ignored.
    pub models: Option<(
        Arc<crate::models::ModelStore>,
        mpsc::Sender<crate::models::ModelEvent>,
    )>,
    warned_missing: AtomicBool,
}

impl Receiver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clinic: &str,
        device: &str,
        trust: HubTrust,
        (verdicts, clips, seen): (VerdictStore, ClipRequests, sled::Tree),
        media_acks: mpsc::Sender<MediaAck>,
        clip_requests: mpsc::Sender<ClipRequest>,
    ) -> Self {
        Self {
            clinic: clinic.into(),
            device: device.into(),
            trust,
            seen,
            verdicts,
            clips,
            media_acks,
            clip_requests,
            counters: Arc::default(),
            models: None,
            warned_missing: AtomicBool::new(false),
        }
    }

    pub fn with_models(
        mut self,
        store: Arc<crate::models::ModelStore>,
        events: mpsc::Sender<crate::models::ModelEvent>,
    ) -> Self {
        self.models = Some((store, events));
        self
    }

    /// Checks and keeps one message; a dropped one is counted by reason. Blocking
    /// (sled): call it off the async workers.
    pub fn handle(&self, payload: &[u8]) -> Result<Outcome, Rejected> {
        Self::inc(&self.counters.received);
        let res = self.take(payload);
        if let Err(e) = &res {
            self.counters.drop_reason(e.label());
        }
        res
    }

    fn take(&self, payload: &[u8]) -> Result<Outcome, Rejected> {
        let body = self.open(payload)?;
        let kind = body
            .kind
            .ok_or_else(|| Rejected::Malformed("no content".into()))?;
        if let downlink::Kind::MediaAck(ack) = kind {
            Self::inc(&self.counters.media_acks);
            if self.media_acks.try_send(ack).is_err() {
                tracing::debug!("media ack dropped: nobody takes them now");
            }
            return Ok(Outcome::Forwarded);
        }
        if let downlink::Kind::ModelChunk(c) = kind {
            return Ok(self.forward_chunk(c));
        }
        let id: [u8; 16] = body
            .message_id
            .as_slice()
            .try_into()
            .map_err(|_| Rejected::Malformed("durable message without a 16-byte id".into()))?;
        let now = now_ms();
        if let Some(res) = self.take_model(&id, now, &kind) {
            return res;
        }
        let stored = match &kind {
            downlink::Kind::Verdict(v) => {
                let exam: [u8; 16] =
                    v.exam_id.as_slice().try_into().map_err(|_| {
                        Rejected::Malformed("verdict without a 16-byte exam id".into())
                    })?;
                let key = verdicts::key(&exam, now, &id);
                self.store_once(
                    &id,
                    now,
                    Some((self.verdicts.tree(), &key, &v.encode_to_vec())),
                )?
            }
            downlink::Kind::ClipRequest(c) => {
                if c.result_id.len() != 16 {
                    return Err(Rejected::Malformed(
                        "clip request without a 16-byte result id".into(),
                    ));
                }
                self.store_once(
                    &id,
                    now,
                    Some((
                        self.clips.tree(),
                        &c.result_id,
                        &clips::value(now, &c.reason),
                    )),
                )?
            }
            // Not acted on yet (model lifecycle, anti-entropy): kept as seen, receipted.
            other => {
                tracing::warn!(kind = ?std::mem::discriminant(other), "downlink message of a kind this agent does not act on yet; receipted");
                self.store_once(&id, now, None)?
            }
        };
        if !stored {
            Self::inc(&self.counters.duplicates);
            return Ok(Outcome::Duplicate { receipt: id });
        }
        match kind {
            downlink::Kind::Verdict(v) => {
                Self::inc(&self.counters.verdicts);
                tracing::info!(exam = %hex::encode(&v.exam_id), impression = v.impression().as_str_name(), "verdict received");
            }
            downlink::Kind::ClipRequest(c) => {
                Self::inc(&self.counters.clip_requests);
                tracing::info!(result = %hex::encode(&c.result_id), reason = %c.reason, "the hub asks for a clip");
                // Only a wake-up: the media module reads the durable list on every
                // round, so a request a full channel drops is taken at the next one.
                let _ = self.clip_requests.try_send(c);
            }
            _ => {}
        }
        Ok(Outcome::Stored { receipt: id })
    }

    /// Decodes and checks a message: the hub's signature, this device, this schema.
    fn open(&self, payload: &[u8]) -> Result<Downlink, Rejected> {
        let signed = SignedDownlink::decode(payload)?;
        match &self.trust {
            HubTrust::Insecure => {}
            HubTrust::Missing => {
                if !self.warned_missing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the [tls] bundle has no hub_key (hub-downlink.pub): messages from the hub \
                         (verdicts, clip requests) cannot be trusted and are dropped; re-enrol or \
                         add the hub's hub-downlink.pub as [tls] hub_key"
                    );
                }
                return Err(Rejected::NoHubKey);
            }
            HubTrust::Key(k) => {
                verify_in(Domain::Downlink, k, &signed.body, &signed.signature, "hub")
                    .map_err(|_| Rejected::Signature)?
            }
        }
        let body = Downlink::decode(signed.body.as_slice())?;
        if body.schema_version != SCHEMA_VERSION {
            return Err(Rejected::Schema(body.schema_version));
        }
        if body.clinic_id != self.clinic || body.device_id != self.device {
            return Err(Rejected::OtherDevice(format!(
                "{}/{}",
                body.clinic_id, body.device_id
            )));
        }
        Ok(body)
    }

    /// Inserts `entry` (tree, key, value) and `id` into the seen set, in one
    /// transaction, unless `id` was seen; flushed before returning. Whether it was new.
    pub(super) fn store_once(
        &self,
        id: &[u8; 16],
        now: u64,
        entry: Option<(&sled::Tree, &[u8], &[u8])>,
    ) -> Result<bool, DownlinkError> {
        let stamp = now.to_be_bytes();
        let res: Result<bool, TransactionError<()>> = match entry {
            None => self.seen.transaction(|s| {
                if s.get(id)?.is_some() {
                    return Ok(false);
                }
                s.insert(&id[..], &stamp[..])?;
                Ok::<_, ConflictableTransactionError<()>>(true)
            }),
            Some((tree, key, value)) => (&self.seen, tree).transaction(|(s, t)| {
                if s.get(id)?.is_some() {
                    return Ok(false);
                }
                s.insert(&id[..], &stamp[..])?;
                t.insert(key, value)?;
                Ok::<_, ConflictableTransactionError<()>>(true)
            }),
        };
        let new = res.map_err(|e| DownlinkError::Transaction(format!("{e:?}")))?;
        if new {
            self.seen.flush()?;
        }
        Ok(new)
    }

    /// Forgets message ids seen before `before_ms`, returning how many. The hub stops
    /// re-sending a message at its receipt, so an id matters only for a while; without
    /// this the seen set would grow by one entry per message for ever.
    pub fn forget_seen_before(&self, before_ms: u64) -> Result<usize, DownlinkError> {
        let mut gone = 0;
        for r in self.seen.iter() {
            let (k, v) = r?;
            let at = v.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok());
            if at.is_some_and(|b| u64::from_be_bytes(b) < before_ms) {
                self.seen.remove(k)?;
                gone += 1;
            }
        }
        if gone > 0 {
            self.seen.flush()?;
        }
        Ok(gone)
    }

    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Handles downlink payloads until `shutdown`, receipting each durable message once
    /// it is kept, and keeps `status` current.
    pub async fn run(
        self: Arc<Self>,
        mut inbound: mpsc::Receiver<Bytes>,
        channel: Arc<Channel>,
        status: Arc<Shared>,
        shutdown: CancellationToken,
    ) {
        self.publish_status(&status);
        loop {
            let payload = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = inbound.recv() => match p { Some(p) => p, None => return },
            };
            let me = self.clone();
            let res = tokio::task::spawn_blocking(move || me.handle(&payload)).await;
            match res {
                Ok(Ok(Outcome::Stored { receipt } | Outcome::Duplicate { receipt })) => {
                    let r = Receipt {
                        message_ids: vec![receipt.to_vec()],
                    };
                    match channel.send(uplink::Kind::Receipt(r)) {
                        Ok(()) => Self::inc(&self.counters.receipts_sent),
                        // The hub sends it again; the repeat is receipted then.
                        Err(e) => tracing::debug!(error = %e, "receipt not sent now"),
                    }
                }
                Ok(Ok(Outcome::Forwarded)) => {}
                Ok(Err(e)) => {
                    if !matches!(e, Rejected::NoHubKey) {
                        tracing::warn!(reason = %e, "downlink message dropped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "downlink handling failed"),
            }
            self.publish_status(&status);
        }
    }

    fn publish_status(&self, status: &Shared) {
        let snap = self.counters.snapshot(&self.trust);
        let n = self.verdicts.count() as u64;
        status.update(|s| {
            s.downlink = snap;
            s.verdicts = n;
        });
    }
}
