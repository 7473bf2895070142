//! Roll-ups: what a ministry's tables count, per clinic and scan day, kept by the store
//! in the same transaction as the examinations they count, so a dashboard over a year of
//! a country's scans reads a few rows per clinic and never scans the cases.
//!
//! Why per examination: an examination's stored state already says which of its readings
//! count (`Exam::live`: not withdrawn, not a shadow, not superseded) and what the
//! specialist concluded. Its contribution is a pure function of that state
//! ([`Rollup::of_exam`]), and every write of an examination applies `after − before` to
//! its clinic-day. So supersession, retraction and verdicts need no logic of their own,
//! and a roll-up rebuilt from the examinations equals the one maintained (the store
//! suite checks this after random histories).

use std::collections::BTreeMap;

use pleura_shared::{AgeBand, Demographics, Sex};
use serde::{Deserialize, Serialize};

use super::exams::{Exam, Impression};
use super::Counts;

/// Lung-score bins (inclusive bounds): the sum over zones of each zone's worst severity,
/// 0-36 for the 12-zone protocol.
pub const LUNG_SCORE_BINS: [(u32, u32); 6] =
    [(0, 0), (1, 5), (6, 11), (12, 17), (18, 23), (24, 36)];
/// Age-band slots: the five bands, then "not recorded".
pub const AGE_SLOTS: usize = 6;
/// Sex slots: female, male, then "not recorded".
pub const SEX_SLOTS: usize = 3;

/// The counts of one clinic on one scan day. Scan counts are per current reading
/// (result); examination counts are per patient and day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    pub scans: u64,
    pub flagged: u64,
    /// Scans flagged as COVID-19 suspected.
    pub covid: u64,
    pub by_severity: [u64; 4],
    /// Scans per most likely class (`LungClass::ALL` order); a scan indexed before the
    /// class was kept is in none.
    pub by_class: [u64; 3],
    /// Scans per model version, by severity 0-3.
    pub by_model: BTreeMap<String, [u64; 4]>,
    /// Scans per severity × age band × sex ([`demographic_slot`]); zero slots absent.
    pub by_demographic: BTreeMap<u16, u64>,
    pub exams: u64,
    pub flagged_exams: u64,
    /// Examinations with at least one verdict, and those of them the model flagged.
    pub reviewed: u64,
    pub reviewed_flagged: u64,
    /// Reviewed examinations per latest impression (`Impression` order).
    pub verdicts: [u64; 4],
    /// Flagged examinations whose verdict found disease (COVID-19 compatible or other
    /// pneumonia): the specialists confirmed the flag.
    pub confirmed: u64,
    /// Examinations per lung-score bin ([`LUNG_SCORE_BINS`]).
    pub lung_score: [u64; 6],
    /// Examinations with a COVID-19-suspected scan, and whose worst scan has severity 2-3.
    #[serde(default)]
    pub covid_exams: u64,
    #[serde(default)]
    pub severe_exams: u64,
    /// Examinations by their worst severity.
    #[serde(default)]
    pub exams_by_severity: [u64; 4],
    /// Examinations per model version that read any of their scans, by the worst
    /// severity among that model's readings.
    #[serde(default)]
    pub exams_by_model: BTreeMap<String, [u64; 4]>,
    /// Examinations per worst severity × age band × sex ([`demographic_slot`]).
    #[serde(default)]
    pub exams_by_demographic: BTreeMap<u16, u64>,
}

/// The slot of a severity, age band and sex in `Rollup::by_demographic`.
pub fn demographic_slot(severity: u8, d: Demographics) -> u16 {
    let age = d.age_band.map_or(AGE_SLOTS - 1, AgeBand::index);
    let sex = d.sex.map_or(SEX_SLOTS - 1, Sex::index);
    (usize::from(severity.min(3)) * AGE_SLOTS * SEX_SLOTS + age * SEX_SLOTS + sex) as u16
}

/// The severity, age band and sex of a slot (None: not recorded).
pub fn slot_parts(slot: u16) -> (u8, Option<AgeBand>, Option<Sex>) {
    let s = usize::from(slot);
    let severity = (s / (AGE_SLOTS * SEX_SLOTS)).min(3) as u8;
    let age = AgeBand::ALL.get((s / SEX_SLOTS) % AGE_SLOTS).copied();
    let sex = Sex::ALL.get(s % SEX_SLOTS).copied();
    (severity, age, sex)
}

fn impression_index(i: Impression) -> usize {
    match i {
        Impression::CovidCompatible => 0,
        Impression::OtherPneumonia => 1,
        Impression::Normal => 2,
        Impression::NonDiagnostic => 3,
    }
}

/// Which lung-score bin a score falls in.
pub fn lung_score_bin(score: u32) -> usize {
    LUNG_SCORE_BINS
        .iter()
        .position(|(lo, hi)| (*lo..=*hi).contains(&score))
        .unwrap_or(LUNG_SCORE_BINS.len() - 1)
}

impl Rollup {
    /// What one examination adds to its clinic-day: nothing if no reading of it is live.
    pub fn of_exam(e: &Exam) -> Rollup {
        let mut r = Rollup::default();
        let mut zones: BTreeMap<&str, u8> = BTreeMap::new();
        let mut models: BTreeMap<&str, u8> = BTreeMap::new();
        let (mut covid, mut worst, mut who) = (false, 0u8, Demographics::default());
        for x in e.live() {
            covid |= x.covid;
            worst = worst.max(x.severity.min(3));
            let m = models.entry(x.model_version.as_str()).or_default();
            *m = (*m).max(x.severity.min(3));
            if who == Demographics::default() {
                who = x.demographics;
            }
            let sev = x.severity.min(3);
            r.scans += 1;
            r.flagged += u64::from(x.flagged);
            r.covid += u64::from(x.covid);
            r.by_severity[usize::from(sev)] += 1;
            if let Some(c) = x.class.filter(|c| *c < 3) {
                r.by_class[usize::from(c)] += 1;
            }
            r.by_model.entry(x.model_version.clone()).or_default()[usize::from(sev)] += 1;
            *r.by_demographic
                .entry(demographic_slot(sev, x.demographics))
                .or_default() += 1;
            if let Some(z) = &x.zone {
                let worst = zones.entry(z.as_str()).or_default();
                *worst = (*worst).max(sev);
            }
        }
        if r.scans == 0 {
            return Rollup::default();
        }
        r.exams = 1;
        r.flagged_exams = u64::from(e.flagged);
        r.covid_exams = u64::from(covid);
        r.severe_exams = u64::from(worst >= 2);
        r.exams_by_severity[usize::from(worst)] = 1;
        for (m, s) in models {
            r.exams_by_model.entry(m.to_string()).or_default()[usize::from(s)] = 1;
        }
        r.exams_by_demographic
            .insert(demographic_slot(worst, who), 1);
        if e.reads > 0 {
            r.reviewed = 1;
            r.reviewed_flagged = u64::from(e.flagged);
            if let Some(v) = e.verdict {
                r.verdicts[impression_index(v)] = 1;
                r.confirmed = u64::from(
                    e.flagged
                        && matches!(v, Impression::CovidCompatible | Impression::OtherPneumonia),
                );
            }
        }
        let score: u32 = zones.values().map(|s| u32::from(*s)).sum();
        r.lung_score[lung_score_bin(score)] = 1;
        r
    }

    pub fn is_empty(&self) -> bool {
        *self == Rollup::default()
    }

    /// Scans of severity 2 or 3.
    pub fn severe(&self) -> u64 {
        self.by_severity[2] + self.by_severity[3]
    }

    pub fn add(&mut self, o: &Rollup) {
        self.combine(o, |a, b| a.saturating_add(b));
    }

    /// Takes `o` away; false (and clamped at zero) if it held less than `o`: the stored
    /// roll-up disagrees with the examinations (the store logs it; a rebuild fixes it).
    pub fn sub(&mut self, o: &Rollup) -> bool {
        let mut exact = true;
        self.combine(o, |a, b| {
            exact &= a >= b;
            a.saturating_sub(b)
        });
        self.by_model.retain(|_, v| v.iter().any(|n| *n > 0));
        self.by_demographic.retain(|_, n| *n > 0);
        self.exams_by_model.retain(|_, v| v.iter().any(|n| *n > 0));
        self.exams_by_demographic.retain(|_, n| *n > 0);
        exact
    }

    fn combine(&mut self, o: &Rollup, mut f: impl FnMut(u64, u64) -> u64) {
        let mut each = |a: &mut u64, b: u64| *a = f(*a, b);
        each(&mut self.scans, o.scans);
        each(&mut self.flagged, o.flagged);
        each(&mut self.covid, o.covid);
        each(&mut self.exams, o.exams);
        each(&mut self.flagged_exams, o.flagged_exams);
        each(&mut self.reviewed, o.reviewed);
        each(&mut self.reviewed_flagged, o.reviewed_flagged);
        each(&mut self.confirmed, o.confirmed);
        each(&mut self.covid_exams, o.covid_exams);
        each(&mut self.severe_exams, o.severe_exams);
        let pairs = [
            (&mut self.by_severity[..], &o.by_severity[..]),
            (&mut self.by_class[..], &o.by_class[..]),
            (&mut self.verdicts[..], &o.verdicts[..]),
            (&mut self.lung_score[..], &o.lung_score[..]),
            (&mut self.exams_by_severity[..], &o.exams_by_severity[..]),
        ];
        for (mine, theirs) in pairs {
            for (a, b) in mine.iter_mut().zip(theirs) {
                each(a, *b);
            }
        }
        for (model, v) in &o.by_model {
            let mine = self.by_model.entry(model.clone()).or_default();
            for (a, b) in mine.iter_mut().zip(v) {
                each(a, *b);
            }
        }
        for (slot, n) in &o.by_demographic {
            each(self.by_demographic.entry(*slot).or_default(), *n);
        }
        for (model, v) in &o.exams_by_model {
            let mine = self.exams_by_model.entry(model.clone()).or_default();
            for (a, b) in mine.iter_mut().zip(v) {
                each(a, *b);
            }
        }
        for (slot, n) in &o.exams_by_demographic {
            each(self.exams_by_demographic.entry(*slot).or_default(), *n);
        }
    }

    /// The scan counts the gRPC `Aggregates` rows carry.
    pub fn counts(&self) -> Counts {
        Counts {
            scans: self.scans,
            flagged: self.flagged,
            by_severity: self.by_severity,
            by_class: self.by_class,
            by_model: self
                .by_model
                .iter()
                .map(|(m, v)| (m.clone(), v.iter().sum()))
                .collect(),
        }
    }
}

/// One clinic-day's roll-up, as a store returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRow {
    pub clinic: String,
    pub day: u32,
    pub rollup: Rollup,
}

/// The store key of a clinic-day: clinic ‖ 0 ‖ day (big-endian), so one clinic's days
/// are one ordered range.
pub fn key(clinic: &str, day: u32) -> Vec<u8> {
    let mut k = clinic.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&day.to_be_bytes());
    k
}

/// The clinic and day of a key.
pub fn parse_key(k: &[u8]) -> Option<(String, u32)> {
    let (day, rest) = k.split_last_chunk::<4>().map(|(r, d)| (d, r))?;
    let clinic = rest.strip_suffix(&[0])?;
    Some((
        String::from_utf8(clinic.to_vec()).ok()?,
        u32::from_be_bytes(*day),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_keys_round_trip() {
        for sev in 0..4u8 {
            for age in AgeBand::ALL.map(Some).into_iter().chain([None]) {
                for sex in Sex::ALL.map(Some).into_iter().chain([None]) {
                    let d = Demographics { age_band: age, sex };
                    assert_eq!(slot_parts(demographic_slot(sev, d)), (sev, age, sex));
                }
            }
        }
        assert_eq!(
            parse_key(&key("clinic-a", 20_400)),
            Some(("clinic-a".into(), 20_400))
        );
        assert_eq!(parse_key(b"ab"), None);
        assert_eq!(lung_score_bin(0), 0);
        assert_eq!(lung_score_bin(5), 1);
        assert_eq!(lung_score_bin(36), 5);
    }

    #[test]
    fn adding_then_subtracting_leaves_nothing() {
        let mut a = Rollup {
            scans: 3,
            by_model: [("m".to_string(), [1, 2, 0, 0])].into(),
            by_demographic: [(4, 3)].into(),
            ..Rollup::default()
        };
        let b = a.clone();
        a.add(&b);
        assert!(a.sub(&b) && a.sub(&b));
        assert!(a.is_empty(), "{a:?}");
        assert!(!a.sub(&b), "taking away more than is held is reported");
        assert!(a.is_empty());
    }
}
