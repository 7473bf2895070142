//! `edge-agent model bench`: the model lifecycle's benchmarks (issue #15; BENCHMARKS.md,
//! "Model lifecycle"). `--download`: the model worker fetching a release over a
//! simulated 256 kbit/s link with random cuts (`download`), bytes sent against the file
//! size. `--shadow`: analysis throughput with a candidate in shadow (each scan read by
//! the active pool keeping its frames, then by the candidate's one-thread pool, as the
//! intake's `pool_job` does) against the active model alone, rounds interleaved in the
//! same run; the ratio is the result, never an absolute time.

mod download;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;
use pleura_inference::engine::default_model;
use pleura_inference::BackendKind;
use serde::Serialize;

use crate::intake::job::{scan_job, shadow_job, Analysed, Keep, ScanFacts};
use crate::models::live::Running;
use crate::models::worker::ModelSettings;
use crate::models::LivePool;
use download::{DownloadResult, DownloadSpec, Payload};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Download a release through the model worker over a simulated slow link with cuts.
    #[arg(long)]
    pub download: bool,
    /// Analysis throughput while shadowing vs the active model alone.
    #[arg(long)]
    pub shadow: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// The active model (and the candidate, and the base of the downloaded release).
    #[arg(long, default_value_os_t = default_model())]
    pub model: PathBuf,
    /// Inference engine: tract (default) or onnxruntime.
    #[arg(long, default_value = "tract")]
    pub backend: BackendKind,
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH).
    #[arg(long)]
    pub ort_library: Option<PathBuf>,
    /// --download: the release's size.
    #[arg(long, default_value_t = 8192)]
    pub size_kib: u64,
    /// --download: the link's rate, kbit/s (1000 bit/s).
    #[arg(long, default_value_t = 256)]
    pub link_kbit: u64,
    /// --download: one-way latency of the link.
    #[arg(long, default_value_t = 50)]
    pub latency_ms: u64,
    /// --download: mean time between cuts (exponential).
    #[arg(long, default_value_t = 30.0)]
    pub mean_up_s: f64,
    /// --download: mean length of a cut (exponential).
    #[arg(long, default_value_t = 10.0)]
    pub mean_down_s: f64,
    /// --download: seed of the payload and the cuts.
    #[arg(long, default_value_t = 15)]
    pub seed: u64,
    /// --download: what the release's file holds.
    #[arg(long, value_enum, default_value = "auto")]
    pub payload: Payload,
    /// --download: the agent's chunk size (default: the agent's, 32 KiB).
    #[arg(long)]
    pub chunk_kib: Option<u32>,
    /// --download: the agent's bandwidth cap (default: the agent's, 32 KiB/s).
    #[arg(long)]
    pub cap_kib: Option<u64>,
    /// --shadow: the scans analysed (every file in the folder that decodes).
    #[arg(long, default_value_os_t = default_scans())]
    pub scans: PathBuf,
    /// --shadow: rounds (one pass alone and one shadowing each).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// --shadow: the active pool's inference threads (the candidate always has one).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

fn default_scans() -> PathBuf {
    let local = PathBuf::from("fixtures/scans");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scans")
}

#[derive(Debug, Serialize)]
struct Results {
    backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    download: Option<DownloadResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<ShadowResult>,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let (want_download, want_shadow) = match (args.download, args.shadow) {
        (false, false) => (true, true),
        both => both,
    };
    // Built here: the clinic library never uses the lab crate (tests/lab_commands.rs).
    pleura_inference::engine::EngineSpec {
        backend: args.backend,
        onnxruntime_library: args.ort_library.clone(),
        model: args.model.clone(),
        workers: args.workers,
    }
    .load()?;
    let mut out = Results {
        backend: format!("{:?}", args.backend).to_lowercase(),
        download: None,
        shadow: None,
    };
    if want_download {
        let defaults = ModelSettings::default();
        let spec = DownloadSpec {
            size: args.size_kib * 1024,
            link_bytes_per_s: args.link_kbit * 1000 / 8,
            latency: Duration::from_millis(args.latency_ms),
            mean_up: Duration::from_secs_f64(args.mean_up_s),
            mean_down: Duration::from_secs_f64(args.mean_down_s),
            seed: args.seed,
            payload: args.payload,
            settings: ModelSettings {
                chunk: args.chunk_kib.map_or(defaults.chunk, |k| k * 1024),
                max_bytes_per_s: args.cap_kib.map_or(defaults.max_bytes_per_s, |k| k * 1024),
                ..defaults
            },
            model: args.model.clone(),
            progress: !args.json,
            max_wall: Duration::from_secs(600),
        };
        let r = download::run(&spec)?;
        if !args.json {
            print_download(&r);
        }
        out.download = Some(r);
    }
    if want_shadow {
        let r = shadow(&args)?;
        if !args.json {
            print_shadow(&r);
        }
        out.shadow = Some(r);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    let failed = out
        .download
        .as_ref()
        .is_some_and(|d| !d.sha256_ok || d.ratio > 1.1);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_download(r: &DownloadResult) {
    let kib = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
    println!("Model download over a simulated link with cuts (issue #15)");
    println!();
    println!("| | |");
    println!("|---|---|");
    println!(
        "| file | {} ({} bytes, payload: {}) |",
        kib(r.size),
        r.size,
        r.payload
    );
    println!(
        "| link / agent cap / chunk | {} B/s / {} B/s / {} |",
        r.link_bytes_per_s,
        r.cap_bytes_per_s,
        kib(u64::from(r.chunk))
    );
    println!(
        "| bytes sent by the hub | {} ({} bytes) |",
        kib(r.sent),
        r.sent
    );
    println!(
        "| **ratio sent / size** (goal ≤ 1.1) | **{:.3}** |",
        r.ratio
    );
    println!(
        "| fetches (lost) / chunks sent (lost) | {} ({}) / {} ({}) |",
        r.fetches, r.fetches_lost, r.chunks_sent, r.chunks_lost
    );
    println!(
        "| cuts during the download / time down | {} / {:.0} s |",
        r.cuts, r.down_s
    );
    println!(
        "| virtual time to the last chunk | {:.0} s ({:.1} KiB/s) |",
        r.virtual_s,
        r.size as f64 / 1024.0 / r.virtual_s.max(1e-9)
    );
    println!("| wall time | {:.1} s |", r.wall_s);
    println!("| outcome | {} |", r.outcome);
    println!(
        "| SHA-256 matches | {} ({}) |",
        if r.sha256_ok { "yes" } else { "NO" },
        r.sha256_check
    );
    println!();
}

#[derive(Debug, Serialize)]
struct ShadowResult {
    scans: Vec<String>,
    skipped: Vec<String>,
    rounds: usize,
    active_workers: usize,
    keep: &'static str,
    /// Per round, in order.
    alone_scans_per_s: Vec<f64>,
    shadowing_scans_per_s: Vec<f64>,
    ratios: Vec<f64>,
    median_ratio: f64,
    /// Shadow readings made in the measured rounds (one per scan and round expected).
    shadow_readings: usize,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// One scan through the pools as the intake's `pool_job` does: the active reading
/// (keeping the frames when the candidate is shadowing), then the candidate's.
/// True when a shadow reading was made.
async fn one_scan(
    live: &LivePool,
    bytes: Vec<u8>,
    facts: ScanFacts,
    with_shadow: bool,
) -> Result<bool> {
    let running = live.running();
    let shadow = live.shadow().filter(|_| with_shadow);
    let keep = Keep::for_shadow(&running.pool, shadow.as_ref().map(|s| &*s.pool));
    let release = running.version;
    let res = running
        .pool
        .run(move |w| scan_job(w, bytes, &facts, release, keep))
        .await
        .and_then(|r| r);
    live.observe(&res, release, pleura_shared::now_ms());
    let Analysed { record, again } = res?;
    let (Some(s), Some(again)) = (shadow, again) else {
        return Ok(false);
    };
    let version = s.version;
    let res = s
        .pool
        .run(move |w| shadow_job(w, again, &record, version))
        .await
        .and_then(|r| r);
    live.observe_shadow(&res, version);
    res?;
    Ok(true)
}

/// One pass over `scans`: seconds, and shadow readings made.
async fn pass(
    live: &LivePool,
    scans: &[(String, Vec<u8>)],
    facts: &ScanFacts,
    with_shadow: bool,
    bar: &indicatif::ProgressBar,
) -> Result<(f64, usize)> {
    let t = Instant::now();
    let mut readings = 0;
    for (name, bytes) in scans {
        if one_scan(live, bytes.clone(), facts.clone(), with_shadow)
            .await
            .with_context(|| format!("analysing {name}"))?
        {
            readings += 1;
        }
        bar.inc(1);
    }
    Ok((t.elapsed().as_secs_f64(), readings))
}

fn load_scans(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned());
            std::fs::read(&p)
                .map(|b| (name, b))
                .with_context(|| format!("reading {}", p.display()))
        })
        .collect()
}

fn shadow(args: &BenchArgs) -> Result<ShadowResult> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let (_, active) = crate::models::switch::start_pool(&args.model, args.workers)?;
    // The candidate's pool has one thread, as `models::shadow::start` gives it.
    let (_, candidate) = crate::models::switch::start_pool(&args.model, 1)?;
    let live = LivePool::new(Arc::new(active), 1);
    live.set_shadow(Some(Running {
        pool: Arc::new(candidate),
        version: 2,
    }));
    let keep = {
        let (a, b) = (live.current(), live.shadow().map(|s| s.pool));
        let b = b.context("no shadow pool")?;
        let (a, b) = (&a.info().input, &b.info().input);
        if (a.size, a.max_frames) == (b.size, b.max_frames) {
            "frames"
        } else {
            "bytes"
        }
    };
    let facts = ScanFacts {
        clinic: "bench".into(),
        device: "bench".into(),
        key: Arc::new(pleura_shared::PseudonymKey::new(vec![7; 32])?),
        folder_patient: None,
        demographics: Default::default(),
        zone: None,
        modified: SystemTime::now(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Warm-up, shadowing: the scans that decode are kept.
        let (mut scans, mut skipped) = (Vec::new(), Vec::new());
        for (name, bytes) in load_scans(&args.scans)? {
            match one_scan(&live, bytes.clone(), facts.clone(), true).await {
                Ok(true) => scans.push((name, bytes)),
                Ok(false) => skipped.push(format!("{name}: no shadow reading")),
                Err(e) => skipped.push(format!("{name}: {e:#}")),
            }
        }
        if scans.is_empty() {
            bail!("no scan in {} decodes", args.scans.display());
        }
        let bar = if args.json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new((2 * args.rounds * scans.len()) as u64)
        };
        let (mut alone, mut shadowing, mut ratios, mut readings) = (vec![], vec![], vec![], 0);
        for round in 0..args.rounds {
            // Alternate which goes first, so that a drift of the machine favours neither.
            let (a, b) = if round % 2 == 0 {
                let a = pass(&live, &scans, &facts, false, &bar).await?;
                (a, pass(&live, &scans, &facts, true, &bar).await?)
            } else {
                let b = pass(&live, &scans, &facts, true, &bar).await?;
                (pass(&live, &scans, &facts, false, &bar).await?, b)
            };
            let n = scans.len() as f64;
            alone.push(n / a.0);
            shadowing.push(n / b.0);
            ratios.push(a.0 / b.0);
            readings += b.1;
        }
        bar.finish_and_clear();
        Ok(ShadowResult {
            scans: scans.into_iter().map(|s| s.0).collect(),
            skipped,
            rounds: args.rounds,
            active_workers: args.workers,
            keep,
            median_ratio: median(&ratios),
            alone_scans_per_s: alone,
            shadowing_scans_per_s: shadowing,
            ratios,
            shadow_readings: readings,
        })
    })
}

fn print_shadow(r: &ShadowResult) {
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("Analysis throughput while shadowing (issue #15)");
    println!();
    println!("| | |");
    println!("|---|---|");
    println!(
        "| scans per pass | {} ({}) |",
        r.scans.len(),
        r.scans.join(", ")
    );
    if !r.skipped.is_empty() {
        println!("| skipped | {} |", r.skipped.join("; "));
    }
    println!(
        "| rounds / active threads / candidate threads / kept for the candidate | {} / {} / 1 / {} |",
        r.rounds, r.active_workers, r.keep
    );
    println!(
        "| active alone, scans/s per round (median) | {} ({:.2}) |",
        list(&r.alone_scans_per_s),
        median(&r.alone_scans_per_s)
    );
    println!(
        "| shadowing, scans/s per round (median) | {} ({:.2}) |",
        list(&r.shadowing_scans_per_s),
        median(&r.shadowing_scans_per_s)
    );
    println!("| ratio per round | {} |", list(&r.ratios));
    println!(
        "| **median ratio shadowing / alone** (goal ≥ 0.45) | **{:.2}** |",
        r.median_ratio
    );
    println!(
        "| shadow readings made | {} of {} |",
        r.shadow_readings,
        r.rounds * r.scans.len()
    );
    println!();
}
