//! `edge-agent status`: the running agent's status file, checked for freshness and
//! completed with what this command sees itself (free space); or, when no agent runs,
//! NOT RUNNING, the outbox read now (or why it cannot be opened) and the last alarms
//! shown as past ones, never live state (connected, analysing) as current.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::EdgeConfig;
use crate::status::{disk, file, now_ms, render, Status};

/// Status older than this while the agent holds its lock is an alarm.
const STALE_MS: u64 = 5_000;

/// What `edge-agent status` shows: the status and whether the agent runs.
pub fn gather(cfg: &EdgeConfig) -> Result<(Status, bool)> {
    let (mut st, unreadable) = match file::read(&cfg.status_file()) {
        Ok(s) => (s, None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Status::default(), None),
        Err(e) => (Status::default(), Some(e.to_string())),
    };
    let mut now = Vec::new();
    // Free lock = no daemon; hold it while reading the outbox ourselves.
    let lock = crate::lock::DirLock::try_take(&cfg.data_dir);
    let running = matches!(lock, Ok(None));
    match &lock {
        Ok(Some(_held)) => {
            now.push(
                "agent NOT RUNNING: no scans are taken in and nothing is sent to the hub".into(),
            );
            st.last_alarms = std::mem::take(&mut st.alarms);
            stopped(&mut st, cfg, &mut now);
        }
        Ok(None) => {
            if let Some(e) = unreadable {
                now.push(format!("the agent's status file cannot be read: {e}"));
            } else if now_ms().saturating_sub(st.updated_ms) > STALE_MS {
                now.push(format!(
                    "agent holds its lock but has not updated its status for over {} s",
                    STALE_MS / 1000
                ));
            }
        }
        Err(e) => {
            now.push(format!(
                "cannot tell whether the agent runs: its lock file in the data folder cannot be opened ({e})"
            ));
            st.last_alarms = std::mem::take(&mut st.alarms);
            stopped(&mut st, cfg, &mut now);
        }
    }
    drop(lock);
    // Seen by this command itself: the agent may be unable to say it.
    st.alarms.retain(|a| !disk::is_space_alarm(a));
    match disk::space(&cfg.data_dir) {
        Ok(d) => {
            st.disk = d;
            now.extend(disk::alarm(&d));
        }
        Err(e) => now.push(disk::unknown_alarm(&e)),
    }
    now.append(&mut st.alarms);
    st.alarms = now;
    Ok((st, running))
}

/// No agent: the outbox read now, live state cleared.
fn stopped(st: &mut Status, cfg: &EdgeConfig, alarms: &mut Vec<String>) {
    st.clinic = cfg.clinic.clone();
    st.device = cfg.device.clone();
    st.pid = 0;
    st.sync.mqtt_connected = false;
    st.sync.reachable = false;
    st.sync.mqtt.up = false;
    st.sync.grpc.up = false;
    st.sync.state = "stopped".into();
    st.sync.summary = "agent not running".into();
    st.sync.in_flight = 0;
    st.intake.analysing = None;
    st.intake.waiting_for_quota = 0;
    // Opened for reading its figures only, and closed again at once.
    match crate::daemon::open_outbox(cfg) {
        Ok(ob) => match crate::outbox::Outbox::stats(&ob) {
            Ok(stats) => st.outbox = stats,
            Err(e) => alarms.push(format!("the outbox cannot be read: {e}")),
        },
        Err(e) => alarms.push(format!(
            "the outbox cannot be opened: {e:#}; the agent would not start"
        )),
    }
}

/// Prints the status (human or JSON with `running`).
pub fn show(config: &Path, json: bool) -> Result<ExitCode> {
    let cfg = EdgeConfig::load(config)?;
    let (st, running) = gather(&cfg)?;
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["running"] = running.into();
        println!("{v}");
    } else {
        print!("{}", render(&st, running));
    }
    Ok(ExitCode::SUCCESS)
}
