//! `status.json`: where each device stands with each release, written by the running hub
//! and read by `model status`.

use std::collections::BTreeMap;
use std::fmt::Write;

use pleura_shared::wire::ModelState;
use serde::{Deserialize, Serialize};

use super::rollout::ReleasePlan;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    pub updated_at_ms: u64,
    #[serde(default)]
    pub releases: BTreeMap<u64, ReleaseStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    /// `<name>` of the release, when the hub holds it.
    #[serde(default)]
    pub name: String,
    /// Model file size (the `total` of a download).
    #[serde(default)]
    pub size: u64,
    /// The plan the hub last applied; None: published, not rolled out.
    #[serde(default)]
    pub plan: Option<ReleasePlan>,
    /// `clinic/device` → its state.
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// `offered`, `downloading`, `verified`, `shadowing`, `active`, `rolled_back`,
    /// `refused` (from the device's last report), or `offered` before any report.
    pub state: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub held: u64,
    #[serde(default)]
    pub active_version: u64,
    #[serde(default)]
    pub offered_at_ms: Option<u64>,
    #[serde(default)]
    pub offered_shadow: bool,
    #[serde(default)]
    pub promote_sent: bool,
    #[serde(default)]
    pub abort_sent: bool,
    #[serde(default)]
    pub reported_at_ms: Option<u64>,
}

pub fn state_name(s: ModelState) -> &'static str {
    match s {
        ModelState::Unspecified => "unknown",
        ModelState::Offered => "offered",
        ModelState::Downloading => "downloading",
        ModelState::Verified => "verified",
        ModelState::Shadowing => "shadowing",
        ModelState::Active => "active",
        ModelState::RolledBack => "rolled_back",
        ModelState::Refused => "refused",
    }
}

/// `model status` as text: per release its plan, per device its state.
pub fn render(status: &StatusFile) -> String {
    let mut s = String::new();
    if status.releases.is_empty() {
        s.push_str("no releases rolled out or reported\n");
    }
    for (v, r) in &status.releases {
        let plan = r
            .plan
            .as_ref()
            .map_or_else(|| "not rolled out".to_string(), |p| p.to_string());
        let name = if r.name.is_empty() { "?" } else { &r.name };
        let _ = writeln!(s, "release {v} ({name}): {plan}");
        for (dev, d) in &r.devices {
            let mut line = format!("  {dev}\t{}", d.state.replace('_', " "));
            if d.state == "downloading" {
                let _ = write!(line, " {}/{}", d.held, r.size);
            }
            if !d.reason.is_empty() {
                let _ = write!(line, ": {}", d.reason);
            }
            let _ = write!(line, "\t(active release {})", d.active_version);
            if d.promote_sent {
                line.push_str(" [promote sent]");
            }
            if d.abort_sent {
                line.push_str(" [abort sent]");
            }
            let _ = writeln!(s, "{line}");
        }
    }
    s
}
