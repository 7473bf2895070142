//! The `hub-server` command line: `serve`, and the administrative commands (CA,
//! enrolment, revocation, accounts, audit log) that run to completion (`admin`).

mod admin;
mod model;

pub use model::ModelCommand;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use pleura_runtime::shell;

use crate::config::HubConfig;

/// The hub's default log filter: info from the hub, only warnings from the broker.
pub const LOG_DEFAULT: &str = "info,rumqttd=warn";

#[derive(Subcommand)]
pub enum Command {
    /// Run the hub.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a commented default configuration.
    PrintConfig,
    /// The regional certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue a device certificate and write the agent bundle (ca.pem, device.pem,
    /// device.key) to copy onto the device.
    Enroll {
        #[arg(long)]
        pki_dir: PathBuf,
        #[arg(long)]
        clinic: String,
        #[arg(long)]
        device: String,
        /// Health region of the clinic (scopes specialists).
        #[arg(long)]
        region: String,
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 825)]
        valid_days: i64,
        /// The hub's data_dir: its models/model-root.pub, if any, goes in the bundle.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Revoke a device: refused from its next connection, its batches refused too.
    Revoke {
        #[arg(long)]
        pki_dir: PathBuf,
        #[arg(long)]
        clinic: String,
        #[arg(long)]
        device: String,
    },
    /// List enrolled devices.
    Devices {
        #[arg(long)]
        pki_dir: PathBuf,
    },
    /// Specialist, ministry and operator accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Model releases: keys, publish, staged rollout, status.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the CA, the hub's certificate and an empty CRL.
    Init {
        #[arg(long)]
        pki_dir: PathBuf,
        /// Name of the region this CA serves (goes in the CA's common name).
        #[arg(long, default_value = "region")]
        name: String,
        /// DNS name or IP address devices use to reach the hub (repeatable).
        #[arg(long = "san", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        sans: Vec<String>,
    },
    /// Move a PKI whose CA is Ed25519 (made before 2026-12) to an ECDSA P-256 CA that
    /// browsers and standard gRPC clients accept: new CA and hub certificate, the old CA
    /// kept in the trust bundle ca.pem so enrolled devices keep their certificates.
    /// Copy the new ca.pem to every device, then restart the hub (and Mosquitto).
    Migrate {
        #[arg(long)]
        pki_dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add or replace an account; the password is read from standard input.
    Add {
        #[arg(long)]
        accounts: PathBuf,
        #[arg(long)]
        username: String,
        #[arg(long, value_enum)]
        role: crate::auth::Role,
        /// Required for specialists: the region whose flagged cases they review.
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the audit log with the hub's key: every entry's MAC, sequence number and
    /// link, and its length and head against the checkpoint. Names the check that failed.
    Verify {
        /// The hub's data_dir (or the audit.log in it).
        path: PathBuf,
        /// The audit key [default: <data_dir>/audit.key].
        #[arg(long)]
        key: Option<PathBuf>,
        /// The checkpoint [default: <data_dir>/audit.checkpoint].
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Print the latest checkpoint (sequence number and head MAC) once its MAC checks:
    /// record it somewhere the hub cannot rewrite to detect a later rollback.
    Checkpoint {
        data_dir: PathBuf,
        /// The audit key [default: <data_dir>/audit.key].
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

/// Runs one command to completion (`serve` until SIGTERM or Ctrl-C).
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Serve { config } => {
            // Everything the hub writes (store, audit log, keys) is for its user only.
            // Only for `serve`: `ca init`/`enroll` write certificates others must read.
            shell::private_files();
            let cfg = HubConfig::load(&config).map_err(shell::Misconfigured::new)?;
            shell::serve(|shutdown| crate::run(cfg, shutdown))?;
        }
        Command::PrintConfig => print!("{}", HubConfig::example()),
        Command::Ca(c) => admin::ca(c)?,
        Command::Enroll {
            pki_dir,
            clinic,
            device,
            region,
            out,
            valid_days,
            data_dir,
        } => admin::enroll(
            &pki_dir,
            &clinic,
            &device,
            &region,
            &out,
            valid_days,
            data_dir.as_deref(),
        )?,
        Command::Revoke {
            pki_dir,
            clinic,
            device,
        } => admin::revoke(&pki_dir, &clinic, &device)?,
        Command::Devices { pki_dir } => admin::devices(&pki_dir)?,
        Command::User(c) => admin::user(c)?,
        Command::Audit(c) => admin::audit(c)?,
        Command::Model(c) => model::run(c)?,
    }
    Ok(ExitCode::SUCCESS)
}
