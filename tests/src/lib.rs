//! Harness for the end-to-end tests: spawns the real `hub-server` and `edge-agent`
//! binaries (and Mosquitto) as processes on ports chosen at runtime, kills them
//! with SIGKILL, restarts them, and waits for conditions with deadlines.

mod admin;
mod agent;
mod client;
mod hub;
pub mod media;
pub mod models;
mod mosquitto;
mod mqtt;
mod net;
mod proxy;
pub mod timing;
mod waits;

pub use admin::*;
pub use agent::{Agent, AgentOptions};
pub use client::*;
pub use hub::*;
pub use mosquitto::Mosquitto;
pub use mqtt::*;
pub use net::*;
pub use proxy::CountingProxy;
pub use waits::*;

use std::path::PathBuf;

use anyhow::Result;

/// `target/<profile>/<name>`, built by `cargo build --bins` (scripts/test.sh does).
pub fn bin(name: &str) -> PathBuf {
    // Tests run from target/<profile>/deps, tools from target/<profile>.
    let exe = std::env::current_exe().expect("executable path");
    let here = exe.parent().expect("target/<profile>");
    let dir = if here.ends_with("deps") {
        here.parent().expect("target/<profile>")
    } else {
        here
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --release --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
