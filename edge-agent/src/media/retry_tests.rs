//! Media that must not be lost or stuck: a hub that answers without taking bytes, a
//! transient failure while preparing, more clip requests than the channel holds, and
//! the bytes of items that will never be sent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pleura_proto::v1::{ClipRequest, MediaKind};
use pleura_shared::record::sample_record;
use pleura_shared::ResultId;
use sha2::Digest;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::prepare::{MakeError, MakeFuture, Maker, Preparer};
use super::tests::{bytes, open, FakeHub};
use super::upload::{UploadSettings, Uploader, CHUNK_BYTES};
use super::*;
use crate::downlink::ClipRequests;
use crate::outbox::Outbox;
use crate::status::Shared;

async fn until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_takes_no_bytes_gets_few_chunks_and_other_items_still_go() {
    let dir = tempfile::tempdir().unwrap();
    let (sled, m) = open(dir.path(), 1 << 30);
    let media = Arc::new(m);
    let outbox: Arc<dyn Outbox> = sled.clone();
    let (stuck_rec, other_rec) = (
        sample_record("c1", "d1", 3, true),
        sample_record("c1", "d1", 1, true),
    );
    let stuck_item = bytes(100_000, 3);
    for (rec, item) in [(&stuck_rec, &stuck_item), (&other_rec, &bytes(40_000, 5))] {
        outbox.put(rec).unwrap();
        outbox.remove(&[rec.id]).unwrap();
        let sev = rec.analysis.severity.score();
        media
            .schedule(&rec.id, MediaKind::Preview, true, sev, false)
            .unwrap();
        media
            .store_prepared(&rec.id, MediaKind::Preview, item)
            .unwrap();
    }
    let (tx, rx) = mpsc::channel(64);
    let hub = Arc::new(FakeHub {
        acks: Some(tx),
        up: AtomicBool::new(true),
        stuck: vec![sha2::Sha256::digest(&stuck_item).to_vec()],
        ..Default::default()
    });
    let status = Arc::new(Shared::default());
    let up = Uploader {
        media: media.clone(),
        outbox,
        link: hub.clone(),
        status: status.clone(),
        ready: Arc::new(Notify::new()),
        settings: UploadSettings {
            ack_timeout: Duration::from_millis(50),
            query_timeout: Duration::from_millis(50),
            max_backoff: Duration::from_millis(800),
            poll: Duration::from_millis(20),
        },
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(up.run(rx, stop.clone()));
    // The stuck preview is the more severe one, so it goes first: the other still
    // reaches the hub.
    until("the other preview at the hub", 10, || {
        media.media_of(&other_rec.id).unwrap().preview == Some(UploadState::AtHub)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    task.await.unwrap();
    // Before: a chunk every ack timeout (about 60 in this time). Now two chunks a try,
    // tries paused longer each time (50 ms doubling to 800 ms).
    let n = hub.stuck_chunks.load(Ordering::SeqCst);
    assert!(
        (1..=16).contains(&n),
        "{n} chunks sent to a hub that takes none"
    );
    let s = status.snapshot().media;
    assert!(
        s.chunk_bytes_sent <= 40_000 + n * CHUNK_BYTES as u64,
        "{s:?}"
    );
    assert!(matches!(
        media.media_of(&stuck_rec.id).unwrap().preview,
        Some(UploadState::Queued)
    ));
}

/// Fails the first `fail` calls (transient or not), blocks while `hold` is set, and
/// otherwise returns the scan's bytes with the kind in front.
struct TestMaker {
    fail: AtomicU32,
    permanent: bool,
    hold: AtomicBool,
    entered: AtomicBool,
    release: Notify,
}

impl TestMaker {
    fn new(fail: u32, permanent: bool, hold: bool) -> Arc<Self> {
        Arc::new(Self {
            fail: AtomicU32::new(fail),
            permanent,
            hold: AtomicBool::new(hold),
            entered: AtomicBool::new(false),
            release: Notify::new(),
        })
    }
}

struct MakerRef(Arc<TestMaker>);

impl Maker for MakerRef {
    fn make(&self, kind: MediaKind, scan: Vec<u8>) -> MakeFuture {
        let me = self.0.clone();
        Box::pin(async move {
            me.entered.store(true, Ordering::SeqCst);
            if me.hold.swap(false, Ordering::SeqCst) {
                me.release.notified().await;
            }
            if me
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(if me.permanent {
                    MakeError::Permanent("does not decode".into())
                } else {
                    MakeError::Transient("pool busy".into())
                });
            }
            let mut out = vec![kind as u8];
            out.extend_from_slice(&scan);
            Ok(out)
        })
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    media: Arc<MediaOutbox>,
    clips: ClipRequests,
    processed: std::path::PathBuf,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

fn setup() -> (Setup, Arc<crate::outbox::SledOutbox>) {
    let dir = tempfile::tempdir().unwrap();
    let (sled, m) = open(dir.path(), 1 << 30);
    let clips = ClipRequests::new(sled.tree(crate::downlink::CLIP_TREE).unwrap());
    let processed = dir.path().join("processed");
    std::fs::create_dir_all(processed.join("patient")).unwrap();
    let s = Setup {
        _dir: dir,
        media: Arc::new(m),
        clips,
        processed,
        wake: Arc::new(Notify::new()),
        stop: CancellationToken::new(),
    };
    (s, sled)
}

impl Setup {
    fn scan(&self, id: &ResultId) {
        let name = crate::processed::file_name(id, "scan.dcm");
        std::fs::write(self.processed.join("patient").join(name), id.as_bytes()).unwrap();
    }

    fn start(
        &self,
        maker: &Arc<TestMaker>,
        requests: mpsc::Receiver<ClipRequest>,
    ) -> tokio::task::JoinHandle<()> {
        let p = Preparer {
            media: self.media.clone(),
            maker: Arc::new(MakerRef(maker.clone())),
            processed_dir: self.processed.clone(),
            status: Arc::new(Shared::default()),
            wake: self.wake.clone(),
            ready: Arc::new(Notify::new()),
            reviewed: Arc::new(HashSet::new),
            outbox: None,
            retry: Duration::from_millis(20),
        };
        tokio::spawn(p.run(requests, Some(self.clips.clone()), self.stop.clone()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_tried_again_and_a_permanent_one_is_said() {
    for permanent in [false, true] {
        let (s, _sled) = setup();
        let id = ResultId::random();
        s.scan(&id);
        s.media
            .schedule(&id, MediaKind::Preview, true, 3, false)
            .unwrap();
        let maker = TestMaker::new(2, permanent, false);
        let (_tx, rx) = mpsc::channel(1);
        let task = s.start(&maker, rx);
        let want = |st: &Option<UploadState>| {
            if permanent {
                *st == Some(UploadState::Unavailable("does not decode".into()))
            } else {
                *st == Some(UploadState::Queued)
            }
        };
        until("the preview's outcome", 10, || {
            want(&s.media.media_of(&id).unwrap().preview)
        })
        .await;
        s.stop.cancel();
        task.await.unwrap();
        if !permanent {
            let e = s.media.get(&id, MediaKind::Preview).unwrap().unwrap();
            assert_eq!((e.attempts, e.retry_at_ms), (0, 0));
            assert_eq!(s.media.read(&e).unwrap().unwrap()[1..], *id.as_bytes());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clip_requests_beyond_the_channel_are_all_prepared() {
    let (s, _sled) = setup();
    // The preparer is busy with a preview while the requests come in.
    let busy = ResultId::random();
    s.scan(&busy);
    s.media
        .schedule(&busy, MediaKind::Preview, true, 3, false)
        .unwrap();
    let maker = TestMaker::new(0, false, true);
    let (tx, rx) = mpsc::channel(64);
    let task = s.start(&maker, rx);
    until("the preparer at work", 10, || {
        maker.entered.load(Ordering::SeqCst)
    })
    .await;
    let ids: Vec<ResultId> = (0..100).map(|_| ResultId::random()).collect();
    let mut dropped = 0;
    for (i, id) in ids.iter().enumerate() {
        s.scan(id);
        // What the receiver does: stored durably, then offered to the channel.
        let mut v = (i as u64).to_be_bytes().to_vec();
        v.extend_from_slice(b"specialist");
        s.clips.tree().insert(id.as_bytes(), v).unwrap();
        let req = ClipRequest {
            result_id: id.as_bytes().to_vec(),
            reason: "specialist".into(),
        };
        dropped += tx.try_send(req).is_err() as u32;
    }
    assert_eq!(dropped, 36);
    maker.release.notify_one();
    until("every requested clip prepared", 30, || {
        ids.iter()
            .all(|id| s.media.media_of(id).unwrap().clip == Some(UploadState::Queued))
    })
    .await;
    assert!(s.clips.pending_clip_requests().unwrap().is_empty());
    s.stop.cancel();
    task.await.unwrap();
}

#[test]
fn bytes_never_to_be_sent_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let (_sled, m) = open(dir.path(), 1 << 30);
    let mk = |n: usize| {
        let id = ResultId::random();
        m.schedule(&id, MediaKind::Clip, true, 1, false).unwrap();
        m.store_prepared(&id, MediaKind::Clip, &bytes(n, n as u8))
            .unwrap();
        id
    };
    let (refused, unavailable, retracted, kept) = (mk(1_000), mk(2_000), mk(4_000), mk(8_000));
    m.refused(&refused, MediaKind::Clip, "too large").unwrap();
    m.mark_unavailable(&unavailable, MediaKind::Clip, "gone")
        .unwrap();
    let preparing = ResultId::random();
    m.schedule(&preparing, MediaKind::Preview, true, 1, false)
        .unwrap();
    assert_eq!(m.stats().unwrap().stored_bytes, 15_000);
    let dropped = |id: &ResultId| *id == retracted || *id == preparing;
    // Under budget, nothing reviewed: still freed.
    assert_eq!(m.prune(&|_| false, &dropped).unwrap(), 7_000);
    assert_eq!(m.stats().unwrap().stored_bytes, 8_000);
    for id in [refused, unavailable, retracted] {
        let e = m.get(&id, MediaKind::Clip).unwrap().unwrap();
        assert!(!e.stored && m.read(&e).unwrap().is_none());
        assert!(!m.blob_path(&e.sha256.unwrap()).exists());
    }
    // Items of a parked or retracted result are no longer made or sent.
    assert!(matches!(
        m.media_of(&retracted).unwrap().clip,
        Some(UploadState::Unavailable(_))
    ));
    assert!(m.to_prepare().unwrap().is_empty());
    assert!(m
        .next_upload(&|id| *id == retracted, true)
        .unwrap()
        .is_none());
    let e = m.get(&kept, MediaKind::Clip).unwrap().unwrap();
    assert!(e.stored && m.read(&e).unwrap().is_some());
    assert_eq!(m.prune(&|_| false, &dropped).unwrap(), 0);
}
