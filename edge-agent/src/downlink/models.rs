//! Model lifecycle messages (issue #15) as the receiver takes them: an offer is verified
//! and, if accepted, persisted as a pending download, and a command stored, before the
//! id joins the seen set and the receipt goes out; chunks go straight to the worker.

use pleura_shared::wire::{downlink, ModelChunk};

use super::receive::{Outcome, Receiver, Rejected};
use super::DownlinkError;
use crate::models::{command, ModelEvent};

impl crate::models::worker::Link for super::Channel {
    fn send(&self, kind: pleura_shared::wire::uplink::Kind) -> Result<(), String> {
        super::Channel::send(self, kind).map_err(|e| e.to_string())
    }

    fn is_up(&self) -> bool {
        super::Channel::is_up(self)
    }
}

impl Receiver {
    pub(super) fn forward_chunk(&self, c: ModelChunk) -> Outcome {
        match &self.models {
            Some((_, tx)) if tx.try_send(ModelEvent::Chunk(c)).is_ok() => {}
            // A lost chunk costs one fetch timeout.
            _ => tracing::debug!("model chunk dropped: nobody takes them now"),
        }
        Outcome::Forwarded
    }

    /// Handles an offer or a command with message id `id`; `None` for other kinds.
    pub(super) fn take_model(
        &self,
        id: &[u8; 16],
        now: u64,
        kind: &downlink::Kind,
    ) -> Option<Result<Outcome, Rejected>> {
        if !matches!(
            kind,
            downlink::Kind::ModelOffer(_) | downlink::Kind::ModelCommand(_)
        ) {
            return None;
        }
        Some(self.take_model_inner(id, now, kind))
    }

    fn take_model_inner(
        &self,
        id: &[u8; 16],
        now: u64,
        kind: &downlink::Kind,
    ) -> Result<Outcome, Rejected> {
        if self.seen.get(id).map_err(DownlinkError::from)?.is_some() {
            Self::inc_dup(self);
            return Ok(Outcome::Duplicate { receipt: *id });
        }
        let Some((store, tx)) = &self.models else {
            tracing::warn!(
                "model message received but the model lifecycle is not running; receipted"
            );
            self.store_once(id, now, None)?;
            return Ok(Outcome::Stored { receipt: *id });
        };
        // Kept durably first; a repeat after a crash before the seen set is written
        // finds the pending download and changes nothing.
        let event = match kind {
            downlink::Kind::ModelOffer(o) => {
                tracing::info!(version = o.release_version, model = %o.model_version, shadow = o.shadow, "model offer received");
                Some(ModelEvent::Offer(
                    store.take_offer(o, now).map_err(DownlinkError::from)?,
                ))
            }
            downlink::Kind::ModelCommand(c) => {
                tracing::info!(
                    version = c.release_version,
                    action = c.action().as_str_name(),
                    "model command received"
                );
                command::store(store, c)
                    .map_err(DownlinkError::from)?
                    .then_some(ModelEvent::Command)
            }
            _ => None,
        };
        if !self.store_once(id, now, None)? {
            Self::inc_dup(self);
            return Ok(Outcome::Duplicate { receipt: *id });
        }
        if let Some(ev) = event {
            if tx.try_send(ev).is_err() {
                tracing::warn!(
                    "model worker behind: the event is taken from disk at its next start"
                );
            }
        }
        Ok(Outcome::Stored { receipt: *id })
    }

    fn inc_dup(&self) {
        self.counters
            .duplicates
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
