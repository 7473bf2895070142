//! The rollout plan (`rollout.json`) and its decisions, without I/O: which devices are
//! in a release's cohort, and what each should be sent now.
//!
//! States: `running` offers the release to cohort devices not offered yet; `paused`
//! offers nothing new (downloads under way continue); `aborted` refuses downloads and
//! sends ABORT to every device offered it; `promoted` sends PROMOTE to devices offered
//! it in shadow, and offers it (not in shadow) to cohort devices not offered yet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `rollout.json`: the operator's plan per release version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    #[serde(default)]
    pub releases: BTreeMap<u64, ReleasePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasePlan {
    pub cohort: Cohort,
    /// Devices install it beside the active model and run it in shadow until promoted.
    #[serde(default)]
    pub shadow: bool,
    pub state: PlanState,
    pub updated_at_ms: u64,
}

/// `{"clinics": ["a", "b"]}` or `{"percent": 10}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cohort {
    Clinics(Vec<String>),
    Percent(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    Running,
    Paused,
    Aborted,
    Promoted,
}

impl PlanState {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanState::Running => "running",
            PlanState::Paused => "paused",
            PlanState::Aborted => "aborted",
            PlanState::Promoted => "promoted",
        }
    }
}

impl std::fmt::Display for Cohort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cohort::Clinics(c) => write!(f, "clinics {}", c.join(",")),
            Cohort::Percent(p) => write!(f, "{p}% of devices"),
        }
    }
}

impl std::fmt::Display for ReleasePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {}", self.state.as_str(), self.cohort)?;
        if self.shadow {
            write!(f, ", shadow")?;
        }
        Ok(())
    }
}

/// The device's bucket 0-99 for release `version`: `sha256(clinic/device ‖ version BE)`
/// as a number, mod 100. Stable per device and release, independent across releases.
pub fn percent_bucket(clinic: &str, device: &str, version: u64) -> u8 {
    let mut h = Sha256::new();
    h.update(clinic.as_bytes());
    h.update(b"/");
    h.update(device.as_bytes());
    h.update(version.to_be_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

pub fn in_cohort(cohort: &Cohort, clinic: &str, device: &str, version: u64) -> bool {
    match cohort {
        Cohort::Clinics(c) => c.iter().any(|c| c == clinic),
        Cohort::Percent(p) => percent_bucket(clinic, device, version) < *p,
    }
}

/// What the hub has queued for one device and release (kept in `delivered.json`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// Some(shadow) once offered.
    #[serde(default)]
    pub offered: Option<bool>,
    #[serde(default)]
    pub promote: bool,
    #[serde(default)]
    pub abort: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Offer { shadow: bool },
    Promote,
    Abort,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Offer { .. } => "offer",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }
}

/// What to queue for a device now, given the plan, whether it is in the cohort and what
/// was queued for it before. Each action happens at most once per device and release.
pub fn next_action(plan: &ReleasePlan, in_cohort: bool, done: &Delivered) -> Option<Action> {
    match plan.state {
        PlanState::Running if in_cohort && done.offered.is_none() => Some(Action::Offer {
            shadow: plan.shadow,
        }),
        PlanState::Promoted if in_cohort && done.offered.is_none() => {
            Some(Action::Offer { shadow: false })
        }
        PlanState::Promoted if done.offered == Some(true) && !done.promote => Some(Action::Promote),
        PlanState::Aborted if done.offered.is_some() && !done.abort => Some(Action::Abort),
        _ => None,
    }
}

/// Whether a device may download the release now: not aborted, and in the cohort or
/// offered it already (a cohort narrowed later does not strand a download).
pub fn may_fetch(
    plan: Option<&ReleasePlan>,
    in_cohort: bool,
    done: &Delivered,
) -> Result<(), &'static str> {
    match plan {
        None => Err("release is not rolled out"),
        Some(p) if p.state == PlanState::Aborted => Err("release rollout aborted"),
        Some(_) if in_cohort || done.offered.is_some() => Ok(()),
        Some(_) => Err("device is not in the release's cohort"),
    }
}

/// An operator's change to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Rollout { cohort: Cohort, shadow: bool },
    Pause,
    Resume,
    Abort,
    Promote,
}

/// Applies `change` to release `version`'s plan; Err names why it cannot apply.
pub fn apply(
    file: &mut RolloutFile,
    version: u64,
    change: Change,
    now_ms: u64,
) -> Result<(), String> {
    let current = file.releases.get(&version).cloned();
    let state = current.as_ref().map(|p| p.state);
    let next = match (change, current) {
        (
            Change::Rollout {
                cohort: Cohort::Percent(p),
                ..
            },
            _,
        ) if p > 100 => return Err("a percentage is 0-100".into()),
        (
            Change::Rollout {
                cohort: Cohort::Clinics(c),
                ..
            },
            _,
        ) if c.is_empty() => return Err("name at least one clinic".into()),
        (Change::Rollout { .. }, Some(p)) if p.state == PlanState::Aborted => {
            return Err("rollout was aborted; publish a higher version instead".into())
        }
        (Change::Rollout { cohort, shadow }, Some(p)) => ReleasePlan {
            cohort,
            shadow,
            state: if p.state == PlanState::Promoted {
                PlanState::Promoted
            } else {
                PlanState::Running
            },
            updated_at_ms: now_ms,
        },
        (Change::Rollout { cohort, shadow }, None) => ReleasePlan {
            cohort,
            shadow,
            state: PlanState::Running,
            updated_at_ms: now_ms,
        },
        (_, None) => return Err("is not rolled out (run `model rollout` first)".into()),
        (Change::Pause, Some(p)) if p.state == PlanState::Running => {
            with_state(p, PlanState::Paused, now_ms)
        }
        (Change::Resume, Some(p)) if p.state == PlanState::Paused => {
            with_state(p, PlanState::Running, now_ms)
        }
        (Change::Abort, Some(p)) if p.state != PlanState::Aborted => {
            with_state(p, PlanState::Aborted, now_ms)
        }
        (Change::Promote, Some(p)) if matches!(p.state, PlanState::Running | PlanState::Paused) => {
            with_state(p, PlanState::Promoted, now_ms)
        }
        (c, Some(_)) => {
            return Err(format!(
                "cannot {} a rollout that is {}",
                match c {
                    Change::Pause => "pause",
                    Change::Resume => "resume",
                    Change::Abort => "abort",
                    Change::Promote => "promote",
                    Change::Rollout { .. } => "roll out",
                },
                state.map_or("absent", PlanState::as_str)
            ))
        }
    };
    file.releases.insert(version, next);
    Ok(())
}

fn with_state(p: ReleasePlan, state: PlanState, now_ms: u64) -> ReleasePlan {
    ReleasePlan {
        state,
        updated_at_ms: now_ms,
        ..p
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
