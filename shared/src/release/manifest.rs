//! The release manifest: what a model release is, what it needs and how to self-test it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hexstr;
use super::version::AgentVersion;
use super::ReleaseError;

/// Severity levels this agent reports (`Severity` 0-3); a model with others cannot run.
pub const SEVERITY_LEVELS: u32 = 4;
/// Self-test vectors a release may carry (each holds one full input frame).
pub const MAX_SELF_TEST_VECTORS: usize = 8;
/// The largest model input side accepted, in pixels.
pub const MAX_INPUT_SIZE: u32 = 1024;
/// Input bytes all self-test frames together may hold (hex doubles it), so that a
/// valid release always fits well inside `MAX_ENVELOPE_BYTES`.
pub const MAX_SELF_TEST_BYTES: usize = 2 << 20;

/// The signed description of one model release. Unknown fields are ignored (the
/// manifest is signed); a release whose meaning an older agent would miss raises
/// `min_agent_version` instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    /// The model's name, e.g. `pleura-lite` (1-32 of a-z, 0-9, '-', '_').
    pub name: String,
    /// Increases with every release, whatever the name; a device never installs a
    /// version at or below its installed one.
    pub version: u64,
    /// Hex SHA-256 of `model.onnx`.
    pub model_sha256: String,
    pub model_size: u64,
    pub input: InputSpec,
    pub class_labels: Vec<String>,
    pub severity_levels: u32,
    /// The model's whole sidecar JSON (`pleura-lite.json`: thresholds, calibration,
    /// pooling and patient parameters), signed with the release so that none of it can
    /// be changed apart from the model. Where it names `sha256`, `input.size` or
    /// `classes` they must agree with the fields above.
    pub sidecar: serde_json::Value,
    /// One paragraph of the model card, shown to the clinic before installing.
    pub card_summary: String,
    /// The oldest agent that can run this release, `MAJOR.MINOR.PATCH`.
    pub min_agent_version: String,
    pub created_at_ms: u64,
    /// After this instant a device with a trusted clock refuses to install the release;
    /// an installed model keeps running.
    pub expires_at_ms: u64,
    pub self_test: SelfTest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Side of the square input frame, in pixels.
    pub size: u32,
    /// 1 for the grayscale frames Pleura feeds.
    pub channels: u32,
}

impl InputSpec {
    /// Bytes in one input frame (`size × size × channels`, one byte a sample).
    pub fn frame_len(&self) -> usize {
        (self.size as usize) * (self.size as usize) * (self.channels as usize)
    }
}

/// Known inputs and the outputs the model must give for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfTest {
    /// Largest absolute difference allowed between an expected and an actual value.
    pub tolerance: f32,
    pub vectors: Vec<SelfTestVector>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfTestVector {
    /// One input frame, row-major 0-255 samples, lowercase hex.
    pub frame_hex: String,
    /// Model output name → its values (flattened) for this frame.
    pub expected: BTreeMap<String, Vec<f32>>,
}

/// The decision thresholds read from the sidecar (for display and checks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub covid_threshold: f64,
    pub uncertainty_flag: f64,
}

fn malformed(m: String) -> ReleaseError {
    ReleaseError::Malformed(m)
}

impl ReleaseManifest {
    /// Everything about the manifest that does not depend on the device.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        crate::validate_name("model name", &self.name).map_err(|e| malformed(e.to_string()))?;
        AgentVersion::parse("min_agent_version", &self.min_agent_version)?;
        if !hexstr::is_sha256(&self.model_sha256) {
            return Err(malformed(format!(
                "model_sha256 {:?} is not a lowercase hex SHA-256",
                self.model_sha256
            )));
        }
        if self.model_size == 0 {
            return Err(malformed("model_size is 0".to_string()));
        }
        if self.expires_at_ms <= self.created_at_ms {
            return Err(malformed(format!(
                "expires_at_ms {} is not after created_at_ms {}",
                self.expires_at_ms, self.created_at_ms
            )));
        }
        self.check_input()?;
        self.check_sidecar()?;
        self.check_self_test()
    }

    fn check_input(&self) -> Result<(), ReleaseError> {
        let InputSpec { size, channels } = self.input;
        if !(1..=MAX_INPUT_SIZE).contains(&size) {
            return Err(ReleaseError::InputMismatch(format!(
                "input size {size} px is outside 1-{MAX_INPUT_SIZE}"
            )));
        }
        if !(1..=4).contains(&channels) {
            return Err(ReleaseError::InputMismatch(format!(
                "{channels} input channels (1-4 supported)"
            )));
        }
        if self.severity_levels != SEVERITY_LEVELS {
            return Err(ReleaseError::InputMismatch(format!(
                "model has {} severity levels, this agent knows {SEVERITY_LEVELS}",
                self.severity_levels
            )));
        }
        if self.class_labels.is_empty() {
            return Err(ReleaseError::InputMismatch("no class labels".to_string()));
        }
        Ok(())
    }

    fn check_sidecar(&self) -> Result<(), ReleaseError> {
        let side = self
            .sidecar
            .as_object()
            .ok_or_else(|| malformed("sidecar is not a JSON object".to_string()))?;
        if let Some(sha) = side.get("sha256") {
            if sha.as_str() != Some(self.model_sha256.as_str()) {
                return Err(malformed(format!(
                    "sidecar sha256 {sha} differs from model_sha256 {}",
                    self.model_sha256
                )));
            }
        }
        if let Some(size) = self.sidecar.pointer("/input/size") {
            if size.as_u64() != Some(u64::from(self.input.size)) {
                return Err(ReleaseError::InputMismatch(format!(
                    "sidecar input.size {size} differs from input.size {}",
                    self.input.size
                )));
            }
        }
        if let Some(classes) = side.get("classes") {
            let same = classes.as_array().is_some_and(|c| {
                c.len() == self.class_labels.len()
                    && c.iter()
                        .zip(&self.class_labels)
                        .all(|(a, b)| a.as_str() == Some(b.as_str()))
            });
            if !same {
                return Err(ReleaseError::InputMismatch(format!(
                    "sidecar classes {classes} differ from class_labels {:?}",
                    self.class_labels
                )));
            }
        }
        Ok(())
    }

    fn check_self_test(&self) -> Result<(), ReleaseError> {
        let t = &self.self_test;
        if !(t.tolerance.is_finite() && t.tolerance >= 0.0) {
            return Err(malformed(format!(
                "self-test tolerance {} is not a finite non-negative number",
                t.tolerance
            )));
        }
        if t.vectors.is_empty() || t.vectors.len() > MAX_SELF_TEST_VECTORS {
            return Err(malformed(format!(
                "{} self-test vectors (1-{MAX_SELF_TEST_VECTORS} allowed)",
                t.vectors.len()
            )));
        }
        let total = t.vectors.len() * self.input.frame_len();
        if total > MAX_SELF_TEST_BYTES {
            return Err(malformed(format!(
                "self-test frames hold {total} bytes, more than {MAX_SELF_TEST_BYTES}"
            )));
        }
        for (i, v) in t.vectors.iter().enumerate() {
            v.frame(&self.input).map_err(|e| match e {
                ReleaseError::InputMismatch(m) => {
                    ReleaseError::InputMismatch(format!("self-test vector {i}: {m}"))
                }
                e => e,
            })?;
            if v.expected.is_empty() {
                return Err(malformed(format!("self-test vector {i} expects no output")));
            }
            if v.expected.values().flatten().any(|x| !x.is_finite()) {
                return Err(malformed(format!(
                    "self-test vector {i} expects a value that is not finite"
                )));
            }
        }
        Ok(())
    }

    /// `covid_threshold` and `uncertainty_flag` from the sidecar.
    pub fn thresholds(&self) -> Result<Thresholds, ReleaseError> {
        let num = |key: &str| {
            self.sidecar
                .get(key)
                .and_then(|v| v.as_f64())
                .ok_or_else(|| malformed(format!("sidecar has no number {key}")))
        };
        Ok(Thresholds {
            covid_threshold: num("covid_threshold")?,
            uncertainty_flag: num("uncertainty_flag")?,
        })
    }
}

impl SelfTestVector {
    /// The frame's samples, checked to be exactly one frame of `input`.
    pub fn frame(&self, input: &InputSpec) -> Result<Vec<u8>, ReleaseError> {
        let want = input.frame_len();
        if self.frame_hex.len() != 2 * want {
            return Err(ReleaseError::InputMismatch(format!(
                "frame has {} hex digits, a {}×{}×{} frame needs {}",
                self.frame_hex.len(),
                input.size,
                input.size,
                input.channels,
                2 * want
            )));
        }
        hexstr::decode("frame_hex", &self.frame_hex)
    }
}

impl SelfTest {
    /// Compares the model's `outputs` for vector `index` with what the release expects:
    /// every expected output present, the same length, each value within `tolerance`.
    pub fn check(
        &self,
        index: usize,
        outputs: &BTreeMap<String, Vec<f32>>,
    ) -> Result<(), ReleaseError> {
        let fail = |output: &str, detail: String| ReleaseError::SelfTestFailed {
            vector: index,
            output: output.to_string(),
            detail,
        };
        let vector = self.vectors.get(index).ok_or_else(|| {
            malformed(format!(
                "no self-test vector {index} ({} in all)",
                self.vectors.len()
            ))
        })?;
        for (name, want) in &vector.expected {
            let got = outputs
                .get(name)
                .ok_or_else(|| fail(name, "the model gave no such output".to_string()))?;
            if got.len() != want.len() {
                return Err(fail(
                    name,
                    format!("{} values, expected {}", got.len(), want.len()),
                ));
            }
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                // NaN compares false, so a NaN output fails.
                let close = (g - w).abs() <= self.tolerance;
                if !close {
                    return Err(fail(
                        name,
                        format!("value {i} is {g}, expected {w} ± {}", self.tolerance),
                    ));
                }
            }
        }
        Ok(())
    }
}
