//! Where a scan goes when it leaves the inbox other than through the outbox: back to
//! the inbox for another attempt, or to rejected/ with its reason — always the entry
//! itself, moved through its folder's descriptor, never what a link points to.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::attempts::Attempts;
use super::inbox::{Entry, Moved, Place, Stamp};
use super::{private_dir, zone_from_name, Intake, Outcome};
use pleura_shared::now_ms;

mod kept;
use kept::Kept;

impl Intake {
    /// A failure of the file itself before an attempt was recorded: records one.
    pub(super) fn failed(
        &self,
        at: &Place,
        path: &Path,
        r: &str,
        why: &str,
        attempts: &Attempts,
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
        attempts: &Attempts,
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
        attempts: &Attempts,
    ) -> Outcome {
        let zone = zone_from_name(path);
        let zone = zone.as_deref().unwrap_or("-");
        match self.move_to(at, path, &self.cfg.rejected_dir(), Some(reason)) {
            Ok(_) => {
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

    /// Where entries copied out of a read-only inbox are listed (kept.rs).
    fn kept_file(&self) -> PathBuf {
        self.cfg.data_dir.join("intake-kept.json")
    }

    /// True for an entry that was copied out but could not be removed from the inbox
    /// (and is still the same file): it was taken in once and is skipped, with an alarm.
    pub(super) fn left_in_inbox(&self, r: &str, entry: &Entry) -> bool {
        let stamp = match entry {
            Entry::File {
                size, mtime, id, ..
            } => Stamp::new(*id, *size, *mtime),
            Entry::Odd { path, .. } => match path.symlink_metadata() {
                Ok(m) => Stamp::of(&m),
                Err(_) => return false,
            },
            Entry::Unreadable { .. } => return false,
        };
        let Some(kept) = Kept::load_cached(&self.kept_file()) else {
            return false;
        };
        if !kept.holds(r, &stamp) {
            return false;
        }
        self.status.update(|s| {
            if !s.alarms.iter().any(|a| a.contains(kept::ALARM_MARK)) {
                s.alarms.push(kept::alarm(kept.len()));
            }
        });
        true
    }

    /// Moves the entry at `at` (the entry itself inside the inbox, never what a link
    /// points to) to `dir`, keeping its place below the inbox (`path`) as its name.
    /// Across filesystems it is copied; an entry that cannot then be removed from the
    /// inbox is listed so that it is never taken in again, and alarmed.
    pub(super) fn move_to(
        &self,
        at: &Place,
        path: &Path,
        dir: &Path,
        reason: Option<&str>,
    ) -> std::io::Result<Moved> {
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
        let moved = at.move_to(&dest)?;
        if let Moved::CopiedKept { stamp, error } = &moved {
            // `path` may carry the name it gets in `dir`; the entry's own is `at.name`.
            self.keep_in_inbox(&path.with_file_name(&at.name), *stamp, error)?;
        }
        // A rename keeps the exporter's mode; case data here is the agent's alone.
        // (Not links: chmod would follow them.)
        if dest
            .symlink_metadata()
            .is_ok_and(|m| !m.file_type().is_symlink())
        {
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(moved)
    }

    /// Lists an entry copied out but left in the inbox, and raises the alarm. Fails
    /// (so the scan is not counted as moved) only if the list cannot be written.
    pub(super) fn keep_in_inbox(
        &self,
        path: &Path,
        stamp: Stamp,
        error: &str,
    ) -> std::io::Result<()> {
        let r = self.scan_ref(path);
        let zone = zone_from_name(path);
        let n = Kept::record(&self.kept_file(), &r, stamp)?;
        tracing::warn!(scan = %r, zone = zone.as_deref().unwrap_or("-"), %error, "copied out of the inbox, but the inbox entry cannot be removed (read-only share?); it is skipped from now on");
        self.status.update(|s| {
            s.alarms.retain(|a| !a.contains(kept::ALARM_MARK));
            s.alarms.push(kept::alarm(n));
        });
        Ok(())
    }
}
