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
    /// Run the clinic daemon: watch the inbox, analyse, queue, sync to the hub.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show queue depth, oldest unsynced result, last sync, model, hub reachability.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Print the raw status JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a commented default configuration.
    PrintConfig,
    /// Withdraw a result from the hub (a mistaken export, e.g. a scan under the wrong
    /// patient): queued now, recorded by the hub at the next sync (kept, marked, audited).
    Retract {
        #[arg(long)]
        config: PathBuf,
        /// The result id (32 hex digits) or the scan's file in processed/.
        target: String,
        /// Why (1-200 characters, no line breaks; must not name the patient).
        #[arg(long)]
        reason: String,
    },
    /// Write a de-identified copy of a DICOM file (PS3.15 basic profile, pixels masked),
    /// with UIDs keyed by this clinic's pseudonym secret.
    Deidentify {
        #[arg(long)]
        config: PathBuf,
        input: PathBuf,
        output: PathBuf,
    },
    /// Queue synthetic results (benchmarks and fault tests; marked model "synthetic").
    #[command(hide = true)]
    OutboxFill {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        count: usize,
        /// Stop quietly when the outbox quota is reached (prints how many were queued).
        #[arg(long)]
        until_full: bool,
    },
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

/// The daemon's default log filter: one `info` line per scan, per sync round and at
/// start and stop from Pleura's own crates; only warnings from libraries.
pub const DAEMON_LOG_DEFAULT: &str =
    "warn,edge_agent=info,pleura_inference=info,pleura_shared=info";

/// Logging to stderr. Without -v and RUST_LOG: `DAEMON_LOG_DEFAULT` for `run`
/// (`daemon`), warnings only for the one-shot commands.
pub fn init_tracing(verbose: u8, daemon: bool) {
    let default = match verbose {
        0 if daemon => DAEMON_LOG_DEFAULT,
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
        Command::Run { config } => {
            let cfg = match crate::config::EdgeConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(64));
                }
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                let sd = shutdown.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("shutdown requested");
                    sd.cancel();
                });
                crate::daemon::run(cfg, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, json } => status(&config, json),
        Command::Retract {
            config,
            target,
            reason,
        } => {
            println!("{}", crate::retract::command(&config, &target, &reason)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::PrintConfig => {
            print!("{}", crate::config::EdgeConfig::example());
            Ok(ExitCode::SUCCESS)
        }
        Command::Deidentify {
            config,
            input,
            output,
        } => {
            use anyhow::Context;
            let cfg = crate::config::EdgeConfig::load(&config)?;
            let key = crate::daemon::load_or_create_key(&cfg.pseudonym_key_file)?;
            let bytes =
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let out = crate::deid::deidentify_dicom(&bytes, &key)
                .with_context(|| format!("de-identifying {}", input.display()))?;
            std::fs::write(&output, out)
                .with_context(|| format!("writing {}", output.display()))?;
            println!("wrote de-identified {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::OutboxFill {
            config,
            count,
            until_full,
        } => {
            let cfg = crate::config::EdgeConfig::load(&config)?;
            let outbox = crate::daemon::open_outbox(&cfg)?;
            let now = crate::status::now_ms();
            for i in 0..count {
                let mut r = pleura_shared::record::sample_record(
                    &cfg.clinic,
                    &cfg.device,
                    (i % 4) as u8,
                    i % 3 == 0,
                );
                r.analysed_at_ms = now + i as u64;
                r.analysis.model_version = "synthetic".into();
                match crate::outbox::Outbox::put(&outbox, &r) {
                    Ok(_) => {}
                    Err(crate::outbox::OutboxError::QuotaExceeded { .. }) if until_full => {
                        println!("queued {i} synthetic results");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            println!("queued {count} synthetic results");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Reads the running agent's status file; if the agent is not running, says so and
/// reads the outbox itself (status/command.rs).
fn status(config: &std::path::Path, json: bool) -> Result<ExitCode> {
    crate::status::command::show(config, json)
}
