//! What the agent is doing, shared by its workers, written to `status.json` every
//! second and shown by `edge-agent status`.
//!
//! Counters (analysed, synced, resends…) count since installation: a starting agent
//! seeds them from the last status file (`Shared::restore`). The writer checks the
//! data folder's free space every round and raises a "disk full" alarm, and keeps
//! `status.json` current on a full disk (file.rs).

pub mod disk;
pub mod file;
pub mod models;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use pleura_shared::now_ms;

use crate::outbox::OutboxStats;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub pid: u32,
    pub updated_ms: u64,
    pub clinic: String,
    pub device: String,
    pub model_version: String,
    pub outbox: OutboxStats,
    pub sync: SyncStatus,
    pub intake: IntakeStatus,
    /// Free space on the data folder's filesystem, checked every second.
    pub disk: disk::DiskStatus,
    /// When the counters started (the first start of this installation), ms.
    pub counters_since_ms: u64,
    /// Specialists' verdicts held at the clinic (all time).
    pub verdicts: u64,
    /// The hub -> device channel: messages received, dropped, receipted (since start).
    pub downlink: DownlinkStatus,
    /// Media items (previews, clips) for the hub: made, stored, uploaded.
    pub media: MediaStatus,
    /// Installed and offered model releases (issue #15).
    pub models: models::ModelsStatus,
    /// Conditions a person should act on.
    pub alarms: Vec<String>,
    /// Only from `edge-agent status` on a stopped agent: the alarms it had when it
    /// stopped (no longer current).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub last_alarms: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncStatus {
    /// idle, sending (via `transport`), connecting, reconnecting, backing-off, starting
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
    /// The hub answers on some transport (MQTT connected, or the last gRPC call).
    pub reachable: bool,
    /// One line for the operator: how the hub is reached now (sync/state.rs `describe`).
    pub summary: String,
    /// Each transport: up, last successful contact, failures, last error.
    pub mqtt: LinkStatus,
    pub grpc: LinkStatus,
    /// Acknowledged results queued again because the hub lacked them (anti-entropy).
    pub resent_for_hub: u64,
    /// When the hub last answered a holdings check (ms).
    pub last_reconcile_ms: Option<u64>,
    pub retractions_recorded: u64,
    pub retractions_refused: u64,
}

/// `status.json`'s `downlink`: counts since this start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DownlinkStatus {
    /// Whether downlink messages can be trusted: "hub_key", "insecure" or "missing".
    pub trust: String,
    pub received: u64,
    pub verdicts: u64,
    pub clip_requests: u64,
    pub media_acks: u64,
    pub duplicates: u64,
    pub receipts_sent: u64,
    /// Messages dropped, by reason (signature, other_device, no_hub_key…).
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaStatus {
    /// Bytes of item content sent in chunks (re-sends included).
    pub chunk_bytes_sent: u64,
    /// Whole uplink payloads (signed messages) sent for media: chunks and queries.
    pub uplink_bytes_sent: u64,
    pub messages_sent: u64,
    pub items_uploaded: u64,
    pub items_prepared: u64,
    /// Items the hub refused for good.
    pub refused: u64,
    pub ack_timeouts: u64,
    pub errors: u64,
    /// Items that could not be made (scan no longer kept, decode failure).
    pub unavailable: u64,
    /// Clips not made because the media store is at `[media] max_bytes`.
    pub clips_skipped_for_room: u64,
    /// Previews kept although the store is over `[media] max_bytes` (never dropped).
    pub previews_over_budget: u64,
    pub stored_bytes: u64,
    pub max_bytes: u64,
    pub queued: u64,
    pub at_hub: u64,
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

    /// Seeds the counters from the last status file (`path`), so they count since
    /// installation, not since this start. Without one (first start, or unreadable)
    /// they start at zero from now.
    pub fn restore(&self, path: &Path) {
        let prev = file::read(path).ok();
        self.update(|s| match prev {
            Some(p) => seed_counters(s, &p),
            None => s.counters_since_ms = now_ms(),
        });
    }
}

/// Copies the counters (not the live state) of `prev` into `s`. Not
/// `rejected_after_attempts`: it raises an alarm while non-zero, and a restart is how
/// an operator acknowledges it.
pub fn seed_counters(s: &mut Status, prev: &Status) {
    let (i, p) = (&mut s.intake, &prev.intake);
    i.analysed = p.analysed;
    i.rejected = p.rejected;
    i.entry_errors = p.entry_errors;
    i.analyses_timed_out = p.analyses_timed_out;
    let (y, q) = (&mut s.sync, &prev.sync);
    y.synced_total = q.synced_total;
    y.batches_sent = q.batches_sent;
    y.bytes_sent = q.bytes_sent;
    y.resends = q.resends;
    y.reconnects = q.reconnects;
    y.last_sync_ms = q.last_sync_ms;
    y.resent_for_hub = q.resent_for_hub;
    y.retractions_recorded = q.retractions_recorded;
    y.retractions_refused = q.retractions_refused;
    let (m, q) = (&mut s.media, &prev.media);
    m.items_prepared = q.items_prepared;
    m.items_uploaded = q.items_uploaded;
    m.refused = q.refused;
    m.ack_timeouts = q.ack_timeouts;
    m.errors = q.errors;
    m.unavailable = q.unavailable;
    m.clips_skipped_for_room = q.clips_skipped_for_room;
    m.previews_over_budget = q.previews_over_budget;
    s.counters_since_ms = if prev.counters_since_ms > 0 {
        prev.counters_since_ms
    } else {
        now_ms()
    };
}

/// Writes `status.json` whole (see file.rs); kept for callers that write it once.
pub fn write_file(path: &Path, status: &Status) -> std::io::Result<()> {
    file::StatusFile::new(path).write(status)
}

pub fn render(s: &Status, running: bool) -> String {
    let age = |ms: Option<u64>| match ms {
        Some(t) => format!("{}s ago", now_ms().saturating_sub(t) / 1000),
        None => "never".into(),
    };
    let mut out = format!(
        "agent      {} (clinic {}, device {})\nmodel      {}\nqueue      {} unsynced result(s), {} of {} bytes; oldest analysed {}\n",
        if running { format!("running, pid {}", s.pid) } else { "NOT RUNNING (counters and alarms below are as it left them; queue read now)".into() },
        s.clinic,
        s.device,
        s.model_version,
        s.outbox.pending,
        s.outbox.pending_bytes,
        s.outbox.quota_bytes,
        age(s.outbox.oldest_pending_ms),
    );
    // The worker's own summary names the transport that works ("reachable via grpc
    // (mqtt down: …); idle"), not only whether MQTT is up.
    let link = if !s.sync.summary.is_empty() {
        s.sync.summary.clone()
    } else if s.sync.reachable || s.sync.mqtt_connected {
        format!("reachable via {}; {}", s.sync.transport, s.sync.state)
    } else {
        format!("unreachable; {}", s.sync.state)
    };
    out += &format!(
        "hub        {link}; last sync {}; {} synced in total\n",
        age(s.sync.last_sync_ms),
        s.sync.synced_total,
    );
    if s.outbox.retractions_pending > 0 || s.sync.resent_for_hub > 0 {
        out += &format!(
            "sync       {} retraction(s) waiting for the hub; {} result(s) sent again because the hub had lost them\n",
            s.outbox.retractions_pending, s.sync.resent_for_hub
        );
    }
    if let Some(d) = &s.outbox.damage {
        out += &format!(
            "store      DAMAGED: {d}; {} lost result(s) still to rebuild\n",
            s.outbox.lost_pending
        );
    }
    if let Some(e) = &s.sync.last_error {
        out += &format!("last error {e}\n");
    }
    out += &format!(
        "disk       {} MiB free of {} MiB on the data folder's filesystem{}\n",
        s.disk.free_bytes >> 20,
        s.disk.total_bytes >> 20,
        if s.disk.full { " (FULL)" } else { "" }
    );
    if s.counters_since_ms > 0 {
        out += &format!(
            "counters   since installation ({} days ago)\n",
            now_ms().saturating_sub(s.counters_since_ms) / 86_400_000
        );
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
    out += &models::render(&s.models);
    if s.alarms.is_empty() {
        out += "alarms     none\n";
    } else {
        for a in &s.alarms {
            out += &format!("ALARM      {a}\n");
        }
    }
    for a in &s.last_alarms {
        out += &format!("was alarm  {a} (when the agent stopped)\n");
    }
    out
}

/// Refreshes the outbox figures and rewrites `status.json` every second.
pub async fn writer(
    outbox: std::sync::Arc<dyn crate::outbox::Outbox>,
    shared: std::sync::Arc<Shared>,
    path: std::path::PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let file = file::StatusFile::new(&path);
    let data_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut failing: Option<String> = None;
    loop {
        let ob = outbox.clone();
        if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || ob.stats()).await {
            shared.update(|s| s.outbox = stats);
        }
        let space = disk::space(&data_dir);
        shared.update(|s| {
            s.updated_ms = now_ms();
            s.alarms.retain(|a| !disk::is_space_alarm(a));
            match &space {
                Ok(d) => {
                    s.disk = *d;
                    s.alarms.extend(disk::alarm(d));
                }
                Err(e) => s.alarms.push(disk::unknown_alarm(e)),
            }
        });
        let snap = shared.snapshot();
        // Logged once per change, not every second.
        match file.write(&snap) {
            Ok(()) if failing.take().is_some() => tracing::info!("status file written again"),
            Ok(()) => {}
            Err(e) => {
                let e = e.to_string();
                if failing.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "cannot write the status file");
                    failing = Some(e);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// What is known of one transport to the hub (in `status.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkStatus {
    /// MQTT: connected and subscribed to its acks. gRPC: the last call was answered.
    pub up: bool,
    /// The last time the hub answered on this transport, ms since the epoch.
    pub last_ok_ms: Option<u64>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// Why the last attempt failed (cleared by a success).
    pub last_error: Option<String>,
}

impl LinkStatus {
    /// The hub answered. Returns true when the link was not up before (a transition
    /// worth one log line).
    pub fn ok(&mut self, now_ms: u64) -> bool {
        let was_up = self.up;
        self.up = true;
        self.last_ok_ms = Some(now_ms);
        self.failures = 0;
        self.last_error = None;
        !was_up
    }

    /// An attempt failed. Returns true when this is news (the link was up, or this is
    /// the first failure): one log line per transition, not per retry.
    pub fn failed(&mut self, error: String) -> bool {
        let news = self.up || self.failures == 0;
        self.up = false;
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error);
        news
    }
}
