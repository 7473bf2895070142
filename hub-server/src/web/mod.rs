//! The specialists' web application on the hub's HTTPS listener: server-rendered HTML
//! over the case service (no framework, no external resources; one small CSS and one
//! small JS file served from /static), for slow links.
//!
//! Security: the session is the gRPC Login token in the cookie `pleura_session`
//! (HttpOnly, SameSite=Strict, Secure over TLS); every POST carries the session's CSRF
//! token (`csrf` hidden field; the login form a double-submit token); every case page
//! and media item is authorised per request and audited by the case service; anything
//! not visible to the caller answers 404, as absent things do. Headers on every answer:
//! CSP `default-src 'self'; frame-ancestors 'none'`, nosniff, no-referrer, and
//! `Cache-Control: no-store` (except /static).
//!
//! Routes:
//!   GET  /login, POST /login (username, password, csrf), POST /logout (csrf)
//!   GET  /?show=flagged|all&read=0|1&page=N          worklist
//!   POST /claim/<exam hex>, POST /release/<exam hex>  (csrf)
//!   GET  /case/<exam hex>                             examination
//!   GET  /models                                      candidate models vs the active one
//!   GET  /ministry?from=&to=&region=                  ministry dashboard (ministry, operators)
//!   GET  /ministry/export.csv|alerts.csv|fhir.json|dhis2.json   the same report, exported
//!   POST /ministry/dhis2/push                         (csrf) send to the configured DHIS2
//!   POST /case/<exam hex>/verdict                     (csrf, zone-<ZONE>, impression,
//!        recommendation, rescan_reason, comment, second_read)
//!   POST /case/<exam hex>/clip                        (csrf, result = result id hex)
//!   GET  /media/<exam hex>/<sha hex>                  whole item or Range (206); clips video/mp4
//!   GET  /media/<exam hex>/<sha hex>/frame/<i>/image|overlay   key frame JPEG / overlay PNG
//!   GET  /static/app.css, /static/app.js
//!
//! Stable element ids and classes for browser tests:
//!   login: #login-form, input[name=username], input[name=password], #login-submit, #login-error
//!   every page: #user, #logout
//!   ministry: #suppression-note, #period-form, #exports (#export-csv, #export-fhir,
//!     #export-dhis2, #dhis2-push), svg#epicurve (g.series[data-series], circle.point,
//!     text.suppressed-point), table.counts#curve-<measure>-regions (tr[data-row],
//!     td.suppressed), #review-share, #severity-regions, #lung_score-regions, #completeness
//!     (tr.clinic-row[data-clinic], .missing, td.reported), #devices (tr.device-row,
//!     .silent, td.queue), #alerts (tr.alert[data-region][data-day]) or #no-alerts;
//!     push result: #dhis2-summary, #dhis2-status, #dhis2-conflicts li.conflict, #dhis2-error
//!   models: #shadow-comparison (table) with tr.candidate[data-release=<N>] (td.sensitivity,
//!     td.specificity, td.kappa, td.agreement), #no-candidates, #generated
//!   worklist: #worklist (table), tr.case-row[data-exam=<hex>] (priority order) with
//!     td.tier, td.time-left (.overdue when negative), td.severity, td.flags,
//!     td.uncertainty, td.zones, td.claimed-by, a.open-case, button.claim-button;
//!     #filter-flagged, #filter-all (operators), #filter-read, #page-next, #page-prev,
//!     #models-link, #turnaround (median/p90)
//!   case: #exam (data-exam), #lung-score, section.superseded[data-result] (a reading a
//!     later analysis of its scan replaced; .superseded-by), #claim-status, #claim-button, #renew-button,
//!     #release-button,
//!     section.zone[data-zone=<ZONE>] with .model-output, .flag-reasons, figure.keyframe
//!     (img.frame, img.overlay), ul.findings > li.finding.present|.absent[data-finding]
//!     (model v2), #overlay-toggle (checkbox; CSS hides .overlay when
//!     unchecked, no JS needed), video#clip (first clip; others video.clip),
//!     button.request-clip (#request-clip for the first), #clip-requested, #earlier
//!     (a.earlier-exam), #reads, #verdict-form, select[name=zone-<ZONE>],
//!     input[name=impression] (covid|other|normal|nondiagnostic),
//!     input[name=recommendation] (refer|treat|rescan), input[name=rescan_reason],
//!     textarea[name=comment], .identifier-warning, input[name=second_read],
//!     #submit-verdict, #form-error, #verdict-saved

mod case;
pub mod html;
mod media;
mod ministry;
mod models;
mod session;
mod worklist;

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::cases::CaseService;
use crate::error::HubError;

pub use session::PeerAddr;

const CSS: &str = include_str!("static/app.css");
const JS: &str = include_str!("static/app.js");

#[derive(Clone)]
pub struct WebState {
    pub cases: Arc<CaseService>,
    /// Served over TLS: the session cookie is `Secure`.
    pub secure: bool,
    /// `<data_dir>/models/shadow.json`, the comparison `/models` shows (None: not served).
    pub shadow_report: Option<PathBuf>,
    /// `[ministry]`: the FHIR base and the DHIS2 mapping the exports use.
    pub ministry: Arc<crate::config::MinistryConfig>,
}

pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(worklist::page))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/claim/{exam}", post(worklist::claim))
        .route("/release/{exam}", post(worklist::release))
        .route("/case/{exam}", get(case::page))
        .route("/models", get(models::page))
        .route("/ministry", get(ministry::page))
        .route("/ministry/export.csv", get(ministry::tables_csv))
        .route("/ministry/alerts.csv", get(ministry::alerts_csv))
        .route("/ministry/fhir.json", get(ministry::fhir_json))
        .route("/ministry/dhis2.json", get(ministry::dhis2_json))
        .route("/ministry/dhis2/push", post(ministry::dhis2_push))
        .route("/case/{exam}/verdict", post(case::verdict))
        .route("/case/{exam}/clip", post(case::request_clip))
        .route("/media/{exam}/{sha}", get(media::item))
        .route("/media/{exam}/{sha}/frame/{i}/{layer}", get(media::frame))
        .route("/static/app.css", get(|| async { asset(CSS, "text/css") }))
        .route(
            "/static/app.js",
            get(|| async { asset(JS, "text/javascript") }),
        )
        .fallback(|| async { not_found() })
        .layer(middleware::map_response(headers))
        .with_state(state)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    r
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// What every invisible, absent or malformed case or media URL answers.
pub(crate) fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        html::page(
            "Not found",
            None,
            "<h1>Not found</h1><p><a href=\"/\">Worklist</a></p>",
        ),
    )
}

/// A refused or failed call as a page; no case data in it.
pub(crate) fn error_page(e: HubError) -> Response {
    match e {
        HubError::Unauthenticated(_) => Redirect::to("/login").into_response(),
        HubError::Denied(_) => not_found(),
        e => {
            let status = e.http_status();
            let body = format!(
                "<h1>{}</h1><p id=\"error\">{}</p><p><a href=\"/\">Worklist</a></p>",
                status.as_u16(),
                html::esc(&e.to_string())
            );
            html(status, html::page("Error", None, &body))
        }
    }
}
