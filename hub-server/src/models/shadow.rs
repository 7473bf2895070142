//! Shadow comparison: how each candidate release, run beside the active model, would
//! have read the scans the specialists have since given a verdict on. Pure over the
//! examinations and their reads; the running hub writes the result to
//! `<data_dir>/models/shadow.json` (see `control.rs`), which `model status`, the
//! promotion gate and the web page read.
//!
//! Per candidate V, only scans with both a live (current) active reading and a V shadow
//! reading are compared, in examinations whose latest verdict has an impression:
//! COVID-compatible or other pneumonia is positive, normal negative, non-diagnostic left
//! out. An examination counts as flagged by the active model when a compared scan's
//! active reading is flagged, by the candidate when its shadow reading would flag.
//! Only shadow readings from devices the hub offered V in shadow count: a device that
//! sends shadow results it was never asked for (a faulty or hostile one) cannot steer
//! the promotion gate; they are counted apart (`unoffered`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pleura_shared::ResultId;
use serde::{Deserialize, Serialize};

use super::{write_json, ModelsError};
use crate::store::exams::{Exam, ExamResult, Impression, Reads};
use crate::store::HubStore;

/// How often the running hub recomputes `shadow.json`.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// Whether the hub offered release `v` in shadow to `clinic`'s `device`.
pub type ShadowOffered<'a> = &'a dyn Fn(u64, &str, &str) -> bool;

/// Recomputes the comparison from the store and replaces `path` atomically. Blocking.
pub fn refresh(
    store: &dyn HubStore,
    path: &Path,
    offered: ShadowOffered<'_>,
    now_ms: u64,
) -> Result<ShadowReport, String> {
    let reviewed = store.reviewed_exams().map_err(|e| e.to_string())?;
    let report = compare(&reviewed, offered, now_ms);
    write_json(path, &report, 0o600).map_err(|e: ModelsError| e.to_string())?;
    Ok(report)
}

/// `shadow.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub generated_at_ms: u64,
    /// Per candidate release version.
    #[serde(default)]
    pub candidates: BTreeMap<u64, Comparison>,
}

/// A proportion with its counts: `hits` of `of` (None when there is nothing to count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub hits: u64,
    pub of: u64,
}

impl Rate {
    pub fn value(&self) -> Option<f64> {
        (self.of > 0).then(|| self.hits as f64 / self.of as f64)
    }

    fn count(&mut self, hit: bool) {
        self.of += 1;
        self.hits += u64::from(hit);
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value() {
            Some(v) => write!(f, "{:.1}% ({}/{})", v * 100.0, self.hits, self.of),
            None => write!(f, "n/a (0/0)"),
        }
    }
}

/// One model's operating point against the verdicts, at its shipped flag threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Operating {
    /// Positive examinations it flagged.
    pub sensitivity: Rate,
    /// Negative examinations it did not flag.
    pub specificity: Rate,
    /// Quadratic-weighted kappa of its severity against the specialist's zone score.
    pub severity_kappa: Option<f64>,
    /// Scans with a specialist zone score (the kappa's sample).
    pub scored_scans: u64,
}

/// Active vs candidate V on the same scans.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Comparison {
    pub release: u64,
    /// The candidate's model version(s) as its results name them.
    pub model_versions: Vec<String>,
    /// Examinations with a verdict (positive or negative) and at least one compared scan.
    pub exams_compared: u64,
    pub scans_compared: u64,
    pub active: Operating,
    pub candidate: Operating,
    /// Scans where the candidate would flag exactly when the active model flagged.
    pub flag_agreement: Rate,
    /// Scans where both gave the same severity score.
    pub severity_agreement: Rate,
    /// Shadow readings left out: from devices the hub never offered this release in shadow.
    pub unoffered: u64,
    /// Quadratic-weighted kappa of candidate vs active severity.
    pub severity_kappa_vs_active: Option<f64>,
}

/// Quadratic-weighted Cohen's kappa of two 0..=3 ratings of the same items; None with
/// no items or when chance agreement is total (a single category).
pub fn quadratic_kappa(pairs: &[(u8, u8)]) -> Option<f64> {
    const K: usize = 4;
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let mut observed = [[0f64; K]; K];
    let (mut ra, mut rb) = ([0f64; K], [0f64; K]);
    for &(a, b) in pairs {
        let (a, b) = (usize::from(a.min(3)), usize::from(b.min(3)));
        observed[a][b] += 1.0;
        ra[a] += 1.0;
        rb[b] += 1.0;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..K {
        for j in 0..K {
            let w = ((i as f64 - j as f64) / (K as f64 - 1.0)).powi(2);
            num += w * observed[i][j];
            den += w * ra[i] * rb[j] / n;
        }
    }
    (den > 0.0).then(|| 1.0 - num / den)
}

/// The verdict's truth: Some(true) positive, Some(false) negative, None left out.
fn truth(reads: &Reads) -> Option<bool> {
    match reads.latest().impression {
        Impression::CovidCompatible | Impression::OtherPneumonia => Some(true),
        Impression::Normal => Some(false),
        Impression::NonDiagnostic => None,
    }
}

/// The specialist's score for `scan`: a zone read naming any analysis of it.
fn specialist_score(exam: &Exam, reads: &Reads, scan: &ResultId) -> Option<u8> {
    let of_scan = |id: &ResultId| {
        exam.results
            .iter()
            .any(|x| x.id == *id && x.scan_id() == *scan)
    };
    reads
        .latest()
        .zones
        .iter()
        .find(|z| of_scan(&z.result_id))
        .map(|z| z.score)
}

#[derive(Default)]
struct Acc {
    cmp: Comparison,
    active_vs_truth: Vec<(u8, u8)>,
    candidate_vs_truth: Vec<(u8, u8)>,
    candidate_vs_active: Vec<(u8, u8)>,
}

/// Compares every candidate release that has shadow results in `exams`.
pub fn compare(
    reviewed: &[(Exam, Reads)],
    offered: ShadowOffered<'_>,
    now_ms: u64,
) -> ShadowReport {
    let mut accs: BTreeMap<u64, Acc> = BTreeMap::new();
    for (exam, reads) in reviewed {
        let truth = truth(reads);
        // Pairs (active, shadow) per candidate release, matched on the scan.
        let mut pairs: BTreeMap<u64, Vec<(&ExamResult, &ExamResult)>> = BTreeMap::new();
        for s in exam.results.iter().filter(|r| r.shadow && !r.retracted) {
            let acc = accs.entry(s.release).or_default();
            if !offered(s.release, &exam.clinic, &s.device) {
                acc.cmp.unoffered += 1;
                continue;
            }
            if !s.model_version.is_empty() && !acc.cmp.model_versions.contains(&s.model_version) {
                acc.cmp.model_versions.push(s.model_version.clone());
            }
            // The candidate's reading is compared with the same device's active one.
            if let Some(a) = exam
                .live()
                .find(|a| a.scan_id() == s.scan_id() && a.device == s.device)
            {
                pairs.entry(s.release).or_default().push((a, s));
            }
        }
        for (v, pairs) in pairs {
            let acc = accs.entry(v).or_default();
            for (a, s) in &pairs {
                acc.cmp.scans_compared += 1;
                acc.cmp.flag_agreement.count(a.flagged == s.would_flag);
                acc.cmp.severity_agreement.count(a.severity == s.severity);
                acc.candidate_vs_active.push((s.severity, a.severity));
                if let Some(score) = specialist_score(exam, reads, &s.scan_id()) {
                    acc.active_vs_truth.push((a.severity, score));
                    acc.candidate_vs_truth.push((s.severity, score));
                }
            }
            let Some(positive) = truth else {
                continue;
            };
            acc.cmp.exams_compared += 1;
            let active = pairs.iter().any(|(a, _)| a.flagged);
            let candidate = pairs.iter().any(|(_, s)| s.would_flag);
            if positive {
                acc.cmp.active.sensitivity.count(active);
                acc.cmp.candidate.sensitivity.count(candidate);
            } else {
                acc.cmp.active.specificity.count(!active);
                acc.cmp.candidate.specificity.count(!candidate);
            }
        }
    }
    let candidates = accs
        .into_iter()
        .map(|(v, mut acc)| {
            let c = &mut acc.cmp;
            c.release = v;
            c.active.severity_kappa = quadratic_kappa(&acc.active_vs_truth);
            c.active.scored_scans = acc.active_vs_truth.len() as u64;
            c.candidate.severity_kappa = quadratic_kappa(&acc.candidate_vs_truth);
            c.candidate.scored_scans = acc.candidate_vs_truth.len() as u64;
            c.severity_kappa_vs_active = quadratic_kappa(&acc.candidate_vs_active);
            (v, acc.cmp)
        })
        .collect();
    ShadowReport {
        generated_at_ms: now_ms,
        candidates,
    }
}

fn kappa(k: Option<f64>) -> String {
    k.map_or_else(|| "n/a".into(), |k| format!("{k:.2}"))
}

/// The comparison of one candidate as text (`model status`, `model promote`).
pub fn render(c: &Comparison) -> String {
    format!(
        "release {} ({}) vs the active model, on {} reviewed examination(s), {} scan(s):\n\
         \x20 sensitivity   active {}   candidate {}\n\
         \x20 specificity   active {}   candidate {}\n\
         \x20 severity kappa vs specialist   active {} ({} scans)   candidate {} ({} scans)\n\
         \x20   (leans toward the active model: the review form preselects its zone scores)\n\
         \x20 candidate vs active   flag agreement {}   same severity {}   severity kappa {}\n{}",
        c.release,
        if c.model_versions.is_empty() {
            "-".to_string()
        } else {
            c.model_versions.join(", ")
        },
        c.exams_compared,
        c.scans_compared,
        c.active.sensitivity,
        c.candidate.sensitivity,
        c.active.specificity,
        c.candidate.specificity,
        kappa(c.active.severity_kappa),
        c.active.scored_scans,
        kappa(c.candidate.severity_kappa),
        c.candidate.scored_scans,
        c.flag_agreement,
        c.severity_agreement,
        kappa(c.severity_kappa_vs_active),
        if c.unoffered > 0 {
            format!(
                "  left out: {} shadow reading(s) from devices not offered this release in shadow\n",
                c.unoffered
            )
        } else {
            String::new()
        },
    )
}

/// What `model promote` may require of the comparison before it promotes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gate {
    /// At least this many reviewed examinations compared.
    pub min_reviewed: Option<u64>,
    /// Candidate sensitivity at least the active model's on the compared examinations.
    pub not_worse: bool,
}

impl Gate {
    pub fn is_set(&self) -> bool {
        self.min_reviewed.is_some() || self.not_worse
    }

    /// Ok, or why the candidate may not be promoted (naming the numbers).
    pub fn check(&self, version: u64, c: Option<&Comparison>) -> Result<(), String> {
        if !self.is_set() {
            return Ok(());
        }
        let Some(c) = c else {
            return Err(format!(
                "release {version} has no shadow comparison yet (no shadow results on reviewed \
                 examinations in shadow.json; is the hub running?)"
            ));
        };
        let mut why = Vec::new();
        if let Some(min) = self.min_reviewed.filter(|m| c.exams_compared < *m) {
            why.push(format!(
                "{} reviewed examination(s) compared, fewer than the {min} required",
                c.exams_compared
            ));
        }
        if self.not_worse {
            let (a, s) = (c.active.sensitivity, c.candidate.sensitivity);
            match (a.value(), s.value()) {
                (_, None) => why.push(
                    "no positive reviewed examination compared: sensitivity unknown".to_string(),
                ),
                // Compared on the same examinations: the same denominator.
                (Some(av), Some(sv)) if sv < av => why.push(format!(
                    "candidate sensitivity {s} is below the active model's {a}"
                )),
                _ => {}
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "release {version} not promoted: {}",
                why.join("; ")
            ))
        }
    }
}
