//! Model v2's video pooling: attention-weighted multiple-instance pooling of the frames'
//! raw heads, calibrated by temperature, with an ordinal (cumulative-logit) severity.
//! `training/pleura_train/pooling.py` does exactly this; `fixtures/reference/
//! pooling_cases.json` (when present) holds cases both sides are checked against.
//!
//! Everything is computed in f64 and returned as f32; no NaN ever leaves: non-finite
//! heads are an error naming the head.

use serde::Deserialize;

/// The findings head's columns, in order.
pub const FINDINGS: [&str; 5] = [
    "a_lines",
    "b_lines",
    "consolidation",
    "effusion",
    "pleural_irregularity",
];

/// Threshold used for a finding the sidecar gives none for.
pub const DEFAULT_FINDING_THRESHOLD: f32 = 0.5;

/// Temperature scaling from the sidecar's `calibration` block (1 = none).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    #[serde(default = "one")]
    pub class_temperature: f32,
    #[serde(default = "one")]
    pub severity_temperature: f32,
    /// One per finding; empty means 1 for all.
    #[serde(default)]
    pub finding_temperature: Vec<f32>,
}

fn one() -> f32 {
    1.0
}

impl Default for Calibration {
    fn default() -> Self {
        Self {
            class_temperature: 1.0,
            severity_temperature: 1.0,
            finding_temperature: Vec::new(),
        }
    }
}

impl Calibration {
    /// Checks every temperature is finite and positive, and the findings' count.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |t: f32| t.is_finite() && t > 0.0;
        if !ok(self.class_temperature) {
            return Err(format!(
                "calibration.class_temperature {} must be finite and > 0",
                self.class_temperature
            ));
        }
        if !ok(self.severity_temperature) {
            return Err(format!(
                "calibration.severity_temperature {} must be finite and > 0",
                self.severity_temperature
            ));
        }
        if !self.finding_temperature.is_empty() && self.finding_temperature.len() != 5 {
            return Err(format!(
                "calibration.finding_temperature has {} values, expected 5",
                self.finding_temperature.len()
            ));
        }
        if let Some(t) = self.finding_temperature.iter().find(|t| !ok(**t)) {
            return Err(format!(
                "calibration.finding_temperature {t} must be finite and > 0"
            ));
        }
        Ok(())
    }

    fn finding_temperature(&self, j: usize) -> f64 {
        self.finding_temperature.get(j).copied().unwrap_or(1.0) as f64
    }
}

/// The v2 model's raw per-frame heads (present only when the model has them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heads {
    pub class_logits: Vec<[f32; 3]>,
    pub severity_latent: Vec<f32>,
    pub finding_logits: Vec<[f32; 5]>,
    pub attention: Vec<f32>,
}

impl Heads {
    /// Appends another run's frames (chunked inference).
    pub fn extend(&mut self, o: Heads) {
        self.class_logits.extend(o.class_logits);
        self.severity_latent.extend(o.severity_latent);
        self.finding_logits.extend(o.finding_logits);
        self.attention.extend(o.attention);
    }

    /// The first head holding a non-finite value, if any.
    pub fn non_finite(&self) -> Option<&'static str> {
        if non_finite(self.class_logits.iter().flatten()) {
            return Some("class_logits");
        }
        if non_finite(self.severity_latent.iter()) {
            return Some("severity_latent");
        }
        if non_finite(self.finding_logits.iter().flatten()) {
            return Some("finding_logits");
        }
        if non_finite(self.attention.iter()) {
            return Some("attention");
        }
        None
    }
}

fn non_finite<'a>(mut v: impl Iterator<Item = &'a f32>) -> bool {
    v.any(|x| !x.is_finite())
}

/// What pooling needs from the sidecar.
#[derive(Debug, Clone, Copy)]
pub struct PoolParams<'a> {
    pub calibration: &'a Calibration,
    /// Ordinal cut-points (3); sorted before use.
    pub cutpoints: &'a [f32],
    /// One per finding; empty means [`DEFAULT_FINDING_THRESHOLD`].
    pub finding_thresholds: &'a [f32],
}

/// One video's pooled reading.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoHeads {
    /// Attention weights of the frames (sum 1; empty for no frames).
    pub weights: Vec<f32>,
    pub class_probs: [f32; 3],
    /// P(severity = k), k = 0..=3 (non-negative, sum 1).
    pub severity_probs: [f32; 4],
    /// q_k = P(severity ≥ k), k = 1..=3.
    pub severity_q: [f32; 3],
    /// The ordinal median: how many q_k are ≥ 0.5.
    pub severity: u8,
    /// Expected severity Σ q_k.
    pub expected_severity: f32,
    pub findings: [f32; 5],
    pub present: [bool; 5],
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolError {
    #[error("model output {name} is not finite")]
    NonFinite { name: &'static str },
    #[error("model output {name} has {got} frames, expected {expected}")]
    Frames {
        name: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("model sidecar: {0}")]
    Sidecar(String),
}

/// Softmax of the frames' attention logits (uniform weights are what equal logits give).
pub fn attention_weights(attention: &[f32]) -> Vec<f64> {
    let max = attention
        .iter()
        .fold(f64::NEG_INFINITY, |m, &a| m.max(a as f64));
    let e: Vec<f64> = attention.iter().map(|&a| (a as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn softmax3(z: [f64; 3]) -> [f64; 3] {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e = z.map(|v| (v - m).exp());
    let s: f64 = e.iter().sum();
    e.map(|v| v / s)
}

/// Ordinal severity from the pooled latent `s`: (q, probs, median, expectation).
pub fn ordinal(s: f64, cutpoints: &[f32], temperature: f32) -> ([f64; 3], [f64; 4], u8, f64) {
    let mut cuts = [0f64; 3];
    for (c, v) in cuts.iter_mut().zip(cutpoints) {
        *c = *v as f64;
    }
    cuts.sort_by(f64::total_cmp);
    let t = temperature as f64;
    let q = cuts.map(|c| sigmoid((s - c) / t));
    let probs = [
        (1.0 - q[0]).max(0.0),
        (q[0] - q[1]).max(0.0),
        (q[1] - q[2]).max(0.0),
        q[2].max(0.0),
    ];
    let median = q.iter().filter(|&&v| v >= 0.5).count() as u8;
    (q, probs, median, q.iter().sum())
}

/// Pools one video's frames. `heads` must hold the same number of frames in each head.
pub fn video_from_heads(heads: &Heads, p: &PoolParams<'_>) -> Result<VideoHeads, PoolError> {
    let n = heads.attention.len();
    let check = |name: &'static str, got: usize| {
        if got == n {
            Ok(())
        } else {
            Err(PoolError::Frames {
                name,
                got,
                expected: n,
            })
        }
    };
    check("class_logits", heads.class_logits.len())?;
    check("severity_latent", heads.severity_latent.len())?;
    check("finding_logits", heads.finding_logits.len())?;
    if let Some(name) = heads.non_finite() {
        return Err(PoolError::NonFinite { name });
    }
    if p.cutpoints.len() != 3 {
        return Err(PoolError::Sidecar(format!(
            "severity_cutpoints has {} values, the model's severity_latent needs 3",
            p.cutpoints.len()
        )));
    }
    let w = attention_weights(&heads.attention);
    let mut z = [0f64; 3];
    let mut s = 0f64;
    let mut f = [0f64; 5];
    for (i, wi) in w.iter().enumerate() {
        for (k, zk) in z.iter_mut().enumerate() {
            *zk += wi * heads.class_logits[i][k] as f64;
        }
        s += wi * heads.severity_latent[i] as f64;
        for (j, fj) in f.iter_mut().enumerate() {
            *fj += wi * heads.finding_logits[i][j] as f64;
        }
    }
    let ct = p.calibration.class_temperature as f64;
    let class_probs = softmax3(z.map(|v| v / ct));
    let (q, sp, severity, expected) = ordinal(s, p.cutpoints, p.calibration.severity_temperature);
    let findings: [f32; 5] =
        std::array::from_fn(|j| sigmoid(f[j] / p.calibration.finding_temperature(j)) as f32);
    let present: [bool; 5] = std::array::from_fn(|j| {
        findings[j]
            >= p.finding_thresholds
                .get(j)
                .copied()
                .unwrap_or(DEFAULT_FINDING_THRESHOLD)
    });
    let out = VideoHeads {
        weights: w.iter().map(|&v| v as f32).collect(),
        class_probs: class_probs.map(|v| v as f32),
        severity_probs: sp.map(|v| v as f32),
        severity_q: q.map(|v| v as f32),
        severity,
        expected_severity: expected as f32,
        findings,
        present,
    };
    // Finite inputs give finite outputs; this guards the promise that no NaN leaves.
    let mut all = out
        .class_probs
        .iter()
        .chain(&out.severity_probs)
        .chain(&out.findings)
        .chain(&out.weights);
    if all.any(|v| !v.is_finite()) {
        return Err(PoolError::NonFinite { name: "pooled" });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(cal: &Calibration) -> PoolParams<'_> {
        PoolParams {
            calibration: cal,
            cutpoints: &[-1.0, 0.5, 2.0],
            finding_thresholds: &[0.5; 5],
        }
    }

    fn heads(att: &[f32]) -> Heads {
        Heads {
            class_logits: (0..att.len())
                .map(|i| [i as f32, 0.0, -(i as f32)])
                .collect(),
            severity_latent: (0..att.len()).map(|i| i as f32).collect(),
            finding_logits: (0..att.len()).map(|i| [i as f32; 5]).collect(),
            attention: att.to_vec(),
        }
    }

    #[test]
    fn attention_weights_are_a_softmax() {
        let w = attention_weights(&[0.0, (2f32).ln(), 1000.0 - 1000.0]);
        assert!((w[0] - 0.25).abs() < 1e-6 && (w[1] - 0.5).abs() < 1e-6);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // huge logits do not overflow
        let w = attention_weights(&[1e30, 1e30]);
        assert!((w[0] - 0.5).abs() < 1e-12);
        assert!(attention_weights(&[]).is_empty());
    }

    #[test]
    fn pooling_follows_the_weights_and_the_temperature() {
        let cal = Calibration::default();
        // frame 1 takes all the weight
        let v = video_from_heads(&heads(&[-50.0, 50.0]), &params(&cal)).unwrap();
        let want = softmax3([1.0, 0.0, -1.0]);
        for (got, want) in v.class_probs.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-6);
        }
        assert!((v.findings[0] as f64 - sigmoid(1.0)).abs() < 1e-6);
        assert!(v.present.iter().all(|&p| p));
        // a higher temperature flattens the class distribution
        let hot = Calibration {
            class_temperature: 4.0,
            finding_temperature: vec![2.0; 5],
            ..Calibration::default()
        };
        let h = video_from_heads(&heads(&[-50.0, 50.0]), &params(&hot)).unwrap();
        assert!(h.class_probs[0] < v.class_probs[0] && h.class_probs[0] > 1.0 / 3.0);
        assert!((h.findings[0] as f64 - sigmoid(0.5)).abs() < 1e-6);
    }

    #[test]
    fn ordinal_severity_is_monotone_sums_to_one_and_its_median_is_right() {
        let mut last_e = -1.0;
        for i in -40..=40 {
            let s = i as f64 / 5.0;
            // unsorted cut-points are sorted first
            let (q, p, median, e) = ordinal(s, &[2.0, -1.0, 0.5], 1.0);
            assert!(q[0] >= q[1] && q[1] >= q[2]);
            assert!(p.iter().all(|&v| v >= 0.0));
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p:?}");
            assert!(e >= last_e);
            last_e = e;
            let want = [-1.0, 0.5, 2.0].iter().filter(|&&c| s >= c).count() as u8;
            assert_eq!(median, want, "s = {s}");
        }
    }

    #[test]
    fn no_frames_give_uniform_classes_not_nan() {
        let cal = Calibration::default();
        let v = video_from_heads(&Heads::default(), &params(&cal)).unwrap();
        assert!(v.class_probs.iter().all(|&p| (p - 1.0 / 3.0).abs() < 1e-6));
        assert!(v.findings.iter().all(|&p| (p - 0.5).abs() < 1e-6));
    }

    #[test]
    fn bad_heads_are_named() {
        let cal = Calibration::default();
        let mut h = heads(&[0.0, 1.0]);
        h.severity_latent[1] = f32::NAN;
        let e = video_from_heads(&h, &params(&cal)).unwrap_err();
        assert_eq!(e.to_string(), "model output severity_latent is not finite");
        let mut h = heads(&[0.0, 1.0]);
        h.finding_logits.pop();
        let e = video_from_heads(&h, &params(&cal)).unwrap_err();
        assert!(e.to_string().contains("finding_logits"), "{e}");
        let e = video_from_heads(
            &heads(&[0.0]),
            &PoolParams {
                cutpoints: &[],
                ..params(&cal)
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("severity_cutpoints"), "{e}");
        let bad = Calibration {
            class_temperature: 0.0,
            ..Calibration::default()
        };
        assert!(bad.validate().unwrap_err().contains("class_temperature"));
    }
}
