//! What the intake tells status: the scan in analysis, each round's outcome as alarms,
//! and what tending processed/ found.

use std::time::Duration;

use super::{recover, Intake, Round, SLOW_ALARM, SLOW_ALARM_AFTER};

impl Intake {
    /// Status while a scan is in analysis: its digest and time, and an alarm once slow.
    pub(super) fn show_analysing(&self, r: &str, elapsed: Option<Duration>) {
        let max = self.cfg.intake.max_analysis_s;
        self.status.update(|s| {
            s.alarms.retain(|a| !a.starts_with(SLOW_ALARM));
            s.intake.analysing = elapsed.map(|e| format!("{r} for {} s", e.as_secs()));
            if let Some(e) = elapsed {
                if e >= SLOW_ALARM_AFTER.min(Duration::from_secs(max)) {
                    s.alarms.push(format!(
                        "{SLOW_ALARM}{r} in analysis for {} s (limit {max} s, intake.max_analysis_s)",
                        e.as_secs()
                    ));
                }
            }
        });
    }

    pub(super) fn report_processed(&self, pass: &recover::Pass) {
        let damage = self.outbox.stats().ok().and_then(|s| s.damage);
        let budget = self.cfg.intake.processed_budget_bytes;
        self.status.update(|s| {
            s.alarms
                .retain(|a| !a.starts_with("outbox store") && !a.starts_with("processed/"));
            if let Some(d) = damage {
                s.alarms.push(format!("outbox store damaged at start: {d}"));
            }
            if pass.unrecoverable > 0 {
                s.alarms.push(format!(
                    "outbox store lost {} result(s) whose scans are no longer in processed/: they cannot be rebuilt",
                    pass.unrecoverable
                ));
            }
            if pass.failed > 0 {
                s.alarms.push(format!(
                    "outbox store lost {} result(s) that could not be rebuilt from processed/ (see the log)",
                    pass.failed
                ));
            }
            if pass.pinned_bytes > budget {
                s.alarms.push(format!(
                    "processed/ holds {} bytes of scans awaiting the hub's acknowledgement, over intake.processed_budget_bytes ({budget})",
                    pass.pinned_bytes
                ));
            }
        });
    }

    pub(super) fn report(&self, round: &Round, inbox_error: Option<String>, stuck: usize) {
        self.status.update(|s| {
            let i = &mut s.intake;
            let before = i.waiting_for_quota;
            i.waiting_for_quota = round.waiting;
            i.entry_errors += round.errors;
            i.failing_entries = stuck as u64;
            i.inbox_unreadable = inbox_error.is_some();
            if let Some(e) = round.last_error.clone().or(inbox_error.clone()) {
                i.last_error = Some(e);
            }
            if (round.waiting > 0) != (before > 0) {
                if round.waiting > 0 {
                    tracing::warn!(waiting = round.waiting, "outbox at its quota: new scans wait in the inbox, unanalysed, until the hub acknowledges results");
                } else {
                    tracing::info!("outbox has room again: taking scans in");
                }
            }
            s.alarms.retain(|a| {
                !a.starts_with("outbox full")
                    && !a.starts_with("inbox")
                    && !a.starts_with("intake")
                    && !a.starts_with("disk full: the outbox")
            });
            if round.busy > 0 {
                s.alarms.push(format!(
                    "intake: every analysis worker is still busy with a scan given up after {} s (intake.max_analysis_s); {} scan(s) wait in the inbox",
                    self.cfg.intake.max_analysis_s, round.busy
                ));
            }
            if round.waiting > 0 {
                s.alarms.push(format!(
                    "outbox full: {} scan(s) wait in the inbox until results reach the hub",
                    round.waiting
                ));
            }
            if let Some(e) = inbox_error {
                s.alarms
                    .push(format!("inbox cannot be read ({e}): no scans are taken in"));
            }
            if stuck > 0 {
                s.alarms.push(format!(
                    "inbox: {stuck} entr{} keep failing and cannot be set aside in rejected/ (last error: {})",
                    if stuck == 1 { "y" } else { "ies" },
                    s.intake.last_error.as_deref().unwrap_or("-")
                ));
            }
            match &round.storage {
                Some(e) if e.starts_with("disk full") => {
                    s.alarms.push(format!("{e}: scans wait in the inbox"))
                }
                Some(e) => s.alarms.push(format!(
                    "intake cannot store results ({e}): scans wait in the inbox"
                )),
                None => {}
            }
            if s.intake.rejected_after_attempts > 0 {
                s.alarms.push(format!(
                    "intake: {} scan(s) set aside in rejected/ after {} failed or interrupted analyses",
                    s.intake.rejected_after_attempts, self.cfg.intake.max_attempts
                ));
            }
        });
    }
}
