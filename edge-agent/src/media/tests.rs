//! The media outbox (real sled, real files), the upload protocol, and the uploader
//! task against an in-memory hub that checks offsets and hashes like the real one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pleura_proto::v1::{uplink, MediaAck, MediaKind};
use pleura_shared::record::sample_record;
use pleura_shared::ResultId;
use sha2::Digest;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::upload::{Action, Link, Transfer, UploadSettings, Uploader, CHUNK_BYTES};
use super::*;
use crate::outbox::{Outbox, SledOutbox};
use crate::status::Shared;

pub(super) fn open(dir: &std::path::Path, max: u64) -> (Arc<SledOutbox>, MediaOutbox) {
    let sled = Arc::new(SledOutbox::open(dir, 1 << 30).unwrap());
    let media = MediaOutbox::open(sled.tree(MEDIA_TREE).unwrap(), dir, max).unwrap();
    (sled, media)
}

pub(super) fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
        .collect()
}

#[test]
fn an_item_goes_from_preparing_to_the_hub_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = ResultId::random();
    let item = bytes(40_000, 7);
    let sha: Sha256 = sha2::Sha256::digest(&item).into();
    {
        let (_sled, m) = open(dir.path(), 1 << 30);
        assert_eq!(m.media_of(&id).unwrap(), ResultMedia::default());
        assert_eq!(
            m.schedule(&id, MediaKind::Preview, true, 3, false).unwrap(),
            Scheduled::Prepare
        );
        assert_eq!(
            m.schedule(&id, MediaKind::Preview, true, 3, false).unwrap(),
            Scheduled::Known
        );
        assert_eq!(
            m.media_of(&id).unwrap().preview,
            Some(UploadState::Preparing)
        );
        m.store_prepared(&id, MediaKind::Preview, &item).unwrap();
        assert_eq!(m.media_of(&id).unwrap().preview, Some(UploadState::Queued));
        m.set_held(&id, MediaKind::Preview, &sha, 16_384, false)
            .unwrap();
        // An answer about other bytes changes nothing.
        m.set_held(&id, MediaKind::Preview, &[9; 32], 30_000, true)
            .unwrap();
        let blob = dir.path().join("media").join(hex::encode(sha));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&blob).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read(&blob).unwrap(), item);
    }
    let (_sled, m) = open(dir.path(), 1 << 30);
    assert_eq!(
        m.media_of(&id).unwrap().preview,
        Some(UploadState::Partial {
            held: 16_384,
            total: 40_000
        })
    );
    let e = m.get(&id, MediaKind::Preview).unwrap().unwrap();
    assert_eq!(
        m.read_chunk(&e, 16_384, CHUNK_BYTES).unwrap(),
        item[16_384..32_768]
    );
    assert_eq!(m.stats().unwrap().stored_bytes, 40_000);
    m.set_held(&id, MediaKind::Preview, &sha, 40_000, true)
        .unwrap();
    assert_eq!(m.media_of(&id).unwrap().preview, Some(UploadState::AtHub));
    m.refused(&id, MediaKind::Clip, "nothing there").unwrap();
    assert_eq!(m.media_of(&id).unwrap().clip, None);
}

#[test]
fn uploads_are_ordered_previews_by_severity_then_requested_clips_then_clips() {
    let dir = tempfile::tempdir().unwrap();
    let (_sled, m) = open(dir.path(), 1 << 30);
    let ids: Vec<ResultId> = (0..5).map(|_| ResultId::random()).collect();
    let items = [
        (ids[0], MediaKind::Clip, 3, false),
        (ids[1], MediaKind::Preview, 1, false),
        (ids[2], MediaKind::Preview, 3, false),
        (ids[3], MediaKind::Clip, 0, true),
        (ids[4], MediaKind::Preview, 2, false),
    ];
    for (i, (id, kind, sev, req)) in items.iter().enumerate() {
        m.schedule(id, *kind, !req, *sev, *req).unwrap();
        m.store_prepared(id, *kind, &bytes(100 + i, i as u8 + 1))
            .unwrap();
    }
    let all = |_: &ResultId| true;
    let mut order = Vec::new();
    while let Some(e) = m.next_upload(&all, true).unwrap() {
        order.push(e.result_id);
        let sha = e.sha256.unwrap();
        m.set_held(&e.result_id, e.media_kind(), &sha, e.size, true)
            .unwrap();
    }
    assert_eq!(order, vec![ids[2], ids[4], ids[1], ids[3], ids[0]]);
    // Only results the hub acknowledged; other clips only when idle.
    let (a, b) = (ResultId::random(), ResultId::random());
    m.schedule(&a, MediaKind::Preview, true, 3, false).unwrap();
    m.store_prepared(&a, MediaKind::Preview, b"a").unwrap();
    m.schedule(&b, MediaKind::Clip, true, 3, false).unwrap();
    m.store_prepared(&b, MediaKind::Clip, b"b").unwrap();
    assert_eq!(
        m.next_upload(&|id| *id != a, true)
            .unwrap()
            .unwrap()
            .result_id,
        b
    );
    assert!(m.next_upload(&|id| *id != a, false).unwrap().is_none());
}

#[test]
fn a_clip_request_revives_an_unavailable_clip_and_raises_its_priority() {
    let dir = tempfile::tempdir().unwrap();
    let (_sled, m) = open(dir.path(), 1 << 30);
    let id = ResultId::random();
    m.schedule(&id, MediaKind::Clip, true, 2, false).unwrap();
    m.mark_unavailable(&id, MediaKind::Clip, "scan gone")
        .unwrap();
    assert_eq!(
        m.media_of(&id).unwrap().clip,
        Some(UploadState::Unavailable("scan gone".into()))
    );
    assert_eq!(m.to_prepare().unwrap().len(), 0);
    assert_eq!(
        m.schedule(&id, MediaKind::Clip, false, 0, true).unwrap(),
        Scheduled::Prepare
    );
    let p = m.to_prepare().unwrap();
    assert!(p.len() == 1 && p[0].requested);
    assert_eq!(
        m.schedule(&id, MediaKind::Clip, false, 0, true).unwrap(),
        Scheduled::Known
    );
}

#[test]
fn pruning_frees_only_items_the_hub_holds_reviewed_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_sled, m) = open(dir.path(), 3 << 20);
    let mk = |n: usize, at_hub: bool| {
        let id = ResultId::random();
        m.schedule(&id, MediaKind::Clip, true, 1, false).unwrap();
        let e = m
            .store_prepared(&id, MediaKind::Clip, &bytes(n, n as u8))
            .unwrap();
        if at_hub {
            m.set_held(&id, MediaKind::Clip, &e.sha256.unwrap(), e.size, true)
                .unwrap();
        }
        id
    };
    let unsent = mk(900_000, false);
    let old = mk(900_001, true);
    let reviewed = mk(900_002, true);
    // Under budget: only the reviewed result's item goes.
    assert!(!m.over_budget() && m.has_room(100_000) && !m.has_room(1_000_000));
    assert_eq!(m.prune(&|id| *id == reviewed, &|_| false).unwrap(), 900_002);
    assert!(m.get(&old, MediaKind::Clip).unwrap().unwrap().stored);
    let big = mk(2_300_000, false);
    assert!(m.over_budget());
    // Over budget: the other item at the hub goes; unsent ones never do.
    assert_eq!(m.prune(&|_| false, &|_| false).unwrap(), 900_001);
    assert!(m.over_budget());
    assert_eq!(m.prune(&|_| false, &|_| false).unwrap(), 0);
    for id in [unsent, big] {
        let e = m.get(&id, MediaKind::Clip).unwrap().unwrap();
        assert!(e.stored && m.read(&e).unwrap().is_some());
    }
    // Pruned items still show as at the hub.
    assert_eq!(m.media_of(&old).unwrap().clip, Some(UploadState::AtHub));
    assert_eq!(m.stats().unwrap().stored_bytes, 3_200_000);
}

pub(super) fn ack(sha: &Sha256, held: u64, complete: bool) -> MediaAck {
    MediaAck {
        sha256: sha.to_vec(),
        held,
        complete,
        refused: String::new(),
    }
}

#[test]
fn the_transfer_queries_then_sends_one_chunk_per_ack() {
    let sha = [1u8; 32];
    let size = 40_000u64;
    let mut t = Transfer::new(sha, size, 0);
    assert_eq!(t.start(), Action::Query);
    // The hub already holds some: continue from there, not from what we thought.
    assert_eq!(
        t.on_ack(&ack(&sha, 16_384, false)),
        Action::Chunk {
            offset: 16_384,
            len: 16_384
        }
    );
    // A late, duplicate ack of an earlier chunk is ignored, and so is another item's.
    assert_eq!(t.on_ack(&ack(&sha, 0, false)), Action::Wait);
    assert_eq!(t.on_ack(&ack(&sha, 16_384, false)), Action::Wait);
    assert_eq!(t.on_ack(&ack(&[2; 32], 32_768, false)), Action::Wait);
    assert_eq!(
        t.on_ack(&ack(&sha, 32_768, false)),
        Action::Chunk {
            offset: 32_768,
            len: 40_000 - 32_768
        }
    );
    // No answer: ask again; the answer to the query sets the offset.
    assert_eq!(t.on_timeout(), Action::Query);
    assert_eq!(
        t.on_ack(&ack(&sha, 32_768, false)),
        Action::Chunk {
            offset: 32_768,
            len: 7_232
        }
    );
    assert_eq!(t.on_ack(&ack(&sha, 40_000, true)), Action::Done);
    // Held whole already (for another result of this device): one empty claim first.
    let mut t = Transfer::new(sha, size, 0);
    t.start();
    assert_eq!(
        t.on_ack(&ack(&sha, size, true)),
        Action::Chunk {
            offset: size,
            len: 0
        }
    );
    assert_eq!(t.on_ack(&ack(&sha, size, true)), Action::Done);
    let mut t = Transfer::new(sha, size, 0);
    t.start();
    let mut refused = ack(&sha, 0, false);
    refused.refused = "too large".into();
    assert_eq!(t.on_ack(&refused), Action::Refused("too large".into()));
}

/// An in-memory hub: writes a chunk only at its held offset, checks the hash when
/// whole, answers through `acks`; loses every `cut_every`th message. Chunks of the
/// items in `stuck` are answered but not written (a hub whose disk is full).
#[derive(Default)]
pub(super) struct FakeHub {
    pub(super) held: Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>,
    pub(super) acks: Option<mpsc::Sender<MediaAck>>,
    pub(super) up: AtomicBool,
    pub(super) cut_every: u64,
    pub(super) sent: AtomicU64,
    pub(super) complete: Mutex<Vec<Vec<u8>>>,
    pub(super) stuck: Vec<Vec<u8>>,
    /// Chunks received for `stuck` items.
    pub(super) stuck_chunks: AtomicU64,
}

impl Link for FakeHub {
    fn send(&self, kind: uplink::Kind) -> Result<usize, String> {
        let n = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        if self.cut_every > 0 && n.is_multiple_of(self.cut_every) {
            return Ok(10); // lost on the way
        }
        let mut held = self.held.lock().unwrap();
        let answer = match kind {
            uplink::Kind::MediaQuery(q) => {
                let h = held.get(&q.sha256).map_or(0, |b| b.len() as u64);
                let done = self.complete.lock().unwrap().contains(&q.sha256);
                ack(&q.sha256.clone().try_into().unwrap(), h, done)
            }
            uplink::Kind::MediaChunk(c) => {
                let b = held.entry(c.sha256.clone()).or_default();
                if self.stuck.contains(&c.sha256) {
                    self.stuck_chunks.fetch_add(1, Ordering::SeqCst);
                } else if c.offset == b.len() as u64 {
                    b.extend_from_slice(&c.data);
                }
                let whole = b.len() as u64 == c.total;
                if whole {
                    let h: Vec<u8> = sha2::Sha256::digest(&*b).to_vec();
                    assert_eq!(h, c.sha256, "the hub got other bytes than the item's");
                    self.complete.lock().unwrap().push(c.sha256.clone());
                }
                ack(&c.sha256.clone().try_into().unwrap(), b.len() as u64, whole)
            }
            uplink::Kind::Receipt(_)
            | uplink::Kind::ModelFetch(_)
            | uplink::Kind::ModelReport(_) => return Ok(0),
        };
        if let Some(a) = &self.acks {
            let _ = a.try_send(answer);
        }
        Ok(100)
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uploader_sends_after_the_results_and_resumes_after_lost_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (sled, m) = open(dir.path(), 1 << 30);
    let media = Arc::new(m);
    let outbox: Arc<dyn Outbox> = sled.clone();
    let rec = sample_record("c1", "d1", 3, true);
    outbox.put(&rec).unwrap();
    let items = [
        (MediaKind::Preview, bytes(50_000, 3)),
        (MediaKind::Clip, bytes(200_000, 5)),
    ];
    for (kind, b) in &items {
        media.schedule(&rec.id, *kind, true, 3, false).unwrap();
        media.store_prepared(&rec.id, *kind, b).unwrap();
    }
    let (tx, rx) = mpsc::channel(64);
    let hub = Arc::new(FakeHub {
        held: Mutex::default(),
        acks: Some(tx),
        up: AtomicBool::new(true),
        cut_every: 7,
        ..Default::default()
    });
    let status = Arc::new(Shared::default());
    let ready = Arc::new(Notify::new());
    let up = Uploader {
        media: media.clone(),
        outbox: outbox.clone(),
        link: hub.clone(),
        status: status.clone(),
        ready: ready.clone(),
        settings: UploadSettings {
            ack_timeout: Duration::from_millis(100),
            query_timeout: Duration::from_millis(100),
            max_backoff: Duration::from_millis(200),
            poll: Duration::from_millis(20),
        },
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(up.run(rx, stop.clone()));
    // The result is still queued: nothing is sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hub.sent.load(Ordering::SeqCst), 0);
    outbox.remove(&[rec.id]).unwrap();
    ready.notify_one();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while media.media_of(&rec.id).unwrap()
        != (ResultMedia {
            preview: Some(UploadState::AtHub),
            clip: Some(UploadState::AtHub),
        })
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            media.media_of(&rec.id)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap();
    assert_eq!(hub.complete.lock().unwrap().len(), 2);
    let total: u64 = items.iter().map(|(_, b)| b.len() as u64).sum();
    let s = status.snapshot().media;
    // Every seventh message is lost: at most the lost chunks go again.
    let chunks = total.div_ceil(CHUNK_BYTES as u64);
    let lost = hub.sent.load(Ordering::SeqCst) / 7 + 1;
    assert!(s.chunk_bytes_sent >= total, "{s:?}");
    assert!(
        s.chunk_bytes_sent <= total + lost * CHUNK_BYTES as u64,
        "{s:?} for {total} bytes in {chunks} chunks"
    );
    assert!(s.ack_timeouts >= 1 && s.items_uploaded == 2, "{s:?}");
}
