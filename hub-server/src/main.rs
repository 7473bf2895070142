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
        Command::Ca(CaCommand::Migrate { pki_dir }) => {
            let sans = Pki::migrate(&pki_dir)?;
            let ca = pki_dir.join("ca.pem");
            println!(
                "new P-256 CA and hub certificate (valid for {}) in {}; the old CA stays trusted.\n\
                 Next: copy {} to every device as its bundle's ca.pem and restart its agent,\n\
                 then restart the hub (and Mosquitto, if used).",
                sans.join(", "),
                pki_dir.display(),
                ca.display()
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
        Command::Audit(AuditCommand::Verify {
            path,
            key,
            checkpoint,
        }) => {
            use hub_server::audit::{self, AuditPaths};
            let mut paths = if path.is_dir() {
                AuditPaths::in_dir(&path)
            } else {
                let mut p = AuditPaths::in_dir(path.parent().unwrap_or(std::path::Path::new(".")));
                p.log = path.clone();
                p
            };
            paths.key = key.unwrap_or(paths.key);
            paths.checkpoint = checkpoint.unwrap_or(paths.checkpoint);
            let k = audit::load_key(&paths.key, false)
                .context("audit verify needs the hub's audit key (--key)")?;
            let v = audit::verify(&paths, &k)
                .map_err(|t| anyhow::anyhow!("{}: TAMPERED: {t}", paths.log.display()))?;
            let seq = v.checkpoint.seq;
            println!(
                "{}: {} entries, chain intact, every MAC valid, checkpoint seq {seq}{}",
                paths.log.display(),
                v.entries.len(),
                if v.in_flight {
                    " (the last entry was appended just before a crash; the hub repairs the checkpoint at start)"
                } else {
                    ""
                }
            );
        }
        Command::Audit(AuditCommand::Checkpoint { data_dir, key }) => {
            use hub_server::audit::{self, AuditPaths};
            let paths = AuditPaths::in_dir(&data_dir);
            let key = key.unwrap_or(paths.key.clone());
            let k = audit::load_key(&key, false).context("reading the audit key (--key)")?;
            match audit::read_checkpoint(&paths.checkpoint, &k)
                .map_err(|t| anyhow::anyhow!("{}: {t}", paths.checkpoint.display()))?
            {
                Some(c) => println!("seq={} head={} at_ms={} mac=ok", c.seq, c.head, c.at_ms),
                None => anyhow::bail!(
                    "{}: TAMPERED: {}",
                    paths.checkpoint.display(),
                    audit::Tamper::NoCheckpoint
                ),
            }
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
            // Everything the hub writes (store, audit log, keys) is for its user only.
            // Only for `serve`: `ca init`/`enroll` write certificates others must read.
            // SAFETY: umask has no preconditions; no other thread runs yet.
            unsafe {
                libc::umask(0o077);
            }
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
