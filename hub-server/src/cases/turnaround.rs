//! How long examinations wait: arrival → first claim and arrival → first read, as
//! median / 90th percentile over recent days for the worklist page (the Prometheus
//! histograms are `metrics::review`).

use pleura_shared::now_ms;

use crate::error::HubError;
use crate::store::exams::Turnaround;

use super::policy::{self, Action};
use super::{blocking, CaseService, Who};

/// Median and 90th percentile, seconds, over `n` examinations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub median_s: u64,
    pub p90_s: u64,
}

impl Spread {
    pub fn of(mut ms: Vec<u64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_unstable();
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize] / 1000;
        Self {
            n: ms.len(),
            median_s: at(0.5),
            p90_s: at(0.9),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnaroundStats {
    pub days: u32,
    pub to_claim: Spread,
    pub to_verdict: Spread,
}

pub fn stats(rows: &[Turnaround], days: u32) -> TurnaroundStats {
    TurnaroundStats {
        days,
        to_claim: Spread::of(
            rows.iter()
                .filter_map(|t| t.claimed_ms.map(|c| c.saturating_sub(t.arrived_ms)))
                .collect(),
        ),
        to_verdict: Spread::of(
            rows.iter()
                .map(|t| t.read_ms.saturating_sub(t.arrived_ms))
                .collect(),
        ),
    }
}

impl CaseService {
    /// Turnaround of the examinations first read in the last `days` days that `who` may
    /// see (counts only; audited).
    pub async fn turnaround(&self, who: &Who, days: u32) -> Result<TurnaroundStats, HubError> {
        let action = Action::Turnaround;
        let view = match policy::case_view(&who.caller) {
            Ok(v) => v,
            Err(why) => return Err(self.deny(who, action, "", why).await),
        };
        let (store, directory) = (self.store.clone(), self.directory.clone());
        let since = now_ms().saturating_sub(u64::from(days) * 86_400_000);
        let rows =
            blocking(move || Ok(store.turnaround(&view.reach.scope(&*directory), since)?)).await?;
        let target = format!("turnaround: {} examinations", rows.len());
        self.record(who, action, &target, "allowed").await?;
        Ok(stats(&rows, days))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_histograms() {
        let s = Spread::of((1..=10).map(|m| m * 60_000).collect());
        assert_eq!((s.n, s.median_s, s.p90_s), (10, 360, 540));
    }
}
