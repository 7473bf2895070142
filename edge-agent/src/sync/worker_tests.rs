//! The worker over two fake transports (the seam's promise: the worker knows only
//! the trait): it falls back when the primary stays down, drains over the fallback,
//! and returns to the primary as soon as it is up, sending nothing more on the fallback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pleura_shared::record::sample_record;
use pleura_shared::wire::{ResultAck, ResultBatch, SignedBatch};
use pleura_shared::SCHEMA_VERSION;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::transport::{Answers, Event, Sent, Transport, TransportError};
use super::SyncWorker;
use crate::config::EdgeConfig;
use crate::credentials::Credentials;
use crate::outbox::{Outbox, SledOutbox};
use crate::status::Shared;

/// Results ids per batch sent, in order.
type Log = Arc<Mutex<Vec<usize>>>;

/// The hub's answer committing every result of `batch`.
fn commit_all(batch: &SignedBatch) -> ResultAck {
    let b = ResultBatch::decode(batch.batch.as_slice()).unwrap();
    ResultAck {
        schema_version: SCHEMA_VERSION,
        committed: b.results.into_iter().map(|r| r.result_id).collect(),
        ..Default::default()
    }
}

fn results_in(batch: &SignedBatch) -> usize {
    ResultBatch::decode(batch.batch.as_slice())
        .unwrap()
        .results
        .len()
}

/// Answers later, like MQTT; the test says when it is up or down.
struct Stream {
    news: mpsc::Receiver<Event>,
    answers: Vec<ResultAck>,
    log: Log,
}

impl Transport for Stream {
    fn name(&self) -> &'static str {
        "mqtt"
    }
    fn answers(&self) -> Answers {
        Answers::Later
    }
    async fn send(&mut self, batch: SignedBatch) -> Result<Sent, TransportError> {
        self.log.lock().unwrap().push(results_in(&batch));
        self.answers.push(commit_all(&batch));
        Ok(Sent::default())
    }
    async fn next_event(&mut self) -> Option<Event> {
        if let Some(a) = self.answers.pop() {
            return Some(Event::Answer(a));
        }
        self.news.recv().await
    }
    async fn stop(self) {}
}

/// Answers inline, like gRPC.
struct Call {
    log: Log,
}

impl Transport for Call {
    fn name(&self) -> &'static str {
        "grpc"
    }
    fn answers(&self) -> Answers {
        Answers::Inline
    }
    async fn send(&mut self, batch: SignedBatch) -> Result<Sent, TransportError> {
        self.log.lock().unwrap().push(results_in(&batch));
        Ok(Sent {
            bytes: 0,
            answer: Some(commit_all(&batch)),
        })
    }
    async fn next_event(&mut self) -> Option<Event> {
        std::future::pending().await
    }
    async fn stop(self) {}
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn sent_results(log: &Log) -> usize {
    log.lock().unwrap().iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_while_the_primary_is_down_and_returns_to_it_once_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg: EdgeConfig = toml::from_str(&EdgeConfig::example()).unwrap();
    cfg.data_dir = tmp.path().to_path_buf();
    cfg.sync.grpc_fallback_after = 2;
    cfg.sync.backoff_min_ms = 10;
    let outbox: Arc<dyn Outbox> = Arc::new(SledOutbox::open(tmp.path(), 1 << 30).unwrap());
    let put = |n: usize| {
        for _ in 0..n {
            outbox
                .put(&sample_record(&cfg.clinic, &cfg.device, 2, true))
                .unwrap();
        }
    };
    put(3);
    let (news, rx) = mpsc::channel(8);
    let (stream_log, call_log) = (Log::default(), Log::default());
    let primary = Stream {
        news: rx,
        answers: Vec::new(),
        log: stream_log.clone(),
    };
    let fallback = Call {
        log: call_log.clone(),
    };
    let worker = SyncWorker {
        cfg: cfg.clone(),
        outbox: outbox.clone(),
        status: Arc::new(Shared::default()),
        queued: Default::default(),
        creds: Credentials {
            mqtt_tls: None,
            grpc_tls: None,
            signer: None,
        },
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run_on(primary, Some(fallback), shutdown.clone()));

    // One primary failure is not enough to fall back.
    news.send(Event::Down("refused".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(call_log.lock().unwrap().is_empty(), "fell back too early");
    news.send(Event::Down("refused".into())).await.unwrap();
    until("the drain over the fallback", || {
        outbox.stats().unwrap().pending == 0
    })
    .await;
    assert_eq!(sent_results(&call_log), 3);
    assert!(
        stream_log.lock().unwrap().is_empty(),
        "sent on a primary that was down"
    );

    let calls = call_log.lock().unwrap().len();
    news.send(Event::Up).await.unwrap();
    put(2);
    until("the primary's batch", || sent_results(&stream_log) == 2).await;
    until("the primary's answer", || {
        outbox.stats().unwrap().pending == 0
    })
    .await;
    assert_eq!(
        call_log.lock().unwrap().len(),
        calls,
        "the fallback used after the primary came back"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
