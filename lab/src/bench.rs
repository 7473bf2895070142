//! `bench`: speed as ratios measured in one run, never absolute promises.
//!
//! One process measures one backend (ort binds one engine per process); `--all` runs a
//! child per available backend and puts the numbers side by side.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use pleura_inference::engine::start_pool;
use pleura_inference::{InferencePool, ModelFile};
use serde_json::{json, Value};

use crate::engine_args::EngineArgs;
use crate::vgg::{vgg_macs, vgg_onnx, VGG_INPUT};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Run every backend that can be loaded here (tract, and ONNX Runtime when
    /// --ort-library or ORT_DYLIB_PATH is given), each in its own process.
    #[arg(long)]
    pub all: bool,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Clip for the whole-pipeline and memory measurements.
    #[arg(long, default_value_os_t = default_clip())]
    pub clip: PathBuf,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn default_clip() -> PathBuf {
    let local = PathBuf::from("fixtures/scans/pocus_reg_alines.mov");
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scans/pocus_reg_alines.mov")
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.all {
        return run_all(&args);
    }
    let doc = bench_backend(&args)?;
    if args.json {
        println!("{doc}");
    } else {
        print_table(&[doc]);
    }
    Ok(ExitCode::SUCCESS)
}

/// Frames/s and latency percentiles of batch-1 inference on `workers` threads.
fn measure(
    pool: &InferencePool,
    batch: usize,
    workers: usize,
    budget: Duration,
    min_runs: usize,
) -> Result<Value> {
    let side = pool_input_side(pool);
    let frames = synthetic_frames(batch, side);
    let baseline = pool.info().name == "vgg-baseline";
    let infer = |f: Vec<f32>| -> Result<()> {
        if baseline {
            pool.infer_raw(f, side)?;
        } else {
            pool.infer_frames(f)?;
        }
        Ok(())
    };
    infer(frames.clone())?; // warm-up
    let start = Instant::now();
    let lat = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut runs = 0;
                    while start.elapsed() < budget || runs < min_runs {
                        let t = Instant::now();
                        infer(frames.clone())?;
                        if let Ok(mut l) = lat.lock() {
                            l.push(t.elapsed().as_secs_f64());
                        }
                        runs += 1;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
        }
        Ok(())
    })?;
    let wall = start.elapsed().as_secs_f64();
    let mut l = lat.into_inner().unwrap_or_default();
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| l[((l.len() as f64 - 1.0) * p).round() as usize] * 1e3;
    Ok(json!({
        "runs": l.len(),
        "frames_per_s": (l.len() * batch) as f64 / wall,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    }))
}

/// The pool's model decides the input side (its sidecar's `input.size`; the VGG
/// baseline's is 224).
fn pool_input_side(pool: &InferencePool) -> usize {
    pool.info().input_size()
}

fn synthetic_frames(n: usize, side: usize) -> Vec<f32> {
    (0..n * side * side)
        .map(|i| ((i * 2654435761usize) >> 7 & 255) as f32)
        .collect()
}

fn vgg_model() -> Result<ModelFile> {
    let info = pleura_inference::ModelInfo::from_json(
        json!({
            "name": "vgg-baseline",
            "version": "random",
            "sha256": "",
            "classes": [],
            "covid_threshold": 0.5,
            "uncertainty_flag": 1.0,
            "parameters": 0,
            "macs_per_frame": vgg_macs(),
            "input": {"name": "frames", "size": VGG_INPUT, "max_frames": 32},
        })
        .to_string()
        .as_bytes(),
    )
    .map_err(|e| anyhow::anyhow!("vgg baseline metadata: {e}"))?;
    Ok(ModelFile::unverified(
        "vgg-baseline.onnx".into(),
        vgg_onnx(42),
        info,
    ))
}

fn bench_backend(args: &BenchArgs) -> Result<Value> {
    let model = args.engine.spec().load()?;
    let budget = Duration::from_secs_f64(args.seconds);
    let mut doc = json!({
        "backend": args.engine.backend.to_string(),
        "model": model.info.label(),
        "model_macs": model.info.macs_per_frame,
        "model_parameters": model.info.parameters,
        "vgg_macs": vgg_macs(),
    });
    eprintln!("[{}] shipped model, batch 1 …", args.engine.backend);
    doc["model_1t"] = measure(&start_pool(&model, 1)?, 1, 1, budget, 20)?;
    doc["model_2t"] = measure(&start_pool(&model, 2)?, 1, 2, budget, 20)?;
    eprintln!("[{}] VGG baseline, batch 1 …", args.engine.backend);
    let vgg = vgg_model()?;
    doc["vgg_1t"] = measure(&start_pool(&vgg, 1)?, 1, 1, budget, 3)?;
    doc["vgg_2t"] = measure(&start_pool(&vgg, 2)?, 1, 2, budget, 2)?;

    eprintln!(
        "[{}] whole pipeline on {} …",
        args.engine.backend,
        args.clip.display()
    );
    let bytes =
        std::fs::read(&args.clip).with_context(|| format!("reading {}", args.clip.display()))?;
    let pool = start_pool(&model, 1)?;
    let first = pool.analyze(bytes.clone())?;
    let analysed = first.analysis.frames_analysed as usize;
    let start = Instant::now();
    let mut runs = 0;
    while start.elapsed() < budget || runs < 3 {
        pool.analyze(bytes.clone())?;
        runs += 1;
    }
    let pipeline_fps = (runs * analysed) as f64 / start.elapsed().as_secs_f64();
    let bare = measure(&pool, analysed, 1, budget, 3)?;
    doc["pipeline"] = json!({
        "clip_frames": first.analysis.frames_total,
        "frames_analysed": analysed,
        "pipeline_frames_per_s": pipeline_fps,
        "bare_model_frames_per_s": bare["frames_per_s"],
        "ratio": pipeline_fps / bare["frames_per_s"].as_f64().unwrap_or(f64::NAN),
        // Every frame of an H.264 clip must be decoded to sample 32 of them; this is the
        // rate at which the pipeline consumes the clip's frames.
        "clip_ratio": pipeline_fps * f64::from(first.analysis.frames_total)
            / analysed.max(1) as f64
            / bare["frames_per_s"].as_f64().unwrap_or(f64::NAN),
    });
    doc["analyze_peak_rss_mb"] = analyze_peak_rss(args)?;
    Ok(doc)
}

/// Peak RSS of a real `analyze` process (this binary's own subcommand) on the clip.
fn analyze_peak_rss(args: &BenchArgs) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("analyze")
        .arg("--json")
        .arg("--backend")
        .arg(args.engine.backend.to_string());
    cmd.arg("--model").arg(&args.engine.model);
    if let Some(lib) = &args.engine.ort_library {
        cmd.arg("--ort-library").arg(lib);
    }
    // The child reports its own VmHWM: getrusage/wait4 would include this (large)
    // parent's pages, since the child starts life sharing its address space.
    let out = cmd
        .arg(&args.clip)
        .env("PLEURA_REPORT_PEAK_RSS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()?;
    if !out.status.success() {
        bail!("analyze child failed: {}", out.status);
    }
    let kib: f64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .context("analyze child did not report its peak RSS")?;
    Ok(json!(kib / 1024.0))
}

fn run_all(args: &BenchArgs) -> Result<ExitCode> {
    let mut backends = vec!["tract"];
    if args.engine.ort_library.is_some()
        || std::env::var_os("ORT_DYLIB_PATH").is_some_and(|v| !v.is_empty())
    {
        backends.push("onnxruntime");
    } else {
        eprintln!(
            "ONNX Runtime not configured (--ort-library / ORT_DYLIB_PATH): measuring tract only"
        );
    }
    let mut docs = Vec::new();
    for b in backends {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "bench",
            "--json",
            "--backend",
            b,
            "--seconds",
            &args.seconds.to_string(),
        ]);
        cmd.arg("--clip")
            .arg(&args.clip)
            .arg("--model")
            .arg(&args.engine.model);
        if let Some(lib) = &args.engine.ort_library {
            cmd.arg("--ort-library").arg(lib);
        }
        let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
        if !out.status.success() {
            bail!("bench for {b} failed: {}", out.status);
        }
        docs.push(
            serde_json::from_slice::<Value>(&out.stdout)
                .with_context(|| format!("parsing {b} bench output"))?,
        );
    }
    if args.json {
        println!("{}", Value::Array(docs));
    } else {
        print_table(&docs);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(docs: &[Value]) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!("| backend | model | threads | frames/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for d in docs {
        for (m, key) in [("pleura-lite", "model"), ("vgg baseline", "vgg")] {
            for t in [1, 2] {
                let r = &d[format!("{key}_{t}t")];
                println!(
                    "| {} | {m} | {t} | {:.1} | {:.2} | {:.2} |",
                    d["backend"].as_str().unwrap_or(""),
                    f(&r["frames_per_s"]),
                    f(&r["p50_ms"]),
                    f(&r["p99_ms"])
                );
            }
        }
    }
    println!();
    let tract = &docs[0];
    for d in docs {
        let b = d["backend"].as_str().unwrap_or("");
        for t in [1, 2] {
            let k = format!("{t}t");
            println!(
                "{b}: pleura-lite is {:.0}x the VGG baseline's frame rate ({t} thread(s)); {:.0}x fewer MACs",
                f(&d[format!("model_{k}")]["frames_per_s"]) / f(&d[format!("vgg_{k}")]["frames_per_s"]),
                f(&d["vgg_macs"]) / f(&d["model_macs"]),
            );
        }
        println!(
            "{b}: whole pipeline (decode+preprocess+infer) runs at {:.2}x the bare model's rate per analysed frame, {:.2}x per clip frame ({} of {} frames analysed); analyze peak RSS {:.1} MB",
            f(&d["pipeline"]["ratio"]),
            f(&d["pipeline"]["clip_ratio"]),
            d["pipeline"]["frames_analysed"],
            d["pipeline"]["clip_frames"],
            f(&d["analyze_peak_rss_mb"]),
        );
        if d != tract {
            println!(
                "{b}: {:.2}x tract's frame rate for pleura-lite at 1 thread",
                f(&d["model_1t"]["frames_per_s"]) / f(&tract["model_1t"]["frames_per_s"])
            );
        }
    }
}
