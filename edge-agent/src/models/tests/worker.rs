//! The worker against a hub that answers fetches from the model file: a download cut by
//! a restart resumes from the persisted offset, waits for clinical data, installs,
//! self-tests and switches; shadow releases wait for PROMOTE; a refused chunk stops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pleura_shared::release::SignedRelease;
use pleura_shared::wire::{uplink, ModelChunk, ModelReport, ModelState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::super::worker::{Link, ModelSettings};
use super::super::{LivePool, ModelEvent, ModelWorker, OfferOutcome, Slot};
use super::*;

struct Hub {
    file: Vec<u8>,
    tx: mpsc::Sender<ModelEvent>,
    served: AtomicU64,
    fetches: AtomicU64,
    /// Chunks answered before it goes silent.
    limit: u64,
    refuse: bool,
    reports: Mutex<Vec<ModelReport>>,
}

impl Link for Hub {
    fn send(&self, kind: uplink::Kind) -> Result<(), String> {
        match kind {
            uplink::Kind::ModelFetch(f) => {
                let n = self.fetches.fetch_add(1, Ordering::SeqCst);
                if n >= self.limit {
                    return Ok(());
                }
                let start = f.offset as usize;
                let end = (start + f.max_bytes as usize).min(self.file.len());
                let data = if self.refuse {
                    vec![]
                } else {
                    self.file[start..end].to_vec()
                };
                self.served.fetch_add(data.len() as u64, Ordering::SeqCst);
                let c = ModelChunk {
                    release_version: f.release_version,
                    sha256: f.sha256,
                    offset: f.offset,
                    total: self.file.len() as u64,
                    data,
                    refused: if self.refuse {
                        "release aborted".into()
                    } else {
                        String::new()
                    },
                };
                let _ = self.tx.try_send(ModelEvent::Chunk(c));
            }
            uplink::Kind::ModelReport(r) => self.reports.lock().unwrap().push(r),
            _ => {}
        }
        Ok(())
    }
    fn is_up(&self) -> bool {
        true
    }
}

fn settings() -> ModelSettings {
    ModelSettings {
        max_bytes_per_s: 1 << 30,
        fetch_timeout: Duration::from_secs(2),
        poll: Duration::from_millis(10),
        ..ModelSettings::default()
    }
}

struct Run {
    hub: Arc<Hub>,
    events: mpsc::Sender<ModelEvent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn spawn(
    store: Arc<ModelStore>,
    live: Arc<LivePool>,
    limit: u64,
    refuse: bool,
    busy: Arc<AtomicBool>,
) -> Run {
    let (tx, rx) = mpsc::channel(64);
    let hub = Arc::new(Hub {
        file: std::fs::read(shipped()).unwrap(),
        tx: tx.clone(),
        served: AtomicU64::new(0),
        fetches: AtomicU64::new(0),
        limit,
        refuse,
        reports: Mutex::new(Vec::new()),
    });
    let w = ModelWorker {
        store,
        live,
        link: hub.clone(),
        clinical_busy: Arc::new(move || busy.load(Ordering::SeqCst)),
        status: Arc::default(),
        settings: settings(),
        reports: Default::default(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(w.run(rx, stop.clone()));
    Run {
        hub,
        events: tx,
        stop,
        task,
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn states(hub: &Hub) -> Vec<ModelState> {
    hub.reports
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.state())
        .collect()
}

fn live_builtin() -> Arc<LivePool> {
    init_backend();
    let (_, pool) = super::super::switch::start_pool(&shipped(), 1).unwrap();
    Arc::new(LivePool::new(Arc::new(pool), 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumes_after_a_restart_waits_for_clinical_data_and_switches() {
    let f = fx();
    let data = f.data.clone();
    let store = Arc::new(ModelStore::new(
        Layout::new(&data, &shipped()),
        Some(f.root.public_key()),
    ));
    let (offer, m) = f.offer(3);
    assert!(matches!(
        store.take_offer(&offer, pleura_shared::now_ms()).unwrap(),
        OfferOutcome::Accepted(_)
    ));
    let live = live_builtin();
    let idle = Arc::new(AtomicBool::new(false));
    // First run: the hub answers 10 chunks, then the agent is killed.
    let r1 = spawn(store.clone(), live.clone(), 10, false, idle.clone());
    let chunk = u64::from(super::super::download::MAX_CHUNK);
    until("10 chunks held", || {
        store
            .pending()
            .unwrap()
            .is_some_and(|p| p.held == 10 * chunk)
    })
    .await;
    r1.stop.cancel();
    r1.task.await.unwrap();
    let first = r1.hub.served.load(Ordering::SeqCst);

    // Restart (a new store on the same files), results waiting to sync at first.
    let store = Arc::new(ModelStore::new(
        Layout::new(&data, &shipped()),
        Some(f.root.public_key()),
    ));
    let busy = Arc::new(AtomicBool::new(true));
    let r2 = spawn(store.clone(), live.clone(), u64::MAX, false, busy.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r2.hub.fetches.load(Ordering::SeqCst),
        0,
        "no fetch while clinical data waits"
    );
    busy.store(false, Ordering::SeqCst);
    until("active", || states(&r2.hub).contains(&ModelState::Active)).await;
    let second = r2.hub.served.load(Ordering::SeqCst);
    assert!(
        first + second <= m.model_size + chunk,
        "served {first} + {second} for {}",
        m.model_size
    );
    assert_eq!(
        second,
        m.model_size - 10 * chunk,
        "resumed at the persisted offset"
    );
    assert_eq!(
        states(&r2.hub),
        vec![
            ModelState::Downloading,
            ModelState::Verified,
            ModelState::Active
        ]
    );
    assert_eq!(live.version(), 3);
    let cur = store.layout.read_current().unwrap();
    assert_eq!((cur.active, cur.previous), (Slot::A, Some(Slot::Builtin)));
    assert_eq!(store.trust().unwrap().installed_version(), Some(3));
    assert!(store.pending().unwrap().is_none());
    // The new pool analyses.
    let out = live.current().infer_frames(vec![0.0; 192 * 192]).unwrap();
    assert_eq!(out.n, 1);
    r2.stop.cancel();
    r2.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_release_waits_for_promote() {
    let f = fx();
    let store = Arc::new(ModelStore::new(
        Layout::new(&f.data, &shipped()),
        Some(f.root.public_key()),
    ));
    let m = manifest(4, &shipped());
    let signed = f.signer.sign_release(&m).unwrap();
    let offer = f.offer_for(&signed, &m, true);
    let live = live_builtin();
    let r = spawn(
        store.clone(),
        live.clone(),
        u64::MAX,
        false,
        Arc::new(AtomicBool::new(false)),
    );
    let out = store.take_offer(&offer, pleura_shared::now_ms()).unwrap();
    r.events.send(ModelEvent::Offer(out)).await.unwrap();
    until("shadowing", || {
        states(&r.hub).contains(&ModelState::Shadowing)
    })
    .await;
    assert_eq!(
        live.version(),
        0,
        "a shadow release does not run as the active model"
    );
    assert_eq!(store.layout.read_current().unwrap().shadow, Some(Slot::A));
    let cmd = pleura_shared::wire::ModelCommand {
        release_version: 4,
        action: pleura_shared::wire::ModelAction::Promote as i32,
    };
    assert!(super::super::command::store(&store, &cmd).unwrap());
    r.events.send(ModelEvent::Command).await.unwrap();
    until("active", || states(&r.hub).contains(&ModelState::Active)).await;
    assert_eq!(live.version(), 4);
    let cur = store.layout.read_current().unwrap();
    assert_eq!((cur.active, cur.shadow), (Slot::A, None));
    r.stop.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_chunk_stops_the_download() {
    let f = fx();
    let store = Arc::new(ModelStore::new(
        Layout::new(&f.data, &shipped()),
        Some(f.root.public_key()),
    ));
    let (offer, _) = f.offer(5);
    store.take_offer(&offer, pleura_shared::now_ms()).unwrap();
    let live = live_builtin();
    let r = spawn(
        store.clone(),
        live.clone(),
        u64::MAX,
        true,
        Arc::new(AtomicBool::new(false)),
    );
    until("refused", || states(&r.hub).contains(&ModelState::Refused)).await;
    let reason = r.hub.reports.lock().unwrap().last().unwrap().reason.clone();
    assert!(reason.starts_with("hub_refused:"), "{reason}");
    assert!(store.pending().unwrap().is_none());
    assert_eq!(live.version(), 0);
    r.stop.cancel();
    r.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_crashes_in_service_is_rolled_back_and_reported() {
    let f = fx();
    let store = Arc::new(ModelStore::new(
        Layout::new(&f.data, &shipped()),
        Some(f.root.public_key()),
    ));
    // The offer establishes the trust state (root v1); its download is skipped here.
    let (offer, m) = f.offer(3);
    store.take_offer(&offer, pleura_shared::now_ms()).unwrap();
    store.drop_pending(None).unwrap();
    let signed = SignedRelease::from_json(&offer.release).unwrap();
    store
        .layout
        .write_slot(Slot::A, &signed, &m, &shipped())
        .unwrap();
    init_backend();
    let (_, pool) = super::super::switch::activate(&store, Slot::A, 1).unwrap();
    let live = Arc::new(LivePool::new(pool, 3));
    let r = spawn(
        store.clone(),
        live.clone(),
        u64::MAX,
        false,
        Arc::new(AtomicBool::new(false)),
    );
    let crash: Result<(), _> = Err(pleura_inference::AnalyzeError::Panicked);
    for t in 0..3 {
        live.observe(&crash, 3, 1_000 + t);
    }
    until("rolled back", || {
        states(&r.hub).contains(&ModelState::RolledBack)
    })
    .await;
    let report = r.hub.reports.lock().unwrap().last().unwrap().clone();
    assert_eq!((report.release_version, report.active_version), (3, 0));
    assert!(report.reason.contains("crashed"), "{}", report.reason);
    assert_eq!(live.version(), 0);
    assert_eq!(store.layout.read_current().unwrap().active, Slot::Builtin);
    assert_eq!(store.layout.rolled_back(), vec![3]);
    // Version 3 is never taken again, nor anything at or below it.
    assert!(matches!(
        store.take_offer(&offer, pleura_shared::now_ms()).unwrap(),
        OfferOutcome::Refused { .. }
    ));
    r.stop.cancel();
    r.task.await.unwrap();
}
