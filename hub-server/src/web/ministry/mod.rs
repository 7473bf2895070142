//! The ministry dashboard (`GET /ministry`): the epidemic curve, review shares,
//! severity and lung-score distributions, reporting completeness and alerts, all from
//! the case service's `ministry_report` (every count already suppressed or banded), and
//! the exports (`exports`). Server-rendered; the curve is inline SVG (`chart`).

mod chart;
mod exports;

use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::html::{clock_utc, esc, page as layout};
use super::session::Ctx;
use super::{error_page, html, WebState};
use crate::cases::ministry::ReportRequest;
use crate::cases::Action;
use crate::error::HubError;
use crate::ministry::period::IsoWeek;
use crate::ministry::query::ClinicDetail;
use crate::ministry::report::{Measure, NamedTable, Report};
use crate::ministry::suppress::Cell;

pub use exports::{alerts_csv, dhis2_json, dhis2_push, fhir_json, tables_csv};

/// `?from=2026-W40&to=2026-W49&region=north` (all optional).
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    region: String,
}

impl Params {
    /// The case service's request, or an error naming the bad parameter.
    pub fn request(
        &self,
        clinics_of: Option<ClinicDetail>,
        purpose: &'static str,
    ) -> Result<ReportRequest, HubError> {
        let week = |name: &str, v: &str| {
            if v.is_empty() {
                return Ok(None);
            }
            IsoWeek::parse(v)
                .map(Some)
                .map_err(|e| HubError::Invalid(format!("{name}: {e}")))
        };
        Ok(ReportRequest {
            from: week("from", &self.from)?,
            to: week("to", &self.to)?,
            clinics_of: clinics_of.or_else(|| {
                (!self.region.is_empty()).then(|| ClinicDetail::Region(self.region.clone()))
            }),
            disaggregate: false,
            purpose,
        })
    }
}

pub async fn page(State(s): State<WebState>, ctx: Ctx, Query(p): Query<Params>) -> Response {
    let session = match ctx.session(&s, Action::MinistryReport).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = match p.request(None, "page") {
        Ok(r) => r,
        Err(e) => return error_page(e),
    };
    match s.cases.ministry_report(&session.who, req).await {
        Ok(report) => html(
            StatusCode::OK,
            layout(
                "Ministry dashboard",
                session.bar(),
                &render(&report, &p, &session.csrf),
            ),
        ),
        // A specialist: the page does not exist for them (404, as everything invisible).
        Err(e) => error_page(e),
    }
}

fn cell(c: Cell) -> String {
    match c {
        Cell::Shown(v) => format!("<td class=\"n\">{v}</td>"),
        Cell::Suppressed => "<td class=\"n suppressed\" title=\"suppressed: small count, or the \
                             complement that protects one\">s</td>"
            .into(),
    }
}

/// A published table with its margins: `table#<id>` (dots become dashes), rows
/// `tr[data-row]`, suppressed cells `td.suppressed`.
fn table(b: &mut String, t: &NamedTable) {
    let id = t.id.replace('.', "-");
    let _ = write!(
        b,
        "<table class=\"counts\" id=\"{}\"><caption>{}</caption><thead><tr><th></th>",
        esc(&id),
        esc(&t.title)
    );
    for c in &t.cols {
        let _ = write!(b, "<th>{}</th>", esc(c));
    }
    b.push_str("<th>Total</th></tr></thead><tbody>");
    for (r, name) in t.rows.iter().enumerate() {
        let _ = write!(b, "<tr data-row=\"{0}\"><th>{0}</th>", esc(name));
        for c in 0..t.cols.len() {
            b.push_str(&cell(t.cell(r, c)));
        }
        b.push_str(&cell(t.published.row_totals[r]));
        b.push_str("</tr>");
    }
    b.push_str("<tr class=\"total\"><th>Total</th>");
    for c in &t.published.col_totals {
        b.push_str(&cell(*c));
    }
    b.push_str(&cell(t.published.grand_total));
    b.push_str("</tr></tbody></table>");
}

fn share(num: Cell, den: Cell) -> String {
    match (num, den) {
        (Cell::Shown(n), Cell::Shown(d)) if d > 0 => format!("{:.0}%", 100.0 * n as f64 / d as f64),
        (Cell::Shown(_), Cell::Shown(_)) => "–".into(),
        _ => "s".into(),
    }
}

fn ago(now_ms: u64, at: Option<u64>) -> String {
    match at {
        None => "never".into(),
        Some(t) => format!(
            "{} ({} ago)",
            clock_utc(t),
            super::html::duration_ms(now_ms.saturating_sub(t) as i64)
        ),
    }
}

pub(super) fn render(r: &Report, p: &Params, csrf: &str) -> String {
    let mut b = String::with_capacity(32 * 1024);
    let weeks: Vec<String> = r.weeks.iter().map(|w| w.label()).collect();
    let (first, last) = (
        weeks.first().cloned().unwrap_or_default(),
        weeks.last().cloned().unwrap_or_default(),
    );
    let _ = write!(
        b,
        "<h1>Lung-ultrasound triage: national dashboard</h1>\
         <p class=\"notice\" id=\"suppression-note\">Counts from 1 to {t_1} are suppressed \
         (<b>s</b>), with enough other cells that none can be worked out from the totals. \
         Pleura supports triage; its flags are not diagnoses.</p>\
         <form method=\"get\" action=\"/ministry\" id=\"period-form\" class=\"filters\">\
         <label>From <input name=\"from\" value=\"{first}\" size=\"9\"></label> \
         <label>to <input name=\"to\" value=\"{last}\" size=\"9\"></label> \
         <label>clinics of <select name=\"region\"><option value=\"\">(regions only)</option>",
        t_1 = r.threshold.saturating_sub(1),
        first = esc(&first),
        last = esc(&last),
    );
    for region in &r.regions {
        let _ = write!(
            b,
            "<option{} value=\"{1}\">{1}</option>",
            if *region == p.region { " selected" } else { "" },
            esc(region)
        );
    }
    let q = format!("from={}&amp;to={}", esc(&first), esc(&last));
    let _ = write!(
        b,
        "</select></label> <button>Show</button></form>\
         <p id=\"generated\">Weeks {} to {} (ISO), computed at {}.</p>\
         <nav class=\"filters\" id=\"exports\">Export: <a id=\"export-csv\" href=\"/ministry/export.csv?{q}\">CSV</a> \
         <a id=\"export-fhir\" href=\"/ministry/fhir.json?{q}\">FHIR MeasureReport</a> \
         <a id=\"export-dhis2\" href=\"/ministry/dhis2.json?{q}\">DHIS2 dataValueSet</a> \
         <a id=\"export-alerts\" href=\"/ministry/alerts.csv?{q}\">Alerts CSV</a>\
         <form method=\"post\" action=\"/ministry/dhis2/push?{q}\" class=\"inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button id=\"dhis2-push\">Send to DHIS2</button></form></nav>",
        esc(&first),
        esc(&last),
        esc(&clock_utc(r.generated_at_ms)),
        esc(csrf)
    );

    // The curve: national weekly totals (the region tables' column totals).
    b.push_str("<h2>Epidemic curve</h2>");
    let lines = [
        Measure::Examinations,
        Measure::Flagged,
        Measure::Covid,
        Measure::Severe,
    ];
    let series: Vec<chart::Series<'_>> = lines
        .iter()
        .filter_map(|m| {
            Some(chart::Series {
                label: m.title(),
                id: m.id(),
                values: r.curve(*m)?.published.col_totals.clone(),
            })
        })
        .collect();
    b.push_str(&chart::epicurve(&weeks, &series));
    for m in lines {
        if let Some(t) = r.curve(m) {
            table(&mut b, t);
        }
    }

    // Review: of the flagged examinations, how many a specialist read and confirmed.
    b.push_str(
        "<h2>Specialist review</h2><table id=\"review-share\" class=\"counts\"><thead><tr>\
         <th>Region</th><th>Flagged examinations</th><th>Reviewed</th><th>Share reviewed</th>\
         <th>Confirmed</th><th>Share confirmed</th></tr></thead><tbody>",
    );
    if let (Some(fx), Some(rv), Some(cf)) = (
        r.curve(Measure::Flagged),
        r.curve(Measure::Reviewed),
        r.curve(Measure::Confirmed),
    ) {
        for (i, region) in r.regions.iter().enumerate() {
            let (f, v, c) = (
                fx.published.row_totals[i],
                rv.published.row_totals[i],
                cf.published.row_totals[i],
            );
            let _ = write!(
                b,
                "<tr data-row=\"{}\"><th>{0}</th>{}{}<td class=\"share\">{}</td>{}<td class=\"share\">{}</td></tr>",
                esc(region),
                cell(f),
                cell(v),
                share(v, f),
                cell(c),
                share(c, v)
            );
        }
        b.push_str("</tbody></table>");
        for t in [rv, cf] {
            table(&mut b, t);
        }
    } else {
        b.push_str("</tbody></table>");
    }

    // Drill-down: one region's clinics.
    for rc in &r.clinics {
        let _ = write!(b, "<h2>Clinics of {}</h2>", esc(&rc.region));
        for c in rc.curves.iter().filter(|c| {
            matches!(
                c.measure,
                Measure::Examinations | Measure::Flagged | Measure::Covid
            )
        }) {
            table(&mut b, &c.table);
        }
    }

    b.push_str("<h2>Severity and lung score</h2>");
    table(&mut b, &r.severity);
    table(&mut b, &r.severity_by_model);
    table(&mut b, &r.lung_score);

    completeness(&mut b, r);
    alerts(&mut b, r);
    b
}

fn completeness(b: &mut String, r: &Report) {
    let now = r.generated_at_ms;
    let _ = write!(
        b,
        "<h2>Reporting completeness</h2><p>Clinics that sent results during {}; devices \
         silent for more than {} days are marked.</p><table id=\"completeness\"><thead><tr>\
         <th>Region</th><th>Clinic</th><th>Reported this week</th><th>Last contact</th>\
         <th>Devices</th><th>Silent</th></tr></thead><tbody>",
        esc(&r.weeks.last().map(|w| w.label()).unwrap_or_default()),
        r.silent_days
    );
    for c in &r.clinics_reporting {
        let _ = write!(
            b,
            "<tr class=\"clinic-row{}\" data-clinic=\"{}\"><td>{}</td><td>{1}</td>\
             <td class=\"reported\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.reported_last_week { "" } else { " missing" },
            esc(&c.clinic),
            esc(&c.region),
            if c.reported_last_week { "yes" } else { "no" },
            esc(&ago(now, c.last_contact_ms)),
            c.devices,
            c.silent_devices
        );
    }
    b.push_str(
        "</tbody></table><table id=\"devices\"><thead><tr><th>Region</th><th>Clinic</th>\
         <th>Device</th><th>Last contact</th><th>Last result</th><th>Queued at the device</th>\
         <th>Oldest unsynced</th></tr></thead><tbody>",
    );
    for d in &r.devices {
        let queue = match d.queue {
            None => "<td class=\"queue\">not reported</td>".to_string(),
            Some(c) => cell(c).replacen("<td class=\"n", "<td class=\"queue n", 1),
        };
        let _ =
            write!(
            b,
            "<tr class=\"device-row{}\" data-device=\"{}/{}\"><td>{}</td><td>{1}</td><td>{2}</td>\
             <td class=\"last-contact\">{}</td><td>{}</td>{}<td class=\"oldest\">{}</td></tr>",
            if d.silent { " silent" } else { "" },
            esc(&d.clinic),
            esc(&d.device),
            esc(&d.region),
            esc(&ago(now, d.last_contact_ms)),
            esc(&ago(now, d.last_result_ms)),
            queue,
            esc(&d.oldest_pending_ms.map_or("-".into(), |t| ago(now, Some(t)))),
        );
    }
    b.push_str("</tbody></table>");
}

fn alerts(b: &mut String, r: &Report) {
    b.push_str(
        "<h2>Alerts</h2><p>Days on which a region's flagged or COVID-19-suspected \
         examinations rose above their expected level (CDC EARS C1-C3: more than 3 standard \
         deviations over the mean of 7 baseline days; C3 sums the last 3 days' excess over \
         2; at least 3 cases). The counts behind an alert are not shown: they would give \
         away numbers the tables suppress.</p>",
    );
    if r.alerts.is_empty() {
        b.push_str("<p id=\"no-alerts\">No alert in these weeks.</p>");
        return;
    }
    b.push_str(
        "<table id=\"alerts\"><thead><tr><th>Date</th><th>Region</th><th>What</th>\
         <th>Method</th></tr></thead><tbody>",
    );
    for a in &r.alerts {
        let _ = write!(
            b,
            "<tr class=\"alert\" data-region=\"{}\" data-day=\"{}\"><td>{}</td><td>{0}</td>\
             <td>{}</td><td>{} (statistic &gt; {})</td></tr>",
            esc(&a.region),
            a.day,
            esc(&a.date),
            esc(a.measure.title()),
            a.method,
            a.threshold,
        );
    }
    b.push_str("</tbody></table>");
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
