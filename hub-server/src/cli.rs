//! The `hub-server` command line: `serve`, and the administrative commands (CA,
//! enrolment, revocation, accounts, audit log) that run to completion.

use std::path::PathBuf;

use clap::Subcommand;

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

/// Runs an administrative command (everything but `serve` and `print-config`) to
/// completion.
pub fn admin(cmd: Command) -> anyhow::Result<()> {
    use crate::ca::Pki;
    use anyhow::Context;
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
            crate::auth::add_account(
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
            use crate::audit::{self, AuditPaths};
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
            use crate::audit::{self, AuditPaths};
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
