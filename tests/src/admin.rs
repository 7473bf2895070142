//! The hub's administrative commands, run to completion.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::*;

/// Runs `hub-server <args>` to completion (CA, enrolment, accounts); returns stdout.
pub fn hub_admin(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new(bin("hub-server"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "hub-server {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `hub-server ca init` into `pki` (for a broker that must exist before the hub).
pub fn ca_init(pki: &Path) -> Result<()> {
    hub_admin(&["ca", "init", "--pki-dir", &pki.to_string_lossy()], None).map(drop)
}
