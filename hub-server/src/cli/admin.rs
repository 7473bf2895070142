//! The administrative commands: they run to completion and print what they did.

use std::path::Path;

use anyhow::{Context, Result};

use super::{AuditCommand, CaCommand, UserCommand};
use crate::audit::{self, AuditPaths};
use crate::ca::Pki;

pub fn ca(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init {
            pki_dir,
            name,
            sans,
        } => {
            let pki = Pki::init(&pki_dir, &name, &sans)?;
            println!(
                "CA, hub certificate and downlink key created in {} (hub valid for {}); CA: {}",
                pki_dir.display(),
                sans.join(", "),
                pki.ca_cert().display()
            );
        }
        CaCommand::Migrate { pki_dir } => {
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
    }
    Ok(())
}

pub fn enroll(
    pki_dir: &Path,
    clinic: &str,
    device: &str,
    region: &str,
    out: &Path,
    valid_days: i64,
    data_dir: Option<&Path>,
) -> Result<()> {
    let now = (pleura_shared::now_ms() / 1000) as i64;
    let rec = Pki::open(pki_dir)?.enroll(
        clinic,
        device,
        region,
        now - 300,
        now + valid_days * 86_400,
        out,
    )?;
    println!(
        "enrolled {clinic}/device/{device} in region {region}, serial {}; bundle in {}",
        rec.serial,
        out.display()
    );
    if let Some(dir) = data_dir {
        let src = crate::models::ModelStore::new(dir).root_public_key();
        if src.exists() {
            let dst = out.join(pleura_shared::release::ROOT_PUBLIC_KEY_FILE);
            let text = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            pleura_shared::release::parse_root_public_key(&String::from_utf8_lossy(&text))
                .with_context(|| format!("{}", src.display()))?;
            pleura_shared::fsutil::write_atomic(&dst, &text, 0o644)
                .with_context(|| format!("writing {}", dst.display()))?;
            println!(
                "model root key copied to {} (agent config: [models] root_key = \"{}\")",
                dst.display(),
                dst.display()
            );
        }
    }
    Ok(())
}

pub fn revoke(pki_dir: &Path, clinic: &str, device: &str) -> Result<()> {
    let pki = Pki::open(pki_dir)?;
    let rec = pki.revoke(clinic, device)?;
    println!(
        "revoked {clinic}/device/{device} (serial {}); CRL {}",
        rec.serial,
        pki.crl().display()
    );
    Ok(())
}

pub fn devices(pki_dir: &Path) -> Result<()> {
    for d in Pki::open(pki_dir)?.devices()? {
        let state = if d.revoked_at_ms.is_some() {
            "REVOKED"
        } else {
            "active"
        };
        println!(
            "{}/device/{}\tregion={}\tserial={}\t{state}",
            d.clinic, d.device, d.region, d.serial
        );
    }
    Ok(())
}

pub fn user(cmd: UserCommand) -> Result<()> {
    let UserCommand::Add {
        accounts,
        username,
        role,
        region,
    } = cmd;
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
    Ok(())
}

pub fn audit(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Verify {
            path,
            key,
            checkpoint,
        } => {
            let mut paths = if path.is_dir() {
                AuditPaths::in_dir(&path)
            } else {
                let mut p = AuditPaths::in_dir(path.parent().unwrap_or(Path::new(".")));
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
        AuditCommand::Checkpoint { data_dir, key } => {
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
    }
    Ok(())
}
