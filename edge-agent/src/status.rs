//! What the agent is doing, shared by its workers, written to `status.json` every
//! second and shown by `edge-agent status`.

use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use pleura_shared::now_ms;

use crate::outbox::OutboxStats;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub updated_ms: u64,
    pub clinic: String,
    pub device: String,
    pub model_version: String,
    pub outbox: OutboxStats,
    pub sync: SyncStatus,
    pub intake: IntakeStatus,
    /// Conditions a person should act on.
    pub alarms: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    /// idle, sending, backing-off, disconnected
    pub state: String,
    pub mqtt_connected: bool,
    pub transport: String,
    pub last_sync_ms: Option<u64>,
    pub last_error: Option<String>,
    pub in_flight: usize,
    pub synced_total: u64,
    pub batches_sent: u64,
    pub bytes_sent: u64,
    pub resends: u64,
    pub reconnects: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IntakeStatus {
    pub analysed: u64,
    pub rejected: u64,
    pub waiting_for_quota: u64,
    /// Set aside after `intake.max_attempts` failed or interrupted analyses.
    #[serde(default)]
    pub rejected_after_attempts: u64,
    /// Failures of single inbox entries (each retried, then set aside).
    #[serde(default)]
    pub entry_errors: u64,
    /// Entries that failed `intake.max_attempts` rounds in a row and could not be set aside.
    #[serde(default)]
    pub failing_entries: u64,
    /// The inbox folder itself could not be listed at the last look.
    #[serde(default)]
    pub inbox_unreadable: bool,
    /// The last entry error (no paths: entries are named by digest in the log).
    #[serde(default)]
    pub last_error: Option<String>,
    /// The scan in analysis now (its digest) and for how long; refreshed every second.
    #[serde(default)]
    pub analysing: Option<String>,
    /// Analyses given up after `intake.max_analysis_s`.
    #[serde(default)]
    pub analyses_timed_out: u64,
}

#[derive(Default)]
pub struct Shared(Mutex<Status>);

impl Shared {
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }

    pub fn snapshot(&self) -> Status {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Writes atomically (temp file + rename) so a reader never sees half a file.
pub fn write_file(path: &Path, status: &Status) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?
        .write_all(&serde_json::to_vec_pretty(status)?)?;
    std::fs::rename(tmp, path)
}

pub fn render(s: &Status, running: bool) -> String {
    let age = |ms: Option<u64>| match ms {
        Some(t) => format!("{}s ago", now_ms().saturating_sub(t) / 1000),
        None => "never".into(),
    };
    let mut out = format!(
        "agent      {} (clinic {}, device {})\nmodel      {}\nqueue      {} unsynced result(s), {} of {} bytes; oldest analysed {}\n",
        if running { format!("running, pid {}", s.pid) } else { "NOT RUNNING (last known state below)".into() },
        s.clinic,
        s.device,
        s.model_version,
        s.outbox.pending,
        s.outbox.pending_bytes,
        s.outbox.quota_bytes,
        age(s.outbox.oldest_pending_ms),
    );
    out += &format!(
        "hub        {} via {}; state {}; last sync {}; {} synced in total\n",
        if s.sync.mqtt_connected {
            "reachable"
        } else {
            "unreachable"
        },
        if s.sync.transport.is_empty() {
            "-"
        } else {
            &s.sync.transport
        },
        s.sync.state,
        age(s.sync.last_sync_ms),
        s.sync.synced_total,
    );
    if let Some(e) = &s.sync.last_error {
        out += &format!("last error {e}\n");
    }
    out += &format!(
        "intake     {} analysed, {} rejected, {} waiting for queue space; {} parked, {} corrupt\n",
        s.intake.analysed,
        s.intake.rejected,
        s.intake.waiting_for_quota,
        s.outbox.parked,
        s.outbox.corrupt
    );
    if s.intake.entry_errors > 0 || s.intake.inbox_unreadable {
        out += &format!(
            "inbox      {}{} entry error(s), {} entr(y/ies) stuck; last: {}\n",
            if s.intake.inbox_unreadable {
                "UNREADABLE; "
            } else {
                ""
            },
            s.intake.entry_errors,
            s.intake.failing_entries,
            s.intake.last_error.as_deref().unwrap_or("-")
        );
    }
    if let Some(a) = &s.intake.analysing {
        out += &format!("analysing  scan {a}\n");
    }
    if s.intake.analyses_timed_out > 0 {
        out += &format!(
            "timeouts   {} analys(is/es) given up after intake.max_analysis_s\n",
            s.intake.analyses_timed_out
        );
    }
    if s.alarms.is_empty() {
        out += "alarms     none\n";
    } else {
        for a in &s.alarms {
            out += &format!("ALARM      {a}\n");
        }
    }
    out
}
