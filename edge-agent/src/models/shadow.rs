//! Shadow mode at the edge: a verified candidate release in its slot (`current.shadow`)
//! runs beside the active model on every new scan (one inference thread of its own),
//! and its readings go to the hub tagged as shadow (`intake::job::shadow_job`). It
//! stops when it is promoted (it becomes the active model), aborted, or when it faults:
//! a candidate that crashes or produces non-finite outputs is never promoted, so it is
//! recorded as rolled back and reported, and the active model is never touched.

use std::sync::Arc;

use super::live::Running;
use super::offer::ModelStore;
use super::slots::Slot;
use super::switch::start_pool;
use super::ModelsError;

/// The candidate's pool: one thread, so that shadowing costs at most a second model's
/// time per scan and never takes the active model's workers.
const SHADOW_WORKERS: usize = 1;

/// Starts the pool of the release installed in `slot` (verified by `check_slot`).
pub fn start(store: &ModelStore, slot: Slot) -> Result<(Running, String), ModelsError> {
    let model = store.layout.check_slot(slot)?;
    let (_, pool) = start_pool(&model.model_path, SHADOW_WORKERS)?;
    Ok((
        Running {
            pool: Arc::new(pool),
            version: model.version,
        },
        format!("{} {}", model.name, model.version),
    ))
}

/// Ends the shadow run of `version` after a fault: `current.json` no longer names its
/// slot, and the release is never taken again (0: a slot that no longer verifies).
pub fn drop_faulty(store: &ModelStore, version: u64) -> Result<(), ModelsError> {
    let layout = &store.layout;
    let _g = store.guard();
    let mut cur = layout.read_current().unwrap_or_default();
    // Recorded first: killed before current.json changes, the release is still never
    // promoted (`command::take` refuses a rolled-back version).
    if version > 0 {
        layout.add_rolled_back(version)?;
    }
    // Its slot, or a shadow slot that no longer verifies.
    let named = cur
        .shadow
        .is_some_and(|s| layout.check_slot(s).map_or(true, |m| m.version == version));
    if named {
        cur.shadow = None;
        layout.write_current(&cur)?;
    }
    Ok(())
}
