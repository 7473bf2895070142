//! The clinic commands of `edge-agent`; the binary adds the lab's `analyze`, `eval`
//! and `bench` beside them.

mod model;
mod model_bench;
mod status;
mod verdicts;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use pleura_runtime::shell::{self, Misconfigured};

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Print the specialists' verdicts received from the hub, as JSON (agent stopped).
    Verdicts {
        #[arg(long)]
        config: PathBuf,
        /// Only those received after this time (Unix ms).
        #[arg(long)]
        since_ms: Option<u64>,
        /// Only those on this examination (32 hex digits).
        #[arg(long)]
        exam: Option<String>,
    },
    /// Print a commented default configuration.
    PrintConfig,
    /// Model releases (issue #15).
    Model {
        #[command(subcommand)]
        action: model::ModelAction,
    },
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
    /// The clinic page's PIN (`[clinic_page]`).
    ClinicPin {
        #[command(subcommand)]
        action: ClinicPinAction,
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

#[derive(Debug, Subcommand)]
pub enum ClinicPinAction {
    /// Set (or replace) the PIN, read from standard input (6-128 characters); only its
    /// argon2 hash is kept, in the data folder. A running agent uses it at the next login.
    Set {
        #[arg(long)]
        config: PathBuf,
    },
}

/// The daemon's default log filter: one `info` line per scan, per sync round and at
/// start and stop from Pleura's own crates; only warnings from libraries.
pub const DAEMON_LOG_DEFAULT: &str =
    "warn,edge_agent=info,pleura_inference=info,pleura_shared=info,pleura_runtime=info";

impl Command {
    /// The log filter without -v and RUST_LOG: `DAEMON_LOG_DEFAULT` for `run`,
    /// warnings only for the one-shot commands.
    pub fn log_default(&self) -> &'static str {
        match self {
            Command::Run { .. } => DAEMON_LOG_DEFAULT,
            _ => "warn",
        }
    }
}

/// Runs one clinic command. A configuration that does not load (`run`) and a lost
/// pseudonym key (any command) come back as [`Misconfigured`], so the process exits 64.
pub fn run(command: Command) -> Result<ExitCode> {
    dispatch(command).map_err(|e| {
        if e.downcast_ref::<crate::daemon::MissingKey>().is_some() {
            Misconfigured(format!("{e:#}")).into()
        } else {
            e
        }
    })
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let cfg = crate::config::EdgeConfig::load(&config).map_err(Misconfigured::new)?;
            shell::serve(|shutdown| crate::daemon::run(cfg, shutdown))?;
            Ok(ExitCode::SUCCESS)
        }
        // The running agent's status file; if it is not running, the outbox itself.
        Command::Status { config, json } => status::show(&config, json),
        Command::Retract {
            config,
            target,
            reason,
        } => {
            println!("{}", crate::retract::command(&config, &target, &reason)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verdicts {
            config,
            since_ms,
            exam,
        } => verdicts::show(&config, since_ms, exam.as_deref()),
        Command::Model { action } => model::run(action),
        Command::PrintConfig => {
            print!("{}", crate::config::EdgeConfig::example());
            Ok(ExitCode::SUCCESS)
        }
        Command::Deidentify {
            config,
            input,
            output,
        } => deidentify(&config, &input, &output),
        Command::OutboxFill {
            config,
            count,
            until_full,
        } => outbox_fill(&config, count, until_full),
        Command::ClinicPin {
            action: ClinicPinAction::Set { config },
        } => clinic_pin_set(&config),
    }
}

fn deidentify(config: &Path, input: &Path, output: &Path) -> Result<ExitCode> {
    let cfg = crate::config::EdgeConfig::load(config)?;
    let key = crate::daemon::load_or_create_key(&cfg.pseudonym_key_file)?;
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let out = crate::deid::deidentify_dicom(&bytes, &key)
        .with_context(|| format!("de-identifying {}", input.display()))?;
    std::fs::write(output, out).with_context(|| format!("writing {}", output.display()))?;
    println!("wrote de-identified {}", output.display());
    Ok(ExitCode::SUCCESS)
}

fn clinic_pin_set(config: &Path) -> Result<ExitCode> {
    let cfg = crate::config::EdgeConfig::load(config).map_err(Misconfigured::new)?;
    let mut pin = String::new();
    std::io::stdin()
        .read_line(&mut pin)
        .context("reading the PIN from standard input")?;
    crate::clinic::auth::set_pin(&cfg.data_dir, pin.trim_end_matches(['\r', '\n']))?;
    println!(
        "clinic page PIN set ({})",
        crate::clinic::auth::pin_path(&cfg.data_dir).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn outbox_fill(config: &Path, count: usize, until_full: bool) -> Result<ExitCode> {
    let cfg = crate::config::EdgeConfig::load(config)?;
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
