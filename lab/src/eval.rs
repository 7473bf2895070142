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
use pleura_inference::{InferencePool, ModelFile, ScanReport};
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
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut info = model.info.clone();
        info.sha256 = meta["cv_fold_sha256"][format!("fold{fold}")]
            .as_str()
            .context("metadata lacks fold checksums")?
            .to_string();
        info.version = format!("{}-fold{fold}", info.version);
        let file = ModelFile::from_parts(path, bytes, info)?;
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
    let threshold = model.info.covid_threshold;
    let metrics = match args.dataset {
        Dataset::CovidBlues => covid_blues_metrics(&ok, threshold),
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

fn covid_blues_metrics(ok: &[(&Item, ScanReport)], threshold: f32) -> Value {
    let mut patients: BTreeMap<&str, (bool, Vec<f32>)> = BTreeMap::new();
    for (it, r) in ok {
        if let Some(c) = it.covid {
            patients
                .entry(it.group.as_str())
                .or_insert((c, Vec::new()))
                .1
                .push(r.analysis.class_probs.covid);
        }
    }
    let y: Vec<bool> = patients.values().map(|p| p.0).collect();
    let s: Vec<f32> = patients
        .values()
        .map(|p| p.1.iter().sum::<f32>() / p.1.len() as f32)
        .collect();
    let b = m::binary_at(&y, &s, threshold);
    let (vy, vs): (Vec<bool>, Vec<f32>) = ok
        .iter()
        .filter_map(|(it, r)| it.covid.map(|c| (c, r.analysis.class_probs.covid)))
        .unzip();
    let (sy, sp): (Vec<usize>, Vec<usize>) = ok
        .iter()
        .filter_map(|(it, r)| {
            it.severity
                .map(|s| (s, r.analysis.severity.score() as usize))
        })
        .unzip();
    json!({
        "patients": y.len(),
        "patient_covid_auc": opt(m::auc(&y, &s)),
        "patient_balanced_accuracy": b.balanced_accuracy,
        "patient_sensitivity": b.sensitivity,
        "patient_specificity": b.specificity,
        "covid_threshold": threshold,
        "patient_covid_ece": m::ece(&y, &s),
        "videos": vy.len(),
        "video_covid_auc": opt(m::auc(&vy, &vs)),
        "video_covid_ece": m::ece(&vy, &vs),
        "severity_videos": sy.len(),
        "severity_qwk": opt(m::qwk(&sy, &sp, 4)),
        "severity_macro_f1": m::macro_f1(&sy, &sp, 4),
        "severity_accuracy": m::accuracy(&sy, &sp),
        "severity_confusion": m::confusion(&sy, &sp, 4),
    })
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
    json!({
        "videos": y.len(),
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
