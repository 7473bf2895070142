//! Changing which model runs: at start (`boot`: the slot `current.json` names, falling
//! back when it does not verify or load), after an install (`activate`), and when the
//! running release misbehaves (`rollback`). Each writes `current.json` atomically before
//! the new pool takes the next analysis.

use std::sync::Arc;

use pleura_inference::{InferencePool, ModelFile};
use pleura_shared::release::SignedRelease;

use super::guard;
use super::offer::ModelStore;
use super::slots::{Current, Layout, Slot, SlotModel};
use super::ModelsError;

/// What runs after start, and a rollback to report if the agent had to fall back.
pub struct Booted {
    pub model: SlotModel,
    pub file: ModelFile,
    pub pool: InferencePool,
    pub current: Current,
    pub alarm: Option<String>,
    /// (version, reason) of a release rolled back because it would not load.
    pub rolled_back: Option<(u64, String)>,
}

/// Loads a model and starts its pool (the backend is initialised already).
pub fn start_pool(
    path: &std::path::Path,
    workers: usize,
) -> Result<(ModelFile, InferencePool), ModelsError> {
    let file = ModelFile::load(path).map_err(|e| ModelsError::Engine(e.to_string()))?;
    let pool = pleura_inference::engine::start_pool(&file, workers).map_err(|e| {
        ModelsError::Engine(format!(
            "{e}: {:?}",
            std::error::Error::source(&e).map(|s| s.to_string())
        ))
    })?;
    Ok((file, pool))
}

/// Resolves `current.json` and starts the pool; a release that fails to load is rolled
/// back (recorded, alarmed) and the next candidate tried, down to the built-in model,
/// whose failure is the caller's (the agent cannot run without a model).
pub fn boot(layout: &Layout, workers: usize) -> Result<Booted, ModelsError> {
    let resolved = layout.resolve()?;
    let mut current = resolved.current;
    let mut model = resolved.model;
    let mut alarm = resolved.alarm;
    let mut rolled = None;
    loop {
        match start_pool(&model.model_path, workers) {
            Ok((file, pool)) => {
                return Ok(Booted {
                    model,
                    file,
                    pool,
                    current,
                    alarm,
                    rolled_back: rolled,
                })
            }
            Err(e) if model.slot != Slot::Builtin => {
                let reason = format!("failed to load at start: {e}");
                tracing::error!(version = model.version, error = %e, "model release does not load: rolling back");
                layout.add_rolled_back(model.version)?;
                alarm = Some(guard::alarm(&model.name, model.version, &reason));
                rolled = Some((model.version, reason));
                current = guard::rolled_back(&current);
                model = layout.check_slot(current.active).unwrap_or_else(|_| {
                    current.active = Slot::Builtin;
                    layout.builtin()
                });
                layout.write_current(&current)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Makes `slot` (installed and self-tested) the active model: `current.json`, then the
/// trust state's installed version. Returns the new pool for the caller to swap in.
pub fn activate(
    store: &ModelStore,
    slot: Slot,
    workers: usize,
) -> Result<(SlotModel, Arc<InferencePool>), ModelsError> {
    let layout = &store.layout;
    let model = layout.check_slot(slot)?;
    let (_, pool) = start_pool(&model.model_path, workers)?;
    let _g = store.guard();
    let signed = SignedRelease::read(
        &layout
            .slot_dir(slot)
            .join(pleura_shared::release::RELEASE_FILE),
    )?;
    let mut trust = store.trust()?;
    // Verified against the state as it is now (still certified, still newer) before
    // anything changes.
    let verified = trust.verify_release(&signed, None, super::AGENT_VERSION)?;
    trust.record_installed(&verified)?;
    let old = layout.read_current().unwrap_or_default();
    let next = Current {
        active: slot,
        previous: Some(old.active).filter(|p| *p != slot),
        shadow: old.shadow.filter(|s| *s != slot),
    };
    // current.json first: killed before trust.json is saved, the next start runs the
    // new release and an offer of it is a duplicate (the slot's version is checked).
    layout.write_current(&next)?;
    store.save_trust(&trust)?;
    Ok((model, Arc::new(pool)))
}

/// Goes back from the active release to the previous slot (or the built-in model) and
/// records the release as rolled back. Returns the model now active and its pool, and
/// the release rolled back.
pub fn rollback(
    store: &ModelStore,
    workers: usize,
) -> Result<Option<(SlotModel, Arc<InferencePool>, SlotModel)>, ModelsError> {
    let layout = &store.layout;
    let _g = store.guard();
    let cur = layout.read_current().unwrap_or_default();
    if cur.active == Slot::Builtin {
        return Ok(None);
    }
    let bad = layout.check_slot(cur.active).unwrap_or_else(|_| SlotModel {
        slot: cur.active,
        model_path: layout.slot_dir(cur.active),
        version: 0,
        name: "unknown".into(),
        manifest: None,
    });
    let mut next = guard::rolled_back(&cur);
    let (model, pool) = match layout
        .check_slot(next.active)
        .and_then(|m| start_pool(&m.model_path, workers).map(|(_, p)| (m, p)))
    {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(slot = next.active.name(), error = %e, "previous model unusable: going to the built-in one");
            next.active = Slot::Builtin;
            let m = layout.builtin();
            let (_, p) = start_pool(&m.model_path, workers)?;
            (m, p)
        }
    };
    if bad.version > 0 {
        layout.add_rolled_back(bad.version)?;
    }
    layout.write_current(&next)?;
    Ok(Some((model, Arc::new(pool), bad)))
}
