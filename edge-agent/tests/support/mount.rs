//! Filesystems for fault tests: a small tmpfs mounted for the test (root), or a
//! loud skip where mounting is not possible (unless PLEURA_REQUIRE_MOUNT=1).
//! Included by several test files, each using a part.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn mount_required() -> bool {
    std::env::var("PLEURA_REQUIRE_MOUNT").is_ok_and(|v| v == "1")
}

/// Skips the test loudly, or fails it when PLEURA_REQUIRE_MOUNT=1.
pub fn skip(why: &str) {
    assert!(!mount_required(), "PLEURA_REQUIRE_MOUNT=1 but {why}");
    eprintln!("SKIPPED (set PLEURA_REQUIRE_MOUNT=1 to make this a failure): {why}");
}

pub fn same_fs(a: &Path, b: &Path) -> bool {
    std::fs::metadata(a).unwrap().dev() == std::fs::metadata(b).unwrap().dev()
}

/// A tmpfs mounted on `dir` (created if missing), unmounted when dropped.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// `mount -t tmpfs -o size=<size> tmpfs <dir>`; None (after `skip`) if refused.
    pub fn tmpfs(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => {
                skip(&format!(
                    "mounting a tmpfs failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip(&format!("running mount failed: {e}"));
                None
            }
        }
    }

    /// Remounts it read-only (a share the agent may read but not change).
    pub fn read_only(&self) -> bool {
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
