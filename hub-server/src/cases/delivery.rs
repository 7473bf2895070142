//! Verdict delivery, made certain and idempotent. A read is stored together with an
//! entry in the store's delivery outbox (`HubStore::undelivered`, same transaction).
//! Delivering it queues the verdict to every device of the examination under a message id
//! derived from the read and the device ([`verdict_message_id`]), and removes the outbox
//! entry once every device has it queued. The verdict form does this at once; the sweeper
//! ([`CaseService::sweep_verdicts_periodically`]) does it at hub start and every
//! [`SWEEP_EVERY`] for whatever is left (a downlink failure, a hub killed between the two
//! steps). Queueing again is harmless: the downlink keeps a message already queued under
//! its id as it is, and the device ignores an id it has seen (kept a year).

use std::sync::Arc;
use std::time::Duration;

use pleura_proto::v1::downlink;
use pleura_shared::ExamId;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::downlink::Downlink;
use crate::error::HubError;
use crate::store::exams::Undelivered;
use crate::store::HubStore;

use super::verdict::to_wire;
use super::{blocking, CaseService};

pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The downlink message id of one read's verdict for one device: the same every time.
pub fn verdict_message_id(read: &Undelivered, clinic: &str, device: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"pleura verdict message v1\0");
    h.update(read.key());
    h.update(b"\0");
    h.update(format!("{clinic}/{device}").as_bytes());
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

/// What delivering one read came to.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub read: Undelivered,
    /// Devices the verdict is queued for.
    pub queued: Vec<String>,
    /// Devices it could not be queued for now, and why (the sweeper tries again).
    pub failed: Vec<(String, String)>,
}

/// Queues every read in the outbox (of `exam`, or all) to every device of its
/// examination; blocking. An entry fully queued leaves the outbox.
pub(super) fn deliver(
    store: &dyn HubStore,
    downlink: &Downlink,
    exam: Option<&ExamId>,
) -> Result<Vec<Delivery>, HubError> {
    let mut out = Vec::new();
    for u in store.undelivered(exam)? {
        match deliver_one(store, downlink, &u) {
            Ok(Some(d)) => out.push(d),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(exam = %u.exam.to_hex(), error = %e, "verdict not queued; retried later")
            }
        }
    }
    Ok(out)
}

fn deliver_one(
    store: &dyn HubStore,
    downlink: &Downlink,
    u: &Undelivered,
) -> Result<Option<Delivery>, HubError> {
    let exam = store.exam(&u.exam)?;
    let reads = store.reads(&u.exam)?;
    let found = exam.zip(reads.as_ref().and_then(|r| u.find(r)).cloned());
    let Some((exam, read)) = found else {
        tracing::warn!(exam = %u.exam.to_hex(), "an outbox entry names no stored read: dropped");
        store.delivered(u)?;
        return Ok(None);
    };
    let wire = to_wire(&exam, &read);
    let mut d = Delivery {
        read: u.clone(),
        queued: Vec::new(),
        failed: Vec::new(),
    };
    for device in exam.devices() {
        let id = verdict_message_id(u, &exam.clinic, &device);
        let kind = downlink::Kind::Verdict(wire.clone());
        match downlink.send_with_id(&exam.clinic, &device, id, kind) {
            Ok(_) => d.queued.push(device),
            Err(e) => {
                tracing::error!(%device, error = %e, "verdict stored but not queued yet; retried");
                d.failed.push((device, e.to_string()));
            }
        }
    }
    if d.failed.is_empty() {
        store.delivered(u)?;
    }
    Ok(Some(d))
}

impl CaseService {
    /// Queues every stored read not yet queued to all its devices; returns how many reads
    /// are now queued everywhere.
    pub async fn sweep_verdicts(&self) -> Result<usize, HubError> {
        let parts = self.parts()?;
        let store = self.store.clone();
        let done = blocking(move || deliver(&*store, &parts.downlink, None)).await?;
        Ok(done.iter().filter(|d| d.failed.is_empty()).count())
    }

    /// Sweeps at once (hub start), then every [`SWEEP_EVERY`] until `shutdown`.
    pub async fn sweep_verdicts_periodically(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.sweep_verdicts().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(reads = n, "verdicts queued by the delivery sweep"),
                Err(e) => tracing::error!(error = %e, "verdict delivery sweep"),
            }
        }
    }
}
