//! The agent's media items: one sled tree (`media`, in the outbox's database) keyed by
//! result id + kind, and the items' bytes in `<data_dir>/media/<sha256 hex>` (0600,
//! written atomically). Every change is flushed before it is acted on, so `held` (how
//! much the hub confirmed) survives a restart and an upload resumes where it stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use pleura_proto::v1::MediaKind;
use pleura_shared::fsutil::{private_dir, write_atomic};
use pleura_shared::ResultId;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{kind_code, MediaError, ResultMedia, Sha256, UploadState};

pub const MEDIA_TREE: &str = "media";
pub const MEDIA_DIR: &str = "media";
/// Not 17 bytes long: never taken for an item's key.
const COUNTERS_KEY: &[u8] = b"counters";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentBytes {
    pub chunk_bytes: u64,
    pub payload_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryState {
    Preparing,
    /// Made and stored locally; uploading (or waiting to).
    Ready,
    AtHub,
    Unavailable(String),
    /// The hub will never take it (its answer); not retried.
    Refused(String),
}

/// One media item of one result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub result_id: ResultId,
    /// `MediaKind` as its proto number.
    pub kind: u8,
    pub sha256: Option<Sha256>,
    pub size: u64,
    /// Bytes the hub confirmed holding (its last MediaAck).
    pub held: u64,
    pub state: EntryState,
    pub flagged: bool,
    pub severity: u8,
    /// Asked for by the hub (ClipRequest).
    pub requested: bool,
    pub created_at_ms: u64,
    pub at_hub_ms: Option<u64>,
    /// Whether its bytes are still on disk here (pruned once at the hub).
    pub stored: bool,
    /// While `Preparing` after a transient failure: not before this time (ms).
    #[serde(default)]
    pub retry_at_ms: u64,
    /// Transient failures in a row (sets the next retry's pause).
    #[serde(default)]
    pub attempts: u32,
}

impl Entry {
    pub fn media_kind(&self) -> MediaKind {
        MediaKind::try_from(self.kind as i32).unwrap_or(MediaKind::Unspecified)
    }

    pub fn upload_state(&self) -> UploadState {
        match &self.state {
            EntryState::Preparing => UploadState::Preparing,
            EntryState::Ready if self.held == 0 => UploadState::Queued,
            EntryState::Ready => UploadState::Partial {
                held: self.held,
                total: self.size,
            },
            EntryState::AtHub => UploadState::AtHub,
            EntryState::Unavailable(r) => UploadState::Unavailable(r.clone()),
            EntryState::Refused(r) => UploadState::Unavailable(format!("refused by the hub: {r}")),
        }
    }

    /// Upload order among ready items: previews (most severe first), then requested
    /// clips, then other clips; oldest first within each.
    fn rank(&self) -> (u8, u8, u64) {
        let class = match (self.media_kind(), self.requested) {
            (MediaKind::Preview, _) => 0,
            (_, true) => 1,
            _ => 2,
        };
        let urgency = 255 - ((self.flagged as u8) << 2 | self.severity.min(3));
        (class, urgency, self.created_at_ms)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaStats {
    pub items: u64,
    pub preparing: u64,
    pub ready: u64,
    pub at_hub: u64,
    pub unavailable: u64,
    pub refused: u64,
    pub stored_bytes: u64,
    pub max_bytes: u64,
}

/// What asking for an item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    /// To be prepared now.
    Prepare,
    /// Already there (being prepared, queued, at the hub).
    Known,
}

pub struct MediaOutbox {
    tree: sled::Tree,
    dir: PathBuf,
    max_bytes: u64,
    stored_bytes: AtomicU64,
}

fn key(id: &ResultId, kind: MediaKind) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..16].copy_from_slice(id.as_bytes());
    k[16] = kind_code(kind);
    k
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MediaError + '_ {
    move |source| MediaError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl MediaOutbox {
    /// `tree` is `SledOutbox::tree(MEDIA_TREE)`; the bytes live in `<data_dir>/media/`.
    pub fn open(tree: sled::Tree, data_dir: &Path, max_bytes: u64) -> Result<Self, MediaError> {
        let dir = data_dir.join(MEDIA_DIR);
        private_dir(&dir).map_err(io(&dir))?;
        let me = Self {
            tree,
            dir,
            max_bytes,
            stored_bytes: AtomicU64::new(0),
        };
        let used = me
            .entries()?
            .iter()
            .filter(|e| e.stored)
            .map(|e| e.size)
            .sum();
        me.stored_bytes.store(used, Ordering::Relaxed);
        Ok(me)
    }

    pub fn media_of(&self, id: &ResultId) -> Result<ResultMedia, MediaError> {
        Ok(ResultMedia {
            preview: self.get(id, MediaKind::Preview)?.map(|e| e.upload_state()),
            clip: self.get(id, MediaKind::Clip)?.map(|e| e.upload_state()),
        })
    }

    pub fn get(&self, id: &ResultId, kind: MediaKind) -> Result<Option<Entry>, MediaError> {
        self.tree
            .get(key(id, kind))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Every entry (damaged ones are logged and skipped).
    pub fn entries(&self) -> Result<Vec<Entry>, MediaError> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            if k.len() != 17 {
                continue; // the counters
            }
            match decode(&v) {
                Ok(e) => out.push(e),
                Err(e) => tracing::error!(error = %e, "media entry skipped"),
            }
        }
        Ok(out)
    }

    fn put(&self, e: &Entry) -> Result<(), MediaError> {
        let v = serde_json::to_vec(e).map_err(|x| MediaError::Damaged(x.to_string()))?;
        self.tree.insert(key(&e.result_id, e.media_kind()), v)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Asks for an item of `id` (a flagged result's preview or clip, or a clip the hub
    /// requested). Idempotent; a request raises an existing clip's priority, and
    /// revives one that was unavailable (the scan may be back, or room made).
    pub fn schedule(
        &self,
        id: &ResultId,
        kind: MediaKind,
        flagged: bool,
        severity: u8,
        requested: bool,
    ) -> Result<Scheduled, MediaError> {
        if let Some(mut e) = self.get(id, kind)? {
            if !requested {
                return Ok(Scheduled::Known);
            }
            let revive = matches!(e.state, EntryState::Unavailable(_));
            if e.requested && !revive {
                return Ok(Scheduled::Known);
            }
            e.requested = true;
            if revive {
                e.state = EntryState::Preparing;
                (e.retry_at_ms, e.attempts) = (0, 0);
            }
            self.put(&e)?;
            return Ok(if revive {
                Scheduled::Prepare
            } else {
                Scheduled::Known
            });
        }
        self.put(&Entry {
            result_id: *id,
            kind: kind_code(kind),
            sha256: None,
            size: 0,
            held: 0,
            state: EntryState::Preparing,
            flagged,
            severity,
            requested,
            created_at_ms: pleura_shared::now_ms(),
            at_hub_ms: None,
            stored: false,
            retry_at_ms: 0,
            attempts: 0,
        })?;
        Ok(Scheduled::Prepare)
    }

    /// Items waiting to be prepared now (not pausing after a transient failure), in
    /// upload order.
    pub fn to_prepare(&self) -> Result<Vec<Entry>, MediaError> {
        let now = pleura_shared::now_ms();
        let mut v: Vec<Entry> = self
            .entries()?
            .into_iter()
            .filter(|e| e.state == EntryState::Preparing && e.retry_at_ms <= now)
            .collect();
        v.sort_by_key(Entry::rank);
        Ok(v)
    }

    /// The earliest time (ms) an item pausing after a transient failure is due.
    pub fn next_retry_ms(&self) -> Result<Option<u64>, MediaError> {
        Ok(self
            .entries()?
            .iter()
            .filter(|e| e.state == EntryState::Preparing && e.retry_at_ms > 0)
            .map(|e| e.retry_at_ms)
            .min())
    }

    /// A transient failure (I/O, the store, a busy pool): the item stays `Preparing`
    /// and is tried again after `base` doubled per failure in a row, at most `max`.
    /// Returns the pause.
    pub fn retry_later(
        &self,
        id: &ResultId,
        kind: MediaKind,
        base: std::time::Duration,
        max: std::time::Duration,
    ) -> Result<std::time::Duration, MediaError> {
        let Some(mut e) = self.get(id, kind)? else {
            return Ok(base);
        };
        let pause = base
            .saturating_mul(1u32 << e.attempts.min(20))
            .min(max)
            .max(std::time::Duration::from_millis(1));
        e.attempts = e.attempts.saturating_add(1);
        e.retry_at_ms = pleura_shared::now_ms() + pause.as_millis() as u64;
        e.state = EntryState::Preparing;
        self.put(&e)?;
        Ok(pause)
    }

    /// Whether a new clip of `size` bytes fits the budget (previews always are kept).
    pub fn has_room(&self, size: u64) -> bool {
        self.stored_bytes
            .load(Ordering::Relaxed)
            .saturating_add(size)
            <= self.max_bytes
    }

    pub fn over_budget(&self) -> bool {
        self.stored_bytes.load(Ordering::Relaxed) > self.max_bytes
    }

    /// Stores a prepared item's bytes (durably) and queues it for upload.
    pub fn store_prepared(
        &self,
        id: &ResultId,
        kind: MediaKind,
        bytes: &[u8],
    ) -> Result<Entry, MediaError> {
        let mut e = self
            .get(id, kind)?
            .ok_or_else(|| MediaError::Store(format!("no media entry for {id}")))?;
        let sha: Sha256 = sha2::Sha256::digest(bytes).into();
        let path = self.blob_path(&sha);
        write_atomic(&path, bytes, 0o600).map_err(io(&path))?;
        if !e.stored {
            self.stored_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        e.sha256 = Some(sha);
        e.size = bytes.len() as u64;
        e.held = 0;
        e.stored = true;
        e.state = EntryState::Ready;
        (e.retry_at_ms, e.attempts) = (0, 0);
        self.put(&e)?;
        Ok(e)
    }

    pub fn mark_unavailable(
        &self,
        id: &ResultId,
        kind: MediaKind,
        reason: &str,
    ) -> Result<(), MediaError> {
        if let Some(mut e) = self.get(id, kind)? {
            e.state = EntryState::Unavailable(reason.to_string());
            self.put(&e)?;
        }
        Ok(())
    }

    /// The next item to upload: ready, of a result the hub has acknowledged, previews
    /// and requested clips first; other clips only when `idle` (no results waiting).
    pub fn next_upload(
        &self,
        acked: &dyn Fn(&ResultId) -> bool,
        idle: bool,
    ) -> Result<Option<Entry>, MediaError> {
        self.next_upload_where(acked, idle, &|_| true)
    }

    /// `next_upload` among the items `eligible` lets go now (the uploader skips items
    /// pausing after a transfer without progress).
    pub fn next_upload_where(
        &self,
        acked: &dyn Fn(&ResultId) -> bool,
        idle: bool,
        eligible: &dyn Fn(&Entry) -> bool,
    ) -> Result<Option<Entry>, MediaError> {
        let mut v: Vec<Entry> = self
            .entries()?
            .into_iter()
            .filter(|e| e.state == EntryState::Ready && e.stored && e.sha256.is_some())
            .filter(|e| idle || e.rank().0 < 2)
            .filter(|e| eligible(e))
            .collect();
        v.sort_by_key(Entry::rank);
        Ok(v.into_iter().find(|e| acked(&e.result_id)))
    }

    /// Records the hub's answer for an item: it holds `held` bytes (complete or not).
    /// An answer for bytes other than the stored ones (an older item) is ignored.
    pub fn set_held(
        &self,
        id: &ResultId,
        kind: MediaKind,
        sha: &Sha256,
        held: u64,
        complete: bool,
    ) -> Result<Option<Entry>, MediaError> {
        let Some(mut e) = self.get(id, kind)? else {
            return Ok(None);
        };
        if e.sha256.as_ref() != Some(sha) || e.state != EntryState::Ready {
            return Ok(Some(e));
        }
        e.held = held.min(e.size);
        if complete {
            e.held = e.size;
            e.state = EntryState::AtHub;
            e.at_hub_ms = Some(pleura_shared::now_ms());
        }
        self.put(&e)?;
        Ok(Some(e))
    }

    pub fn refused(&self, id: &ResultId, kind: MediaKind, reason: &str) -> Result<(), MediaError> {
        if let Some(mut e) = self.get(id, kind)? {
            e.state = EntryState::Refused(reason.to_string());
            self.put(&e)?;
        }
        Ok(())
    }

    pub fn blob_path(&self, sha: &Sha256) -> PathBuf {
        self.dir.join(hex::encode(sha))
    }

    /// Up to `len` bytes of a stored item from `offset`.
    pub fn read_chunk(&self, e: &Entry, offset: u64, len: usize) -> Result<Vec<u8>, MediaError> {
        use std::io::{Read, Seek, SeekFrom};
        let sha = e
            .sha256
            .ok_or_else(|| MediaError::Store(format!("media of {} not prepared", e.result_id)))?;
        let path = self.blob_path(&sha);
        let mut f = std::fs::File::open(&path).map_err(io(&path))?;
        f.seek(SeekFrom::Start(offset)).map_err(io(&path))?;
        let mut buf = Vec::with_capacity(len);
        f.take(len as u64)
            .read_to_end(&mut buf)
            .map_err(io(&path))?;
        Ok(buf)
    }

    /// Whole bytes of a stored item (for the clinic page).
    pub fn read(&self, e: &Entry) -> Result<Option<Vec<u8>>, MediaError> {
        match e.sha256 {
            Some(sha) if e.stored => {
                let p = self.blob_path(&sha);
                std::fs::read(&p).map(Some).map_err(io(&p))
            }
            _ => Ok(None),
        }
    }

    /// Frees room. Always: the bytes of items that will never be sent (refused by the
    /// hub, unavailable) and every item of a `dropped` result (parked by the hub or
    /// retracted; those not at the hub become unavailable). Then the bytes of items the
    /// hub holds, those of `reviewed` results first, then the oldest, until under the
    /// budget (`reviewed` ones always). Items still to be sent are never removed.
    /// Returns the bytes freed.
    pub fn prune(
        &self,
        reviewed: &dyn Fn(&ResultId) -> bool,
        dropped: &dyn Fn(&ResultId) -> bool,
    ) -> Result<u64, MediaError> {
        let mut freed = 0;
        for mut e in self.entries()? {
            let never_sent = matches!(e.state, EntryState::Refused(_) | EntryState::Unavailable(_));
            let gone = dropped(&e.result_id);
            if gone && matches!(e.state, EntryState::Preparing | EntryState::Ready) {
                e.state = EntryState::Unavailable("the result was parked or retracted".into());
                if !e.stored {
                    self.put(&e)?;
                }
            }
            if e.stored && (never_sent || gone) {
                freed += self.drop_blob(&mut e)?;
            }
        }
        let mut held: Vec<Entry> = self
            .entries()?
            .into_iter()
            .filter(|e| e.stored && e.state == EntryState::AtHub)
            .collect();
        held.sort_by_key(|e| (!reviewed(&e.result_id), e.at_hub_ms.unwrap_or(0)));
        for mut e in held {
            if !reviewed(&e.result_id) && !self.over_budget() {
                break;
            }
            freed += self.drop_blob(&mut e)?;
        }
        Ok(freed)
    }

    /// Removes an item's bytes (the file too unless another stored item has the same
    /// bytes) and records it. Returns the bytes no longer counted.
    fn drop_blob(&self, e: &mut Entry) -> Result<u64, MediaError> {
        let shared = e.sha256.is_some_and(|sha| {
            self.entries().unwrap_or_default().iter().any(|o| {
                o.stored && o.sha256 == Some(sha) && (o.result_id, o.kind) != (e.result_id, e.kind)
            })
        });
        if let Some(sha) = e.sha256.filter(|_| !shared) {
            let p = self.blob_path(&sha);
            match std::fs::remove_file(&p) {
                Err(x) if x.kind() != std::io::ErrorKind::NotFound => return Err(io(&p)(x)),
                _ => {}
            }
        }
        e.stored = false;
        self.put(e)?;
        let size = e.size;
        let _ = self
            .stored_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(size))
            });
        Ok(size)
    }

    /// Counts bytes about to be sent (chunk data, whole payload), durably before they
    /// go, so that a kill never hides bytes that were sent. Returns the totals.
    pub fn count_sent(&self, chunk: u64, payload: u64) -> Result<SentBytes, MediaError> {
        let mut s = self.sent()?;
        s.chunk_bytes += chunk;
        s.payload_bytes += payload;
        let mut v = s.chunk_bytes.to_be_bytes().to_vec();
        v.extend_from_slice(&s.payload_bytes.to_be_bytes());
        self.tree.insert(COUNTERS_KEY, v)?;
        if chunk > 0 {
            self.tree.flush()?;
        }
        Ok(s)
    }

    /// Bytes sent for media since installation.
    pub fn sent(&self) -> Result<SentBytes, MediaError> {
        let v = self.tree.get(COUNTERS_KEY)?;
        let n = |r: std::ops::Range<usize>| {
            v.as_ref()
                .and_then(|b| b.get(r).and_then(|x| x.try_into().ok()))
                .map(u64::from_be_bytes)
                .unwrap_or(0)
        };
        Ok(SentBytes {
            chunk_bytes: n(0..8),
            payload_bytes: n(8..16),
        })
    }

    pub fn stats(&self) -> Result<MediaStats, MediaError> {
        let mut s = MediaStats {
            max_bytes: self.max_bytes,
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
            ..Default::default()
        };
        for e in self.entries()? {
            s.items += 1;
            match e.state {
                EntryState::Preparing => s.preparing += 1,
                EntryState::Ready => s.ready += 1,
                EntryState::AtHub => s.at_hub += 1,
                EntryState::Unavailable(_) => s.unavailable += 1,
                EntryState::Refused(_) => s.refused += 1,
            }
        }
        Ok(s)
    }
}

fn decode(v: &[u8]) -> Result<Entry, MediaError> {
    serde_json::from_slice(v).map_err(|e| MediaError::Damaged(e.to_string()))
}
