//! Frames → video → patient. The same rules are in `training/pleura_train/metrics.py`,
//! which produced the model card's numbers.

use pleura_shared::{ClassProbs, FlagReason, PatientSummary, ScanAnalysis, Severity};

use crate::media::FrameScore;
use crate::model::{FrameOutputs, ModelInfo};

/// Frames → one reading of the video.
///
/// Class and severity distributions are the mean over frames: consecutive frames are
/// near-duplicates, so a vote would overweight long static stretches no more than a
/// mean, and the mean keeps the calibrated probabilities the model was trained for.
/// Severity is the most probable score of that mean. Uncertainty is the normalised
/// entropy of the mean class distribution, which includes the frames' disagreement
/// (entropy of the mean ≥ mean of the entropies).
pub fn aggregate_video(out: &FrameOutputs, info: &ModelInfo, frames_total: usize) -> ScanAnalysis {
    let n = out.n.max(1) as f32;
    let mut cp = [0f32; 3];
    let mut sp = [0f32; 4];
    for (c, s) in out.class_probs.iter().zip(&out.severity_probs) {
        for i in 0..3 {
            cp[i] += c[i] / n;
        }
        for i in 0..4 {
            sp[i] += s[i] / n;
        }
    }
    let severity = argmax(&sp) as u8;
    let uncertainty = normalised_entropy(&cp);
    let class_probs = ClassProbs::from_slice(&cp);
    let mut reasons = Vec::new();
    if class_probs.covid >= info.covid_threshold {
        reasons.push(FlagReason::CovidSuspected);
    }
    if class_probs.most_likely() == pleura_shared::LungClass::OtherPneumonia {
        reasons.push(FlagReason::PneumoniaSuspected);
    }
    if severity >= 2 {
        reasons.push(FlagReason::HighSeverity);
    }
    if uncertainty >= info.uncertainty_flag {
        reasons.push(FlagReason::Uncertain);
    }
    ScanAnalysis {
        class_probs,
        severity: Severity::new(severity)
            .unwrap_or(Severity::new(Severity::MAX).expect("3 is valid")),
        severity_probs: sp,
        uncertainty,
        flagged: !reasons.is_empty(),
        flag_reasons: reasons,
        frames_total: frames_total as u32,
        frames_analysed: out.n as u32,
        model_version: info.label(),
    }
}

/// Where the pathological pattern is: the mean class activation map of the non-normal
/// classes, weighted by their probability, rescaled to 0..1. Coarse (7×7): meant to point
/// the specialist at a region, not to segment it.
pub fn localisation_map(out: &FrameOutputs) -> Vec<f32> {
    let s2 = out.cam_size * out.cam_size;
    let mut map = vec![0f32; s2];
    for (f, probs) in out.class_probs.iter().enumerate() {
        for (c, p) in probs.iter().enumerate().take(2) {
            let cam = &out.cam[(f * 3 + c) * s2..(f * 3 + c + 1) * s2];
            for (m, v) in map.iter_mut().zip(cam) {
                *m += p * v;
            }
        }
    }
    let (lo, hi) = map
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if hi > lo {
        map.iter_mut().for_each(|v| *v = (*v - lo) / (hi - lo));
    } else {
        map.iter_mut().for_each(|v| *v = 0.0);
    }
    map
}

/// Each frame's pathology (1 − P(normal)) and the map of its pathological classes (the
/// larger of the COVID and other-pneumonia maps), rescaled to 0..1 within the frame;
/// `indices` are the frames' source numbers.
pub fn frame_scores(out: &FrameOutputs, indices: &[usize]) -> Vec<FrameScore> {
    let s2 = out.cam_size * out.cam_size;
    (0..out.n)
        .map(|f| {
            let at = |c: usize| &out.cam[(f * 3 + c) * s2..(f * 3 + c + 1) * s2];
            let mut cam: Vec<f32> = at(0).iter().zip(at(1)).map(|(a, b)| a.max(*b)).collect();
            let (lo, hi) = cam
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            if hi > lo {
                cam.iter_mut().for_each(|v| *v = (*v - lo) / (hi - lo));
            } else {
                cam.iter_mut().for_each(|v| *v = 0.0);
            }
            FrameScore {
                index: indices.get(f).copied().unwrap_or(f),
                pathology: (1.0 - out.class_probs[f][2]).clamp(0.0, 1.0),
                cam,
            }
        })
        .collect()
}

/// Videos of one patient (`zone` is the BLUE point / ICLUS area) → lung score and COVID
/// probability. The lung score sums, over zones, the worst severity seen in the zone
/// (a repeated zone is a re-scan, not a new area). The COVID probability is the mean of
/// the videos' probabilities, the rule the cross-validation used.
pub fn summarize_patient(
    videos: &[(String, ScanAnalysis)],
    covid_threshold: f32,
) -> PatientSummary {
    let mut worst: std::collections::BTreeMap<&str, u8> = Default::default();
    for (zone, a) in videos {
        let w = worst.entry(zone.as_str()).or_insert(0);
        *w = (*w).max(a.severity.score());
    }
    let covid =
        videos.iter().map(|(_, a)| a.class_probs.covid).sum::<f32>() / videos.len().max(1) as f32;
    let lung_score = worst.values().map(|&v| v as u32).sum();
    PatientSummary {
        zones: worst.len(),
        lung_score,
        covid_probability: covid,
        flagged: covid >= covid_threshold || videos.iter().any(|(_, a)| a.flagged),
    }
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for i in 1..v.len() {
        if v[i] > v[best] {
            best = i;
        }
    }
    best
}

fn normalised_entropy(p: &[f32]) -> f32 {
    let h: f32 = p.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.ln()).sum();
    (h / (p.len() as f32).ln()).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            name: "t".into(),
            version: "1".into(),
            sha256: String::new(),
            classes: vec![],
            covid_threshold: 0.5,
            uncertainty_flag: 0.9,
            parameters: 0,
            macs_per_frame: 0,
        }
    }

    fn outputs(frames: &[([f32; 3], [f32; 4])]) -> FrameOutputs {
        FrameOutputs {
            n: frames.len(),
            class_probs: frames.iter().map(|f| f.0).collect(),
            severity_probs: frames.iter().map(|f| f.1).collect(),
            uncertainty: vec![0.0; frames.len()],
            cam: vec![0.0; frames.len() * 3],
            cam_size: 1,
        }
    }

    #[test]
    fn video_is_mean_of_frames_and_flags_explain_themselves() {
        let out = outputs(&[
            ([0.9, 0.05, 0.05], [0.0, 0.2, 0.7, 0.1]),
            ([0.5, 0.1, 0.4], [0.0, 0.4, 0.5, 0.1]),
        ]);
        let a = aggregate_video(&out, &info(), 80);
        assert!((a.class_probs.covid - 0.7).abs() < 1e-6);
        assert_eq!(a.severity.score(), 2);
        assert_eq!(
            a.flag_reasons,
            vec![FlagReason::CovidSuspected, FlagReason::HighSeverity]
        );
        assert!(a.flagged);
        assert_eq!((a.frames_total, a.frames_analysed), (80, 2));
    }

    #[test]
    fn disagreeing_frames_are_uncertain() {
        let out = outputs(&[
            ([0.98, 0.01, 0.01], [1.0, 0.0, 0.0, 0.0]),
            ([0.01, 0.01, 0.98], [1.0, 0.0, 0.0, 0.0]),
        ]);
        let a = aggregate_video(&out, &info(), 2);
        let confident = aggregate_video(
            &outputs(&[([0.01, 0.01, 0.98], [1.0, 0.0, 0.0, 0.0])]),
            &info(),
            1,
        );
        assert!(
            a.uncertainty > 0.6 && confident.uncertainty < 0.15,
            "{} {}",
            a.uncertainty,
            confident.uncertainty
        );
        assert!(!confident.flagged);
    }

    #[test]
    fn lung_score_takes_worst_per_zone() {
        let mk = |sev: u8, covid: f32| {
            let mut a = aggregate_video(
                &outputs(&[([covid, 0.0, 1.0 - covid], [1.0, 0.0, 0.0, 0.0])]),
                &info(),
                1,
            );
            a.severity = Severity::new(sev).unwrap();
            a
        };
        let v = vec![
            ("L1".to_string(), mk(1, 0.2)),
            ("L1".to_string(), mk(3, 0.4)),
            ("R2".to_string(), mk(2, 0.9)),
        ];
        let p = summarize_patient(&v, 0.5);
        assert_eq!((p.zones, p.lung_score), (2, 5));
        assert!((p.covid_probability - 0.5).abs() < 1e-6 && p.flagged);
    }
}
