use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hub_server::config::HubConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "hub-server", version, about = "Pleura regional hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

#[derive(Subcommand)]
enum CaCommand {
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
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add or replace an account; the password is read from standard input.
    Add {
        #[arg(long)]
        accounts: PathBuf,
        #[arg(long)]
        username: String,
        #[arg(long, value_enum)]
        role: hub_server::auth::Role,
        /// Required for specialists: the region whose flagged cases they review.
        #[arg(long)]
        region: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit log and print how many entries it holds.
    Verify { path: PathBuf },
}

fn admin(cmd: Command) -> anyhow::Result<()> {
    use anyhow::Context;
    use hub_server::ca::Pki;
    match cmd {
        Command::Ca(CaCommand::Init {
            pki_dir,
            name,
            sans,
        }) => {
            let pki = Pki::init(&pki_dir, &name, &sans)?;
            println!(
                "CA and hub certificate created in {} (hub valid for {}); CA: {}",
                pki_dir.display(),
                sans.join(", "),
                pki.ca_cert().display()
            );
        }
        Command::Enroll {
            pki_dir,
            clinic,
            device,
            region,
            out,
            valid_days,
        } => {
            let now = (pleura_shared::now_ms() / 1000) as i64;
            let rec = Pki::open(&pki_dir)?.enroll(
                &clinic,
                &device,
                &region,
                now - 300,
                now + valid_days * 86_400,
                &out,
            )?;
            println!(
                "enrolled {clinic}/device/{device} in region {region}, serial {}; bundle in {}",
                rec.serial,
                out.display()
            );
        }
        Command::Revoke {
            pki_dir,
            clinic,
            device,
        } => {
            let pki = Pki::open(&pki_dir)?;
            let rec = pki.revoke(&clinic, &device)?;
            println!(
                "revoked {clinic}/device/{device} (serial {}); CRL {}",
                rec.serial,
                pki.crl().display()
            );
        }
        Command::Devices { pki_dir } => {
            for d in Pki::open(&pki_dir)?.devices()? {
                println!(
                    "{}/device/{}	region={}	serial={}	{}",
                    d.clinic,
                    d.device,
                    d.region,
                    d.serial,
                    if d.revoked_at_ms.is_some() {
                        "REVOKED"
                    } else {
                        "active"
                    }
                );
            }
        }
        Command::User(UserCommand::Add {
            accounts,
            username,
            role,
            region,
        }) => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password from standard input")?;
            hub_server::auth::add_account(
                &accounts,
                &username,
                role,
                region.as_deref(),
                password.trim_end_matches(['\r', '\n']),
            )?;
            println!(
                "account {username} ({}) saved in {}",
                role.as_str(),
                accounts.display()
            );
        }
        Command::Audit(AuditCommand::Verify { path }) => {
            let n = hub_server::audit::verify(&path).map_err(anyhow::Error::msg)?;
            println!("{}: {} entries, chain intact", path.display(), n.len());
        }
        Command::Serve { .. } | Command::PrintConfig => unreachable!("handled in main"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::PrintConfig => {
            print!("{}", HubConfig::example());
            ExitCode::SUCCESS
        }
        cmd @ (Command::Ca(_)
        | Command::Enroll { .. }
        | Command::Revoke { .. }
        | Command::Devices { .. }
        | Command::User(_)
        | Command::Audit(_)) => match admin(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Serve { config } => {
            let cfg = match HubConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(64);
                }
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let shutdown = CancellationToken::new();
            let result = rt.block_on(async {
                let sd = shutdown.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    tracing::info!("shutdown requested");
                    sd.cancel();
                });
                hub_server::run(cfg, shutdown).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
