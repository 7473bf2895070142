//! From a complete download to a verified model in the spare slot: the file's digest,
//! the slot written and fsynced, then the release's self-test run with the agent's own
//! backend (the model must load, match every expected output within tolerance, and
//! give finite outputs with probabilities in [0, 1]).

use std::collections::BTreeMap;
use std::path::Path;

use pleura_inference::{FrameOutputs, ModelFile};
use pleura_shared::release::{
    ReleaseError, ReleaseManifest, SelfTest, SelfTestVector, SignedRelease, TrustState,
};

use super::slots::{Layout, Slot, SlotModel};
use super::{ModelsError, AGENT_VERSION};

/// Why an install stopped; `reason` is the report's text.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The release or its model is not acceptable (REFUSED).
    #[error("{0}")]
    Refused(String),
    /// The device failed (disk): try again later.
    #[error(transparent)]
    Store(#[from] ModelsError),
}

/// Checks the downloaded `part` against `signed` and writes it into `slot`, then runs
/// the self-test. The release's signature is checked again here (against the trust
/// state as it is now) so nothing unverified reaches a slot.
pub fn install(
    layout: &Layout,
    trust: &TrustState,
    signed: &SignedRelease,
    part: &Path,
    slot: Slot,
) -> Result<SlotModel, InstallError> {
    let verified = trust
        .verify_release(signed, None, AGENT_VERSION)
        .map_err(|e| InstallError::Refused(super::refusal(&e)))?;
    verified
        .check_model_path(part)
        .map_err(|e| InstallError::Refused(super::refusal(&e)))?;
    let model = layout.write_slot(slot, signed, verified.manifest(), part)?;
    if let Err(e) = self_test(&model.model_path, verified.manifest()) {
        let _ = layout.clear_slot(slot);
        return Err(InstallError::Refused(super::refusal(&e)));
    }
    Ok(model)
}

/// Outputs by name, as self-test vectors hold them.
pub fn named_outputs(o: &FrameOutputs) -> BTreeMap<String, Vec<f32>> {
    BTreeMap::from([
        ("class_probs".to_string(), o.class_probs.concat()),
        ("severity_probs".to_string(), o.severity_probs.concat()),
        ("uncertainty".to_string(), o.uncertainty.clone()),
    ])
}

/// Finite outputs, probabilities in [0, 1]: what any model this agent runs must give.
pub fn check_outputs(o: &FrameOutputs) -> Result<(), String> {
    for (name, values) in named_outputs(o) {
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(format!("{name} holds {v}"));
        }
        if name != "uncertainty" {
            if let Some(v) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(format!("{name} holds {v}, outside 0..1"));
            }
        }
    }
    Ok(())
}

fn failed(vector: usize, output: &str, detail: String) -> ReleaseError {
    ReleaseError::SelfTestFailed {
        vector,
        output: output.to_string(),
        detail,
    }
}

/// Loads the model at `model_path` (its `model.json` beside it) with the initialised
/// backend and runs each of the manifest's self-test vectors.
pub fn self_test(model_path: &Path, manifest: &ReleaseManifest) -> Result<(), ReleaseError> {
    let file = ModelFile::load(model_path).map_err(|e| failed(0, "load", e.to_string()))?;
    if file.info.input_size() != manifest.input.size as usize || manifest.input.channels != 1 {
        return Err(ReleaseError::InputMismatch(format!(
            "the model takes {} px, the release says {} px × {} channels",
            file.info.input_size(),
            manifest.input.size,
            manifest.input.channels
        )));
    }
    let mut session = file
        .session(1)
        .map_err(|e| failed(0, "load", e.to_string()))?;
    for (i, v) in manifest.self_test.vectors.iter().enumerate() {
        let frame: Vec<f32> = v
            .frame(&manifest.input)?
            .into_iter()
            .map(f32::from)
            .collect();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.run(&frame)))
            .map_err(|_| failed(i, "run", "the model crashed".into()))?
            .map_err(|e| failed(i, "run", e.to_string()))?;
        check_outputs(&out).map_err(|e| failed(i, "range", e))?;
        manifest.self_test.check(i, &named_outputs(&out))?;
    }
    Ok(())
}

/// Runs `model` on each frame (`size × size` gray samples) and returns the self-test
/// the hub's `model publish --self-test` takes.
pub fn compute_vectors(model: &ModelFile, frames: &[Vec<u8>]) -> Result<SelfTest, ModelsError> {
    let mut session = model
        .session(1)
        .map_err(|e| ModelsError::Engine(e.to_string()))?;
    let mut vectors = Vec::new();
    for f in frames {
        let input: Vec<f32> = f.iter().copied().map(f32::from).collect();
        let out = session
            .run(&input)
            .map_err(|e| ModelsError::Engine(e.to_string()))?;
        vectors.push(SelfTestVector {
            frame_hex: hex::encode(f),
            expected: named_outputs(&out),
        });
    }
    Ok(SelfTest {
        tolerance: 1e-3,
        vectors,
    })
}

/// Two deterministic synthetic frames of `side`² pixels: what the agent's own tests and
/// benchmarks compute self-test vectors on when no real frames are given.
pub(crate) fn synthetic_frames(side: usize) -> Vec<Vec<u8>> {
    (0..2u32)
        .map(|k| {
            (0..side * side)
                .map(|i| ((i as u32 * (7 + k) + k * 31) % 256) as u8)
                .collect()
        })
        .collect()
}
