use super::*;

fn zone(z: &str, covid: f32, b_lines: f32, sev: [f32; 4]) -> ZoneReading {
    ZoneReading {
        zone: z.into(),
        covid_prob: covid,
        findings: [0.1, b_lines, 0.2, 0.05, 0.3],
        severity_probs: sev,
    }
}

fn combiner(features: &[&str], weights: &[f32], threshold: Option<f32>) -> Combiner {
    Combiner {
        features: features.iter().map(|s| s.to_string()).collect(),
        mean: vec![0.0; features.len()],
        scale: vec![1.0; features.len()],
        weights: weights.to_vec(),
        bias: 0.0,
        threshold,
    }
}

#[test]
fn zones_merge_by_max_before_the_features() {
    let v = vec![
        zone("L1", 0.2, 0.9, [0.0, 0.0, 1.0, 0.0]),
        zone("L1", 0.8, 0.1, [1.0, 0.0, 0.0, 0.0]),
        zone("R2", 0.5, 0.3, [0.0, 0.0, 0.0, 1.0]),
    ];
    let f = image_features(&v, &[0.5; 5]);
    let l1 = covid_logit(0.8); // the zone's max
    assert!((f[0] - (l1 + 0.0) / 2.0).abs() < 1e-9, "{f:?}");
    assert!((f[1] - l1).abs() < 1e-9);
    assert!((f[2] - 0.5).abs() < 1e-9, "one of two zones has B-lines");
    assert!((f[3] - (0.9 + 0.3) / 2.0).abs() < 1e-6);
    assert!((f[4] - 3.0).abs() < 1e-9);
    assert!((f[5] - (2.0 + 3.0) / 6.0).abs() < 1e-9);
    assert!((f[6] - 0.2).abs() < 1e-6 && (f[7] - 0.05).abs() < 1e-6);
    assert!(
        (f[8] - 0.3).abs() < 1e-6,
        "bilateral = min of the sides' maxima"
    );
}

#[test]
fn bilateral_needs_both_sides_and_extreme_probabilities_stay_finite() {
    let v = vec![
        zone("L1", 1.0, 0.9, [1.0, 0.0, 0.0, 0.0]),
        zone("L2", 0.0, 0.8, [1.0, 0.0, 0.0, 0.0]),
    ];
    let f = image_features(&v, &[]);
    assert_eq!(f[8], 0.0);
    assert!(f.iter().all(|x| x.is_finite()));
    assert!((f[1] - (0.9999f64 / 0.0001).ln()).abs() < 1e-6);
    assert_eq!(image_features(&[], &[]), [0.0; 9]);
}

#[test]
fn vitals_combiner_is_used_only_with_vitals_and_missing_values_are_imputed() {
    let mut vitals = combiner(
        &["covid_logit_max", "spo2", "fever"],
        &[1.0, -2.0, 1.0],
        Some(0.4),
    );
    vitals.mean = vec![0.0, 95.0, 0.3];
    vitals.scale = vec![1.0, 5.0, 0.5];
    let model = PatientModel {
        threshold: 0.6,
        image: combiner(&["covid_logit_max"], &[1.0], None),
        vitals: Some(vitals),
    };
    let v = vec![zone("R1", 0.5, 0.0, [1.0, 0.0, 0.0, 0.0])];
    let image_only = combine(&v, None, &model, &[]);
    assert!(!image_only.vitals_used && image_only.vitals_probability.is_none());
    assert!((image_only.probability - 0.5).abs() < 1e-6);
    assert_eq!(image_only.threshold, 0.6);
    assert!(!image_only.flagged());
    // all vitals missing: every vitals feature sits at its mean, contributing 0
    let empty = combine(&v, Some(&Vitals::default()), &model, &[]);
    assert!(empty.vitals_used);
    assert!((empty.probability - 0.5).abs() < 1e-6);
    assert_eq!(empty.threshold, 0.4);
    assert!(empty.flagged());
    // low saturation and fever push it up: z = -2·(85−95)/5 + (1−0.3)/0.5
    let ill = Vitals {
        spo2: Some(85.0),
        symptoms: Some(vec![Symptom::Fever]),
        ..Vitals::default()
    };
    let c = combine(&v, Some(&ill), &model, &[]);
    let want = sigmoid(4.0 + 1.4) as f32;
    assert!((c.probability - want).abs() < 1e-6, "{c:?}");
    assert_eq!(c.vitals_probability, Some(c.probability));
    // no vitals combiner in the sidecar: image only even with vitals
    let no_vitals_model = PatientModel {
        vitals: None,
        ..model
    };
    assert!(!combine(&v, Some(&ill), &no_vitals_model, &[]).vitals_used);
}

#[test]
fn unknown_features_and_bad_shapes_are_load_errors() {
    let m = PatientModel {
        threshold: 0.5,
        image: combiner(&["covid_logit_mean", "spo2"], &[1.0, 1.0], None),
        vitals: None,
    };
    let e = m.validate().unwrap_err();
    assert!(e.contains("unknown feature \"spo2\""), "{e}");
    let m = PatientModel {
        threshold: 0.5,
        image: combiner(&["covid_logit_mean"], &[1.0], None),
        vitals: Some(combiner(&["age", "heart_rate"], &[1.0, 1.0], None)),
    };
    let e = m.validate().unwrap_err();
    assert!(
        e.contains("patient.vitals") && e.contains("heart_rate"),
        "{e}"
    );
    let mut m = PatientModel {
        threshold: 0.5,
        image: combiner(&["covid_logit_mean"], &[1.0, 2.0], None),
        vitals: None,
    };
    assert!(m.validate().unwrap_err().contains("weights"));
    m.image.weights.pop();
    m.image.scale[0] = 0.0;
    assert!(m.validate().unwrap_err().contains("scale"));
}

#[test]
fn vitals_files_are_validated_not_trusted() {
    let ok = Vitals::from_json(
        br#"{"age_years": 61, "sex": "m", "spo2": 91, "respiratory_rate": 24,
            "pulse": 104, "temperature_c": 38.4, "symptoms": ["fever", "dyspnea"]}"#,
    )
    .unwrap();
    assert_eq!(ok.feature("sex_male"), Some(1.0));
    assert_eq!(ok.feature("cough"), Some(0.0));
    assert_eq!(ok.feature("dyspnea"), Some(1.0));
    assert_eq!(ok.feature("temperature"), Some(38.4f32 as f64));
    assert_eq!(Vitals::from_json(b"{}").unwrap().feature("fever"), None);
    for (bad, expect) in [
        (&br#"{"spo2": 130}"#[..], "spo2"),
        (br#"{"age_years": -3}"#, "age_years"),
        (br#"{"temperature_c": 98.6}"#, "temperature_c"),
        (br#"{"pulse": 1e40}"#, "pulse"),
        (br#"{"sex": "x"}"#, "unknown variant"),
        (br#"{"symptoms": ["sneezing"]}"#, "unknown variant"),
        (br#"{"weight": 70}"#, "unknown field"),
        (br#"{"spo2": "92"}"#, "invalid type"),
        (b"not json", "expected"),
    ] {
        let e = Vitals::from_json(bad).unwrap_err().to_string();
        assert!(e.contains(expect), "{e} should mention {expect}");
    }
}
