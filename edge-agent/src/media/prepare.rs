//! Making media items: a flagged result's preview (and clip) when its scan settles in
//! processed/, a clip when the hub asks for one. The heavy work (decode, model, JPEG,
//! H.264) runs on the inference pool; finding and reading the scan on blocking threads.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pleura_inference::media::{self as make, KeyRole, MediaLimits};
use pleura_proto::v1::{ClipRequest, KeyFrame, KeyFrameRole, MediaKind, MediaPreview};
use pleura_shared::{ResultId, ScanRecord};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{Entry, MediaOutbox};
use crate::downlink::ClipRequests;
use crate::outbox::{Held, Outbox};
use crate::status::Shared;

pub type MakeFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, MakeError>> + Send>>;

/// Why an item was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MakeError {
    /// The pool is shut down (the agent is stopping).
    Closed,
    /// Worth trying again later (the pool or the model engine failed, not the scan).
    Transient(String),
    /// This scan will never give the item (it does not decode, the job crashed on it).
    Permanent(String),
}

impl From<pleura_inference::AnalyzeError> for MakeError {
    fn from(e: pleura_inference::AnalyzeError) -> Self {
        use pleura_inference::AnalyzeError as A;
        match e {
            A::PoolClosed => MakeError::Closed,
            A::Model(_) => MakeError::Transient(e.to_string()),
            A::Decode(_) | A::Panicked => MakeError::Permanent(e.to_string()),
        }
    }
}

/// Turns a scan's bytes into an item's bytes (an encoded `MediaPreview`, an MP4).
pub trait Maker: Send + Sync + 'static {
    fn make(&self, kind: MediaKind, scan: Vec<u8>) -> MakeFuture;
}

/// The real maker: on the inference pool, with `pleura_inference::media`. A preview
/// needs the model's per-frame scores, which the intake does not keep: the scan is
/// analysed again (flagged scans only; the same model gives the same scores).
pub struct PoolMaker {
    /// The running model release's pool, taken afresh for each item.
    pub pool: Arc<crate::models::LivePool>,
    pub limits: MediaLimits,
}

impl Maker for PoolMaker {
    fn make(&self, kind: MediaKind, scan: Vec<u8>) -> MakeFuture {
        let (pool, limits) = (self.pool.current(), self.limits.clone());
        Box::pin(async move {
            let permanent = |e: &dyn std::fmt::Display| MakeError::Permanent(e.to_string());
            let job = move |w: &mut pleura_inference::pool::Worker<'_>| match kind {
                MediaKind::Preview => {
                    let decoded = w.decode(&scan).map_err(|e| permanent(&e))?;
                    let report = w.analyze(decoded.scan).map_err(MakeError::from)?;
                    make::prepare_preview(&scan, &report.frame_scores, report.cam_size, &limits)
                        .map(|p| encode_preview(&p))
                        .map_err(|e| permanent(&e))
                }
                MediaKind::Clip => make::prepare_clip(&scan, &limits)
                    .map(|c| c.mp4)
                    .map_err(|e| permanent(&e)),
                MediaKind::Unspecified => Err(permanent(&"no such media kind")),
            };
            pool.run(job).await.map_err(MakeError::from)?
        })
    }
}

pub fn encode_preview(p: &make::Preview) -> Vec<u8> {
    use prost::Message;
    MediaPreview {
        source_width: p.source_width,
        source_height: p.source_height,
        frames_total: p.frames_total,
        fps: p.fps,
        frames: p
            .frames
            .iter()
            .map(|f| KeyFrame {
                index: f.index,
                time_ms: f.time_ms,
                role: match f.role {
                    KeyRole::Pathological => KeyFrameRole::Pathological,
                    KeyRole::First => KeyFrameRole::First,
                    KeyRole::Middle => KeyFrameRole::Middle,
                } as i32,
                width: f.width,
                height: f.height,
                jpeg: f.jpeg.clone(),
                overlay_png: f.overlay_png.clone(),
                pathology: f.pathology,
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Handed to the intake: schedules a flagged result's media once its scan has
/// settled in processed/. Blocking (one sled flush).
#[derive(Clone)]
pub struct MediaHook {
    pub media: Arc<MediaOutbox>,
    pub wake: Arc<Notify>,
    pub clips_of_flagged: bool,
}

impl MediaHook {
    pub fn settled(&self, r: &ScanRecord) {
        if !r.analysis.flagged {
            return;
        }
        let sev = r.analysis.severity.score();
        let mut kinds = vec![MediaKind::Preview];
        if self.clips_of_flagged {
            kinds.push(MediaKind::Clip);
        }
        for kind in kinds {
            if let Err(e) = self.media.schedule(&r.id, kind, true, sev, false) {
                tracing::error!(result_id = %r.id, error = %e, "media of a flagged result not scheduled");
            }
        }
        self.wake.notify_one();
    }
}

pub struct Preparer {
    pub media: Arc<MediaOutbox>,
    pub maker: Arc<dyn Maker>,
    pub processed_dir: PathBuf,
    pub status: Arc<Shared>,
    /// Woken by the hook and by clip requests.
    pub wake: Arc<Notify>,
    /// Wakes the uploader when an item is ready.
    pub ready: Arc<Notify>,
    /// Results with a specialist's verdict (their media at the hub is pruned first).
    pub reviewed: Arc<dyn Fn() -> std::collections::HashSet<ResultId> + Send + Sync>,
    /// The results' outbox: the media of results it parked or retracts are pruned.
    pub outbox: Option<Arc<dyn Outbox>>,
    /// First pause after a transient failure (doubled per failure, at most
    /// `MAX_RETRY`).
    pub retry: Duration,
}

/// How often the budget is checked (and prepared work looked for) without a wake-up.
const TEND_EVERY: Duration = Duration::from_secs(30);
/// The longest pause between tries of an item after transient failures.
pub const MAX_RETRY: Duration = Duration::from_secs(600);
/// The usual first pause after a transient failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

impl Preparer {
    /// Clip requests are durable (`pending`): they are read again on every round, so
    /// a request the channel could not take (full) waits only for the next wake-up.
    /// `requests` only carries them sooner (and serves when there is no store).
    pub async fn run(
        self,
        mut requests: mpsc::Receiver<ClipRequest>,
        pending: Option<ClipRequests>,
        shutdown: CancellationToken,
    ) {
        let mut last_tend = tokio::time::Instant::now();
        loop {
            self.take_pending(pending.as_ref()).await;
            self.prepare_all(&shutdown).await;
            if last_tend.elapsed() >= TEND_EVERY {
                self.tend().await;
                last_tend = tokio::time::Instant::now();
            }
            let pause = self.until_next_retry().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                Some(req) = requests.recv() => {
                    match ResultId::from_slice(&req.result_id) {
                        Ok(id) => self.take_request(&id, &req.reason, pending.as_ref()).await,
                        Err(e) => tracing::warn!(error = %e, "clip request with a bad result id ignored"),
                    }
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Takes in every clip request not yet dealt with (the durable list).
    async fn take_pending(&self, pending: Option<&ClipRequests>) {
        let Some(p) = pending else { return };
        let list = {
            let p = p.clone();
            tokio::task::spawn_blocking(move || p.pending_clip_requests()).await
        };
        match list {
            Ok(Ok(list)) => {
                for c in list {
                    self.take_request(&c.result_id, &c.reason, Some(p)).await;
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "reading pending clip requests"),
            Err(e) => tracing::error!(error = %e, "reading pending clip requests"),
        }
    }

    /// How long to sleep without a wake-up: until the next retry, at most `TEND_EVERY`.
    async fn until_next_retry(&self) -> Duration {
        let m = self.media.clone();
        match blocking(move || m.next_retry_ms()).await {
            Ok(Some(at)) => Duration::from_millis(at.saturating_sub(pleura_shared::now_ms()))
                .clamp(Duration::from_millis(10), TEND_EVERY),
            _ => TEND_EVERY,
        }
    }

    async fn take_request(&self, id: &ResultId, reason: &str, pending: Option<&ClipRequests>) {
        tracing::info!(result_id = %id, %reason, "the hub asks for a clip");
        let (m, i) = (self.media.clone(), *id);
        let done = blocking(move || m.schedule(&i, MediaKind::Clip, false, 0, true)).await;
        match done {
            Ok(_) => {
                if let Some(p) = pending {
                    if let Err(e) = p.clip_request_done(id) {
                        tracing::error!(result_id = %id, error = %e, "clip request not marked done");
                    }
                }
            }
            Err(e) => tracing::error!(result_id = %id, error = %e, "clip request not recorded"),
        }
    }

    /// Prepares every waiting item, most urgent first.
    async fn prepare_all(&self, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() {
            let m = self.media.clone();
            let next = match blocking(move || m.to_prepare()).await {
                Ok(v) => v.into_iter().next(),
                Err(e) => {
                    tracing::error!(error = %e, "reading the media outbox");
                    return;
                }
            };
            let Some(entry) = next else { return };
            if !self.prepare(&entry).await {
                return;
            }
        }
    }

    /// Makes one item; false when the pool is gone (shutting down).
    async fn prepare(&self, e: &Entry) -> bool {
        let kind = e.media_kind();
        let id = e.result_id;
        if kind == MediaKind::Clip && self.media.over_budget() {
            self.tend().await;
            if self.media.over_budget() {
                return self.no_room(&id).await;
            }
        }
        let dir = self.processed_dir.clone();
        let scan = blocking(move || -> Result<Option<Vec<u8>>, String> {
            match find_scan(&dir, &id) {
                Some(p) => match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(x) if x.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(x) => Err(x.to_string()),
                },
                None => Ok(None),
            }
        })
        .await;
        let bytes = match scan {
            Ok(Some(b)) => b,
            Ok(None) => {
                return self
                    .unavailable(&id, kind, "the scan is no longer kept in processed/")
                    .await
            }
            Err(x) => {
                return self
                    .later(&id, kind, &format!("reading the scan: {x}"))
                    .await
            }
        };
        let made = self.maker.make(kind, bytes).await;
        let item = match made {
            Ok(item) => item,
            Err(MakeError::Closed) => return false,
            Err(MakeError::Transient(x)) => return self.later(&id, kind, &x).await,
            Err(MakeError::Permanent(x)) => return self.unavailable(&id, kind, &x).await,
        };
        let size = item.len() as u64;
        if !self.media.has_room(size) {
            self.tend().await;
        }
        if !self.media.has_room(size) {
            if kind == MediaKind::Clip {
                return self.no_room(&id).await;
            }
            // A flagged scan's preview is never dropped: kept over the budget, and said.
            tracing::warn!(result_id = %id, bytes = size, "media store over media.max_bytes: preview kept anyway");
            self.status.update(|s| s.media.previews_over_budget += 1);
        }
        let m = self.media.clone();
        match blocking(move || m.store_prepared(&id, kind, &item)).await {
            Ok(_) => {
                tracing::info!(result_id = %id, kind = kind.as_str_name(), bytes = size, "media item prepared");
                self.status.update(|s| s.media.items_prepared += 1);
                self.ready.notify_one();
            }
            Err(x) => {
                tracing::error!(result_id = %id, error = %x, "prepared media item not stored");
                self.status.update(|s| s.media.errors += 1);
                return self.later(&id, kind, &format!("storing it: {x}")).await;
            }
        }
        true
    }

    async fn no_room(&self, id: &ResultId) -> bool {
        tracing::warn!(result_id = %id, "no clip made: media store at media.max_bytes");
        self.status.update(|s| s.media.clips_skipped_for_room += 1);
        self.unavailable(
            id,
            MediaKind::Clip,
            "no room for media on the agent (media.max_bytes)",
        )
        .await
    }

    /// A transient failure: the item stays to be prepared, after a pause.
    async fn later(&self, id: &ResultId, kind: MediaKind, why: &str) -> bool {
        let (m, i, base) = (self.media.clone(), *id, self.retry);
        match blocking(move || m.retry_later(&i, kind, base, MAX_RETRY)).await {
            Ok(pause) => {
                tracing::warn!(result_id = %id, kind = kind.as_str_name(), reason = why,
                    retry_in_s = pause.as_secs(), "media item not made yet: trying again later");
                true
            }
            Err(e) => {
                tracing::error!(result_id = %id, error = %e, "media state not recorded");
                false
            }
        }
    }

    async fn unavailable(&self, id: &ResultId, kind: MediaKind, why: &str) -> bool {
        tracing::info!(result_id = %id, kind = kind.as_str_name(), reason = why, "media item cannot be made");
        self.status.update(|s| s.media.unavailable += 1);
        let (m, i, w) = (self.media.clone(), *id, why.to_string());
        if let Err(e) = blocking(move || m.mark_unavailable(&i, kind, &w)).await {
            tracing::error!(result_id = %id, error = %e, "media state not recorded");
            return false;
        }
        true
    }

    /// Prunes to the budget and refreshes the status figures.
    async fn tend(&self) {
        let (m, reviewed, ob) = (
            self.media.clone(),
            self.reviewed.clone(),
            self.outbox.clone(),
        );
        let out = blocking(move || {
            let set = reviewed();
            let retracted: std::collections::HashSet<ResultId> = match &ob {
                Some(o) => o
                    .retractions()
                    .map_err(|e| super::MediaError::Store(e.to_string()))?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect(),
                None => Default::default(),
            };
            let dropped = |id: &ResultId| {
                retracted.contains(id)
                    || ob
                        .as_ref()
                        .is_some_and(|o| matches!(o.held(id), Ok(Some(Held::Parked))))
            };
            let freed = m.prune(&|id| set.contains(id), &dropped)?;
            Ok::<_, super::MediaError>((freed, m.stats()?))
        })
        .await;
        match out {
            Ok((freed, st)) => {
                if freed > 0 {
                    tracing::info!(bytes = freed, "pruned media the hub holds");
                }
                self.status.update(|s| {
                    s.media.stored_bytes = st.stored_bytes;
                    s.media.max_bytes = st.max_bytes;
                    s.media.queued = st.ready + st.preparing;
                    s.media.at_hub = st.at_hub;
                });
            }
            Err(e) => tracing::error!(error = %e, "pruning media"),
        }
    }
}

/// The scan of `id` in processed/ (`<patient>/<id hex>--<name>`), if still kept.
pub fn find_scan(processed: &Path, id: &ResultId) -> Option<PathBuf> {
    let mut stack = vec![processed.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && crate::processed::id_of(&p).as_ref() == Some(id) {
                return Some(p);
            }
        }
    }
    None
}

async fn blocking<T: Send + 'static, E: std::fmt::Display + From<String> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(format!("blocking task: {e}")))?
}

impl From<String> for super::MediaError {
    fn from(s: String) -> Self {
        super::MediaError::Store(s)
    }
}
