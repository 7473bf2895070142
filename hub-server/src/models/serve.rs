//! What devices ask of the model task: the next chunk of a release (`ModelFetch` →
//! `ModelChunk`), and where they stand with it (`ModelReport`).

use pleura_shared::now_ms;
use pleura_shared::wire::{ModelChunk, ModelFetch, ModelReport, ModelState};

use super::control::{key, locked, ModelControl};
use super::rollout::{in_cohort, may_fetch};
use super::status::state_name;
use super::MAX_CHUNK_BYTES;
use crate::metrics::Metrics;

/// Longest reason kept from a device's report.
const MAX_REASON: usize = 500;

impl ModelControl {
    /// The answer to a device's `ModelFetch`.
    pub fn fetch(&self, clinic: &str, device: &str, f: ModelFetch) -> ModelChunk {
        let v = f.release_version;
        let refuse = |why: &str| {
            Metrics::inc(&self.metrics.model_fetches_refused, 1);
            tracing::info!(
                version = v,
                clinic,
                device,
                reason = why,
                "model fetch refused"
            );
            ModelChunk {
                release_version: v,
                sha256: f.sha256.clone(),
                offset: f.offset,
                total: 0,
                data: Vec::new(),
                refused: why.to_string(),
            }
        };
        let rel = match self.release(v) {
            Ok(r) => r,
            Err(_) => return refuse("unknown release"),
        };
        if f.sha256 != rel.sha256 {
            return refuse("sha256 is not the release's model");
        }
        {
            let inner = locked(&self.inner);
            let plan = inner.plan.releases.get(&v);
            let inside = plan.is_some_and(|p| in_cohort(&p.cohort, clinic, device, v));
            let done = inner
                .delivered
                .entries
                .get(&key(v, clinic, device))
                .copied()
                .unwrap_or_default();
            if let Err(why) = may_fetch(plan, inside, &done) {
                return refuse(why);
            }
        }
        let total = rel.manifest.model_size;
        if f.offset > total {
            return refuse("offset is past the end of the model");
        }
        let max = match f.max_bytes as usize {
            0 => MAX_CHUNK_BYTES,
            n => n.min(MAX_CHUNK_BYTES),
        };
        let data = match self.store.read_chunk(v, f.offset, max) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(version = v, error = %e, "reading a model chunk");
                return refuse("the hub cannot read the model file");
            }
        };
        Metrics::inc(&self.metrics.model_chunks_sent, 1);
        Metrics::inc(&self.metrics.model_bytes_sent, data.len() as u64);
        ModelChunk {
            release_version: v,
            sha256: rel.sha256.clone(),
            offset: f.offset,
            total,
            data,
            refused: String::new(),
        }
    }

    /// Records a device's `ModelReport` (written to `status.json` at the next pass);
    /// a refusal or a rollback also goes to the audit log.
    pub fn report(&self, clinic: &str, device: &str, r: ModelReport) {
        let state = ModelState::try_from(r.state).unwrap_or(ModelState::Unspecified);
        // Device text reaches the operator's terminal (`model status`) and the audit log:
        // no control characters (forged lines, escape sequences).
        let reason: String = r
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_REASON)
            .collect();
        let v = r.release_version;
        Metrics::inc(&self.metrics.model_reports, 1);
        tracing::info!(version = v, clinic, device, state = state_name(state), reason = %reason, held = r.held, active = r.active_version, "model report");
        if matches!(state, ModelState::Refused | ModelState::RolledBack) {
            let outcome = format!("{}: {reason}", state_name(state));
            let who = format!("{clinic}/{device}");
            self.audit(
                &who,
                "device",
                "model.report",
                &format!("release {v}"),
                &outcome,
            );
        }
        let mut inner = locked(&self.inner);
        let dev = inner
            .status
            .releases
            .entry(v)
            .or_default()
            .devices
            .entry(format!("{clinic}/{device}"))
            .or_default();
        dev.state = state_name(state).to_string();
        dev.reason = reason;
        dev.held = r.held;
        dev.active_version = r.active_version;
        dev.reported_at_ms = Some(now_ms());
        inner.status_dirty = true;
    }
}

impl crate::uplink::ModelSink for ModelControl {
    fn fetch(&self, clinic: &str, device: &str, fetch: ModelFetch) -> ModelChunk {
        ModelControl::fetch(self, clinic, device, fetch)
    }
    fn report(&self, clinic: &str, device: &str, report: ModelReport) {
        ModelControl::report(self, clinic, device, report)
    }
}
