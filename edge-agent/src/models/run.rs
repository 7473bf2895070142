//! Starting the model lifecycle inside `edge-agent run`: before the pool (`boot`: which
//! release runs), and once the hub channel is up (`spawn`: the worker).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pleura_inference::ModelFile;
use pleura_shared::wire::ModelState;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::worker::{Link, ModelSettings};
use super::{switch, Layout, LivePool, ModelEvent, ModelStore, ModelWorker};
use crate::config::EdgeConfig;
use crate::status::Shared;

pub struct Started {
    pub live: Arc<LivePool>,
    /// The running model (its metadata labels results and the clinic page).
    pub file: ModelFile,
    pub store: Arc<ModelStore>,
    pub events: mpsc::Sender<ModelEvent>,
    rx: mpsc::Receiver<ModelEvent>,
    settings: ModelSettings,
    status: Arc<Shared>,
    rolled_back: Option<(u64, String)>,
}

/// Initialises the backend, resolves and starts the active release (falling back when
/// it does not verify or load) and fills the `models` status section.
pub fn boot(cfg: &EdgeConfig, status: Arc<Shared>) -> anyhow::Result<Started> {
    // Initialises the backend and checks the built-in model, the last resort.
    cfg.inference.engine().load()?;
    let layout = Layout::new(&cfg.data_dir, &cfg.inference.model);
    let root_key = match &cfg.models.root_key {
        Some(p) => Some(
            pleura_shared::release::load_root_public_key(p)
                .with_context(|| format!("models.root_key {}", p.display()))?,
        ),
        None => None,
    };
    let booted = switch::boot(&layout, cfg.inference.workers.max(1))
        .context("starting the active model release")?;
    let label = |slot| {
        layout
            .check_slot(slot)
            .ok()
            .map(|m| format!("{} {}", m.name, m.version))
    };
    let previous = booted.current.previous.and_then(label);
    let shadow = booted.current.shadow.and_then(label);
    let active = format!("{} {}", booted.model.name, booted.model.version);
    if let Some(a) = &booted.alarm {
        tracing::error!(alarm = %a, "model fallback at start");
    }
    status.update(|s| {
        s.models.active = active;
        s.models.active_version = booted.model.version;
        s.models.active_since_ms = pleura_shared::now_ms();
        s.models.previous = previous;
        s.models.shadow = shadow;
        s.models.root_key = root_key.is_some();
        s.models.alarm = booted.alarm.clone();
        s.alarms.retain(|a| !a.starts_with("model "));
        s.alarms.extend(booted.alarm.clone());
    });
    let live = Arc::new(LivePool::new(Arc::new(booted.pool), booted.model.version));
    let store = Arc::new(ModelStore::new(layout, root_key));
    // A candidate that was shadowing goes on shadowing; one that no longer starts is
    // dropped (its shadow run is over) without holding the agent back.
    if let Some(slot) = booted.current.shadow {
        match super::shadow::start(&store, slot) {
            Ok((running, _)) => live.set_shadow(Some(running)),
            Err(e) => {
                tracing::error!(slot = slot.name(), error = %e, "the shadow model does not start; dropped");
                let version = store
                    .layout
                    .check_slot(slot)
                    .map(|m| m.version)
                    .unwrap_or(0);
                if let Err(e) = super::shadow::drop_faulty(&store, version) {
                    tracing::error!(error = %e, "recording the dropped shadow model");
                }
                status.update(|s| s.models.shadow = None);
            }
        }
    }
    let (tx, rx) = mpsc::channel(64);
    let settings = ModelSettings {
        max_bytes_per_s: cfg.models.max_bytes_per_s,
        fetch_timeout: Duration::from_secs(cfg.models.fetch_timeout_s),
        workers: cfg.inference.workers.max(1),
        ..ModelSettings::default()
    };
    Ok(Started {
        live,
        file: booted.file,
        store,
        events: tx,
        rx,
        settings,
        status,
        rolled_back: booted.rolled_back,
    })
}

impl Started {
    /// Spawns the worker on the hub channel `link`; `clinical_busy` is true while
    /// results or flagged media wait to be sent.
    pub fn spawn(
        self,
        link: Arc<dyn Link>,
        clinical_busy: Arc<dyn Fn() -> bool + Send + Sync>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let reports = super::reports::load(&self.store.layout.reports_file());
        let mut worker = ModelWorker {
            store: self.store,
            live: self.live,
            link,
            clinical_busy,
            status: self.status,
            settings: self.settings,
            reports,
        };
        if let Some((v, reason)) = &self.rolled_back {
            worker.report(*v, ModelState::RolledBack, reason, 0);
        }
        tracker.spawn(worker.run(self.rx, shutdown));
    }
}
