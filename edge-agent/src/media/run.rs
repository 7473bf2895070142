//! Starting the media workers inside `edge-agent run`: the store, the preparer (on the
//! inference pool) and the uploader (on the hub channel).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pleura_inference::media::MediaLimits;
use pleura_shared::wire::{ClipRequest, MediaAck};
use pleura_shared::ResultId;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::prepare::{MediaHook, PoolMaker, Preparer};
use super::upload::{UploadSettings, Uploader};
use super::{MediaOutbox, MEDIA_TREE};
use crate::config::EdgeConfig;
use crate::downlink::{Channel, ClipRequests, VerdictStore};
use crate::outbox::{Outbox, SledOutbox};
use crate::status::Shared;

/// What the media workers need from the rest of the daemon.
pub struct MediaInputs {
    pub pool: Arc<crate::models::LivePool>,
    pub outbox: Arc<dyn Outbox>,
    pub channel: Arc<Channel>,
    pub acks: mpsc::Receiver<MediaAck>,
    pub clip_requests: mpsc::Receiver<ClipRequest>,
    pub pending_clips: ClipRequests,
    pub verdicts: VerdictStore,
    pub status: Arc<Shared>,
}

/// Opens the media store and spawns the preparer and the uploader on `tracker`. The
/// hook goes to the intake (flagged results' media are scheduled as they settle).
pub fn start(
    cfg: &EdgeConfig,
    sled: &SledOutbox,
    inputs: MediaInputs,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<(MediaHook, Arc<MediaOutbox>)> {
    use anyhow::Context;
    let tree = sled.tree(MEDIA_TREE).context("opening the media tree")?;
    let media = Arc::new(
        MediaOutbox::open(tree, &cfg.data_dir, cfg.media.max_bytes)
            .context("opening the media store")?,
    );
    let wake = Arc::new(Notify::new());
    let ready = Arc::new(Notify::new());
    let verdicts = inputs.verdicts;
    let reviewed = Arc::new(move || -> HashSet<ResultId> {
        verdicts
            .since(0)
            .unwrap_or_default()
            .iter()
            .flat_map(|v| v.verdict.zones.iter())
            .filter_map(|z| ResultId::from_slice(&z.result_id).ok())
            .collect()
    });
    let preparer = Preparer {
        media: media.clone(),
        maker: Arc::new(PoolMaker {
            pool: inputs.pool,
            limits: MediaLimits::default(),
        }),
        processed_dir: cfg.processed_dir(),
        status: inputs.status.clone(),
        wake: wake.clone(),
        ready: ready.clone(),
        reviewed,
        outbox: Some(inputs.outbox.clone()),
        retry: super::prepare::FIRST_RETRY,
    };
    tracker.spawn(preparer.run(
        inputs.clip_requests,
        Some(inputs.pending_clips),
        shutdown.clone(),
    ));
    let uploader = Uploader {
        media: media.clone(),
        outbox: inputs.outbox,
        link: inputs.channel,
        status: inputs.status,
        ready,
        settings: UploadSettings {
            ack_timeout: Duration::from_secs(cfg.media.ack_timeout_s),
            ..UploadSettings::default()
        },
    };
    tracker.spawn(uploader.run(inputs.acks, shutdown));
    let hook = MediaHook {
        media: media.clone(),
        wake,
        clips_of_flagged: cfg.media.clips_of_flagged,
    };
    Ok((hook, media))
}
