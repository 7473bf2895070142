//! The model task: reports to the hub, the download (only while no result waits to sync
//! and no flagged media is pending), the install, promote/abort, and rollback when the
//! running model trips the guard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use pleura_shared::wire::{uplink, ModelChunk, ModelReport, ModelState};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::download::{pace, ChunkAction, Download, MAX_CHUNK};
use super::install::{install, InstallError};
use super::offer::{ModelStore, OfferOutcome, Pending};
use super::slots::Slot;
use super::{guard, switch, LivePool, ModelsError};
use crate::status::Shared;

/// The device -> hub channel as the worker needs it (`downlink::Channel`).
pub trait Link: Send + Sync {
    fn send(&self, kind: uplink::Kind) -> Result<(), String>;
    fn is_up(&self) -> bool;
}

/// What the downlink receiver hands the worker.
#[derive(Debug)]
pub enum ModelEvent {
    Offer(OfferOutcome),
    Chunk(ModelChunk),
    /// A PROMOTE or ABORT was stored in `command.json`.
    Command,
}

#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub max_bytes_per_s: u64,
    pub chunk: u32,
    pub fetch_timeout: Duration,
    pub max_backoff: Duration,
    pub poll: Duration,
    pub workers: usize,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            max_bytes_per_s: 32 * 1024,
            chunk: MAX_CHUNK,
            fetch_timeout: Duration::from_secs(15),
            max_backoff: Duration::from_secs(120),
            poll: Duration::from_secs(2),
            workers: 1,
        }
    }
}

/// A DOWNLOADING report goes out at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

pub struct ModelWorker {
    pub store: Arc<ModelStore>,
    pub live: Arc<LivePool>,
    pub link: Arc<dyn Link>,
    /// True while clinical data (results, flagged media) waits for the link.
    pub clinical_busy: Arc<dyn Fn() -> bool + Send + Sync>,
    pub status: Arc<Shared>,
    pub settings: ModelSettings,
    pub reports: VecDeque<ModelReport>,
}

struct Active {
    pending: Pending,
    dl: Download,
    /// Waiting for the answer to a fetch until then.
    deadline: Option<Instant>,
    /// When the last fetch went out: the bandwidth cap paces from it, so the time the
    /// chunk spent on the link counts toward the pause.
    sent_at: Instant,
    not_before: Instant,
    last_report: Instant,
}

impl ModelWorker {
    pub fn report(&mut self, version: u64, state: ModelState, reason: &str, held: u64) {
        if state == ModelState::Refused {
            self.status
                .update(|s| s.models.last_refusal = Some(format!("{version}: {reason}")));
        }
        self.reports.push_back(ModelReport {
            release_version: version,
            state: state as i32,
            reason: reason.to_string(),
            held,
            active_version: self.live.version(),
        });
        super::reports::save(&self.store.layout.reports_file(), &mut self.reports);
    }

    fn flush(&mut self) {
        let mut sent = false;
        while let Some(r) = self.reports.front() {
            if !self.link.is_up() {
                break;
            }
            match self.link.send(uplink::Kind::ModelReport(r.clone())) {
                Ok(_) => {
                    self.reports.pop_front();
                    sent = true;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "model report not sent now");
                    break;
                }
            }
        }
        if sent {
            super::reports::save(&self.store.layout.reports_file(), &mut self.reports);
        }
    }

    fn start_download(&self, p: Pending) -> Option<Active> {
        let sha = hex::decode(&p.sha256).ok()?;
        let now = Instant::now();
        let dl = Download::new(p.version, sha, p.size, p.held, self.settings.chunk);
        self.status
            .update(|s| s.models.downloading = Some((p.version, p.held, p.size)));
        Some(Active {
            pending: p,
            dl,
            deadline: None,
            sent_at: now,
            not_before: now,
            last_report: now - PROGRESS_EVERY,
        })
    }

    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<ModelEvent>,
        shutdown: CancellationToken,
    ) {
        let store = self.store.clone();
        let mut active = match tokio::task::spawn_blocking(move || store.pending()).await {
            Ok(Ok(Some(p))) => self.start_download(p),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the pending model download");
                None
            }
            _ => None,
        };
        if self.apply_command().await {
            active = None;
        }
        loop {
            self.flush();
            let now = Instant::now();
            if let Some(a) = active.as_mut() {
                if a.dl.complete() {
                    let p = a.pending.clone();
                    active = None;
                    self.finish(p).await;
                    continue;
                }
                if a.deadline.is_none() && now >= a.not_before {
                    if self.link.is_up() && !(self.clinical_busy)() {
                        if let Some(f) = a.dl.next_fetch() {
                            match self.link.send(uplink::Kind::ModelFetch(f)) {
                                Ok(_) => {
                                    a.sent_at = now;
                                    a.deadline = Some(now + self.settings.fetch_timeout);
                                }
                                Err(_) => a.not_before = now + self.settings.poll,
                            }
                        }
                    } else {
                        a.not_before = now + self.settings.poll;
                    }
                }
            }
            let wake = match active.as_ref() {
                Some(a) => a.deadline.unwrap_or(a.not_before),
                None => now + self.settings.poll,
            };
            let live = self.live.clone();
            // Biased: a fault (of the active model or of the candidate) is handled before
            // any command, so a candidate that just faulted is never promoted.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = live.tripped.notified() => self.roll_back().await,
                _ = live.shadow_tripped.notified() => self.drop_shadow().await,
                ev = events.recv() => match ev {
                    None => return,
                    Some(ModelEvent::Offer(OfferOutcome::Refused { version, reason })) => {
                        self.report(version, ModelState::Refused, &reason, 0);
                    }
                    Some(ModelEvent::Offer(OfferOutcome::Accepted(p))) => {
                        self.report(p.version, ModelState::Offered, "", 0);
                        active = self.start_download(p);
                    }
                    Some(ModelEvent::Offer(
                        OfferOutcome::Duplicate { .. } | OfferOutcome::RootOnly { .. },
                    )) => {}
                    Some(ModelEvent::Command) => {
                        if self.apply_command().await {
                            active = None;
                        }
                    }
                    Some(ModelEvent::Chunk(c)) => {
                        if let Some(a) = active.as_mut() {
                            if let Err(e) = self.on_chunk(a, c).await {
                                tracing::error!(error = %e, "storing a model chunk");
                                a.deadline = None;
                                a.not_before = Instant::now() + self.settings.max_backoff;
                            }
                            if a.pending.held == u64::MAX {
                                active = None;
                            }
                        }
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    if let Some(a) = active.as_mut() {
                        if a.deadline.is_some_and(|d| d <= Instant::now()) {
                            a.deadline = None;
                            let pause = a.dl.on_timeout(self.settings.poll, self.settings.max_backoff);
                            tracing::debug!(version = a.dl.version, pause_ms = pause.as_millis() as u64, "model fetch unanswered");
                            a.not_before = Instant::now() + pause;
                        }
                    }
                }
            }
        }
    }

    /// Writes an accepted chunk, fsyncs it and persists `held` before the next fetch.
    /// A refused download is marked by `held = u64::MAX` for the caller to drop.
    async fn on_chunk(&mut self, a: &mut Active, c: ModelChunk) -> Result<(), ModelsError> {
        match a.dl.on_chunk(&c) {
            ChunkAction::Ignore => Ok(()),
            ChunkAction::Refused(why) => {
                tracing::warn!(version = a.dl.version, reason = %why, "hub refuses to serve the model");
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || store.drop_pending(None)).await;
                self.report(
                    a.dl.version,
                    ModelState::Refused,
                    &format!("hub_refused: {why}"),
                    a.dl.held,
                );
                self.status.update(|s| s.models.downloading = None);
                a.pending.held = u64::MAX;
                Ok(())
            }
            ChunkAction::Append { offset } => {
                let n = c.data.len() as u64;
                let store = self.store.clone();
                let mut p = a.pending.clone();
                p.held = offset + n;
                let saved = p.clone();
                tokio::task::spawn_blocking(move || {
                    append_at(&store.part_file(p.version), offset, &c.data)?;
                    store.save_pending(&p)
                })
                .await
                .map_err(|e| ModelsError::Engine(e.to_string()))??;
                a.pending = saved;
                a.dl.committed(n);
                a.deadline = None;
                a.not_before = a.sent_at + pace(n, self.settings.max_bytes_per_s);
                let (v, held, size) = (a.dl.version, a.dl.held, a.dl.size);
                self.status
                    .update(|s| s.models.downloading = Some((v, held, size)));
                if a.last_report.elapsed() >= PROGRESS_EVERY {
                    a.last_report = Instant::now();
                    self.report(v, ModelState::Downloading, "", held);
                }
                Ok(())
            }
        }
    }

    /// The whole file is held: install, self-test, then switch (or shadow).
    async fn finish(&mut self, p: Pending) {
        self.status.update(|s| s.models.downloading = None);
        let store = self.store.clone();
        let pend = p.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<_, InstallError> {
            // Killed after the switch (or the shadow's record) but before the download
            // was dropped: it is done; installing again would overwrite the previous slot.
            let done = {
                let _g = store.guard();
                let cur = store.layout.read_current().unwrap_or_default();
                let holds = |s: Option<Slot>| {
                    s.and_then(|s| store.layout.check_slot(s).ok())
                        .map(|m| m.version)
                };
                if pend.shadow {
                    holds(cur.shadow) == Some(pend.version)
                } else {
                    holds(Some(cur.active)) >= Some(pend.version)
                }
            };
            if done {
                store.drop_download(pend.version)?;
                return Ok(None);
            }
            let trust = store
                .trust()
                .map_err(|e| InstallError::Refused(super::refusal(&e)))?;
            let slot = {
                let _g = store.guard();
                let mut cur = store.layout.read_current().unwrap_or_default();
                let slot = Slot::spare(cur.active);
                // The slot is about to be overwritten: nothing may name it meanwhile (a
                // rollback to a half-written or untested model, a stale shadow).
                if cur.previous == Some(slot) || cur.shadow == Some(slot) {
                    cur.previous = cur.previous.filter(|p| *p != slot);
                    cur.shadow = cur.shadow.filter(|p| *p != slot);
                    store.layout.write_current(&cur)?;
                }
                slot
            };
            let m = install(
                &store.layout,
                &trust,
                &pend.release,
                &store.part_file(pend.version),
                slot,
            )?;
            // The download is dropped only once the release is recorded as the shadow or
            // has been switched to (`activate`): killed before, the next start installs it
            // again from the complete download rather than forgetting it in its slot.
            if pend.shadow {
                {
                    let _g = store.guard();
                    let mut c = store.layout.read_current().unwrap_or_default();
                    c.shadow = Some(slot);
                    store.layout.write_current(&c)?;
                }
                store.drop_download(pend.version)?;
            }
            Ok(Some(m))
        })
        .await;
        let model = match res {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                tracing::info!(
                    version = p.version,
                    "model release already in place; download dropped"
                );
                return;
            }
            Ok(Err(InstallError::Refused(reason))) => {
                tracing::warn!(version = p.version, %reason, "model release refused at install");
                let store = self.store.clone();
                let v = p.version;
                let _ = tokio::task::spawn_blocking(move || store.drop_download(v)).await;
                self.report(p.version, ModelState::Refused, &reason, p.size);
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(version = p.version, error = %e, "installing the model release failed; retried at the next start");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "install task failed");
                return;
            }
        };
        tracing::info!(
            version = model.version,
            slot = model.slot.name(),
            "model release verified"
        );
        self.report(p.version, ModelState::Verified, "", p.size);
        if p.shadow {
            self.start_shadow(model.slot, p.version, p.size).await;
            // A promote that came while it downloaded.
            self.apply_command().await;
        } else {
            self.activate(model.slot, p.version).await;
            let (store, v) = (self.store.clone(), p.version);
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.drop_download(v)).await {
                tracing::error!(version = v, error = %e, "dropping the installed download");
            }
        }
    }

    async fn activate(&mut self, slot: Slot, version: u64) {
        let (store, workers) = (self.store.clone(), self.settings.workers);
        let res =
            tokio::task::spawn_blocking(move || switch::activate(&store, slot, workers)).await;
        match res {
            Ok(Ok((model, pool))) => {
                let previous = self.status.snapshot().models.active;
                self.live.swap(pool, model.version);
                let label = format!("{} {}", model.name, model.version);
                tracing::info!(
                    version = model.version,
                    slot = slot.name(),
                    "model release active"
                );
                self.status.update(|s| {
                    s.model_version = label.clone();
                    s.models.previous = Some(previous);
                    s.models.active = label;
                    s.models.active_version = model.version;
                    s.models.active_since_ms = pleura_shared::now_ms();
                    if s.models
                        .shadow
                        .as_deref()
                        .is_some_and(|x| x.ends_with(&format!(" {version}")))
                    {
                        s.models.shadow = None;
                    }
                });
                self.report(version, ModelState::Active, "", 0);
            }
            Ok(Err(e)) => {
                tracing::error!(version, error = %e, "switching to the model release failed");
                self.report(
                    version,
                    ModelState::Refused,
                    &format!("activate_failed: {e}"),
                    0,
                );
            }
            Err(e) => tracing::error!(error = %e, "switch task failed"),
        }
    }

    /// Carries out the stored PROMOTEs and ABORTs. True when the pending download was
    /// dropped.
    async fn apply_command(&mut self) -> bool {
        let store = self.store.clone();
        let decided = match tokio::task::spawn_blocking(move || super::command::take(&store)).await
        {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the hub's model commands");
                return false;
            }
            Err(_) => return false,
        };
        let mut dropped = false;
        for d in decided {
            match d {
                super::command::Decided::Promote(slot, v) => {
                    self.activate(slot, v).await;
                    let store = self.store.clone();
                    if let Ok(Err(e)) =
                        tokio::task::spawn_blocking(move || super::command::promoted(&store, v))
                            .await
                    {
                        tracing::error!(version = v, error = %e, "clearing a carried-out promote");
                    }
                }
                super::command::Decided::Aborted { version, download } => {
                    if self.live.shadow().is_some_and(|s| s.version == version) {
                        self.live.set_shadow(None);
                        self.status.update(|s| s.models.shadow = None);
                    }
                    if download {
                        self.status.update(|s| s.models.downloading = None);
                        dropped = true;
                    }
                    self.report(
                        version,
                        ModelState::Refused,
                        "aborted: the hub aborted this release",
                        0,
                    );
                }
            }
        }
        dropped
    }

    /// Starts the candidate installed in `slot` beside the active model.
    async fn start_shadow(&mut self, slot: Slot, version: u64, size: u64) {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || super::shadow::start(&store, slot)).await {
            Ok(Ok((running, label))) => {
                self.live.set_shadow(Some(running));
                tracing::info!(version, slot = slot.name(), "model release shadowing");
                self.status.update(|s| s.models.shadow = Some(label));
                self.report(version, ModelState::Shadowing, "", size);
            }
            Ok(Err(e)) => {
                let reason = format!("shadow_failed: {e}");
                tracing::error!(version, %reason, "the shadow model does not start");
                self.end_shadow(version, ModelState::RolledBack, &reason)
                    .await;
            }
            Err(e) => tracing::error!(error = %e, "shadow start task failed"),
        }
    }

    /// The candidate faulted in shadow: it stops, and is never taken again.
    async fn drop_shadow(&mut self) {
        let Some((version, why)) = self.live.take_shadow_fault() else {
            return;
        };
        if self.live.shadow().is_none_or(|s| s.version != version) {
            return;
        }
        self.live.set_shadow(None);
        let reason = format!("shadow_fault: {why}");
        tracing::error!(version, %reason, "shadow model dropped");
        self.end_shadow(version, ModelState::RolledBack, &reason)
            .await;
    }

    async fn end_shadow(&mut self, version: u64, state: ModelState, reason: &str) {
        let store = self.store.clone();
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || super::shadow::drop_faulty(&store, version)).await
        {
            tracing::error!(version, error = %e, "recording the dropped shadow model");
        }
        let alarm = format!("model shadow {version} stopped: {reason}");
        self.status.update(|s| {
            s.models.shadow = None;
            s.alarms.retain(|a| !a.starts_with("model shadow "));
            s.alarms.push(alarm);
        });
        self.report(version, state, reason, 0);
    }

    async fn roll_back(&mut self) {
        if !self.live.take_trip() {
            tracing::debug!("a guard trip of a release no longer active; nothing to roll back");
            return;
        }
        let reason = self
            .live
            .last_fault()
            .unwrap_or_else(|| "inference faults".into());
        let (store, workers) = (self.store.clone(), self.settings.workers);
        match tokio::task::spawn_blocking(move || switch::rollback(&store, workers)).await {
            Ok(Ok(Some((model, pool, bad)))) => {
                self.live.swap(pool, model.version);
                let alarm = guard::alarm(&bad.name, bad.version, &reason);
                tracing::error!(version = bad.version, now = model.version, %reason, "model rolled back");
                let label = format!("{} {}", model.name, model.version);
                self.status.update(|s| {
                    s.model_version = label.clone();
                    s.models.active = label;
                    s.models.active_version = model.version;
                    s.models.active_since_ms = pleura_shared::now_ms();
                    s.models.previous = None;
                    s.models.alarm = Some(alarm.clone());
                    s.alarms.retain(|a| !a.starts_with("model "));
                    s.alarms.push(alarm);
                });
                self.report(bad.version, ModelState::RolledBack, &reason, 0);
            }
            Ok(Ok(None)) => {
                tracing::error!(%reason, "the built-in model faults; nothing to roll back to")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "rolling back failed"),
            Err(e) => tracing::error!(error = %e, "rollback task failed"),
        }
    }
}

fn append_at(path: &std::path::Path, offset: u64, data: &[u8]) -> Result<(), ModelsError> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| ModelsError::io(path, e))?;
    f.set_len(offset).map_err(|e| ModelsError::io(path, e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| ModelsError::io(path, e))?;
    f.write_all(data).map_err(|e| ModelsError::io(path, e))?;
    f.sync_data().map_err(|e| ModelsError::io(path, e))
}
