//! Where a scan goes when it leaves the inbox other than through the outbox: back to
//! the inbox for another attempt, or to rejected/ with its reason — always the entry
//! itself, moved through its folder's descriptor, never what a link points to.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::attempts::Attempts;
use super::inbox::Place;
use super::{private_dir, zone_from_name, Intake, Outcome};
use crate::status::now_ms;

impl Intake {
    /// A failure of the file itself before an attempt was recorded: records one.
    pub(super) fn failed(
        &self,
        at: &Place,
        path: &Path,
        r: &str,
        why: &str,
        attempts: &mut Attempts,
    ) -> Outcome {
        match attempts.begin(r) {
            Ok(_) => self.failed_counted(at, path, r, why, attempts),
            Err(e) => Outcome::Storage(format!("recording the attempt: {e}")),
        }
    }

    /// A failure of the file itself, its attempt already recorded.
    pub(super) fn failed_counted(
        &self,
        at: &Place,
        path: &Path,
        r: &str,
        why: &str,
        attempts: &mut Attempts,
    ) -> Outcome {
        let n = attempts.get(r);
        let max = self.cfg.intake.max_attempts;
        let zone = zone_from_name(path);
        if n >= max {
            self.status
                .update(|s| s.intake.rejected_after_attempts += 1);
            let reason = format!("{why} ({n} attempts)");
            return self.reject(at, path, r, &reason, attempts);
        }
        tracing::warn!(scan = %r, zone = zone.as_deref().unwrap_or("-"), attempt = n, max, error = why, "scan left in the inbox; will retry");
        Outcome::Failed(why.to_string())
    }

    /// Sets an entry aside in rejected/ with its reason; it is never read again.
    pub(super) fn reject(
        &self,
        at: &Place,
        path: &Path,
        r: &str,
        reason: &str,
        attempts: &mut Attempts,
    ) -> Outcome {
        let zone = zone_from_name(path);
        let zone = zone.as_deref().unwrap_or("-");
        match self.move_to(at, path, &self.cfg.rejected_dir(), Some(reason)) {
            Ok(()) => {
                attempts.clear(r);
                self.status.update(|s| s.intake.rejected += 1);
                tracing::warn!(scan = %r, zone, %reason, path = %self.shown(path), "scan rejected");
                Outcome::Done
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Gone,
            Err(e) => {
                tracing::error!(scan = %r, zone, %reason, error = %e, "cannot move a rejected entry to rejected/");
                Outcome::Failed(format!("{reason}; moving it to rejected/: {e}"))
            }
        }
    }

    /// Moves the entry at `at` (the entry itself inside the inbox, never what a link
    /// points to) to `dir`, keeping its place below the inbox (`path`) as its name.
    pub(super) fn move_to(
        &self,
        at: &Place,
        path: &Path,
        dir: &Path,
        reason: Option<&str>,
    ) -> std::io::Result<()> {
        let rel = path.strip_prefix(&self.cfg.inbox).unwrap_or(path);
        let mut dest = dir.join(rel);
        if let Some(parent) = dest.parent() {
            private_dir(parent)?;
        }
        if dest.symlink_metadata().is_ok() {
            let name = dest
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            dest.set_file_name(format!("{}-{name}", now_ms()));
        }
        if let Some(reason) = reason {
            let mut r = dest.clone().into_os_string();
            r.push(".reason.txt");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(PathBuf::from(r))?;
            f.write_all(format!("{reason}\n").as_bytes())?;
        }
        at.rename_to(&dest)?;
        // A rename keeps the exporter's mode; case data here is the agent's alone.
        // (Not links: chmod would follow them.)
        if dest
            .symlink_metadata()
            .is_ok_and(|m| !m.file_type().is_symlink())
        {
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }
}
