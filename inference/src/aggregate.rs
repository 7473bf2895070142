//! Frames → video → patient. The same rules are in `training/pleura_train/metrics.py`,
//! which produced the model card's numbers.

use pleura_shared::{ClassProbs, Findings, FlagReason, PatientSummary, ScanAnalysis, Severity};

use crate::media::FrameScore;
use crate::model::{FrameOutputs, ModelError, ModelInfo};
use crate::patient::{combine, Vitals, ZoneReading};
use crate::pooling::{video_from_heads, PoolParams};

/// Frames → one reading of the video.
///
/// A model without the v2 heads: class and severity distributions are the mean over
/// frames: consecutive frames are near-duplicates, so a vote would overweight long
/// static stretches no more than a mean, and the mean keeps the calibrated probabilities
/// the model was trained for. Severity is the most probable score of that mean.
///
/// A v2 model (it has `attention`, `class_logits`, `severity_latent`, `finding_logits`):
/// attention pooling with temperature calibration and an ordinal severity whose median
/// is the score (`pooling::video_from_heads`), plus the findings.
///
/// Uncertainty is the normalised entropy of the video's class distribution, which
/// includes the frames' disagreement (entropy of the mean ≥ mean of the entropies).
/// Non-finite model outputs are an error naming the output: no NaN leaves here.
pub fn aggregate_video(
    out: &FrameOutputs,
    info: &ModelInfo,
    frames_total: usize,
) -> Result<ScanAnalysis, ModelError> {
    if out.class_probs.iter().flatten().any(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite {
            name: "class_probs",
        });
    }
    if out.severity_probs.iter().flatten().any(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite {
            name: "severity_probs",
        });
    }
    let (cp, sp, severity, findings) = match &out.heads {
        Some(heads) => {
            let v = video_from_heads(
                heads,
                &PoolParams {
                    calibration: &info.calibration,
                    cutpoints: &info.severity_cutpoints,
                    finding_thresholds: &info.finding_thresholds,
                },
            )?;
            (
                v.class_probs,
                v.severity_probs,
                v.severity,
                Some(Findings::from_array(v.findings)),
            )
        }
        None => {
            let (cp, sp) = mean_of_frames(out);
            (cp, sp, argmax(&sp) as u8, None)
        }
    };
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
    Ok(ScanAnalysis {
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
        findings,
    })
}

/// The mean over frames of the class and severity distributions (the v1 rule).
fn mean_of_frames(out: &FrameOutputs) -> ([f32; 3], [f32; 4]) {
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
    (cp, sp)
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
        vitals_used: false,
    }
}

/// [`summarize_patient`] with the model's patient combiner when its sidecar has one
/// (model v2), with the clinic's `vitals` if given: the lung score is the same; the
/// COVID-19 probability is the combiner's (the vitals combiner's when there are vitals
/// and the model has one), flagged at the matching threshold or if any video is.
/// Without a `patient` block this is exactly [`summarize_patient`].
pub fn summarize_patient_with(
    videos: &[(String, ScanAnalysis)],
    info: &ModelInfo,
    vitals: Option<&Vitals>,
) -> PatientSummary {
    let base = summarize_patient(videos, info.covid_threshold);
    let Some(model) = &info.patient else {
        return base;
    };
    if videos.is_empty() {
        return base;
    }
    let c = combine(
        &zone_readings(videos),
        vitals,
        model,
        &info.finding_thresholds,
    );
    PatientSummary {
        covid_probability: c.probability,
        flagged: c.flagged() || videos.iter().any(|(_, a)| a.flagged),
        vitals_used: c.vitals_used,
        ..base
    }
}

/// The combiner's view of a patient's videos (findings are zeros where a video has none).
pub fn zone_readings(videos: &[(String, ScanAnalysis)]) -> Vec<ZoneReading> {
    videos
        .iter()
        .map(|(zone, a)| ZoneReading {
            zone: zone.clone(),
            covid_prob: a.class_probs.covid,
            findings: a.findings.map(|f| f.as_array()).unwrap_or([0.0; 5]),
            severity_probs: a.severity_probs,
        })
        .collect()
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

    const V1: &str = r#"{"name": "t", "version": "1", "sha256": "", "classes": [],
        "covid_threshold": 0.5, "uncertainty_flag": 0.9, "parameters": 0, "macs_per_frame": 0"#;

    fn info() -> ModelInfo {
        ModelInfo::from_json(format!("{V1}}}").as_bytes()).unwrap()
    }

    /// A v2 sidecar: calibration, cut-points, thresholds and a patient combiner.
    fn info_v2() -> ModelInfo {
        let v2 = r#", "input": {"name": "frames", "size": 224, "max_frames": 16},
            "findings": ["a_lines","b_lines","consolidation","effusion","pleural_irregularity"],
            "finding_thresholds": [0.5, 0.6, 0.5, 0.5, 0.5],
            "calibration": {"class_temperature": 2.0, "severity_temperature": 1.0,
                            "finding_temperature": [1, 1, 1, 1, 1]},
            "severity_cutpoints": [-1.0, 0.5, 2.0],
            "patient": {"threshold": 0.42,
                "image": {"features": ["covid_logit_max"], "mean": [0], "scale": [1],
                          "weights": [1], "bias": 0},
                "vitals": {"features": ["covid_logit_max", "spo2"], "mean": [0, 95],
                           "scale": [1, 5], "weights": [1, -1], "bias": 0,
                           "threshold": 0.4}}}"#;
        ModelInfo::from_json(format!("{V1}{v2}").as_bytes()).unwrap()
    }

    fn outputs(frames: &[([f32; 3], [f32; 4])]) -> FrameOutputs {
        FrameOutputs {
            n: frames.len(),
            class_probs: frames.iter().map(|f| f.0).collect(),
            severity_probs: frames.iter().map(|f| f.1).collect(),
            uncertainty: vec![0.0; frames.len()],
            cam: vec![0.0; frames.len() * 3],
            cam_size: 1,
            heads: None,
        }
    }

    #[test]
    fn video_is_mean_of_frames_and_flags_explain_themselves() {
        let out = outputs(&[
            ([0.9, 0.05, 0.05], [0.0, 0.2, 0.7, 0.1]),
            ([0.5, 0.1, 0.4], [0.0, 0.4, 0.5, 0.1]),
        ]);
        let a = aggregate_video(&out, &info(), 80).unwrap();
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
        let a = aggregate_video(&out, &info(), 2).unwrap();
        let confident = aggregate_video(
            &outputs(&[([0.01, 0.01, 0.98], [1.0, 0.0, 0.0, 0.0])]),
            &info(),
            1,
        )
        .unwrap();
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
            )
            .unwrap();
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

    fn v2_outputs(attention: &[f32], class_logits: [f32; 3], latent: f32) -> FrameOutputs {
        let n = attention.len();
        let mut out = outputs(&vec![([0.2, 0.3, 0.5], [0.25; 4]); n]);
        out.heads = Some(crate::pooling::Heads {
            class_logits: (0..n)
                .map(|i| if i == 0 { class_logits } else { [0.0; 3] })
                .collect(),
            severity_latent: (0..n).map(|i| if i == 0 { latent } else { -5.0 }).collect(),
            finding_logits: (0..n)
                .map(|i| {
                    if i == 0 {
                        [-3.0, 2.0, 0.0, -1.0, 0.5]
                    } else {
                        [0.0; 5]
                    }
                })
                .collect(),
            attention: attention.to_vec(),
        });
        out
    }

    #[test]
    fn v1_sidecars_read_as_today_and_v2_fields_are_checked() {
        let i = info();
        assert_eq!((i.input_size(), i.input.max_frames), (112, 32));
        assert!(i.patient.is_none() && i.severity_cutpoints.is_empty());
        let v2 = info_v2();
        assert_eq!((v2.input_size(), v2.input.max_frames), (224, 16));
        for (bad, expect) in [
            (r#", "findings": ["b_lines"]"#, "findings"),
            (r#", "finding_thresholds": [0.5]"#, "finding_thresholds"),
            (r#", "severity_cutpoints": [1, 2]"#, "severity_cutpoints"),
            (
                r#", "calibration": {"class_temperature": -1}"#,
                "class_temperature",
            ),
            (r#", "input": {"size": 0}"#, "input.size"),
            (
                r#", "patient": {"threshold": 0.5, "image": {"features": ["covid_logit_median"],
                   "mean": [0], "scale": [1], "weights": [1], "bias": 0}}"#,
                "unknown feature \"covid_logit_median\"",
            ),
        ] {
            let e = ModelInfo::from_json(format!("{V1}{bad}}}").as_bytes()).unwrap_err();
            assert!(e.contains(expect), "{e} should mention {expect}");
        }
    }

    #[test]
    fn v2_heads_are_attention_pooled_calibrated_and_give_findings() {
        // all the attention on frame 0
        let out = v2_outputs(&[20.0, -20.0], [2.0, 0.0, 0.0], 1.0);
        let a = aggregate_video(&out, &info_v2(), 10).unwrap();
        // class temperature 2: softmax([1, 0, 0])
        let e = 1f32.exp();
        assert!((a.class_probs.covid - e / (e + 2.0)).abs() < 1e-5, "{a:?}");
        // latent 1.0 is past cut-points -1 and 0.5: median 2
        assert_eq!(a.severity.score(), 2);
        assert!((a.severity_probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let f = a.findings.expect("v2 has findings");
        assert!((f.b_lines - 0.880797).abs() < 1e-5, "{f:?}");
        assert_eq!(
            f.present(&info_v2().finding_thresholds),
            [false, true, true, false, true]
        );
        assert!(a.flagged && a.flag_reasons.contains(&FlagReason::HighSeverity));
        // outputs without the v2 heads never get findings
        let mut v1 = out.clone();
        v1.heads = None;
        assert!(aggregate_video(&v1, &info_v2(), 10)
            .unwrap()
            .findings
            .is_none());
    }

    #[test]
    fn non_finite_outputs_are_errors_naming_the_output() {
        let mut out = v2_outputs(&[0.0, 0.0], [0.0; 3], 0.0);
        out.heads.as_mut().unwrap().attention[1] = f32::INFINITY;
        let e = aggregate_video(&out, &info_v2(), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("attention"), "{e}");
        let out = outputs(&[([f32::NAN, 0.5, 0.5], [0.25; 4])]);
        let e = aggregate_video(&out, &info(), 1).unwrap_err().to_string();
        assert!(e.contains("class_probs"), "{e}");
        // a v2 output without its sidecar cut-points is named too
        let v2 = v2_outputs(&[0.0], [0.0; 3], 0.0);
        let e = aggregate_video(&v2, &info(), 1).unwrap_err().to_string();
        assert!(e.contains("severity_cutpoints"), "{e}");
    }

    #[test]
    fn the_patient_combiner_replaces_the_mean_only_for_v2_sidecars() {
        let i2 = info_v2();
        let low = aggregate_video(&v2_outputs(&[0.0], [-3.0, 0.0, 2.0], -3.0), &i2, 1).unwrap();
        let videos = vec![("L1".to_string(), low.clone()), ("R1".to_string(), low)];
        // no patient block: today's rule, bit for bit
        assert_eq!(
            summarize_patient_with(&videos, &info(), None),
            summarize_patient(&videos, 0.5)
        );
        let p = summarize_patient_with(&videos, &i2, None);
        let logit = (videos[0].1.class_probs.covid / (1.0 - videos[0].1.class_probs.covid)).ln();
        let want = 1.0 / (1.0 + (-logit).exp());
        assert!((p.covid_probability - want).abs() < 1e-4, "{p:?}");
        assert!(!p.vitals_used && !p.flagged);
        // SpO2 of 70: (70 − 95)/5 · −1 = +5 on the logit, flagged at the vitals threshold
        let vitals = Vitals {
            spo2: Some(70.0),
            ..Vitals::default()
        };
        let pv = summarize_patient_with(&videos, &i2, Some(&vitals));
        assert!(
            pv.vitals_used && pv.flagged && pv.covid_probability > 0.85,
            "{pv:?}"
        );
        assert_eq!((pv.zones, pv.lung_score), (p.zones, p.lung_score));
    }
}
