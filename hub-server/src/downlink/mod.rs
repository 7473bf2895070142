//! What the hub sends devices (`SignedDownlink` on each device's downlink topic), signed
//! with the hub's downlink key. Durable messages (verdicts, clip requests) are queued in
//! a sled db of their own (`<data_dir>/downlink.sled`) until the device's Receipt.
//! A message is published once when sent, once more at every hub link-up, and otherwise
//! again only when the device shows it is online after the last publish (an uplink or
//! results message since: [`Downlink::device_seen`]), and no more often than a backoff
//! per message (1 min doubling to 1 h; see [`due`]). Offline devices thus get no copies
//! piling up in their persistent broker session. Every [`REPUBLISH_EVERY`] the queue is
//! checked for messages due. The device deduplicates by message id. Media acks are
//! ephemeral (never queued).
//!
//! Publishing never waits on the MQTT link (see `pleura_runtime::mqtt_link`): a message
//! the link cannot take now stays queued and goes out at the next republish.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pleura_runtime::mqtt_link::Publisher;
use pleura_shared::signing::{BatchSigner, Domain};
use pleura_shared::wire::{downlink, Downlink as Body, SignedDownlink};
use pleura_shared::{now_ms, topics, SCHEMA_VERSION};
use prost::Message;
use rumqttc::QoS;
use tokio_util::sync::CancellationToken;

use crate::error::HubError;
use crate::metrics::Metrics;

/// How often the queue is checked for unreceipted messages due again (see [`due`]).
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(20);
/// The wait before a message's first re-publish; it doubles with each, up to
/// [`MAX_RETRY_MS`].
pub const FIRST_RETRY_MS: u64 = 60_000;
pub const MAX_RETRY_MS: u64 = 3_600_000;

/// A queued message's publishing so far (kept in memory: after a restart every pending
/// message goes out once more at link-up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// When the link last took it.
    pub last_ms: u64,
    /// How often the link took it.
    pub times: u32,
}

/// A message published while its device was away (at the hub's link-up, say) goes again
/// this soon after the device is heard from: its subscription is back by then.
pub const BACK_RETRY_MS: u64 = 1_000;

/// The wait after a message's `times`-th publish before the next: [`BACK_RETRY_MS`] after
/// the first, then [`FIRST_RETRY_MS`] doubling up to [`MAX_RETRY_MS`] (a device that is
/// heard from but never receipts — no hub key, say — is not flooded).
pub fn retry_after_ms(times: u32) -> u64 {
    if times <= 1 {
        return BACK_RETRY_MS;
    }
    let doublings = times.saturating_sub(2).min(16);
    FIRST_RETRY_MS
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY_MS)
}

/// Whether to publish a queued message again at `now_ms`: when the link never took it;
/// otherwise only when its device was seen (`seen_ms`) after the last publish, and the
/// backoff since the last publish has passed.
pub fn due(sent: Option<Sent>, seen_ms: Option<u64>, now_ms: u64) -> bool {
    let Some(s) = sent else { return true };
    seen_ms.is_some_and(|t| t > s.last_ms)
        && now_ms >= s.last_ms.saturating_add(retry_after_ms(s.times))
}

const DB_DIR: &str = "downlink.sled";

#[derive(Debug, thiserror::Error)]
pub enum DownlinkError {
    #[error("downlink queue {0}: {1}")]
    Store(String, sled::Error),
}

pub struct Downlink {
    db: sled::Db,
    /// `clinic/device/` ‖ message id (16 bytes) → encoded `SignedDownlink`.
    queue: sled::Tree,
    /// None only in insecure development mode: messages go out unsigned.
    signer: Option<BatchSigner>,
    publisher: Mutex<Option<Publisher>>,
    metrics: Arc<Metrics>,
    /// Queue key → its publishing so far; absent: not (yet) taken by the link.
    sent: Mutex<HashMap<Vec<u8>, Sent>>,
    /// `clinic/device/` → when the hub last heard from the device.
    seen: Mutex<HashMap<Vec<u8>, u64>>,
    /// Tests: stands in for the MQTT link (room left, and what it took).
    #[cfg(test)]
    test_link: Mutex<Option<tests::FakeLink>>,
    /// Tests: every send fails as a full disk would.
    #[cfg(test)]
    pub(crate) fail_sends: std::sync::atomic::AtomicBool,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn device_prefix(clinic: &str, device: &str) -> Vec<u8> {
    format!("{clinic}/{device}/").into_bytes()
}

/// Clinic and device of a queue key.
fn split_key(key: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(key.get(..key.len().checked_sub(16)?)?).ok()?;
    let mut parts = text.split('/');
    let (c, d) = (parts.next()?, parts.next()?);
    Some((c.to_string(), d.to_string()))
}

/// What a device needs to act on a durable message.
fn check(kind: &downlink::Kind) -> Result<(), HubError> {
    let bad = |m: &str| Err(HubError::Invalid(m.into()));
    match kind {
        downlink::Kind::Verdict(v) if v.exam_id.len() != 16 => {
            bad("a verdict needs a 16-byte exam id")
        }
        downlink::Kind::ClipRequest(c) if c.result_id.len() != 16 => {
            bad("a clip request needs a 16-byte result id")
        }
        downlink::Kind::MediaAck(_) => bad("a media ack is ephemeral: use publish_ephemeral"),
        _ => Ok(()),
    }
}

fn store_err(e: sled::Error) -> HubError {
    tracing::error!(error = %e, "downlink queue");
    HubError::Unavailable(format!("downlink queue: {e}"))
}

impl Downlink {
    /// Opens (or creates) the queue under `data_dir`. `signer` is the hub's downlink key
    /// (`Pki::downlink_signer`); None in insecure mode.
    pub fn open(
        data_dir: &Path,
        signer: Option<BatchSigner>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DownlinkError> {
        let path = data_dir.join(DB_DIR);
        let err = |e| DownlinkError::Store(path.display().to_string(), e);
        let db = pleura_shared::sled_open::open(&sled::Config::new().path(&path)).map_err(err)?;
        let queue = db.open_tree("queue").map_err(err)?;
        let dl = Self {
            db,
            queue,
            signer,
            publisher: Mutex::new(None),
            metrics,
            sent: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            #[cfg(test)]
            test_link: Mutex::new(None),
            #[cfg(test)]
            fail_sends: Default::default(),
        };
        dl.update_gauge();
        Ok(dl)
    }

    /// The MQTT link's publisher (set by `mqtt::run` once the link exists).
    pub fn attach(&self, publisher: Publisher) {
        *self.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(publisher);
    }

    /// Durably queues a message for one device (receipt expected) under a new random id;
    /// publishes it now if it can. Blocking (a sled flush): call it off the async workers.
    pub fn send(
        &self,
        clinic: &str,
        device: &str,
        kind: downlink::Kind,
    ) -> Result<[u8; 16], HubError> {
        self.send_with_id(clinic, device, rand::random(), kind)
    }

    /// As [`send`](Self::send), under the caller's message id (verdicts: derived from the
    /// read and the device, so queueing one again is harmless). A message already queued
    /// under this id for this device is left as it is (Ok, nothing published); one the
    /// device receipted is queued again, and the device ignores the repeated id.
    pub fn send_with_id(
        &self,
        clinic: &str,
        device: &str,
        id: [u8; 16],
        kind: downlink::Kind,
    ) -> Result<[u8; 16], HubError> {
        for (what, v) in [("clinic", clinic), ("device", device)] {
            pleura_shared::validate_name(what, v).map_err(|e| HubError::Invalid(e.to_string()))?;
        }
        check(&kind)?;
        #[cfg(test)]
        if self.fail_sends.load(Ordering::Relaxed) {
            return Err(HubError::Unavailable("downlink queue: test failure".into()));
        }
        let mut key = device_prefix(clinic, device);
        key.extend_from_slice(&id);
        if self.queue.contains_key(&key).map_err(store_err)? {
            return Ok(id);
        }
        let payload = self.seal(clinic, device, id.to_vec(), kind);
        self.queue
            .insert(key.as_slice(), payload.as_slice())
            .map_err(store_err)?;
        self.db.flush().map_err(store_err)?;
        self.update_gauge();
        if self.publish(clinic, device, payload) {
            self.took(&key, now_ms());
        }
        Ok(id)
    }

    /// The hub heard from this (authenticated) device: it is online now. Cheap.
    pub fn device_seen(&self, clinic: &str, device: &str) {
        self.device_seen_at(clinic, device, now_ms());
    }

    fn device_seen_at(&self, clinic: &str, device: &str, now: u64) {
        let prefix = device_prefix(clinic, device);
        let before = locked(&self.seen).insert(prefix.clone(), now);
        // Heard from again: what it may have missed goes now, not at the next pass (at
        // most one look a second per device; usually its queue is empty).
        if before.is_none_or(|b| now.saturating_sub(b) >= BACK_RETRY_MS) {
            self.republish_where(
                &prefix,
                |key, _| {
                    let sent = locked(&self.sent).get(key).copied();
                    due(sent, Some(now), now)
                },
                now,
            );
        }
    }

    /// Records that the link took the message under `key`.
    fn took(&self, key: &[u8], now: u64) {
        let mut sent = locked(&self.sent);
        let s = sent.entry(key.to_vec()).or_default();
        s.last_ms = now;
        s.times = s.times.saturating_add(1);
    }

    /// Signs and publishes without queueing (MediaAck).
    pub fn publish_ephemeral(&self, clinic: &str, device: &str, kind: downlink::Kind) {
        let payload = self.seal(clinic, device, Vec::new(), kind);
        self.publish(clinic, device, payload);
    }

    /// Messages queued for one device and not yet receipted.
    pub fn pending(&self, clinic: &str, device: &str) -> Result<usize, HubError> {
        let mut n = 0;
        for r in self.queue.scan_prefix(device_prefix(clinic, device)) {
            r.map_err(store_err)?;
            n += 1;
        }
        Ok(n)
    }

    /// The device durably holds these messages: stop sending them. Returns how many were
    /// still queued (a repeated receipt removes nothing).
    pub fn receipt(&self, clinic: &str, device: &str, ids: &[Vec<u8>]) -> Result<usize, HubError> {
        let mut removed = 0;
        for id in ids.iter().filter(|id| id.len() == 16) {
            let mut key = device_prefix(clinic, device);
            key.extend_from_slice(id);
            if self.queue.remove(&key).map_err(store_err)?.is_some() {
                removed += 1;
            }
            locked(&self.sent).remove(&key);
        }
        if removed > 0 {
            self.db.flush().map_err(store_err)?;
            self.update_gauge();
        }
        Metrics::inc(&self.metrics.downlink_receipts, removed as u64);
        Ok(removed)
    }

    /// At link-up: publishes every unreceipted message once; returns how many the link
    /// took. One the link cannot take now is due at the next periodic pass.
    pub fn republish_all(&self) -> usize {
        self.republish(|_, _| true, now_ms())
    }

    /// Publishes the unreceipted messages [`due`] at `now`; returns how many the link
    /// took. A message the link cannot take (busy) does not stop the pass: the rest are
    /// tried, and it is due again at the next.
    pub fn republish_due(&self, now: u64) -> usize {
        self.republish(
            |key, device| {
                let sent = locked(&self.sent).get(key).copied();
                let seen = locked(&self.seen).get(device).copied();
                due(sent, seen, now)
            },
            now,
        )
    }

    fn republish(&self, want: impl Fn(&[u8], &[u8]) -> bool, now: u64) -> usize {
        self.republish_where(&[], want, now)
    }

    /// As `republish`, over the messages whose key starts with `prefix`.
    fn republish_where(
        &self,
        prefix: &[u8],
        want: impl Fn(&[u8], &[u8]) -> bool,
        now: u64,
    ) -> usize {
        let mut sent = 0;
        for r in self.queue.scan_prefix(prefix) {
            let (key, payload) = match r {
                Ok(kv) => kv,
                Err(e) => {
                    tracing::error!(error = %e, "reading the downlink queue");
                    break;
                }
            };
            let Some((clinic, device)) = split_key(&key) else {
                continue;
            };
            if !want(&key, &key[..key.len() - 16]) {
                continue;
            }
            if self.publish(&clinic, &device, payload.to_vec()) {
                self.took(&key, now);
                sent += 1;
            }
        }
        sent
    }

    /// Publishes the unreceipted messages due every [`REPUBLISH_EVERY`] until `shutdown`.
    pub async fn republish_periodically(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REPUBLISH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.republish_due(now_ms())).await;
        }
    }

    fn seal(
        &self,
        clinic: &str,
        device: &str,
        message_id: Vec<u8>,
        kind: downlink::Kind,
    ) -> Vec<u8> {
        let body = Body {
            schema_version: SCHEMA_VERSION,
            clinic_id: clinic.into(),
            device_id: device.into(),
            message_id,
            created_at_ms: now_ms(),
            kind: Some(kind),
        }
        .encode_to_vec();
        let signature = self
            .signer
            .as_ref()
            .map(|s| s.sign_in(Domain::Downlink, &body))
            .unwrap_or_default();
        SignedDownlink { body, signature }.encode_to_vec()
    }

    /// Hands a message to the link; false when it could not take it (it stays queued,
    /// if durable, for the next republish).
    fn publish(&self, clinic: &str, device: &str, payload: Vec<u8>) -> bool {
        #[cfg(test)]
        if let Some(link) = locked(&self.test_link).as_mut() {
            return link.take(clinic, device);
        }
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(p) = publisher else { return false };
        match p.publish(topics::downlink(clinic, device), QoS::AtLeastOnce, payload) {
            Ok(()) => {
                Metrics::inc(&self.metrics.downlink_published, 1);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, clinic, device, "downlink message not queued on the link now");
                false
            }
        }
    }

    fn update_gauge(&self) {
        self.metrics
            .downlink_pending
            .store(self.queue.len() as u64, Ordering::Relaxed);
    }
}
