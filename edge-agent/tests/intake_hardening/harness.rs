//! The real `edge-agent` binary on a private inbox and data folder, and the hostile
//! entries the tests put in its inbox.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/scans").join(name)
}

pub fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("running edge-agent")
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub child: Option<Child>,
}

impl Agent {
    pub fn inbox(&self) -> PathBuf {
        self.dir.path().join("inbox")
    }
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A configuration over a fresh inbox; the hub is a closed port (results queue).
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("inbox")).unwrap();
        let config = d.join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "clinic = \"clinic-a\"\ndevice = \"pi-1\"\ninbox = \"{inbox}\"\ndata_dir = \"{data}\"\n\
                 pseudonym_key_file = \"{data}/pseudonym.key\"\n\
                 [hub]\nmqtt_url = \"mqtt://127.0.0.1:{port}\"\ninsecure_plaintext = true\n\
                 [inference]\nmodel = \"{model}\"\npoll_ms = 100\n{extra}",
                inbox = d.join("inbox").display(),
                data = d.join("data").display(),
                port = free_port(),
                model = root().join("models/pleura-lite.onnx").display(),
            ),
        )
        .unwrap();
        Self {
            dir,
            config,
            child: None,
        }
    }

    pub fn start(&mut self) {
        let log = |n: &str| std::fs::File::create(self.dir.path().join(n)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .current_dir(root())
            .args(["run", "--config", self.config.to_str().unwrap()])
            // Everything the agent logs, debug included, must be free of patient names.
            .env("RUST_LOG", "debug")
            .stdout(Stdio::from(log("stdout.log")))
            .stderr(Stdio::from(log("stderr.log")))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling the child this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(20);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > end {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        let r = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        r("stdout.log") + &r("stderr.log")
    }

    pub fn status(&self) -> Value {
        std::fs::read(self.data().join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits (up to a generous deadline) until `cond` holds on the status file.
    pub fn wait_for(&mut self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.status();
            if cond(&s) {
                return s;
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(code) = c.try_wait().unwrap() {
                    panic!("agent exited ({code}) waiting for {what}:\n{}", self.log());
                }
            }
            if Instant::now() > end {
                self.stop();
                panic!(
                    "timed out waiting for {what}; status {s:#}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn status_cli(&self, json: bool) -> String {
        let mut args = vec!["status", "--config", self.config.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let out = agent(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn u(v: &Value, k: &str) -> u64 {
    v["intake"][k].as_u64().unwrap_or(0)
}

/// Names under `dir`, recursively, relative to it.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let q = e.path();
            out.push(q.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(q);
            }
        }
    }
    out.sort();
    out
}
