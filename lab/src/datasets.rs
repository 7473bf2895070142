//! Reading evaluation folders laid out like `../shared/data/<dataset>`, with the same
//! labels and class mapping as `training/pleura_train/data.py`.

use pleura_inference::patient::{Sex, Symptom, Vitals};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    CovidBlues,
    Pocus,
}

impl Dataset {
    pub fn key(self) -> &'static str {
        match self {
            Dataset::CovidBlues => "covid-blues",
            Dataset::Pocus => "pocus",
        }
    }
}

/// One video or image with what is known about it.
#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub path: PathBuf,
    /// Patient (COVID-BLUES) or source+patient / video (POCUS).
    pub group: String,
    /// BLUE point of a COVID-BLUES video (L1..R3).
    pub zone: String,
    /// COVID-BLUES: PCR result of the patient.
    pub covid: Option<bool>,
    /// POCUS: 0 covid, 1 other pneumonia, 2 normal.
    pub class: Option<usize>,
    pub severity: Option<usize>,
    /// Expert's "B-lines visible" (COVID-BLUES severity.csv, POCUS metadata).
    pub b_lines: Option<bool>,
    /// COVID-BLUES: the patient's recorded vitals and symptoms (clinical_variables.csv).
    pub vitals: Option<Vitals>,
}

fn read_csv(path: &Path) -> Result<Vec<HashMap<String, String>>> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let headers = rdr.headers()?.clone();
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec.with_context(|| format!("reading {}", path.display()))?;
        rows.push(
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect(),
        );
    }
    Ok(rows)
}

pub fn load(dataset: Dataset, root: &Path) -> Result<Vec<Item>> {
    match dataset {
        Dataset::CovidBlues => covid_blues(root),
        Dataset::Pocus => pocus(root),
    }
}

/// A clinical_variables.csv row's vitals, in the clinic's `vitals.json` form (-99 = missing).
fn row_vitals(r: &HashMap<String, String>) -> Vitals {
    let num = |k: &str| {
        r.get(k)
            .and_then(|v| v.trim().parse::<f32>().ok())
            .filter(|v| *v != -99.0)
    };
    let symptoms = [
        ("patient_symp#Fever", Symptom::Fever),
        ("patient_symp#Coughing", Symptom::Cough),
        ("patient_symp#Dyspnea", Symptom::Dyspnea),
    ]
    .into_iter()
    .filter(|(k, _)| num(k) == Some(1.0))
    .map(|(_, s)| s)
    .collect();
    Vitals {
        age_years: num("pat_age"),
        sex: num("pat_sex").map(|v| if v == 1.0 { Sex::Male } else { Sex::Female }),
        spo2: num("oxygen_saturation_without_ox"),
        respiratory_rate: num("respiratory_rate"),
        pulse: num("pulse"),
        temperature_c: num("body_temperature"),
        symptoms: Some(symptoms),
    }
}

fn yes_no(v: Option<&String>) -> Option<bool> {
    match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("yes") | Some("1") => Some(true),
        Some("no") | Some("0") => Some(false),
        _ => None,
    }
}

fn covid_blues(root: &Path) -> Result<Vec<Item>> {
    let mut cov = HashMap::new();
    let mut vitals = HashMap::new();
    for r in read_csv(&root.join("clinical_variables.csv"))? {
        if let (Some(p), Some(c)) = (r.get("patient_id"), r.get("cov_test")) {
            cov.insert(p.clone(), c.trim() == "1");
            vitals.insert(p.clone(), row_vitals(&r));
        }
    }
    let mut sev = HashMap::new();
    let mut blines = HashMap::new();
    for r in read_csv(&root.join("severity.csv"))? {
        if let Some(v) = r.get("video_file") {
            if let Some(b) = yes_no(r.get("B-lines")) {
                blines.insert(v.clone(), b);
            }
            if let Some(Ok(s)) = r.get("Severity Score").map(|s| s.trim().parse::<f64>()) {
                sev.insert(v.clone(), s as usize);
            }
        }
    }
    let dir = root.join("lus_videos");
    let mut items = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        if path.extension().is_none_or(|x| x != "mp4") {
            continue;
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parts: Vec<&str> = stem.split('_').collect();
        if parts.len() < 3 || parts[0] != "patient" {
            tracing::warn!(file = %path.display(), "not named patient_<ID>_<POINT>.mp4; skipped");
            continue;
        }
        items.push(Item {
            covid: cov.get(parts[1]).copied(),
            severity: sev.get(&stem).copied(),
            b_lines: blines.get(&stem).copied(),
            vitals: vitals.get(parts[1]).cloned(),
            group: format!("cb:{}", parts[1]),
            zone: parts[2].to_string(),
            class: None,
            id: stem,
            path,
        });
    }
    items.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(items)
}

fn pocus_class(label: &str) -> Option<usize> {
    match label {
        "COVID-19" => Some(0),
        "Bacterial pneumonia" | "Viral pneumonia" => Some(1),
        "regular" | "Regular" => Some(2),
        _ => None,
    }
}

fn pocus(root: &Path) -> Result<Vec<Item>> {
    let mut files = HashMap::new();
    for sub in ["pocus_videos", "pocus_images"] {
        for probe in ["convex", "linear"] {
            let d = root.join(sub).join(probe);
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() {
                    if let Some(stem) = p.file_stem() {
                        files.insert(stem.to_string_lossy().into_owned(), p);
                    }
                }
            }
        }
    }
    let mut items = Vec::new();
    for r in read_csv(&root.join("dataset_metadata.csv"))? {
        let name = r.get("Filename").cloned().unwrap_or_default();
        let (Some(path), Some(class)) = (
            files.get(&name),
            r.get("Label").and_then(|l| pocus_class(l)),
        ) else {
            continue;
        };
        let get = |k: &str| r.get(k).map(|s| s.trim().to_string()).unwrap_or_default();
        let (patient, source) = (get("Patient ID / Name"), get("Source ID"));
        items.push(Item {
            group: if !patient.is_empty() && !source.is_empty() {
                format!("pocus:{source}:{patient}")
            } else {
                format!("pocus:{name}")
            },
            severity: get("Lung Severity Score").parse().ok(),
            b_lines: match get("B-lines").trim() {
                "1" => Some(true),
                "0" => Some(false),
                _ => None,
            },
            vitals: None,
            class: Some(class),
            covid: None,
            zone: String::new(),
            path: path.clone(),
            id: name,
        });
    }
    items.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(items)
}
