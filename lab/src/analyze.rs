//! `analyze`: scans read by hand, one report per file, in input order.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use pleura_inference::{InferencePool, ScanReport};
use pleura_shared::{Findings, LungClass};

use crate::engine_args::EngineArgs;

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Scan files, or folders searched recursively.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Larger files are refused unread (default 512 MiB, as the daemon's intake.max_scan_bytes).
    #[arg(long, default_value_t = pleura_inference::decode::file::DEFAULT_MAX_SCAN_BYTES)]
    pub max_scan_bytes: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Files under `inputs`, folders walked recursively in name order. Hidden files skipped.
/// Links are listed, not followed (reading them fails by name), so a link loop ends.
pub fn collect_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        entries.sort();
        for e in entries {
            if e.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                walk(&e, out)?;
            } else {
                out.push(e);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in inputs {
        let meta = std::fs::symlink_metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            walk(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Analyses `files` on the pool, several at once, and returns results in input order.
pub fn analyze_files(
    pool: &InferencePool,
    files: &[PathBuf],
    parallel: usize,
    max_scan_bytes: u64,
) -> Vec<Result<ScanReport>> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<ScanReport>>> = (0..files.len()).map(|_| None).collect();
    let slots: Vec<std::sync::Mutex<&mut Option<Result<ScanReport>>>> =
        results.iter_mut().map(std::sync::Mutex::new).collect();
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = files.get(i) else { break };
                let r = analyze_one(pool, path, max_scan_bytes);
                if let Ok(mut slot) = slots[i].lock() {
                    **slot = Some(r);
                }
            });
        }
    });
    drop(slots);
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("not analysed"))))
        .collect()
}

fn analyze_one(pool: &InferencePool, path: &Path, max_scan_bytes: u64) -> Result<ScanReport> {
    let bytes = pleura_inference::decode::file::read_scan(path, max_scan_bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(pool.analyze(bytes)?)
}

pub fn run(args: AnalyzeArgs) -> Result<ExitCode> {
    let pleura_inference::Engine { model, pool } = args.engine.spec().start()?;
    let files = collect_files(&args.inputs)?;
    let mut failed = 0;
    for (path, result) in files.iter().zip(analyze_files(
        &pool,
        &files,
        args.engine.workers,
        args.max_scan_bytes,
    )) {
        match result {
            Ok(report) if args.json => {
                let mut v = serde_json::to_value(&report)?;
                v["file"] = path.display().to_string().into();
                println!("{v}");
            }
            Ok(report) => print_text(path, &report, &model.info.finding_thresholds),
            Err(e) => {
                failed += 1;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"file": path.display().to_string(), "error": format!("{e:#}")})
                    );
                } else {
                    println!("{}\n  ERROR: {e:#}\n", path.display());
                }
            }
        }
    }
    if !args.json {
        println!(
            "{} scan(s) analysed, {failed} failed. Model {} supports triage only; it does not make diagnoses.",
            files.len() - failed,
            model.info.label()
        );
    }
    if std::env::var_os("PLEURA_REPORT_PEAK_RSS").is_some() {
        eprintln!("peak_rss_kib={}", peak_rss_kib());
    }
    Ok(if failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_text(path: &Path, r: &ScanReport, finding_thresholds: &[f32]) {
    let a = &r.analysis;
    let p = a.class_probs;
    println!(
        "{}  [{} {}x{}, {} of {} frames]",
        path.display(),
        r.format,
        r.width,
        r.height,
        a.frames_analysed,
        a.frames_total
    );
    println!(
        "  covid {:.2}  other pneumonia {:.2}  normal {:.2}  -> most likely {}",
        p.covid,
        p.other_pneumonia,
        p.normal,
        match p.most_likely() {
            LungClass::Covid => "covid-19",
            LungClass::OtherPneumonia => "other pneumonia",
            LungClass::Normal => "normal",
        }
    );
    let sp = a.severity_probs;
    println!(
        "  severity {} (p0 {:.2} p1 {:.2} p2 {:.2} p3 {:.2})  uncertainty {:.2}",
        a.severity.score(),
        sp[0],
        sp[1],
        sp[2],
        sp[3],
        a.uncertainty
    );
    if let Some(f) = &a.findings {
        let present = f.present(finding_thresholds);
        let shown: Vec<String> = Findings::LABELS
            .iter()
            .zip(f.as_array())
            .zip(present)
            .map(|((label, p), yes)| {
                format!("{label} {p:.2}{}", if yes { " (present)" } else { "" })
            })
            .collect();
        println!("  findings: {}", shown.join("  "));
    }
    if a.flagged {
        let why: Vec<&str> = a.flag_reasons.iter().map(|r| r.describe()).collect();
        println!("  FLAGGED for specialist review: {}\n", why.join("; "));
    } else {
        println!(
            "  not flagged: no pathology above threshold, severity below 2, model confident\n"
        );
    }
}

/// This process's peak resident set (VmHWM), for the memory benchmark.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
