use serde::{Deserialize, Serialize};

/// The three findings the model separates. Order matches the model's output columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LungClass {
    Covid,
    OtherPneumonia,
    Normal,
}

impl LungClass {
    pub const ALL: [LungClass; 3] = [
        LungClass::Covid,
        LungClass::OtherPneumonia,
        LungClass::Normal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LungClass::Covid => "covid",
            LungClass::OtherPneumonia => "other_pneumonia",
            LungClass::Normal => "normal",
        }
    }
}

/// Probabilities for [`LungClass::ALL`], in that order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassProbs {
    pub covid: f32,
    pub other_pneumonia: f32,
    pub normal: f32,
}

impl ClassProbs {
    pub fn from_slice(p: &[f32; 3]) -> Self {
        Self {
            covid: p[0],
            other_pneumonia: p[1],
            normal: p[2],
        }
    }

    pub fn as_array(&self) -> [f32; 3] {
        [self.covid, self.other_pneumonia, self.normal]
    }

    /// Probability that the scan shows any pathology.
    pub fn pathological(&self) -> f32 {
        1.0 - self.normal
    }

    pub fn most_likely(&self) -> LungClass {
        let a = self.as_array();
        let mut best = 0;
        for i in 1..3 {
            if a[i] > a[best] {
                best = i;
            }
        }
        LungClass::ALL[best]
    }
}

/// Soldati/ICLUS lung ultrasound score of one zone: 0 (A-lines, regular pleura) to
/// 3 (white lung / large consolidations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Severity(u8);

#[derive(Debug, thiserror::Error)]
#[error("severity score {0} is outside the Soldati scale 0-3")]
pub struct SeverityError(pub u8);

impl Severity {
    pub const MAX: u8 = 3;

    pub fn new(score: u8) -> Result<Self, SeverityError> {
        if score <= Self::MAX {
            Ok(Self(score))
        } else {
            Err(SeverityError(score))
        }
    }

    pub fn score(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Severity {
    type Error = SeverityError;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}

impl From<Severity> for u8 {
    fn from(s: Severity) -> u8 {
        s.0
    }
}

/// Why a scan was put on the specialist's worklist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagReason {
    /// COVID-19 probability at or above the model's shipped threshold.
    CovidSuspected,
    /// Other pneumonia is the most likely class.
    PneumoniaSuspected,
    /// Video severity 2 or 3.
    HighSeverity,
    /// The model is unsure; a human should look.
    Uncertain,
}

impl FlagReason {
    pub fn describe(self) -> &'static str {
        match self {
            FlagReason::CovidSuspected => "covid-19 probability above threshold",
            FlagReason::PneumoniaSuspected => "pattern most consistent with another pneumonia",
            FlagReason::HighSeverity => "severity score 2 or higher",
            FlagReason::Uncertain => "model uncertain, needs a specialist",
        }
    }
}

/// The model's reading of one scan (a video or a still image). Supports triage, not
/// diagnosis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanAnalysis {
    pub class_probs: ClassProbs,
    pub severity: Severity,
    /// Mean of the frames' severity distributions, scores 0..=3.
    pub severity_probs: [f32; 4],
    /// 0 = certain, 1 = uniform over the classes (mean normalised entropy of the frames,
    /// raised by disagreement between frames).
    pub uncertainty: f32,
    pub flagged: bool,
    pub flag_reasons: Vec<FlagReason>,
    pub frames_total: u32,
    pub frames_analysed: u32,
    pub model_version: String,
    /// Probabilities of the lung-ultrasound findings (model v2 only; `None` for models
    /// without a findings head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<Findings>,
}

/// Probabilities (0..1) of the five lung-ultrasound findings a v2 model reports, in the
/// model's (and the wire's) order: [`Findings::NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Findings {
    pub a_lines: f32,
    pub b_lines: f32,
    pub consolidation: f32,
    pub effusion: f32,
    pub pleural_irregularity: f32,
}

impl Findings {
    /// Column names, in order (the sidecar's `findings` list).
    pub const NAMES: [&'static str; 5] = [
        "a_lines",
        "b_lines",
        "consolidation",
        "effusion",
        "pleural_irregularity",
    ];
    /// What people call them, in the same order.
    pub const LABELS: [&'static str; 5] = [
        "A-lines",
        "B-lines",
        "Consolidation",
        "Effusion",
        "Pleural irregularity",
    ];
    /// Where a finding counts as present when the model's own thresholds are not known
    /// (the hub: thresholds do not travel on the wire).
    pub const DEFAULT_THRESHOLD: f32 = 0.5;

    pub fn from_array(p: [f32; 5]) -> Self {
        Self {
            a_lines: p[0],
            b_lines: p[1],
            consolidation: p[2],
            effusion: p[3],
            pleural_irregularity: p[4],
        }
    }

    pub fn as_array(&self) -> [f32; 5] {
        [
            self.a_lines,
            self.b_lines,
            self.consolidation,
            self.effusion,
            self.pleural_irregularity,
        ]
    }

    /// Whether each finding is present: probability ≥ its threshold (`thresholds` in
    /// [`Findings::NAMES`] order; a missing one is [`Findings::DEFAULT_THRESHOLD`]).
    pub fn present(&self, thresholds: &[f32]) -> [bool; 5] {
        let p = self.as_array();
        std::array::from_fn(|j| {
            p[j] >= thresholds
                .get(j)
                .copied()
                .unwrap_or(Self::DEFAULT_THRESHOLD)
        })
    }
}

/// Videos of one patient combined: the lung ultrasound score (sum over zones of the
/// worst severity seen in that zone) and a patient-level COVID-19 probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientSummary {
    pub zones: usize,
    pub lung_score: u32,
    pub covid_probability: f32,
    pub flagged: bool,
    /// The probability came from the combiner that also weighs the clinic's vitals
    /// (model v2 with a vitals combiner, and vitals given for the patient).
    #[serde(default)]
    pub vitals_used: bool,
}
