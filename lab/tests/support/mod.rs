//! Running the `pleura-lab` binary on the shipped fixtures and model.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/scans").join(name)
}

/// `pleura-lab` (the same commands as `edge-agent analyze|eval|bench`) in the checkout.
pub fn lab(args: &[&str]) -> Output {
    lab_cmd(args).output().expect("running pleura-lab")
}

pub fn lab_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pleura-lab"));
    c.current_dir(root()).args(args);
    c
}

pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// ONNX Runtime's library, when this machine has one (CI installs it from PyPI).
pub fn ort_library() -> Option<String> {
    match std::env::var("ORT_DYLIB_PATH") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var("PLEURA_REQUIRE_ORT").is_ok_and(|v| v == "1") => {
            panic!("PLEURA_REQUIRE_ORT=1 but ORT_DYLIB_PATH is not set")
        }
        _ => {
            eprintln!("ORT_DYLIB_PATH not set: skipping the ONNX Runtime comparison (scripts/test.sh sets it)");
            None
        }
    }
}

pub fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

/// A character device like /dev/zero, if this machine lets us make one.
pub fn mknod_zero(p: &Path) -> bool {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) == 0 }
}
