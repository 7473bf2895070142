//! `edge-agent run`: intake, sync and status workers under one cancellation root.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pleura_inference::{backend, BackendConfig, InferencePool, ModelFile, PoolConfig};
use pleura_shared::PseudonymKey;
use tokio_util::sync::CancellationToken;

use crate::config::EdgeConfig;
use crate::intake::Intake;
use crate::outbox::{Outbox, SledOutbox};
use crate::status::{self, Shared};
use crate::sync::SyncWorker;

/// Loads the clinic's pseudonym secret, creating it (mode 0600) on first start.
pub fn load_or_create_key(path: &Path) -> Result<PseudonymKey> {
    if path.exists() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return PseudonymKey::new(bytes).with_context(|| format!("key file {}", path.display()));
    }
    let key = PseudonymKey::generate();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    tracing::info!(path = %path.display(), "created a new pseudonym key; back it up inside the clinic");
    Ok(key)
}

pub fn open_outbox(cfg: &EdgeConfig) -> Result<SledOutbox> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    SledOutbox::open(&cfg.data_dir, cfg.quota_bytes)
        .with_context(|| format!("opening the outbox in {}", cfg.data_dir.display()))
}

pub async fn run(cfg: EdgeConfig, shutdown: CancellationToken) -> Result<()> {
    for d in [&cfg.inbox, &cfg.data_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _lock = crate::lock::DirLock::take(&cfg.data_dir, Duration::from_secs(10))?;
    let key = load_or_create_key(&cfg.pseudonym_key_file)?;
    // Before any scan is taken in: a wrong bundle must stop the agent, not strand results.
    let creds = crate::credentials::Credentials::load(&cfg).context("loading the [tls] bundle")?;
    backend::init(&BackendConfig {
        kind: cfg.inference.backend,
        onnxruntime_library: cfg.inference.onnxruntime_library.clone(),
    })
    .context("starting the inference backend")?;
    let model = ModelFile::load(&cfg.inference.model)
        .with_context(|| format!("loading model {}", cfg.inference.model.display()))?;
    let pool = Arc::new(
        InferencePool::start(
            &model,
            PoolConfig {
                workers: cfg.inference.workers,
                ..PoolConfig::default()
            },
        )
        .context("starting the inference pool")?,
    );
    let outbox: Arc<dyn Outbox> = Arc::new(open_outbox(&cfg)?);
    let shared = Arc::new(Shared::default());
    shared.update(|s| {
        s.pid = std::process::id();
        s.clinic = cfg.clinic.clone();
        s.device = cfg.device.clone();
        s.model_version = model.info.label();
        s.sync.state = "starting".into();
    });
    let queued = Arc::new(tokio::sync::Notify::new());

    let tracker = tokio_util::task::TaskTracker::new();
    let intake = Intake {
        cfg: cfg.clone(),
        pool,
        outbox: outbox.clone(),
        key,
        status: shared.clone(),
        queued: queued.clone(),
    };
    tracker.spawn(intake.run(shutdown.clone()));
    let sync = SyncWorker {
        cfg: cfg.clone(),
        outbox: outbox.clone(),
        status: shared.clone(),
        queued,
        creds,
    };
    let sd = shutdown.clone();
    tracker.spawn(async move {
        if let Err(e) = sync.run(sd).await {
            tracing::error!(error = %e, "sync worker stopped");
        }
    });
    let status_path = cfg.status_file();
    tracker.spawn(status_writer(outbox, shared, status_path, shutdown.clone()));
    tracker.close();
    tracing::info!(clinic = %cfg.clinic, device = %cfg.device, inbox = %cfg.inbox.display(), "agent running");
    shutdown.cancelled().await;
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("workers did not stop within 10 s");
    }
    tracing::info!("agent stopped");
    Ok(())
}

async fn status_writer(
    outbox: Arc<dyn Outbox>,
    shared: Arc<Shared>,
    path: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        let ob = outbox.clone();
        if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || ob.stats()).await {
            shared.update(|s| {
                s.outbox = stats;
                s.updated_ms = status::now_ms();
            });
        }
        let snap = shared.snapshot();
        if let Err(e) = status::write_file(&path, &snap) {
            tracing::warn!(error = %e, "writing status file");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
