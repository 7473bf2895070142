//! Model v2's patient combiner: the videos of one patient, merged per zone, become
//! image features; with the clinic's vitals (if any) a second logistic combiner weighs
//! both. `training/pleura_train/patient.py` does exactly this and writes the sidecar's
//! `patient` block; feature names are the contract between the two.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::pooling::{sigmoid, DEFAULT_FINDING_THRESHOLD};

/// Image features, in order (the names the sidecar uses).
pub const IMAGE_FEATURES: [&str; 9] = [
    "covid_logit_mean",
    "covid_logit_max",
    "b_lines_share",
    "b_lines_mean",
    "severity_max",
    "lung_score_share",
    "consolidation_max",
    "effusion_max",
    "bilateral",
];

/// Vitals features, in order (after the image ones).
pub const VITALS_FEATURES: [&str; 9] = [
    "age",
    "sex_male",
    "spo2",
    "respiratory_rate",
    "pulse",
    "temperature",
    "fever",
    "cough",
    "dyspnea",
];

/// A covid probability is clamped to this distance from 0 and 1 before its logit.
const LOGIT_EPS: f64 = 1e-4;

/// The sidecar's `patient` block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PatientModel {
    /// Flag threshold of the image combiner.
    pub threshold: f32,
    pub image: Combiner,
    /// The combiner that also weighs vitals; used only when a patient has vitals.
    #[serde(default)]
    pub vitals: Option<Combiner>,
}

/// A standardised logistic regression over named features.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Combiner {
    pub features: Vec<String>,
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub weights: Vec<f32>,
    pub bias: f32,
    /// Flag threshold (the vitals combiner's own; the image one uses the block's).
    #[serde(default)]
    pub threshold: Option<f32>,
}

impl PatientModel {
    /// Checks names, lengths and numbers; errors name the offending item.
    pub fn validate(&self) -> Result<(), String> {
        check_threshold("patient.threshold", self.threshold)?;
        self.image.validate("patient.image", &IMAGE_FEATURES, &[])?;
        if let Some(v) = &self.vitals {
            v.validate("patient.vitals", &IMAGE_FEATURES, &VITALS_FEATURES)?;
            if let Some(t) = v.threshold {
                check_threshold("patient.vitals.threshold", t)?;
            }
        }
        Ok(())
    }
}

fn check_threshold(what: &str, t: f32) -> Result<(), String> {
    if (0.0..=1.0).contains(&t) {
        Ok(())
    } else {
        Err(format!("{what} {t} is outside 0..1"))
    }
}

impl Combiner {
    fn validate(&self, what: &str, known: &[&str], also: &[&str]) -> Result<(), String> {
        for f in &self.features {
            if !known.contains(&f.as_str()) && !also.contains(&f.as_str()) {
                return Err(format!("{what}: unknown feature {f:?}"));
            }
        }
        let n = self.features.len();
        for (name, v) in [
            ("mean", &self.mean),
            ("scale", &self.scale),
            ("weights", &self.weights),
        ] {
            if v.len() != n {
                return Err(format!(
                    "{what}.{name} has {} values for {n} features",
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("{what}.{name} holds a non-finite value"));
            }
        }
        if let Some(i) = self.scale.iter().position(|&s| s == 0.0) {
            return Err(format!(
                "{what}.scale of {} is 0",
                self.features.get(i).map(String::as_str).unwrap_or("?")
            ));
        }
        if !self.bias.is_finite() {
            return Err(format!("{what}.bias is not finite"));
        }
        Ok(())
    }

    /// σ(bias + Σ w·(x − mean)/scale); a missing feature value is its mean.
    fn probability(&self, value: impl Fn(&str) -> Option<f64>) -> f64 {
        let mut z = self.bias as f64;
        for (i, f) in self.features.iter().enumerate() {
            let mean = self.mean[i] as f64;
            let x = value(f).filter(|v| v.is_finite()).unwrap_or(mean);
            z += self.weights[i] as f64 * (x - mean) / self.scale[i] as f64;
        }
        sigmoid(z)
    }
}

/// Patient sex, as the clinic records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Sex {
    #[serde(rename = "f")]
    Female,
    #[serde(rename = "m")]
    Male,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Symptom {
    Fever,
    Cough,
    Dyspnea,
}

/// The clinic's vitals for one patient (`inbox/<patient>/vitals.json`). Every field is
/// optional; a missing one is imputed by the combiner. They never leave the clinic.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vitals {
    pub age_years: Option<f32>,
    pub sex: Option<Sex>,
    /// Oxygen saturation in %, without supplemental oxygen.
    pub spo2: Option<f32>,
    /// Breaths per minute.
    pub respiratory_rate: Option<f32>,
    /// Beats per minute.
    pub pulse: Option<f32>,
    pub temperature_c: Option<f32>,
    /// Symptoms present; absent means not recorded (imputed), `[]` means none.
    pub symptoms: Option<Vec<Symptom>>,
}

#[derive(Debug, thiserror::Error)]
pub enum VitalsError {
    #[error("vitals are not valid JSON of the expected form: {0}")]
    Json(String),
    #[error("vitals field {field}: {value} is outside {lo}..={hi}")]
    Range {
        field: &'static str,
        value: f32,
        lo: f32,
        hi: f32,
    },
}

impl Vitals {
    /// Plausible ranges (field, lowest, highest, both allowed), wide enough for any living
    /// patient. Public so forms can show what `validate` accepts without restating it.
    pub const RANGES: [(&'static str, f32, f32); 5] = [
        ("age_years", 0.0, 120.0),
        ("spo2", 50.0, 100.0),
        ("respiratory_rate", 4.0, 80.0),
        ("pulse", 20.0, 250.0),
        ("temperature_c", 30.0, 45.0),
    ];

    /// The allowed range of a numeric field (`"spo2"`, ...), as `validate` checks it.
    pub fn range(field: &str) -> Option<(f32, f32)> {
        Self::RANGES
            .iter()
            .find(|(f, _, _)| *f == field)
            .map(|&(_, lo, hi)| (lo, hi))
    }

    /// Parses and validates a vitals file's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, VitalsError> {
        let v: Vitals =
            serde_json::from_slice(bytes).map_err(|e| VitalsError::Json(e.to_string()))?;
        v.validate()?;
        Ok(v)
    }

    pub fn validate(&self) -> Result<(), VitalsError> {
        let values = [
            self.age_years,
            self.spo2,
            self.respiratory_rate,
            self.pulse,
            self.temperature_c,
        ];
        for ((field, lo, hi), v) in Self::RANGES.into_iter().zip(values) {
            if let Some(value) = v {
                if !(lo..=hi).contains(&value) {
                    return Err(VitalsError::Range {
                        field,
                        value,
                        lo,
                        hi,
                    });
                }
            }
        }
        Ok(())
    }

    /// A vitals feature's value, `None` if not recorded.
    pub fn feature(&self, name: &str) -> Option<f64> {
        let symptom = |s: Symptom| {
            self.symptoms
                .as_ref()
                .map(|l| f64::from(u8::from(l.contains(&s))))
        };
        match name {
            "age" => self.age_years.map(f64::from),
            "sex_male" => self.sex.map(|s| f64::from(u8::from(s == Sex::Male))),
            "spo2" => self.spo2.map(f64::from),
            "respiratory_rate" => self.respiratory_rate.map(f64::from),
            "pulse" => self.pulse.map(f64::from),
            "temperature" => self.temperature_c.map(f64::from),
            "fever" => symptom(Symptom::Fever),
            "cough" => symptom(Symptom::Cough),
            "dyspnea" => symptom(Symptom::Dyspnea),
            _ => None,
        }
    }
}

/// One video's reading, as the combiner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneReading {
    /// "L1".."R6" (the side is the first letter).
    pub zone: String,
    pub covid_prob: f32,
    /// Finding probabilities; zeros for a video without findings.
    pub findings: [f32; 5],
    pub severity_probs: [f32; 4],
}

/// The combiner's answer for one patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Combined {
    /// [`IMAGE_FEATURES`], in order.
    pub image_features: [f64; 9],
    pub image_probability: f32,
    /// Only when vitals were given and the model has a vitals combiner.
    pub vitals_probability: Option<f32>,
    /// The one that counts: the vitals combiner's if there is one, else the image one's.
    pub probability: f32,
    /// The threshold matching `probability`.
    pub threshold: f32,
    pub vitals_used: bool,
}

impl Combined {
    pub fn flagged(&self) -> bool {
        self.probability >= self.threshold
    }
}

/// Zone features merged over a zone's videos (element-wise max).
#[derive(Debug, Clone, Copy)]
struct Zone {
    covid_logit: f64,
    b_lines: f64,
    consolidation: f64,
    effusion: f64,
    expected_severity: f64,
}

fn covid_logit(p: f32) -> f64 {
    let p = (p as f64).clamp(LOGIT_EPS, 1.0 - LOGIT_EPS);
    (p / (1.0 - p)).ln()
}

/// The image features of a patient's videos ([`IMAGE_FEATURES`] order).
pub fn image_features(videos: &[ZoneReading], finding_thresholds: &[f32]) -> [f64; 9] {
    // A video without a zone is its own area: it cannot be assumed to re-scan another one.
    let mut zones: BTreeMap<String, Zone> = BTreeMap::new();
    for (i, v) in videos.iter().enumerate() {
        let e: f64 = v
            .severity_probs
            .iter()
            .enumerate()
            .map(|(k, p)| k as f64 * *p as f64)
            .sum();
        let new = Zone {
            covid_logit: covid_logit(v.covid_prob),
            b_lines: v.findings[1] as f64,
            consolidation: v.findings[2] as f64,
            effusion: v.findings[3] as f64,
            expected_severity: e,
        };
        let key = if v.zone.is_empty() {
            format!("#{i}")
        } else {
            v.zone.to_ascii_uppercase()
        };
        zones
            .entry(key)
            .and_modify(|z| {
                z.covid_logit = z.covid_logit.max(new.covid_logit);
                z.b_lines = z.b_lines.max(new.b_lines);
                z.consolidation = z.consolidation.max(new.consolidation);
                z.effusion = z.effusion.max(new.effusion);
                z.expected_severity = z.expected_severity.max(new.expected_severity);
            })
            .or_insert(new);
    }
    if zones.is_empty() {
        return [0.0; 9];
    }
    let n = zones.len() as f64;
    let b_thr = finding_thresholds
        .get(1)
        .copied()
        .unwrap_or(DEFAULT_FINDING_THRESHOLD) as f64;
    let all = || zones.values();
    let max = |f: fn(&Zone) -> f64| all().map(f).fold(f64::NEG_INFINITY, f64::max);
    let side_max = |side: char| {
        zones
            .iter()
            .filter(|(name, _)| name.starts_with(side))
            .map(|(_, z)| z.b_lines)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let bilateral = match (side_max('L'), side_max('R')) {
        (Some(l), Some(r)) => l.min(r),
        _ => 0.0,
    };
    [
        all().map(|z| z.covid_logit).sum::<f64>() / n,
        max(|z| z.covid_logit),
        all().filter(|z| z.b_lines >= b_thr).count() as f64 / n,
        all().map(|z| z.b_lines).sum::<f64>() / n,
        max(|z| z.expected_severity),
        all().map(|z| z.expected_severity).sum::<f64>() / (3.0 * n),
        max(|z| z.consolidation),
        max(|z| z.effusion),
        bilateral,
    ]
}

/// Combines a patient's videos (and vitals, if any) with the sidecar's `patient` block.
pub fn combine(
    videos: &[ZoneReading],
    vitals: Option<&Vitals>,
    model: &PatientModel,
    finding_thresholds: &[f32],
) -> Combined {
    let image = image_features(videos, finding_thresholds);
    let value = |name: &str| -> Option<f64> {
        match IMAGE_FEATURES.iter().position(|f| *f == name) {
            Some(i) => Some(image[i]),
            None => vitals.and_then(|v| v.feature(name)),
        }
    };
    let image_p = model.image.probability(value) as f32;
    let vitals_p = match (vitals, &model.vitals) {
        (Some(_), Some(c)) => Some((c.probability(value) as f32, c)),
        _ => None,
    };
    match vitals_p {
        Some((p, c)) => Combined {
            image_features: image,
            image_probability: image_p,
            vitals_probability: Some(p),
            probability: p,
            threshold: c.threshold.unwrap_or(model.threshold),
            vitals_used: true,
        },
        None => Combined {
            image_features: image,
            image_probability: image_p,
            vitals_probability: None,
            probability: image_p,
            threshold: model.threshold,
            vitals_used: false,
        },
    }
}

#[cfg(test)]
mod tests;
