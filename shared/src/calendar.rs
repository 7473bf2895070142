//! Day numbers (days since 1970-01-01, as `ScanRecord::scan_day`) and civil dates, for
//! the clinic page and the hub's ministry periods alike.

/// Days since the epoch → (year, month, day), proleptic Gregorian (H. Hinnant's
/// civil_from_days).
pub fn civil(day: u32) -> (i64, u32, u32) {
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number of a civil date (inverse of [`civil`]); None before 1970.
pub fn day_of(y: i64, m: u32, d: u32) -> Option<u32> {
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u32::try_from(era * 146_097 + doe - 719_468).ok()
}

/// `YYYY-MM-DD` of a day since the epoch.
pub fn date(day: u32) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_round_trip() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(20_000), "2024-10-04");
        for day in (0..200_000).step_by(37) {
            let (y, m, d) = civil(day);
            assert_eq!(day_of(y, m, d), Some(day));
        }
        assert_eq!(day_of(1969, 12, 31), None);
    }
}
