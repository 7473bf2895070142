//! The running hub's model task: applies `rollout.json` (polled every [`POLL_EVERY`]),
//! queues each offer and command once per device and release (remembered in
//! `delivered.json`; the downlink queue itself is durable) and writes `status.json`. What
//! devices ask of it (fetches, reports) is in `serve.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pleura_shared::now_ms;
use pleura_shared::wire::{downlink, ModelAction, ModelCommand, ModelOffer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ports::{DeviceList, ModelOutbox};
use super::rollout::{in_cohort, next_action, Action, Delivered, RolloutFile};
use super::status::{DeviceStatus, StatusFile};
use super::store::{ModelStore, StoredRelease};
use super::{read_json, write_json, ModelsError};
use crate::audit::AuditLog;
use crate::metrics::Metrics;
use crate::store::HubStore;

/// How often `rollout.json` is read (and at start).
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// `delivered.json`: `<version>/<clinic>/<device>` → what was queued.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct DeliveredFile {
    #[serde(default)]
    pub(super) entries: BTreeMap<String, Delivered>,
    /// `<clinic>/<device>` → the newest root metadata version queued to it on its own
    /// (a root-only offer), so a rotation or revocation reaches every device at once.
    #[serde(default)]
    pub(super) roots: BTreeMap<String, u64>,
}

pub(super) fn key(version: u64, clinic: &str, device: &str) -> String {
    format!("{version}/{clinic}/{device}")
}

/// The message id of an offer or command: derived, so queueing it again after a crash
/// is a no-op while it is still queued, and a repeat the device already holds is ignored.
fn message_id(version: u64, clinic: &str, device: &str, action: Action) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"pleura.model.downlink\0");
    h.update(version.to_be_bytes());
    h.update(format!("{clinic}/{device}\0{}", action.as_str()).as_bytes());
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// The message id of a root-only offer of root metadata `version` (derived, like
/// [`message_id`]).
fn root_message_id(version: u64, clinic: &str, device: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"pleura.model.root\0");
    h.update(version.to_be_bytes());
    h.update(format!("{clinic}/{device}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize()[..16]);
    id
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) plan: RolloutFile,
    pub(super) delivered: DeliveredFile,
    pub(super) status: StatusFile,
    pub(super) status_dirty: bool,
}

pub struct ModelControl {
    pub(super) store: ModelStore,
    outbox: Arc<dyn ModelOutbox>,
    devices: Arc<dyn DeviceList>,
    audit: Option<Arc<AuditLog>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) inner: Mutex<Inner>,
    releases: Mutex<HashMap<u64, Arc<StoredRelease>>>,
    /// The case store the shadow comparison reads, and when it last ran.
    shadow_source: Option<Arc<dyn HubStore>>,
    shadow_at: Mutex<Option<Instant>>,
}

pub(super) fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ModelControl {
    /// Picks up what an earlier run queued and recorded; a damaged file is logged and
    /// started afresh (offers carry derived ids, so one queued again is harmless).
    pub fn open(
        store: ModelStore,
        outbox: Arc<dyn ModelOutbox>,
        devices: Arc<dyn DeviceList>,
        audit: Option<Arc<AuditLog>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let delivered = read_json(&store.delivered_path()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "model deliveries unreadable; starting afresh");
            None
        });
        let status: StatusFile = read_json(&store.status_path())
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "model status unreadable; starting afresh");
                None
            })
            .unwrap_or_default();
        Self {
            store,
            outbox,
            devices,
            audit,
            metrics,
            inner: Mutex::new(Inner {
                // The plan last applied, so a restart audits only what changed since.
                plan: RolloutFile {
                    releases: status
                        .releases
                        .iter()
                        .filter_map(|(v, r)| Some((*v, r.plan.clone()?)))
                        .collect(),
                },
                delivered: delivered.unwrap_or_default(),
                status,
                status_dirty: false,
            }),
            releases: Mutex::new(HashMap::new()),
            shadow_source: None,
            shadow_at: Mutex::new(None),
        }
    }

    /// Refreshes `shadow.json` from `store` every [`super::shadow::REFRESH_EVERY`].
    pub fn with_shadow_source(mut self, store: Arc<dyn HubStore>) -> Self {
        self.shadow_source = Some(store);
        self
    }

    /// Recomputes the shadow comparison when it is due (at start, then every ~30 s).
    fn refresh_shadow(&self) {
        let Some(store) = &self.shadow_source else {
            return;
        };
        {
            let mut at = locked(&self.shadow_at);
            if at.is_some_and(|t| t.elapsed() < super::shadow::REFRESH_EVERY) {
                return;
            }
            *at = Some(Instant::now());
        }
        let offered: std::collections::BTreeSet<String> = locked(&self.inner)
            .delivered
            .entries
            .iter()
            .filter(|(_, d)| d.offered == Some(true))
            .map(|(k, _)| k.clone())
            .collect();
        let offered =
            |v: u64, clinic: &str, device: &str| offered.contains(&key(v, clinic, device));
        match super::shadow::refresh(&**store, &self.store.shadow_path(), &offered, now_ms()) {
            Ok(r) => tracing::debug!(candidates = r.candidates.len(), "shadow comparison written"),
            Err(e) => tracing::warn!(error = %e, "shadow comparison not written"),
        }
    }

    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    pub(super) fn release(&self, version: u64) -> Result<Arc<StoredRelease>, ModelsError> {
        if let Some(r) = locked(&self.releases).get(&version) {
            return Ok(r.clone());
        }
        let r = Arc::new(self.store.release(version)?);
        locked(&self.releases).insert(version, r.clone());
        Ok(r)
    }

    pub(super) fn audit(&self, user: &str, role: &str, action: &str, target: &str, outcome: &str) {
        if let Some(a) = &self.audit {
            if let Err(e) = a.record(user, role, action, target, outcome) {
                tracing::error!(error = %e, action, target, "model audit entry not written");
            }
        }
    }

    /// One pass: reads the plan, queues what is due, writes the state files. Returns how
    /// many messages it queued. Blocking (files, sled flushes).
    pub fn tick(&self) -> Result<usize, ModelsError> {
        let path = self.store.rollout_path();
        match read_json::<RolloutFile>(&path) {
            Ok(plan) => self.apply_plan(plan.unwrap_or_default()),
            Err(e) => tracing::warn!(error = %e, "rollout plan unreadable; keeping the last one"),
        }
        let queued = self.queue_due() + self.queue_roots();
        self.flush()?;
        self.refresh_shadow();
        Ok(queued)
    }

    fn apply_plan(&self, plan: RolloutFile) {
        let mut inner = locked(&self.inner);
        if inner.plan == plan {
            return;
        }
        for (v, p) in &plan.releases {
            if inner.plan.releases.get(v) != Some(p) {
                tracing::info!(version = v, plan = %p, "model rollout plan applied");
                self.audit(
                    "hub",
                    "system",
                    "model.plan",
                    &format!("release {v}"),
                    &p.to_string(),
                );
            }
            let rs = inner.status.releases.entry(*v).or_default();
            rs.plan = Some(p.clone());
            if let Ok(r) = self.release(*v) {
                rs.name = r.manifest.name.clone();
                rs.size = r.manifest.model_size;
            }
        }
        inner.plan = plan;
        inner.status_dirty = true;
    }

    fn queue_due(&self) -> usize {
        let devices = match self.devices.enrolled() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "listing enrolled devices");
                return 0;
            }
        };
        // Decide under the lock, queue without it (fetches and reports go on meanwhile).
        let due: Vec<(u64, String, String, Action)> = {
            let inner = locked(&self.inner);
            let mut due = Vec::new();
            for (v, plan) in &inner.plan.releases {
                for (c, d) in &devices {
                    let done = inner.delivered.entries.get(&key(*v, c, d));
                    let inside = in_cohort(&plan.cohort, c, d, *v);
                    if let Some(a) = next_action(plan, inside, &done.copied().unwrap_or_default()) {
                        due.push((*v, c.clone(), d.clone(), a));
                    }
                }
            }
            due
        };
        let mut roots: Option<Vec<Vec<u8>>> = None;
        let mut queued = 0;
        for (v, clinic, device, action) in due {
            let kind = match action {
                Action::Offer { shadow } => {
                    let rel = match self.release(v) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(version = v, error = %e, "rolled-out release cannot be offered");
                            continue;
                        }
                    };
                    if roots.is_none() {
                        match self.store.root_chain() {
                            Ok(chain) => roots = Some(chain.into_iter().map(|(_, b)| b).collect()),
                            Err(e) => {
                                tracing::error!(error = %e, "reading the model root chain");
                                return queued;
                            }
                        }
                    }
                    downlink::Kind::ModelOffer(ModelOffer {
                        model_version: format!("{} {}", rel.manifest.name, v),
                        sha256: rel.sha256.clone(),
                        size: rel.manifest.model_size,
                        release: rel.envelope.clone(),
                        release_version: v,
                        shadow,
                        roots: roots.clone().unwrap_or_default(),
                    })
                }
                Action::Promote | Action::Abort => downlink::Kind::ModelCommand(ModelCommand {
                    release_version: v,
                    action: if action == Action::Promote {
                        ModelAction::Promote
                    } else {
                        ModelAction::Abort
                    } as i32,
                }),
            };
            let id = message_id(v, &clinic, &device, action);
            if let Err(e) = self.outbox.send_with_id(&clinic, &device, id, kind) {
                tracing::warn!(version = v, clinic, device, error = %e, "model message not queued; retrying at the next pass");
                break;
            }
            Metrics::inc(&self.metrics.model_messages_queued, 1);
            tracing::info!(
                version = v,
                clinic,
                device,
                action = action.as_str(),
                "model message queued"
            );
            queued += 1;
            self.note_sent(v, &clinic, &device, action);
        }
        queued
    }

    /// Queues the root chain, with no release, to every enrolled device that has not had
    /// its newest version queued: a signing key rotated or revoked (root metadata above
    /// version 1) reaches the fleet now, not with the next release offered to each device.
    fn queue_roots(&self) -> usize {
        let chain = match self.store.root_chain() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reading the model root chain");
                return 0;
            }
        };
        let Some(newest) = chain.last().map(|(v, _)| *v).filter(|v| *v > 1) else {
            return 0;
        };
        let devices = match self.devices.enrolled() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "listing enrolled devices");
                return 0;
            }
        };
        let roots: Vec<Vec<u8>> = chain.into_iter().map(|(_, b)| b).collect();
        let mut queued = 0;
        for (clinic, device) in devices {
            let who = format!("{clinic}/{device}");
            if locked(&self.inner).delivered.roots.get(&who) >= Some(&newest) {
                continue;
            }
            let offer = ModelOffer {
                roots: roots.clone(),
                ..Default::default()
            };
            let id = root_message_id(newest, &clinic, &device);
            if let Err(e) =
                self.outbox
                    .send_with_id(&clinic, &device, id, downlink::Kind::ModelOffer(offer))
            {
                tracing::warn!(clinic, device, error = %e, "root metadata not queued; retrying at the next pass");
                break;
            }
            Metrics::inc(&self.metrics.model_messages_queued, 1);
            tracing::info!(
                clinic,
                device,
                root_version = newest,
                "model root metadata queued"
            );
            queued += 1;
            let mut inner = locked(&self.inner);
            inner.delivered.roots.insert(who, newest);
            if let Err(e) = write_json(&self.store.delivered_path(), &inner.delivered, 0o600) {
                tracing::error!(error = %e, "recording a model delivery");
            }
        }
        queued
    }

    fn note_sent(&self, v: u64, clinic: &str, device: &str, action: Action) {
        let mut inner = locked(&self.inner);
        let done = inner
            .delivered
            .entries
            .entry(key(v, clinic, device))
            .or_default();
        match action {
            Action::Offer { shadow } => done.offered = Some(shadow),
            Action::Promote => done.promote = true,
            Action::Abort => done.abort = true,
        }
        let dev = inner
            .status
            .releases
            .entry(v)
            .or_default()
            .devices
            .entry(format!("{clinic}/{device}"))
            .or_insert_with(|| DeviceStatus {
                state: "offered".into(),
                ..Default::default()
            });
        match action {
            Action::Offer { shadow } => {
                dev.offered_at_ms = Some(now_ms());
                dev.offered_shadow = shadow;
            }
            Action::Promote => dev.promote_sent = true,
            Action::Abort => dev.abort_sent = true,
        }
        inner.status_dirty = true;
        // Remembered before the next message goes: a crash now re-queues nothing but
        // possibly this one message, under the same id.
        if let Err(e) = write_json(&self.store.delivered_path(), &inner.delivered, 0o600) {
            tracing::error!(error = %e, "recording a model delivery");
        }
    }

    /// Writes `status.json` if anything changed since the last write.
    pub fn flush(&self) -> Result<(), ModelsError> {
        let mut inner = locked(&self.inner);
        if !inner.status_dirty {
            return Ok(());
        }
        inner.status.updated_at_ms = now_ms();
        write_json(&self.store.status_path(), &inner.status, 0o600)?;
        inner.status_dirty = false;
        Ok(())
    }

    /// Applies the plan at start and every [`POLL_EVERY`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let span = tracing::info_span!("model_control");
        async move {
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stop = tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = tick.tick() => false,
                };
                let me = self.clone();
                let pass = tokio::task::spawn_blocking(move || {
                    if stop {
                        me.flush().map(|()| 0)
                    } else {
                        me.tick()
                    }
                });
                if let Ok(Err(e)) = pass.await {
                    tracing::warn!(error = %e, "model control pass");
                }
                if stop {
                    return;
                }
            }
        }
        .instrument(span)
        .await
    }
}
