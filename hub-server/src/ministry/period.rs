//! ISO 8601 weeks: the fixed reporting period of every ministry table (Monday to Sunday;
//! week 1 holds the year's first Thursday), as DHIS2's weekly period type uses them. Days
//! are counted from 1970-01-01 (a Thursday), as `ScanRecord::scan_day` is.

use serde::{Deserialize, Serialize};

/// One ISO week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IsoWeek {
    pub year: i32,
    pub week: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("{0:?} is not an ISO week (expected e.g. 2026-W48 or 2026W48)")]
    Syntax(String),
    #[error("{year} has no ISO week {week}")]
    NoSuchWeek { year: i32, week: u32 },
}

pub use pleura_shared::calendar::date as date_label;
use pleura_shared::calendar::{civil, day_of};

/// Monday = 0 … Sunday = 6 (day 0 was a Thursday).
fn weekday(day: u32) -> u32 {
    (day + 3) % 7
}

/// Weeks in an ISO year: 53 when it starts on a Thursday, or on a Wednesday in a leap year.
fn weeks_in(year: i32) -> u32 {
    let jan1 = |y: i32| day_of(i64::from(y), 1, 1).map(weekday);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match jan1(year) {
        Some(3) => 53,
        Some(2) if leap => 53,
        _ => 52,
    }
}

impl IsoWeek {
    /// The week holding `day`.
    pub fn of_day(day: u32) -> IsoWeek {
        // The week's Thursday decides its year.
        let thursday = day + 3 - weekday(day);
        let (year, _, _) = civil(thursday);
        let jan1 = day_of(year, 1, 1).unwrap_or(0);
        IsoWeek {
            year: year as i32,
            week: (thursday - jan1) / 7 + 1,
        }
    }

    /// Its Monday as a day number (negative for 1970-W01: 1969-12-29).
    fn monday(self) -> i64 {
        let jan4 = day_of(i64::from(self.year), 1, 4).unwrap_or(3);
        let week1_monday = i64::from(jan4) - i64::from(weekday(jan4));
        week1_monday + i64::from(self.week.max(1) - 1) * 7
    }

    /// Its Monday's day number (0 for 1970-W01, which began in 1969).
    pub fn first_day(self) -> u32 {
        u32::try_from(self.monday().max(0)).unwrap_or(u32::MAX)
    }

    /// Its Sunday's day number.
    pub fn last_day(self) -> u32 {
        u32::try_from((self.monday() + 6).max(0)).unwrap_or(u32::MAX)
    }

    pub fn next(self) -> IsoWeek {
        IsoWeek::of_day(self.last_day() + 1)
    }

    /// The week `n` weeks before this one.
    pub fn minus(self, n: u32) -> IsoWeek {
        IsoWeek::of_day(self.first_day().saturating_sub(n * 7))
    }

    /// "2026-W48".
    pub fn label(self) -> String {
        format!("{:04}-W{:02}", self.year, self.week)
    }

    /// DHIS2's weekly period id, "2026W48".
    pub fn dhis2(self) -> String {
        format!("{:04}W{}", self.year, self.week)
    }

    /// Parses "2026-W48", "2026W48" or "2026-W8".
    pub fn parse(s: &str) -> Result<IsoWeek, PeriodError> {
        let bad = || PeriodError::Syntax(s.chars().take(16).collect());
        let (y, w) = s.split_once('W').ok_or_else(bad)?;
        let y = y.strip_suffix('-').unwrap_or(y);
        let (year, week) = (
            y.parse::<i32>().map_err(|_| bad())?,
            w.parse::<u32>().map_err(|_| bad())?,
        );
        if !(1970..=9999).contains(&year) || !w.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if week == 0 || week > weeks_in(year) {
            return Err(PeriodError::NoSuchWeek { year, week });
        }
        Ok(IsoWeek { year, week })
    }

    /// Every week from `self` to `to`, inclusive (empty if `to` is earlier).
    pub fn through(self, to: IsoWeek) -> Vec<IsoWeek> {
        let mut out = Vec::new();
        let mut w = self;
        while w <= to {
            out.push(w);
            w = w.next();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_weeks_match_the_calendar() {
        // 2026-11-30 is a Monday in week 49; 2021-01-03 (Sunday) is in 2020-W53;
        // 2024-12-30 (Monday) is in 2025-W01.
        let d = day_of(2026, 11, 30).unwrap();
        assert_eq!(date_label(d), "2026-11-30");
        assert_eq!(IsoWeek::of_day(d).label(), "2026-W49");
        assert_eq!(IsoWeek::of_day(d).first_day(), d);
        assert_eq!(
            IsoWeek::of_day(day_of(2021, 1, 3).unwrap()).label(),
            "2020-W53"
        );
        assert_eq!(
            IsoWeek::of_day(day_of(2024, 12, 30).unwrap()).dhis2(),
            "2025W1"
        );
        assert_eq!(IsoWeek::of_day(0).label(), "1970-W01");
    }

    #[test]
    fn every_day_of_fifty_years_lies_in_its_week() {
        let mut last = IsoWeek::of_day(0);
        for day in 0..(50 * 366) {
            let w = IsoWeek::of_day(day);
            assert!(w.first_day() <= day && day <= w.last_day(), "{day} {w:?}");
            assert!(w == last || w == last.next(), "{day}");
            assert_eq!(IsoWeek::parse(&w.label()), Ok(w));
            assert_eq!(IsoWeek::parse(&w.dhis2()), Ok(w));
            last = w;
        }
    }

    #[test]
    fn bad_weeks_are_named() {
        assert!(matches!(
            IsoWeek::parse("2026-48"),
            Err(PeriodError::Syntax(_))
        ));
        assert!(matches!(
            IsoWeek::parse("2026W+4"),
            Err(PeriodError::Syntax(_))
        ));
        assert_eq!(
            IsoWeek::parse("2025-W53"),
            Err(PeriodError::NoSuchWeek {
                year: 2025,
                week: 53
            })
        );
        assert!(IsoWeek::parse("2020-W53").is_ok());
        assert!(
            IsoWeek::parse("2026-W53").is_ok(),
            "2026 starts on a Thursday"
        );
        let w = IsoWeek::parse("2026-W01").unwrap();
        assert_eq!(w.through(w.next().next()).len(), 3);
        assert_eq!(w.minus(1).label(), "2025-W52");
    }
}
