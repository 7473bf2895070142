//! `eval`: the model card's metrics on any folder laid out like the data sets.
//!
//! With `--cv models/cv` each item is read by the fold model that never saw its patient
//! during training, which reproduces the cross-validated numbers; without it the shipped
//! model reads everything (right for patients it never saw, optimistic otherwise).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pleura_inference::engine::start_pool;
use pleura_inference::{aggregate, patient, InferencePool, ModelFile, ModelInfo, ScanReport};
use pleura_shared::ScanAnalysis;
use serde_json::{json, Value};

use crate::datasets::{self, Dataset, Item};
use crate::engine_args::EngineArgs;
use crate::metrics as m;

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(long, value_enum)]
    pub dataset: Dataset,
    /// Folder laid out like ../shared/data/<dataset>.
    #[arg(long)]
    pub root: PathBuf,
    /// Cross-validated evaluation with the fold models and folds.json in this folder.
    #[arg(long)]
    pub cv: Option<PathBuf>,
    /// Print one JSON document (metrics and per-item predictions).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Which pool reads which item.
struct Readers {
    pools: Vec<InferencePool>,
    fold_of: Option<BTreeMap<String, usize>>,
}

impl Readers {
    fn pool_for(&self, dataset: Dataset, item: &Item) -> Option<&InferencePool> {
        match &self.fold_of {
            None => self.pools.first(),
            Some(f) => f
                .get(&format!("{}/{}", dataset.key(), item.id))
                .and_then(|&k| self.pools.get(k)),
        }
    }
}

fn readers(args: &EvalArgs, model: &ModelFile) -> Result<Readers> {
    let Some(dir) = &args.cv else {
        return Ok(Readers {
            pools: vec![start_pool(model, args.engine.workers)?],
            fold_of: None,
        });
    };
    let folds: Value = serde_json::from_slice(
        &std::fs::read(dir.join("folds.json")).context("reading folds.json")?,
    )?;
    let k = folds["k"].as_u64().context("folds.json: no k")? as usize;
    let fold_of = folds["items"]
        .as_object()
        .context("folds.json: no items")?
        .iter()
        .filter_map(|(key, v)| v.as_u64().map(|f| (key.clone(), f as usize)))
        .collect();
    let meta: Value = serde_json::from_slice(&std::fs::read(model.path.with_extension("json"))?)?;
    let mut pools = Vec::new();
    for fold in 0..k {
        let path = dir.join(format!("fold{fold}.onnx"));
        // A fold with its own sidecar (model v2: its own calibration, thresholds and patient
        // combiner, all fitted inside that fold) is loaded as it is; otherwise it borrows
        // the shipped model's metadata with the fold's checksum.
        let file = if path.with_extension("json").exists() {
            ModelFile::load(&path).with_context(|| format!("loading {}", path.display()))?
        } else {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut info = model.info.clone();
            info.sha256 = meta["cv_fold_sha256"][format!("fold{fold}")]
                .as_str()
                .context("metadata lacks fold checksums")?
                .to_string();
            info.version = format!("{}-fold{fold}", info.version);
            ModelFile::from_parts(path, bytes, info)?
        };
        pools.push(start_pool(&file, 1)?);
    }
    Ok(Readers {
        pools,
        fold_of: Some(fold_of),
    })
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let model = args.engine.spec().load()?;
    let items = datasets::load(args.dataset, &args.root)?;
    if items.is_empty() {
        bail!("no labelled scans found under {}", args.root.display());
    }
    let readers = readers(&args, &model)?;
    let results = read_all(
        &readers,
        args.dataset,
        &items,
        args.engine
            .workers
            .max(if args.cv.is_some() { 2 } else { 1 }),
    );

    let mut ok: Vec<(&Item, ScanReport)> = Vec::new();
    let mut skipped = Vec::new();
    for (item, r) in items.iter().zip(results) {
        match r {
            Ok(rep) => ok.push((item, rep)),
            Err(e) => skipped.push(json!({"item": item.id, "reason": format!("{e:#}")})),
        }
    }
    let metrics = match args.dataset {
        Dataset::CovidBlues => covid_blues_metrics(&ok, &readers),
        Dataset::Pocus => pocus_metrics(&ok),
    };
    let predictions: Vec<Value> = ok
        .iter()
        .map(|(it, r)| json!({"item": it.id, "class_probs": r.analysis.class_probs.as_array(), "severity": r.analysis.severity.score(), "uncertainty": r.analysis.uncertainty}))
        .collect();
    let doc = json!({
        "dataset": args.dataset.key(),
        "root": args.root.display().to_string(),
        "model": model.info.label(),
        "mode": if args.cv.is_some() { "cross-validated (fold models)" } else { "shipped model" },
        "backend": args.engine.backend.to_string(),
        "evaluated": ok.len(),
        "skipped": skipped,
        "metrics": metrics,
        "predictions": predictions,
    });
    if args.json {
        println!("{doc}");
    } else {
        print_text(&doc);
    }
    Ok(ExitCode::SUCCESS)
}

fn read_all(
    readers: &Readers,
    dataset: Dataset,
    items: &[Item],
    parallel: usize,
) -> Vec<Result<ScanReport>> {
    let bar = ProgressBar::new(items.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} scans  {elapsed_precise} eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let next = AtomicUsize::new(0);
    let out: Vec<Mutex<Option<Result<ScanReport>>>> =
        items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = read_one(readers, dataset, item);
                bar.set_message(item.id.clone());
                bar.inc(1);
                if let Ok(mut slot) = out[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    bar.finish_and_clear();
    out.into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(anyhow::anyhow!("not evaluated")))
        })
        .collect()
}

fn read_one(readers: &Readers, dataset: Dataset, item: &Item) -> Result<ScanReport> {
    let pool = readers
        .pool_for(dataset, item)
        .context("item is in no cross-validation fold")?;
    let bytes =
        std::fs::read(&item.path).with_context(|| format!("reading {}", item.path.display()))?;
    Ok(pool.analyze(bytes)?)
}

fn opt(v: Option<f64>) -> Value {
    v.filter(|x| x.is_finite()).map_or(Value::Null, Value::from)
}

/// A patient's COVID-19 reading by the model that read its videos: the patient combiner
/// when the model has one (image only, and with the recorded vitals), else the mean of the
/// videos. Flags are the combiner's own threshold, not "any video flagged".
struct PatientReading {
    pcr: bool,
    image: f32,
    image_flag: bool,
    vitals: Option<(f32, bool)>,
}

fn read_patient(info: &ModelInfo, videos: &[&(&Item, ScanReport)]) -> Option<PatientReading> {
    let pcr = videos.first()?.0.covid?;
    let zoned: Vec<(String, ScanAnalysis)> = videos
        .iter()
        .map(|(it, r)| (it.zone.clone(), r.analysis.clone()))
        .collect();
    let Some(pm) = &info.patient else {
        let s = zoned.iter().map(|(_, a)| a.class_probs.covid).sum::<f32>() / zoned.len() as f32;
        return Some(PatientReading {
            pcr,
            image: s,
            image_flag: s >= info.covid_threshold,
            vitals: None,
        });
    };
    let zones = aggregate::zone_readings(&zoned);
    let image = patient::combine(&zones, None, pm, &info.finding_thresholds);
    let vitals = videos[0].0.vitals.as_ref().and_then(|v| {
        let c = patient::combine(&zones, Some(v), pm, &info.finding_thresholds);
        c.vitals_used.then(|| (c.probability, c.flagged()))
    });
    Some(PatientReading {
        pcr,
        image: image.probability,
        image_flag: image.flagged(),
        vitals,
    })
}

fn binary_json(y: &[bool], s: &[f32], flags: &[bool], suffix: &str) -> Value {
    let count = |want: bool| y.iter().filter(|&&v| v == want).count().max(1) as f64;
    let tp = y.iter().zip(flags).filter(|(&y, &f)| y && f).count() as f64;
    let tn = y.iter().zip(flags).filter(|(&y, &f)| !y && !f).count() as f64;
    let (sens, spec) = (tp / count(true), tn / count(false));
    json!({
        format!("patient_auc_{suffix}"): opt(m::auc(y, s)),
        format!("patient_sensitivity_{suffix}"): sens,
        format!("patient_specificity_{suffix}"): spec,
        format!("patient_balanced_accuracy_{suffix}"): (sens + spec) / 2.0,
    })
}

fn covid_blues_metrics(ok: &[(&Item, ScanReport)], readers: &Readers) -> Value {
    let mut by_patient: BTreeMap<&str, Vec<&(&Item, ScanReport)>> = BTreeMap::new();
    for row in ok {
        by_patient
            .entry(row.0.group.as_str())
            .or_default()
            .push(row);
    }
    let patients: Vec<PatientReading> = by_patient
        .values()
        .filter_map(|v| {
            let pool = readers.pool_for(Dataset::CovidBlues, v[0].0)?;
            read_patient(pool.info(), v)
        })
        .collect();
    let y: Vec<bool> = patients.iter().map(|p| p.pcr).collect();
    let s: Vec<f32> = patients.iter().map(|p| p.image).collect();
    let f: Vec<bool> = patients.iter().map(|p| p.image_flag).collect();
    let mut doc = binary_json(&y, &s, &f, "image");
    let with_vitals: Vec<&PatientReading> =
        patients.iter().filter(|p| p.vitals.is_some()).collect();
    if !with_vitals.is_empty() {
        let vy: Vec<bool> = with_vitals.iter().map(|p| p.pcr).collect();
        let (vs, vf): (Vec<f32>, Vec<bool>) = with_vitals.iter().filter_map(|p| p.vitals).unzip();
        merge(&mut doc, binary_json(&vy, &vs, &vf, "vitals"));
    }
    let (vy, vs): (Vec<bool>, Vec<f32>) = ok
        .iter()
        .filter_map(|(it, r)| it.covid.map(|c| (c, r.analysis.class_probs.covid)))
        .unzip();
    let (by, bs): (Vec<bool>, Vec<f32>) = ok
        .iter()
        .filter_map(|(it, r)| Some((it.b_lines?, r.analysis.findings?.b_lines)))
        .unzip();
    let (sy, sp): (Vec<usize>, Vec<usize>) = ok
        .iter()
        .filter_map(|(it, r)| {
            it.severity
                .map(|s| (s, r.analysis.severity.score() as usize))
        })
        .unzip();
    // patient lung score: over zones, the worst severity (truth) / expected severity (model)
    let mut lung: BTreeMap<&str, BTreeMap<&str, (usize, f32)>> = BTreeMap::new();
    for (it, r) in ok {
        let Some(truth) = it.severity else { continue };
        let e: f32 = r
            .analysis
            .severity_probs
            .iter()
            .enumerate()
            .map(|(k, p)| k as f32 * p)
            .sum();
        let z = lung
            .entry(it.group.as_str())
            .or_default()
            .entry(it.zone.as_str())
            .or_insert((0, 0.0));
        *z = (z.0.max(truth), z.1.max(e));
    }
    let (lt, lp): (Vec<f64>, Vec<f64>) = lung
        .values()
        .map(|zones| {
            zones
                .values()
                .fold((0.0, 0.0), |(a, b), (t, p)| (a + *t as f64, b + *p as f64))
        })
        .unzip();
    merge(
        &mut doc,
        json!({
            "patients": y.len(),
            "videos": vy.len(),
            "video_covid_auc_vs_pcr": opt(m::auc(&vy, &vs)),
            "video_b_lines_auc": opt(m::auc(&by, &bs)),
            "severity_videos": sy.len(),
            "severity_qwk": opt(m::qwk(&sy, &sp, 4)),
            "severity_macro_f1": m::macro_f1(&sy, &sp, 4),
            "severity_accuracy": m::accuracy(&sy, &sp),
            "severity_confusion": m::confusion(&sy, &sp, 4),
            "patient_lung_score_spearman": opt(m::spearman(&lt, &lp)),
        }),
    );
    doc
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn pocus_metrics(ok: &[(&Item, ScanReport)]) -> Value {
    let (y, p): (Vec<usize>, Vec<usize>) = ok
        .iter()
        .filter_map(|(it, r)| {
            it.class.map(|c| {
                (
                    c,
                    pleura_inference::aggregate::argmax(&r.analysis.class_probs.as_array()),
                )
            })
        })
        .unzip();
    let (sy, sp): (Vec<usize>, Vec<usize>) = ok
        .iter()
        .filter_map(|(it, r)| {
            it.severity
                .map(|s| (s, r.analysis.severity.score() as usize))
        })
        .unzip();
    let (by, bs): (Vec<bool>, Vec<f32>) = ok
        .iter()
        .filter_map(|(it, r)| Some((it.b_lines?, r.analysis.findings?.b_lines)))
        .unzip();
    json!({
        "videos": y.len(),
        "video_b_lines_auc": opt(m::auc(&by, &bs)),
        "balanced_accuracy": m::balanced_accuracy(&y, &p, 3),
        "macro_f1": m::macro_f1(&y, &p, 3),
        "accuracy": m::accuracy(&y, &p),
        "confusion": m::confusion(&y, &p, 3),
        "severity_videos": sy.len(),
        "severity_qwk": opt(m::qwk(&sy, &sp, 4)),
        "severity_macro_f1": m::macro_f1(&sy, &sp, 4),
    })
}

fn print_text(doc: &Value) {
    println!(
        "{} — {} — model {} on {}",
        doc["dataset"].as_str().unwrap_or(""),
        doc["mode"].as_str().unwrap_or(""),
        doc["model"].as_str().unwrap_or(""),
        doc["backend"].as_str().unwrap_or("")
    );
    println!(
        "evaluated {} scans from {}",
        doc["evaluated"],
        doc["root"].as_str().unwrap_or("")
    );
    if let Some(obj) = doc["metrics"].as_object() {
        for (k, v) in obj {
            match v.as_f64() {
                Some(x) if v.is_f64() => println!("  {k:<28} {x:.3}"),
                _ => println!("  {k:<28} {v}"),
            }
        }
    }
    if let Some(sk) = doc["skipped"].as_array().filter(|s| !s.is_empty()) {
        println!("skipped {} scans that could not be read:", sk.len());
        for s in sk {
            println!(
                "  {}: {}",
                s["item"].as_str().unwrap_or(""),
                s["reason"].as_str().unwrap_or("")
            );
        }
    }
}
