//! Making media items: a flagged result's preview (and clip) when its scan settles in
//! processed/, a clip when the hub asks for one. The heavy work (decode, model, JPEG,
//! H.264) runs on the inference pool; finding and reading the scan on blocking threads.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pleura_inference::media::{self as make, KeyRole, MediaLimits};
use pleura_inference::InferencePool;
use pleura_proto::v1::{ClipRequest, KeyFrame, KeyFrameRole, MediaKind, MediaPreview};
use pleura_shared::{ResultId, ScanRecord};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{Entry, MediaOutbox};
use crate::downlink::ClipRequests;
use crate::status::Shared;

pub type MakeFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Turns a scan's bytes into an item's bytes (an encoded `MediaPreview`, an MP4).
pub trait Maker: Send + Sync + 'static {
    fn make(&self, kind: MediaKind, scan: Vec<u8>) -> MakeFuture;
}

/// The real maker: on the inference pool, with `pleura_inference::media`. A preview
/// needs the model's per-frame scores, which the intake does not keep: the scan is
/// analysed again (flagged scans only; the same model gives the same scores).
pub struct PoolMaker {
    pub pool: Arc<InferencePool>,
    pub limits: MediaLimits,
}

impl Maker for PoolMaker {
    fn make(&self, kind: MediaKind, scan: Vec<u8>) -> MakeFuture {
        let (pool, limits) = (self.pool.clone(), self.limits.clone());
        Box::pin(async move {
            let job = move |w: &mut pleura_inference::pool::Worker<'_>| match kind {
                MediaKind::Preview => {
                    let decoded = w.decode(&scan).map_err(|e| e.to_string())?;
                    let report = w.analyze(decoded.scan).map_err(|e| e.to_string())?;
                    make::prepare_preview(&scan, &report.frame_scores, report.cam_size, &limits)
                        .map(|p| encode_preview(&p))
                        .map_err(|e| e.to_string())
                }
                MediaKind::Clip => make::prepare_clip(&scan, &limits)
                    .map(|c| c.mp4)
                    .map_err(|e| e.to_string()),
                MediaKind::Unspecified => Err("no such media kind".to_string()),
            };
            pool.run(job).await.map_err(|e| e.to_string())?
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
}

/// How often the budget is checked (and prepared work looked for) without a wake-up.
const TEND_EVERY: Duration = Duration::from_secs(30);

impl Preparer {
    pub async fn run(
        self,
        mut requests: mpsc::Receiver<ClipRequest>,
        pending: Option<ClipRequests>,
        shutdown: CancellationToken,
    ) {
        // Requests received before a restart and not yet taken in.
        if let Some(p) = &pending {
            match p.pending_clip_requests() {
                Ok(list) => {
                    for c in list {
                        self.take_request(&c.result_id, &c.reason, Some(p)).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading pending clip requests"),
            }
        }
        let mut last_tend = tokio::time::Instant::now();
        loop {
            self.prepare_all(&shutdown).await;
            if last_tend.elapsed() >= TEND_EVERY {
                self.tend().await;
                last_tend = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                Some(req) = requests.recv() => {
                    match ResultId::from_slice(&req.result_id) {
                        Ok(id) => self.take_request(&id, &req.reason, pending.as_ref()).await,
                        Err(e) => tracing::warn!(error = %e, "clip request with a bad result id ignored"),
                    }
                }
                _ = tokio::time::sleep(TEND_EVERY) => {}
            }
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
                Some(p) => std::fs::read(&p).map(Some).map_err(|x| x.to_string()),
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
                    .unavailable(&id, kind, &format!("reading the scan: {x}"))
                    .await
            }
        };
        let made = self.maker.make(kind, bytes).await;
        let item = match made {
            Ok(item) => item,
            Err(x) if x.contains("pool") && x.contains("closed") => return false,
            Err(x) => return self.unavailable(&id, kind, &x).await,
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
                return self
                    .unavailable(&id, kind, &format!("storing it: {x}"))
                    .await;
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
        let (m, reviewed) = (self.media.clone(), self.reviewed.clone());
        let out = blocking(move || {
            let set = reviewed();
            let freed = m.prune(&|id| set.contains(id))?;
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
