//! CSV exports of a [`Report`]: every published table as long-format lines, the
//! alerts, the devices and the clinics' reporting. RFC 4180: CRLF line ends, and a
//! field holding a comma, a double quote, CR or LF is quoted (quotes doubled). Only
//! what the report publishes is written: a suppressed number is the word `suppressed`.

use std::fmt::Write as _;

use crate::ministry::period::date_label;
use crate::ministry::report::{NamedTable, Report};
use crate::ministry::suppress::Cell;

/// Header of [`tables_csv`].
pub const TABLES_HEADER: &str = "table,row,column,value";
/// Header of [`alerts_csv`].
pub const ALERTS_HEADER: &str = "region,measure,date,method,threshold";
/// Header of [`devices_csv`].
pub const DEVICES_HEADER: &str =
    "region,clinic,device,last_contact,last_result,queue,oldest_pending,silent";
/// Header of [`clinics_csv`].
pub const CLINICS_HEADER: &str =
    "region,clinic,reported_last_week,last_contact,devices,silent_devices";
/// The row or column label of a table's totals.
pub const TOTAL: &str = "total";
/// What a suppressed number is written as.
pub const SUPPRESSED: &str = "suppressed";

/// One field, quoted when RFC 4180 requires it. A label a spreadsheet would run as a
/// formula (`=`, `+`, `-`, `@`, tab, CR first: a model version comes from a device) gets
/// a leading `'` (OWASP's CSV-injection rule); numbers are written by [`cell`], not here.
pub fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// A published number: the count, or [`SUPPRESSED`].
pub fn cell(c: Cell) -> String {
    match c {
        Cell::Shown(n) => n.to_string(),
        Cell::Suppressed => SUPPRESSED.to_string(),
    }
}

fn line(out: &mut String, fields: &[&str]) {
    let quoted: Vec<String> = fields.iter().map(|f| field(f)).collect();
    out.push_str(&quoted.join(","));
    out.push_str("\r\n");
}

/// Every table of the report in turn: the weekly curves (regions), each region's
/// clinics, severity, severity by model, lung score, then the per-clinic
/// disaggregations.
pub fn tables(report: &Report) -> Vec<&NamedTable> {
    let mut out: Vec<&NamedTable> = report.curves.iter().map(|c| &c.table).collect();
    out.extend(
        report
            .clinics
            .iter()
            .flat_map(|rc| rc.curves.iter().map(|c| &c.table)),
    );
    out.extend([
        &report.severity,
        &report.severity_by_model,
        &report.lung_score,
    ]);
    out.extend(report.disaggregated.iter().map(|d| &d.table));
    out
}

/// One line per cell and per total of every table ([`tables`]): `table,row,column,value`,
/// with row `total` for the column totals, column `total` for the row totals and both
/// for the grand total.
pub fn tables_csv(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(TABLES_HEADER);
    out.push_str("\r\n");
    for t in tables(report) {
        table_lines(&mut out, t);
    }
    out
}

fn table_lines(out: &mut String, t: &NamedTable) {
    let p = &t.published;
    let label =
        |labels: &[String], i: usize| labels.get(i).cloned().unwrap_or_else(|| i.to_string());
    for r in 0..p.rows {
        for c in 0..p.cols {
            let v = cell(p.cells[r * p.cols + c]);
            line(out, &[&t.id, &label(&t.rows, r), &label(&t.cols, c), &v]);
        }
        let v = cell(p.row_totals[r]);
        line(out, &[&t.id, &label(&t.rows, r), TOTAL, &v]);
    }
    for c in 0..p.cols {
        let v = cell(p.col_totals[c]);
        line(out, &[&t.id, TOTAL, &label(&t.cols, c), &v]);
    }
    line(out, &[&t.id, TOTAL, TOTAL, &cell(p.grand_total)]);
}

/// The report's alerts: `region,measure,date,method,threshold` (measure as its id; no
/// count, baseline or statistic: `RegionAlert`).
pub fn alerts_csv(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(ALERTS_HEADER);
    out.push_str("\r\n");
    for a in &report.alerts {
        line(
            &mut out,
            &[
                &a.region,
                a.measure.id(),
                &a.date,
                a.method,
                &number(a.threshold),
            ],
        );
    }
    out
}

/// The devices' reporting: times as UTC timestamps (empty when unknown), the queue as
/// published (empty when the device never said).
pub fn devices_csv(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(DEVICES_HEADER);
    out.push_str("\r\n");
    for d in &report.devices {
        line(
            &mut out,
            &[
                &d.region,
                &d.clinic,
                &d.device,
                &timestamp(d.last_contact_ms),
                &timestamp(d.last_result_ms),
                &d.queue.map(cell).unwrap_or_default(),
                &timestamp(d.oldest_pending_ms),
                if d.silent { "true" } else { "false" },
            ],
        );
    }
    out
}

/// Which clinics reported in the report's last week.
pub fn clinics_csv(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(CLINICS_HEADER);
    out.push_str("\r\n");
    for c in &report.clinics_reporting {
        line(
            &mut out,
            &[
                &c.region,
                &c.clinic,
                if c.reported_last_week {
                    "true"
                } else {
                    "false"
                },
                &timestamp(c.last_contact_ms),
                &c.devices.to_string(),
                &c.silent_devices.to_string(),
            ],
        );
    }
    out
}

/// A statistic: up to 4 decimals, no trailing zeros, never `NaN` or `inf` text.
fn number(x: f64) -> String {
    if !x.is_finite() {
        return String::new();
    }
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// "2026-11-30T08:05:00Z" for milliseconds since 1970 (UTC); empty for None.
pub fn timestamp(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return String::new();
    };
    let secs = ms / 1000;
    let day = u32::try_from(secs / 86_400).unwrap_or(u32::MAX);
    let s = secs % 86_400;
    let mut out = date_label(day);
    let _ = write!(out, "T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ministry::export::sample;

    /// Splits one CSV line into fields (RFC 4180).
    pub(crate) fn parse_line(l: &str) -> Vec<String> {
        let (mut out, mut cur, mut quoted, mut chars) =
            (Vec::new(), String::new(), false, l.chars().peekable());
        while let Some(ch) = chars.next() {
            match (ch, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => out.push(std::mem::take(&mut cur)),
                _ => cur.push(ch),
            }
        }
        out.push(cur);
        out
    }

    fn rows(csv: &str) -> Vec<Vec<String>> {
        assert!(csv.ends_with("\r\n"));
        csv.trim_end_matches("\r\n")
            .split("\r\n")
            .map(parse_line)
            .collect()
    }

    #[test]
    fn every_cell_and_total_is_one_line_and_suppressed_numbers_never_appear() {
        let r = sample::report();
        let lines = rows(&tables_csv(&r));
        assert_eq!(lines[0].join(","), TABLES_HEADER);
        let cells = sample::all_cells(&r);
        assert_eq!(lines.len() - 1, cells.len());
        for (l, (id, c)) in lines[1..].iter().zip(&cells) {
            assert_eq!(l.len(), 4, "{l:?}");
            assert_eq!(&l[0], id);
            assert_eq!(l[3], cell(*c));
            assert_ne!(l[3], sample::LEAK.to_string(), "{l:?}");
        }
        assert!(lines.iter().any(|l| l[3] == SUPPRESSED));
        // A grand total line per table.
        let grand = lines.iter().filter(|l| l[1] == TOTAL && l[2] == TOTAL);
        assert_eq!(grand.count(), tables(&r).len());
    }

    #[test]
    fn labels_with_commas_and_quotes_are_quoted() {
        let r = sample::report();
        let csv = tables_csv(&r);
        assert!(csv.contains("curve.examinations.regions,\"South, Coast\",2026-W48,"));
        assert!(
            csv.contains("curve.examinations.clinics.north,\"Clinic \"\"A\"\"\",2026-W49,11\r\n")
        );
        let lines = rows(&csv);
        assert!(lines.iter().any(|l| l[1] == sample::CLINIC_A));
        assert!(lines.iter().any(|l| l[1] == sample::COAST));
        assert_eq!(field("a\nb"), "\"a\nb\"");
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(field("-1+2"), "'-1+2");
        assert_eq!(field("@SUM(A1)"), "'@SUM(A1)");
    }

    #[test]
    fn alerts_devices_and_clinics() {
        let r = sample::report();
        let a = rows(&alerts_csv(&r));
        assert_eq!(a[0].join(","), ALERTS_HEADER);
        assert_eq!(
            a[1],
            ["South, Coast", "examinations", "2026-12-01", "C2", "3"]
        );
        assert_eq!(a[2][1], "flagged");
        let d = rows(&devices_csv(&r));
        assert_eq!(d[0].join(","), DEVICES_HEADER);
        assert_eq!(d[1][5], SUPPRESSED);
        assert_eq!(d[1][3], timestamp(Some(1_795_999_000_000)));
        assert_eq!(d[2][2], "dev,2");
        assert_eq!(d[2][3], "");
        assert_eq!(d[2][7], "true");
        let c = rows(&clinics_csv(&r));
        assert_eq!(
            c[1],
            [
                "North",
                "Clinic \"A\"",
                "true",
                &timestamp(Some(1_795_999_000_000)),
                "1",
                "0"
            ]
        );
        assert_eq!(
            timestamp(Some(86_400_000 + 3_723_000)),
            "1970-01-02T01:02:03Z"
        );
        assert_eq!(number(f64::NAN), "");
        assert_eq!(number(2.0), "2");
    }
}
