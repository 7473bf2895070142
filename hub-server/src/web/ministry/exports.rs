//! The ministry's exports, from the same report as the page (every clinic's tables and
//! DHIS2's disaggregation included): `GET /ministry/export.csv`, `/ministry/alerts.csv`,
//! `/ministry/fhir.json` (FHIR R4 MeasureReports), `/ministry/dhis2.json` (the
//! `dataValueSets` payload) and `POST /ministry/dhis2/push` (sends it to the configured
//! DHIS2 and shows DHIS2's import summary, conflicts included).

use std::fmt::Write;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;

use super::{Params, WebState};
use crate::cases::Action;
use crate::error::HubError;
use crate::ministry::export::{csv, dhis2, dhis2_push, fhir};
use crate::ministry::query::ClinicDetail;
use crate::ministry::report::Report;
use crate::web::html::{esc, page as layout};
use crate::web::session::{CsrfOnly, Ctx, Session};
use crate::web::{error_page, html};

/// The report behind every export: all clinics, disaggregated.
async fn report(
    s: &WebState,
    ctx: &Ctx,
    p: &Params,
    purpose: &'static str,
) -> Result<(Session, Report), Response> {
    let session = ctx.session(s, Action::MinistryReport).await?;
    let req = p
        .request(Some(ClinicDetail::All), purpose)
        .map_err(error_page)?;
    let req = crate::cases::ministry::ReportRequest {
        disaggregate: true,
        ..req
    };
    let report = s
        .cases
        .ministry_report(&session.who, req)
        .await
        .map_err(error_page)?;
    Ok((session, report))
}

fn download(body: String, content_type: &'static str, name: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

fn stem(r: &Report) -> String {
    match (r.weeks.first(), r.weeks.last()) {
        (Some(a), Some(b)) => format!("pleura-{}-{}", a.label(), b.label()),
        _ => "pleura".into(),
    }
}

pub async fn tables_csv(State(s): State<WebState>, ctx: Ctx, Query(p): Query<Params>) -> Response {
    match report(&s, &ctx, &p, "csv").await {
        Ok((_, r)) => download(
            csv::tables_csv(&r),
            "text/csv; charset=utf-8",
            &format!("{}.csv", stem(&r)),
        ),
        Err(resp) => resp,
    }
}

pub async fn alerts_csv(State(s): State<WebState>, ctx: Ctx, Query(p): Query<Params>) -> Response {
    match report(&s, &ctx, &p, "alerts csv").await {
        Ok((_, r)) => download(
            csv::alerts_csv(&r),
            "text/csv; charset=utf-8",
            &format!("{}-alerts.csv", stem(&r)),
        ),
        Err(resp) => resp,
    }
}

pub async fn fhir_json(State(s): State<WebState>, ctx: Ctx, Query(p): Query<Params>) -> Response {
    match report(&s, &ctx, &p, "fhir").await {
        Ok((_, r)) => {
            let bundle = fhir::measure_reports(&r, &s.ministry.fhir_base);
            download(
                serde_json::to_string_pretty(&bundle).unwrap_or_default(),
                "application/fhir+json",
                &format!("{}-fhir.json", stem(&r)),
            )
        }
        Err(resp) => resp,
    }
}

fn dhis2_config(s: &WebState) -> Result<&dhis2::Dhis2Config, HubError> {
    s.ministry.dhis2.as_ref().ok_or_else(|| {
        HubError::Unavailable(
            "no DHIS2 mapping is configured ([ministry.dhis2] in hub.toml)".into(),
        )
    })
}

fn build(r: &Report, cfg: &dhis2::Dhis2Config) -> Result<dhis2::Dhis2Export, HubError> {
    dhis2::data_value_set(r, cfg).map_err(|e| HubError::Invalid(e.to_string()))
}

pub async fn dhis2_json(State(s): State<WebState>, ctx: Ctx, Query(p): Query<Params>) -> Response {
    // Who asks first: the configuration is nobody else's business.
    let (_, r) = match report(&s, &ctx, &p, "dhis2").await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let cfg = match dhis2_config(&s) {
        Ok(c) => c,
        Err(e) => return error_page(e),
    };
    match build(&r, cfg) {
        Ok(x) => download(
            serde_json::to_string_pretty(&x.set).unwrap_or_default(),
            "application/json",
            &format!("{}-dhis2.json", stem(&r)),
        ),
        Err(e) => error_page(e),
    }
}

pub async fn dhis2_push(
    State(s): State<WebState>,
    ctx: Ctx,
    Query(p): Query<Params>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    // CSRF first: a cross-site form must not make the hub send anything.
    if let Err(r) = ctx.post_session(&s, Action::MinistryReport, &f.csrf).await {
        return r;
    }
    let cfg = match dhis2_config(&s) {
        Ok(c) => c,
        Err(e) => return error_page(e),
    };
    let (session, r) = match report(&s, &ctx, &p, "dhis2 push").await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let export = match build(&r, cfg) {
        Ok(x) => x,
        Err(e) => return error_page(e),
    };
    let mut b = format!(
        "<h1>DHIS2 import</h1><p id=\"dhis2-sent\">{} value(s) sent for {} ({} cleared \
         because they are now suppressed).</p>",
        export.values,
        esc(&stem(&r)),
        export.cleared
    );
    if !export.unmapped_clinics.is_empty() {
        b.push_str("<p class=\"error\" id=\"dhis2-unmapped\">Not sent, no org unit mapped: ");
        let names: Vec<String> = export
            .unmapped_clinics
            .iter()
            .map(|u| esc(&format!("{} ({})", u.clinic, u.region)))
            .collect();
        b.push_str(&names.join(", "));
        b.push_str("</p>");
    }
    let status = match dhis2_push::push(&export.set, cfg).await {
        Ok(sum) => {
            tracing::info!(status = %sum.status, imported = sum.imported, updated = sum.updated,
                ignored = sum.ignored, conflicts = sum.conflicts.len(), "DHIS2 import");
            let _ = write!(
                b,
                "<dl id=\"dhis2-summary\" class=\"model-output\" data-status=\"{}\"><dt>Status</dt>\
                 <dd id=\"dhis2-status\">{0} (HTTP {})</dd><dt>Imported</dt><dd>{}</dd>\
                 <dt>Updated</dt><dd>{}</dd><dt>Ignored</dt><dd id=\"dhis2-ignored\">{}</dd>\
                 <dt>Deleted</dt><dd>{}</dd></dl>",
                esc(&sum.status),
                sum.http_status,
                sum.imported,
                sum.updated,
                sum.ignored,
                sum.deleted
            );
            if !sum.conflicts.is_empty() {
                b.push_str("<h2>Conflicts</h2><ul id=\"dhis2-conflicts\">");
                for c in &sum.conflicts {
                    let _ = write!(
                        b,
                        "<li class=\"conflict\"><code>{}</code>: {}{}</li>",
                        esc(&c.object),
                        esc(&c.value),
                        c.error_code
                            .as_ref()
                            .map(|e| format!(" ({})", esc(e)))
                            .unwrap_or_default()
                    );
                }
                b.push_str("</ul>");
            }
            if sum.is_clean() {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "DHIS2 push failed");
            let _ = write!(
                b,
                "<p class=\"error\" id=\"dhis2-error\">{}</p>",
                esc(&e.to_string())
            );
            StatusCode::BAD_GATEWAY
        }
    };
    b.push_str("<p><a href=\"/ministry\">Back to the dashboard</a></p>");
    html(status, layout("DHIS2 import", session.bar(), &b))
}
