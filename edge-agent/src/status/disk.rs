//! Free space on the data folder's filesystem, and when it counts as full.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The data folder counts as full below 2 % of its filesystem free, at most 64 MiB
/// (a large card alarms at 64 MiB, a tiny filesystem near its last blocks). Free
/// space is what an unprivileged writer may use (`f_bavail`).
pub const FULL_BELOW_MAX: u64 = 64 * 1024 * 1024;

/// What every alarm about it starts with.
pub const DISK_FULL: &str = "disk full";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskStatus {
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// The alarm threshold for this filesystem.
    pub full_below_bytes: u64,
    pub full: bool,
}

pub fn full_below(total: u64) -> u64 {
    (total / 50).min(FULL_BELOW_MAX)
}

/// statvfs of `path`'s filesystem.
pub fn space(path: &Path) -> std::io::Result<DiskStatus> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain data, filled by the call or left unused on failure.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut v) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = v.f_frsize as u64;
    let free = (v.f_bavail as u64).saturating_mul(unit);
    let total = (v.f_blocks as u64).saturating_mul(unit);
    let below = full_below(total);
    Ok(DiskStatus {
        free_bytes: free,
        total_bytes: total,
        full_below_bytes: below,
        full: free < below || (free == 0 && total > 0),
    })
}

fn mib(b: u64) -> String {
    if b >= 10 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{} KiB", b >> 10)
    }
}

/// How the space alarms raised here begin (others may raise their own "disk full").
const SPACE: &str = "disk full: the data folder's filesystem";
const UNKNOWN: &str = "disk full? the data folder's free space cannot be read";

/// An alarm this module raised (replaced at every check).
pub fn is_space_alarm(a: &str) -> bool {
    a.starts_with(SPACE) || a.starts_with(UNKNOWN)
}

pub fn unknown_alarm(e: &std::io::Error) -> String {
    format!("{UNKNOWN}: {e}")
}

/// The alarm for a full data folder, if it is.
pub fn alarm(d: &DiskStatus) -> Option<String> {
    d.full.then(|| {
        format!(
            "{SPACE} has {} free of {} (alarm below {}); new scans wait in the inbox and results, status and logs may not be written",
            mib(d.free_bytes),
            mib(d.total_bytes),
            mib(d.full_below_bytes)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_the_alarm_name_the_problem() {
        assert_eq!(full_below(32 << 30), FULL_BELOW_MAX);
        assert_eq!(full_below(2 << 20), (2 << 20) / 50);
        let d = space(Path::new("/")).unwrap();
        assert!(d.total_bytes > 0 && d.full_below_bytes <= FULL_BELOW_MAX);
        let full = DiskStatus {
            free_bytes: 0,
            total_bytes: 2 << 20,
            full_below_bytes: full_below(2 << 20),
            full: true,
        };
        let a = alarm(&full).unwrap();
        assert!(a.starts_with(DISK_FULL) && is_space_alarm(&a), "{a}");
        assert!(alarm(&DiskStatus::default()).is_none());
        assert!(space(Path::new("/nonexistent/x")).is_err());
    }
}
