use super::*;
use crate::ministry::suppress::Cell;
use crate::store::rollup::demographic_slot;

/// One scan per examination: `scans` examinations, `flagged` of them flagged (and of
/// severity 2).
fn row(clinic: &str, day: u32, scans: u64, flagged: u64) -> RollupRow {
    let by_severity = [scans - flagged, 0, flagged, 0];
    RollupRow {
        clinic: clinic.into(),
        day,
        rollup: Rollup {
            scans,
            flagged,
            by_severity,
            exams: scans,
            flagged_exams: flagged,
            severe_exams: flagged,
            exams_by_severity: by_severity,
            exams_by_model: [("m1".to_string(), by_severity)].into(),
            exams_by_demographic: [(0, scans - flagged), (2, flagged)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(sev, n)| (demographic_slot(sev, Default::default()), n))
                .collect(),
            lung_score: [scans, 0, 0, 0, 0, 0],
            ..Rollup::default()
        },
    }
}

fn query(from: IsoWeek, to: IsoWeek) -> ReportQuery {
    ReportQuery {
        from,
        to,
        threshold: 5,
        silent_days: 3,
        clinics_of: ClinicDetail::All,
        disaggregate: true,
        now_ms: u64::from(to.last_day()) * DAY_MS,
    }
}

fn regions() -> HashMap<String, String> {
    [("n1", "north"), ("n2", "north"), ("s1", "south")]
        .iter()
        .map(|(c, r)| (c.to_string(), r.to_string()))
        .collect()
}

fn shown(c: Cell) -> Option<u64> {
    match c {
        Cell::Shown(v) => Some(v),
        Cell::Suppressed => None,
    }
}

#[test]
fn counts_land_in_their_region_week_and_small_ones_are_suppressed() {
    let w = IsoWeek::parse("2026-W10").unwrap();
    let d = w.first_day();
    let rows = vec![
        row("n1", d, 20, 9),
        row("n2", d + 1, 30, 2),
        row("s1", d + 7, 40, 10),
        row("x9", d + 8, 3, 0),   // a clinic no enrolment places: "unassigned"
        row("n1", d - 3, 99, 99), // before the range: alerts' baseline only
    ];
    let r = build(&query(w, w.next()), &rows, &regions(), &[]);
    assert_eq!(r.regions, ["north", "south", "unassigned"]);
    assert_eq!(r.weeks, [w, w.next()]);
    let scans = r.curve(Measure::Examinations).unwrap();
    assert_eq!(shown(scans.cell(0, 0)), Some(50));
    assert_eq!(
        scans.cell(2, 1),
        Cell::Suppressed,
        "3 scans is a small cell"
    );
    // Its row holds no other positive cell, so its complement is the cheapest cycle's:
    // south's 40 in the same week (else 3 = week total − 40).
    assert_eq!(scans.cell(1, 1), Cell::Suppressed);
    assert_eq!(shown(scans.published.grand_total), Some(93));
    let flagged = r.curve(Measure::Flagged).unwrap();
    assert_eq!(shown(flagged.cell(0, 0)), Some(11));
    // Clinic drill-down: the region's clinics, n2's 2 flagged suppressed.
    let north = &r
        .clinics
        .iter()
        .find(|c| c.region == "north")
        .unwrap()
        .curves;
    let north_flagged = &north
        .iter()
        .find(|c| c.measure == Measure::Flagged)
        .unwrap()
        .table;
    assert_eq!(north_flagged.rows, ["n1", "n2"]);
    assert_eq!(north_flagged.cell(1, 0), Cell::Suppressed);
    assert_eq!(north_flagged.cell(0, 0), Cell::Suppressed, "the complement");
    // Whole-range tables and DHIS2's disaggregation.
    assert_eq!(r.severity.rows, r.regions);
    assert_eq!(r.severity_by_model.rows, ["m1"]);
    // Every clinic-week here has a hidden examinations or severity cell (or is
    // small): no split is published, not even its zeros.
    assert!(r.disaggregated.is_empty(), "{:?}", r.disaggregated);
    // Nothing anywhere shows a count between 1 and 4.
    let json = serde_json::to_value(&r).unwrap();
    let mut stack = vec![&json];
    while let Some(v) = stack.pop() {
        if let Some(n) = v.get("Shown").and_then(|n| n.as_u64()) {
            assert!(n == 0 || n >= 5, "shown small count {n}");
        }
        match v {
            serde_json::Value::Array(a) => stack.extend(a),
            serde_json::Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
}

#[test]
fn a_regions_outbreak_day_raises_an_alert_and_quiet_days_do_not() {
    let w = IsoWeek::parse("2026-W20").unwrap();
    let start = w.first_day() - ALERT_HISTORY_DAYS;
    let outbreak = w.first_day() + 10;
    let mut rows = Vec::new();
    for day in start..=w.next().last_day() {
        // A steady 4-6 flagged a day in the north; 30 on the outbreak day.
        let flagged = if day == outbreak {
            30
        } else {
            4 + u64::from(day % 3)
        };
        rows.push(row("n1", day, 40, flagged));
        rows.push(row("s1", day, 40, 5));
    }
    let r = build(&query(w, w.next()), &rows, &regions(), &[]);
    let flagged: Vec<_> = r
        .alerts
        .iter()
        .filter(|a| a.measure == Measure::Flagged)
        .collect();
    assert!(!flagged.is_empty());
    assert!(flagged.iter().all(|a| a.region == "north"), "{flagged:?}");
    // Newest first; the earliest is the outbreak day (C3's three-day sum carries on
    // for two more days).
    let first = flagged.last().unwrap();
    assert_eq!(first.day, outbreak);
    assert_eq!(first.date, date_label(outbreak));
    assert!(flagged
        .iter()
        .all(|a| (outbreak..=outbreak + 2).contains(&a.day)));
    assert!(flagged.windows(2).all(|p| p[0].day >= p[1].day));
}

#[test]
fn completeness_names_silent_devices_and_who_reported_last_week() {
    let w = IsoWeek::parse("2026-W30").unwrap();
    let q = query(w.minus(1), w);
    let now = q.now_ms;
    let dev = |clinic: &str, device: &str, received: u64, seen: u64, pending: u64| DeviceStats {
        clinic: clinic.into(),
        device: device.into(),
        last_received_ms: received,
        last_seen_ms: seen,
        queue_pending: pending,
        oldest_pending_ms: if pending > 0 { received } else { 0 },
        queue_reported_ms: seen,
        ..DeviceStats::default()
    };
    let devices = [
        dev("n1", "a", now - DAY_MS, now - 1000, 0),
        dev("n1", "b", now - 10 * DAY_MS, now - 9 * DAY_MS, 2),
        dev("s1", "c", now - 10 * DAY_MS, now - 2 * DAY_MS, 40),
    ];
    let r = build(&q, &[], &regions(), &devices);
    let by = |d: &str| r.devices.iter().find(|x| x.device == d).unwrap();
    assert!(!by("a").silent && by("b").silent && !by("c").silent);
    assert_eq!(by("a").queue, Some(Cell::Shown(0)));
    assert_eq!(
        by("b").queue,
        Some(Cell::Suppressed),
        "2 waiting is a small count"
    );
    assert_eq!(by("c").queue, Some(Cell::Shown(40)));
    let clinic = |c: &str| r.clinics_reporting.iter().find(|x| x.clinic == c).unwrap();
    assert!(clinic("n1").reported_last_week && !clinic("s1").reported_last_week);
    assert_eq!((clinic("n1").devices, clinic("n1").silent_devices), (2, 1));
    assert_eq!(
        clinic("n2").devices,
        0,
        "an enrolled clinic with no device report is listed"
    );
    assert!(!clinic("n2").reported_last_week);
}

#[test]
fn a_clinic_week_is_split_by_age_and_sex_only_where_its_own_cells_are_shown() {
    let w = IsoWeek::parse("2026-W10").unwrap();
    let d = w.first_day();
    let rows = vec![
        row("s1", d, 40, 10),
        row("n1", d, 20, 6),
        row("n2", d, 30, 2),
    ];
    let r = build(&query(w, w), &rows, &regions(), &[]);
    let names: Vec<_> = r.disaggregated.iter().map(|d| d.clinic.as_str()).collect();
    assert_eq!(
        names,
        ["s1"],
        "n2's 2 at severity 2 are hidden, and n1's 6 with them"
    );
    let t = &r.disaggregated[0].table;
    assert_eq!((t.rows.len(), t.cols.len()), (4, 18));
    assert_eq!(t.cols[17], "unknown/unknown");
    assert_eq!(t.cell(0, 17), Cell::Shown(30));
    assert_eq!(t.cell(2, 17), Cell::Shown(10));
    let p = &t.published;
    assert!(p
        .row_totals
        .iter()
        .chain(&p.col_totals)
        .chain([&p.grand_total])
        .all(|c| *c == Cell::Suppressed));
}
