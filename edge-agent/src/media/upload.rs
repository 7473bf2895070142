//! Uploading media items, after the results: `Transfer` is the protocol for one item
//! without I/O (query, then one 16 KiB chunk at a time at the offset the hub last
//! confirmed, stop-and-wait); `Uploader` is the task that picks items, sends through
//! the channel and waits for the hub's `MediaAck`s.
//!
//! Every ack's `held` is persisted before the next chunk goes out, and an upload
//! (re)starts with a `MediaQuery`: after a cut or a restart of either side at most the
//! one chunk in flight is sent again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pleura_proto::v1::{uplink, MediaAck, MediaChunk, MediaQuery};
use pleura_shared::ResultId;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Entry, MediaOutbox, Sha256};
use crate::outbox::{Held, Outbox};
use crate::status::Shared;

/// Chunk data per message (the hub takes up to 64 KiB; 16 KiB keeps a message well
/// under the broker's packet limit and bounds what a cut costs).
pub const CHUNK_BYTES: usize = 16 * 1024;

/// What to send next for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Query,
    Chunk {
        offset: u64,
        len: usize,
    },
    /// The hub holds the whole item.
    Done,
    /// The hub will never take it.
    Refused(String),
    /// Nothing to send: keep waiting for the answer to what was sent.
    Wait,
}

/// One item's upload: what was sent last and what the hub has confirmed.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub sha: Sha256,
    pub size: u64,
    pub held: u64,
    pending: Option<Action>,
    /// Whether a chunk of this item went out in this transfer.
    sent_chunk: bool,
}

impl Transfer {
    pub fn new(sha: Sha256, size: u64, held: u64) -> Self {
        Self {
            sha,
            size,
            held,
            pending: None,
            sent_chunk: false,
        }
    }

    /// The first message: always a query (the hub may hold more, or less, than the
    /// agent last heard).
    pub fn start(&mut self) -> Action {
        self.pending = Some(Action::Query);
        Action::Query
    }

    /// What to send after the hub answered `ack`. Answers for another item, and late
    /// answers to an earlier chunk (held below the chunk in flight), are ignored.
    pub fn on_ack(&mut self, ack: &MediaAck) -> Action {
        if ack.sha256.as_slice() != self.sha {
            return Action::Wait;
        }
        if !ack.refused.is_empty() {
            self.pending = None;
            return Action::Refused(ack.refused.clone());
        }
        match self.pending {
            Some(Action::Chunk { offset, .. }) if ack.held < offset => return Action::Wait,
            // "Still at the chunk's offset" after a chunk is the duplicate ack of the
            // previous chunk, or a hub that could not write: the timeout asks again.
            Some(Action::Chunk { offset, .. }) if ack.held == offset && !ack.complete => {
                return Action::Wait
            }
            None => return Action::Wait,
            _ => {}
        }
        self.held = ack.held.min(self.size);
        if ack.complete || self.held >= self.size {
            if !self.sent_chunk {
                // Complete before this device sent anything: the same bytes are held for
                // another of its results. An empty chunk claims them for this one too.
                self.sent_chunk = true;
                let a = Action::Chunk {
                    offset: self.size,
                    len: 0,
                };
                self.pending = Some(a.clone());
                return a;
            }
            self.pending = None;
            return Action::Done;
        }
        self.next_chunk()
    }

    fn next_chunk(&mut self) -> Action {
        self.sent_chunk = true;
        let len = (self.size - self.held).min(CHUNK_BYTES as u64) as usize;
        let a = Action::Chunk {
            offset: self.held,
            len,
        };
        self.pending = Some(a.clone());
        a
    }

    /// No answer in time: ask again (the chunk or its ack may be lost).
    pub fn on_timeout(&mut self) -> Action {
        self.start()
    }
}

/// The device's side of the channel as the uploader needs it (`downlink::Channel`).
pub trait Link: Send + Sync {
    /// Signs and publishes; the payload's size in bytes.
    fn send(&self, kind: uplink::Kind) -> Result<usize, String>;
    fn is_up(&self) -> bool;
}

impl Link for crate::downlink::Channel {
    fn send(&self, kind: uplink::Kind) -> Result<usize, String> {
        use prost::Message;
        let n = self.seal(kind.clone()).encoded_len();
        crate::downlink::Channel::send(self, kind)
            .map(|_| n)
            .map_err(|e| e.to_string())
    }

    fn is_up(&self) -> bool {
        crate::downlink::Channel::is_up(self)
    }
}

#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// How long to wait for a MediaAck before asking again.
    pub ack_timeout: Duration,
    /// How long to wait for the answer to a query (a few bytes each way): short, so a
    /// query lost at link-up costs seconds, not a chunk's timeout.
    pub query_timeout: Duration,
    /// Longest pause after repeated timeouts or send failures.
    pub max_backoff: Duration,
    /// How often to look for work while there is none.
    pub poll: Duration,
}

impl Default for UploadSettings {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        }
    }
}

pub struct Uploader {
    pub media: Arc<MediaOutbox>,
    pub outbox: Arc<dyn Outbox>,
    pub link: Arc<dyn Link>,
    pub status: Arc<Shared>,
    /// Woken when an item is ready to upload.
    pub ready: Arc<Notify>,
    pub settings: UploadSettings,
}

/// Why an item's upload stopped before it was done.
enum Stop {
    /// Results are waiting, the link went down, or a more urgent item is ready.
    Yield,
    /// Nothing answered after retries: pause before trying again (`progressed`: the
    /// hub answered something first, so the pause starts short again).
    Unanswered {
        progressed: bool,
    },
    Shutdown,
    Failed(String),
}

impl Uploader {
    pub async fn run(self, mut acks: mpsc::Receiver<MediaAck>, shutdown: CancellationToken) {
        if let Ok(sent) = self.media.sent() {
            self.status.update(|s| {
                s.media.chunk_bytes_sent = sent.chunk_bytes;
                s.media.uplink_bytes_sent = sent.payload_bytes;
            });
        }
        let first = self.settings.ack_timeout.min(Duration::from_secs(1));
        let mut backoff = first;
        // Items paused after a transfer that made no progress: (not before, last
        // pause). Other items go first meanwhile.
        let mut paused: HashMap<(ResultId, u8), (Instant, Duration)> = HashMap::new();
        while !shutdown.is_cancelled() {
            let now = Instant::now();
            // Forgotten a while after their pause (the next one starts short again).
            paused.retain(|_, (until, _)| *until + self.settings.max_backoff * 4 > now);
            let next = if self.may_upload() {
                let m = self.media.clone();
                let o = self.outbox.clone();
                let waiting: Vec<(ResultId, u8)> = paused
                    .iter()
                    .filter(|(_, (until, _))| *until > now)
                    .map(|(k, _)| *k)
                    .collect();
                let acked = move |id: &ResultId| matches!(o.held(id), Ok(Some(Held::Acked)));
                let eligible = move |e: &Entry| !waiting.contains(&(e.result_id, e.kind));
                tokio::task::spawn_blocking(move || m.next_upload_where(&acked, true, &eligible))
                    .await
                    .ok()
                    .and_then(|r| {
                        r.map_err(|e| tracing::error!(error = %e, "reading the media outbox"))
                            .ok()
                    })
                    .flatten()
            } else {
                None
            };
            let Some(entry) = next else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.ready.notified() => {}
                    _ = tokio::time::sleep(self.settings.poll) => {}
                }
                continue;
            };
            let item = (entry.result_id, entry.kind);
            match self.upload(&entry, &mut acks, &shutdown).await {
                Ok(()) => {
                    backoff = first;
                    paused.remove(&item);
                }
                Err(Stop::Yield) => {}
                Err(Stop::Shutdown) => return,
                Err(Stop::Unanswered { progressed: true }) => {
                    // Lost messages: a short pause, then on.
                    backoff = first;
                    paused.remove(&item);
                    tracing::info!(result_id = %entry.result_id, "media upload unanswered: pausing");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
                Err(Stop::Unanswered { progressed: false }) => {
                    // No progress (nothing answers, or the hub answers without taking
                    // the bytes: its store failing): this item pauses longer each time,
                    // up to max_backoff, and the others go first meanwhile.
                    let pause = paused
                        .get(&item)
                        .map_or(first, |(_, p)| (*p * 2).min(self.settings.max_backoff));
                    paused.insert(item, (Instant::now() + pause, pause));
                    tracing::info!(result_id = %entry.result_id, pause_ms = pause.as_millis() as u64,
                        "media upload without progress: pausing the item");
                }
                Err(Stop::Failed(e)) => {
                    tracing::error!(result_id = %entry.result_id, error = %e, "media upload failed");
                    self.status.update(|s| s.media.errors += 1);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
        }
    }

    /// Results first: media only while the link is up and no result waits.
    fn may_upload(&self) -> bool {
        self.link.is_up() && self.outbox.stats().map(|s| s.pending == 0).unwrap_or(false)
    }

    async fn upload(
        &self,
        entry: &Entry,
        acks: &mut mpsc::Receiver<MediaAck>,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let sha = entry.sha256.ok_or_else(|| Stop::Failed("no hash".into()))?;
        let kind = entry.media_kind();
        // Answers to earlier transfers (late, or from before a cut) say nothing about
        // this one's start: the query below asks afresh.
        while acks.try_recv().is_ok() {}
        let mut t = Transfer::new(sha, entry.size, entry.held);
        let mut action = t.start();
        // Rounds without progress in a row (a timeout, or an answer that the hub holds
        // no more than before): three end the transfer as unanswered. Progress is
        // `held` rising above the most the hub confirmed in this transfer.
        let mut stalls = 0;
        let mut highest: Option<u64> = None;
        let mut progressed = false;
        loop {
            let wait = match action {
                Action::Query => self.settings.query_timeout.min(self.settings.ack_timeout),
                _ => self.settings.ack_timeout,
            };
            match action {
                Action::Done => {
                    tracing::info!(result_id = %entry.result_id, kind = kind.as_str_name(),
                        bytes = entry.size, "media item at the hub");
                    self.status.update(|s| s.media.items_uploaded += 1);
                    return self.persist(entry, &t, true).await;
                }
                Action::Refused(why) => {
                    tracing::warn!(result_id = %entry.result_id, kind = kind.as_str_name(),
                        reason = %why, "hub refused a media item: not sent again");
                    self.status.update(|s| s.media.refused += 1);
                    let (m, id) = (self.media.clone(), entry.result_id);
                    return tokio::task::spawn_blocking(move || m.refused(&id, kind, &why))
                        .await
                        .map_err(|e| Stop::Failed(e.to_string()))?
                        .map_err(|e| Stop::Failed(e.to_string()));
                }
                Action::Query => {
                    self.send(uplink::Kind::MediaQuery(MediaQuery {
                        sha256: sha.to_vec(),
                    }))?;
                }
                Action::Chunk { offset, len } => {
                    if !self.may_upload() || self.preempted(entry).await {
                        return Err(Stop::Yield);
                    }
                    let (m, e) = (self.media.clone(), entry.clone());
                    let data = tokio::task::spawn_blocking(move || m.read_chunk(&e, offset, len))
                        .await
                        .map_err(|e| Stop::Failed(e.to_string()))?
                        .map_err(|e| Stop::Failed(e.to_string()))?;
                    if data.len() != len {
                        return Err(Stop::Failed(format!(
                            "stored media item is {} bytes short",
                            len - data.len()
                        )));
                    }
                    let chunk = MediaChunk {
                        sha256: sha.to_vec(),
                        kind: kind as i32,
                        result_id: entry.result_id.0.to_vec(),
                        total: entry.size,
                        offset,
                        data,
                    };
                    let (m, n) = (self.media.clone(), len as u64);
                    let counted = tokio::task::spawn_blocking(move || m.count_sent(n, 0))
                        .await
                        .map_err(|e| Stop::Failed(e.to_string()))?
                        .map_err(|e| Stop::Failed(e.to_string()))?;
                    self.status
                        .update(|s| s.media.chunk_bytes_sent = counted.chunk_bytes);
                    self.send(uplink::Kind::MediaChunk(chunk))?;
                }
                Action::Wait => {}
            }
            // Wait for the answer (stop-and-wait).
            let got = tokio::select! {
                _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                r = tokio::time::timeout(wait, acks.recv()) => r,
            };
            action = match got {
                Ok(Some(ack)) => {
                    let before = t.held;
                    let a = t.on_ack(&ack);
                    if t.held != before && !matches!(a, Action::Done) {
                        self.persist(entry, &t, false).await?;
                    }
                    if a != Action::Wait {
                        match highest {
                            Some(h) if t.held > h => {
                                stalls = 0;
                                progressed = true;
                            }
                            Some(_) => stalls += 1,
                            None => {}
                        }
                        highest = Some(highest.map_or(t.held, |h| h.max(t.held)));
                        if stalls >= 3 && matches!(a, Action::Chunk { .. }) {
                            return Err(Stop::Unanswered { progressed });
                        }
                    }
                    a
                }
                Ok(None) => return Err(Stop::Shutdown),
                Err(_) => {
                    stalls += 1;
                    self.status.update(|s| s.media.ack_timeouts += 1);
                    if stalls >= 3 || !self.link.is_up() {
                        return Err(Stop::Unanswered { progressed });
                    }
                    t.on_timeout()
                }
            };
        }
    }

    fn send(&self, kind: uplink::Kind) -> Result<(), Stop> {
        match self.link.send(kind) {
            Ok(n) => {
                // Not flushed here: the next held or count flush carries it.
                let payload = self.media.count_sent(0, n as u64).map(|s| s.payload_bytes);
                self.status.update(|s| {
                    if let Ok(p) = payload {
                        s.media.uplink_bytes_sent = p;
                    }
                    s.media.messages_sent += 1;
                });
                Ok(())
            }
            // The link is busy or down: paused, then asked again.
            Err(e) => {
                tracing::debug!(error = %e, "media message not sent");
                Err(Stop::Unanswered { progressed: false })
            }
        }
    }

    /// A clip gives way when a preview or a requested clip becomes ready.
    async fn preempted(&self, current: &Entry) -> bool {
        if current.media_kind() == pleura_proto::v1::MediaKind::Preview {
            return false;
        }
        let (m, o, cur) = (self.media.clone(), self.outbox.clone(), current.clone());
        tokio::task::spawn_blocking(move || {
            let acked = |id: &ResultId| matches!(o.held(id), Ok(Some(Held::Acked)));
            m.next_upload(&acked, true)
                .ok()
                .flatten()
                .is_some_and(|n| n.result_id != cur.result_id || n.kind != cur.kind)
                && !cur.requested
        })
        .await
        .unwrap_or(false)
    }

    async fn persist(&self, entry: &Entry, t: &Transfer, complete: bool) -> Result<(), Stop> {
        let (m, id, kind, sha, held) = (
            self.media.clone(),
            entry.result_id,
            entry.media_kind(),
            t.sha,
            t.held,
        );
        tokio::task::spawn_blocking(move || m.set_held(&id, kind, &sha, held, complete))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map(|_| ())
            .map_err(|e| Stop::Failed(e.to_string()))
    }
}
