//! Outbreak alerts (issue #16): a rise of a region's daily counts above their
//! expected level, by CDC's EARS methods C1, C2 and C3.
//!
//! # Method
//!
//! The input is a **dense** count series `x_0, x_1, …` with one value per day,
//! days without data filled with zero (use [`dense`] to build one from sparse
//! `(day, count)` pairs). Each method compares today's count `x_t` with a
//! baseline of the 7 days before it:
//!
//! * **C1**: baseline `x_{t−7} … x_{t−1}` (no lag). `C1_t = (x_t − m_t) / s_t`,
//!   where `m_t` is the baseline mean and `s_t` its sample standard deviation
//!   (denominator `n − 1 = 6`). Alarm when `C1_t > 3`.
//! * **C2**: the same statistic with a 2-day guard band, baseline
//!   `x_{t−9} … x_{t−3}`, so that the first days of a slow rise do not inflate
//!   the baseline. Alarm when `C2_t > 3`.
//! * **C3**: `C3_t = Σ_{i=t−2..t} max(0, C2_i − 1)`, each `C2_i` with its own
//!   baseline. Alarm when `C3_t > 2`.
//!
//! The thresholds 3, 3 and 2 are CDC's EARS defaults. References: Hutwagner L,
//! Thompson W, Seeman GM, Treadwell T, "The bioterrorism preparedness and
//! response Early Aberration Reporting System (EARS)", J Urban Health 80
//! (2 Suppl 1):i89–96, 2003; and, for the C1–C3 formulas used here, Fricker RD,
//! Hegler BL, Dunfee DA, "Comparing syndromic surveillance detection methods:
//! EARS' versus a CUSUM-based methodology", Stat Med 27:3407–3429, 2008. R's
//! `surveillance::earsC` uses the same baselines but derives its thresholds
//! from `qnorm(1 − alpha)` (3.09 for C1/C2 by default) and states its C3
//! alarm as an upper bound; we keep the CDC constants.
//!
//! # History
//!
//! A day without a full baseline has no statistic (`None`) and never alarms:
//! C1 needs 7 earlier days (first statistic at index 7), C2 needs 9 (index 9)
//! and C3 needs C2 on three consecutive days (index 11). See [`Method::history`].
//!
//! # Sparse counts: sd floor and minimum count
//!
//! A flat baseline (often all zeros in a small region) has `s_t = 0`, which
//! would divide by zero or turn every nonzero day into an infinite statistic.
//! Two guards, both named constants:
//!
//! * **sd floor** [`MIN_SD`] `= 0.2`: the statistic divides by
//!   `max(s_t, 0.2)`, the minimum sigma quoted for CDC's EARS SAS code (R's
//!   `surveillance::earsC` has it as `minSigma`, default 0). For integer counts on a
//!   7-day baseline any non-constant baseline already has `s_t ≥ √(1/7) ≈ 0.378`,
//!   so the floor only acts when the baseline is flat, where the statistic
//!   becomes `5 · (x_t − m_t)`: finite, and still large for any rise.
//! * **minimum count** [`MIN_ALARM_COUNT`] `= 3`: a day alarms only if
//!   `x_t ≥ 3` as well as statistic > threshold. With the floor alone a single
//!   case after weeks of zeros scores 5 and would alarm; one case is not an
//!   outbreak signal a ministry can act on, and this is the same small-number
//!   caution as cell suppression. The rule applies to the current day's count
//!   for all three methods (for C3 it also stops the 3-day "echo" of one past
//!   spike from alarming on the quiet days after it). The statistic itself is
//!   unaffected: [`ears`] reports it whatever the count.
//!
//! # Weekly series
//!
//! Nothing here depends on the period being a day: fed one value per ISO week
//! (zeros filled in), the same functions give the weekly EARS variant, whose
//! baseline then spans 7 weeks, and [`Alert::day`] is the week index.
//!
//! # Export
//!
//! [`Alert`] derives `Serialize` (JSON through `serde_json`); [`to_csv`] writes
//! the list as CSV.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Days in every EARS baseline.
pub const BASELINE_DAYS: usize = 7;
/// Guard band between the C2 (and C3) baseline and the current day.
pub const C2_GUARD_DAYS: usize = 2;
/// Days of C2 summed by C3 (the current day and the two before).
pub const C3_WINDOW_DAYS: usize = 3;
/// Floor on the baseline standard deviation (see the module doc).
pub const MIN_SD: f64 = 0.2;
/// Fewest cases on a day for it to alarm (see the module doc).
pub const MIN_ALARM_COUNT: u64 = 3;
/// Longest span [`dense`] accepts, in days (about 270 years): a guard against
/// a stray day number allocating gigabytes.
pub const MAX_SPAN_DAYS: u32 = 100_000;

/// One of CDC's EARS aberration detection methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    C1,
    C2,
    C3,
}

impl Method {
    /// All three, in order.
    pub const ALL: [Method; 3] = [Method::C1, Method::C2, Method::C3];

    /// The statistic must exceed this to alarm (CDC: 3 for C1 and C2, 2 for C3).
    pub fn threshold(self) -> f64 {
        match self {
            Method::C1 | Method::C2 => 3.0,
            Method::C3 => 2.0,
        }
    }

    /// Days before the current one that the baseline skips.
    pub fn guard_days(self) -> usize {
        match self {
            Method::C1 => 0,
            Method::C2 | Method::C3 => C2_GUARD_DAYS,
        }
    }

    /// Earlier days needed for a statistic: the first day with one is at this
    /// index (C1 7, C2 9, C3 11).
    pub fn history(self) -> usize {
        match self {
            Method::C1 | Method::C2 => BASELINE_DAYS + self.guard_days(),
            Method::C3 => BASELINE_DAYS + C2_GUARD_DAYS + C3_WINDOW_DAYS - 1,
        }
    }

    /// "C1", "C2" or "C3".
    pub fn name(self) -> &'static str {
        match self {
            Method::C1 => "C1",
            Method::C2 => "C2",
            Method::C3 => "C3",
        }
    }
}

/// Mean and (floored) standard deviation of one day's baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    /// Mean of the 7 baseline days: the expected count.
    pub mean: f64,
    /// Sample standard deviation of the baseline, at least [`MIN_SD`].
    pub sd: f64,
}

/// A day whose count rose above its expected level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Day number (`first_day` + index in the series; a week index for weekly series).
    pub day: u32,
    pub method: Method,
    /// The method's statistic on that day.
    pub statistic: f64,
    /// What it exceeded ([`Method::threshold`]).
    pub threshold: f64,
    /// Observed count that day.
    pub count: u64,
    /// Baseline mean (for C3, that of the day's own C2 baseline).
    pub expected: f64,
    /// Baseline standard deviation after the [`MIN_SD`] floor.
    pub sd: f64,
}

/// Why a sparse series could not be made dense.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SeriesError {
    #[error("series spans {span} days, more than the {max} allowed")]
    SpanTooLong { span: u64, max: u32 },
}

/// Turns sparse `(day, count)` pairs into a dense series: returns the first day
/// and one count per day from it to the last day, gaps filled with 0. Pairs may
/// come in any order; counts given twice for a day are added (saturating). An
/// empty input gives `(0, [])`. Errors if the span exceeds [`MAX_SPAN_DAYS`].
pub fn dense(days: &[(u32, u64)]) -> Result<(u32, Vec<u64>), SeriesError> {
    let (Some(first), Some(last)) = (
        days.iter().map(|&(d, _)| d).min(),
        days.iter().map(|&(d, _)| d).max(),
    ) else {
        return Ok((0, Vec::new()));
    };
    let span = u64::from(last - first) + 1;
    if span > u64::from(MAX_SPAN_DAYS) {
        return Err(SeriesError::SpanTooLong {
            span,
            max: MAX_SPAN_DAYS,
        });
    }
    let mut series = vec![0u64; (last - first) as usize + 1];
    for &(day, count) in days {
        let slot = &mut series[(day - first) as usize];
        *slot = slot.saturating_add(count);
    }
    Ok((first, series))
}

/// The baseline of day `t` for a method with `guard` guard days:
/// `x_{t−guard−7} … x_{t−guard−1}`, or `None` without enough history.
pub fn baseline(series: &[u64], t: usize, guard: usize) -> Option<Baseline> {
    let end = t.checked_sub(guard)?;
    let start = end.checked_sub(BASELINE_DAYS)?;
    let window = series.get(start..end)?;
    Some(mean_sd(window))
}

/// Mean and sample sd (n − 1), the sd floored at [`MIN_SD`]. `window` has
/// [`BASELINE_DAYS`] values.
fn mean_sd(window: &[u64]) -> Baseline {
    let n = window.len() as f64;
    let mean = window.iter().map(|&x| x as f64).sum::<f64>() / n;
    let squares: f64 = window.iter().map(|&x| (x as f64 - mean).powi(2)).sum();
    let sd = (squares / (n - 1.0)).sqrt();
    Baseline {
        mean,
        sd: sd.max(MIN_SD),
    }
}

/// `(x_t − mean) / sd` against the baseline with `guard` guard days.
fn shewhart(series: &[u64], t: usize, guard: usize) -> Option<f64> {
    let base = baseline(series, t, guard)?;
    let x = *series.get(t)? as f64;
    Some((x - base.mean) / base.sd)
}

/// C1 or C2 statistic for every day.
fn shewhart_series(series: &[u64], guard: usize) -> Vec<Option<f64>> {
    (0..series.len())
        .map(|t| shewhart(series, t, guard))
        .collect()
}

/// C3 from the C2 series: `Σ max(0, C2_i − 1)` over the last 3 days, `None`
/// unless all three have a C2.
fn c3_from_c2(c2: &[Option<f64>]) -> Vec<Option<f64>> {
    (0..c2.len())
        .map(|t| {
            let start = (t + 1).checked_sub(C3_WINDOW_DAYS)?;
            c2.get(start..=t)?
                .iter()
                .try_fold(0.0, |sum, c| c.map(|c| sum + (c - 1.0).max(0.0)))
        })
        .collect()
}

/// The method's statistic for every day of a dense series; `None` where the
/// day lacks the history the method needs. Never NaN nor infinite.
pub fn ears(series: &[u64], method: Method) -> Vec<Option<f64>> {
    match method {
        Method::C1 => shewhart_series(series, 0),
        Method::C2 => shewhart_series(series, C2_GUARD_DAYS),
        Method::C3 => c3_from_c2(&shewhart_series(series, C2_GUARD_DAYS)),
    }
}

/// Whether a day with this statistic and count alarms.
pub fn is_alarm(method: Method, statistic: f64, count: u64) -> bool {
    statistic > method.threshold() && count >= MIN_ALARM_COUNT
}

/// The alarms of one method on a dense series starting at `first_day`, in day
/// order. Days whose number would overflow `u32` are left out.
pub fn alerts(first_day: u32, series: &[u64], method: Method) -> Vec<Alert> {
    let stats = ears(series, method);
    stats
        .iter()
        .zip(series)
        .enumerate()
        .filter_map(|(t, (stat, &count))| {
            let statistic = (*stat)?;
            if !is_alarm(method, statistic, count) {
                return None;
            }
            let base = baseline(series, t, method.guard_days())?;
            let day = u32::try_from(t).ok()?.checked_add(first_day)?;
            Some(Alert {
                day,
                method,
                statistic,
                threshold: method.threshold(),
                count,
                expected: base.mean,
                sd: base.sd,
            })
        })
        .collect()
}

/// The alarms of all three methods, ordered by day, then C1, C2, C3.
pub fn alerts_all(first_day: u32, series: &[u64]) -> Vec<Alert> {
    let mut all: Vec<Alert> = Method::ALL
        .iter()
        .flat_map(|&m| alerts(first_day, series, m))
        .collect();
    all.sort_by_key(|a| (a.day, a.method.name()));
    all
}

/// Header line written by [`to_csv`].
pub const CSV_HEADER: &str = "day,method,statistic,threshold,count,expected,sd";

/// The alerts as CSV: [`CSV_HEADER`], then one line per alert, `\n`-terminated.
/// No field needs quoting (numbers and method names only).
pub fn to_csv(alerts: &[Alert]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for a in alerts {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            a.day,
            a.method.name(),
            a.statistic,
            a.threshold,
            a.count,
            a.expected,
            a.sd
        ));
    }
    out
}

#[cfg(test)]
#[path = "alerts_tests.rs"]
mod tests;
