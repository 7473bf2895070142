//! Mosquitto from Debian's packages, as deployed, on a runtime port.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::*;

/// Mosquitto from Debian's packages, with persistence on, on a runtime port.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// None when mosquitto is not installed (unless PLEURA_REQUIRE_MOSQUITTO=1: then panic).
    pub fn find() -> Option<PathBuf> {
        let p = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        if p.is_none() && std::env::var_os("PLEURA_REQUIRE_MOSQUITTO").is_some() {
            panic!("mosquitto is required (PLEURA_REQUIRE_MOSQUITTO=1) but not installed");
        }
        p
    }

    /// Plaintext, anonymous: the baseline broker of sync-bench.
    pub fn new(dir: &Path) -> Result<Self> {
        Self::configured(dir, |port| {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n")
        })
    }

    /// Writes mosquitto.conf: `listener` (given the port) plus persistence as deployed.
    fn configured(dir: &Path, listener: impl FnOnce(u16) -> String) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port();
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "{}persistence true\npersistence_location {}/\n\
                 autosave_interval 1\nmax_queued_messages 100000\nmessage_size_limit 1048576\n",
                listener(port),
                dir.display()
            ),
        )?;
        Ok(Self {
            port,
            dir: dir.into(),
            child: None,
        })
    }

    /// Mosquitto as a production hub would run it: TLS with the hub's CA and server
    /// certificate, client certificates required, identity = certificate CN, topics
    /// confined by the shipped ACL (deploy/mosquitto/pleura.acl), revocations from crl.pem.
    pub fn with_tls(dir: &Path, pki: &Path) -> Result<Self> {
        let p = |f: &str| pki.join(f).display().to_string();
        Self::configured(dir, |port| {
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous false\n\
                 cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\n\
                 crlfile {}\nacl_file {}\n",
                p("ca.pem"),
                p("hub.pem"),
                p("hub.key"),
                p("crl.pem"),
                repo_root().join("deploy/mosquitto/pleura.acl").display(),
            )
        })
    }

    pub fn start(&mut self) -> Result<()> {
        let exe = Self::find().context("mosquitto not installed")?;
        let c = spawn(
            Command::new(exe)
                .arg("-c")
                .arg(self.dir.join("mosquitto.conf")),
            &self.dir.join("mosquitto.log"),
        )?;
        self.child = Some(c);
        let port = self.port;
        eventually("mosquitto listening", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
        });
        Ok(())
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill9();
    }
}
