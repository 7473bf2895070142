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

/// Reads the running agent's status file; if the agent is not running, reads the
/// outbox itself so the queue is still visible.
fn status(config: &std::path::Path, json: bool) -> Result<ExitCode> {
    let cfg = crate::config::EdgeConfig::load(config)?;
    let path = cfg.status_file();
    let mut st: crate::status::Status = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Default::default(),
    };
    // Free lock = no daemon; hold it while reading the outbox ourselves.
    let lock = crate::lock::DirLock::try_take(&cfg.data_dir)?;
    let running = lock.is_none();
    if let Some(_held) = lock {
        if let Ok(ob) = crate::daemon::open_outbox(&cfg) {
            if let Ok(stats) = crate::outbox::Outbox::stats(&ob) {
                st.outbox = stats;
            }
        }
        st.clinic = cfg.clinic.clone();
        st.device = cfg.device.clone();
        st.sync.mqtt_connected = false;
        st.sync.state = "stopped".into();
    } else if crate::status::now_ms().saturating_sub(st.updated_ms) > 5_000 {
        st.alarms
            .push("agent holds its lock but has not updated its status for over 5 s".into());
    }
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["running"] = running.into();
        println!("{v}");
    } else {
        print!("{}", crate::status::render(&st, running));
    }
    Ok(ExitCode::SUCCESS)
}
