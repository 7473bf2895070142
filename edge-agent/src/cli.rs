use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use pleura_inference::BackendKind;

#[derive(Debug, Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "Pleura clinic agent: lung-ultrasound triage support (not a diagnosis)"
)]
pub struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Analyse scans (files or folders): class probabilities, severity, uncertainty, flag.
    Analyze(crate::analyze::AnalyzeArgs),
    /// Evaluate the model on a folder laid out like the COVID-BLUES or POCUS data set.
    Eval(crate::eval::EvalArgs),
    /// Measure inference speed against the VGG baseline, as ratios from one run.
    Bench(crate::bench::BenchArgs),
}

/// Which model and engine, shared by every command.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// ONNX model; its `<name>.json` metadata must sit beside it.
    #[arg(long, default_value_os_t = default_model())]
    pub model: PathBuf,
    /// Inference engine: tract (pure Rust, default) or onnxruntime (shared library).
    #[arg(long, default_value = "tract")]
    pub backend: BackendKind,
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH).
    #[arg(long)]
    pub ort_library: Option<PathBuf>,
    /// Inference threads (each runs one scan at a time).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

/// `models/lusnet-s.onnx` under the working directory, else under the source checkout.
pub fn default_model() -> PathBuf {
    let local = PathBuf::from("models/lusnet-s.onnx");
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/lusnet-s.onnx")
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Analyze(a) => crate::analyze::run(a),
        Command::Eval(a) => crate::eval::run(a),
        Command::Bench(a) => crate::bench::run(a),
    }
}
