//! Pleura's research tools: analyse scans by hand, evaluate the model on folders laid
//! out like the public data sets, and benchmark the backends against a VGG baseline.
//! None of this runs in a clinic; `edge-agent analyze|eval|bench` dispatch here.

pub mod analyze;
pub mod bench;
pub mod datasets;
pub mod engine_args;
pub mod eval;
pub mod metrics;
pub mod vgg;

use std::process::ExitCode;

pub use engine_args::EngineArgs;

/// The lab's subcommands, flattened into `edge-agent`'s and `pleura-lab`'s.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Analyse scans (files or folders): class probabilities, severity, uncertainty, flag.
    Analyze(analyze::AnalyzeArgs),
    /// Evaluate the model on a folder laid out like the COVID-BLUES or POCUS data set.
    Eval(eval::EvalArgs),
    /// Measure inference speed against the VGG baseline, as ratios from one run.
    Bench(bench::BenchArgs),
}

/// Runs one command; its exit status (`analyze` returns 2 when some scans failed).
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Analyze(a) => analyze::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
    }
}
