//! The worklist page: examinations in clinical priority order with time left, and the
//! claim / release buttons.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use pleura_shared::ExamId;
use serde::Deserialize;

use super::html::{duration_ms, esc, page as layout, seconds, short_pseudonym};
use super::session::{CsrfOnly, Ctx, Session};
use super::{error_page, html, not_found, WebState};
use crate::auth::Role;
use crate::cases::review::zone_label;
use crate::cases::{Action, ClaimResult, ExamQuery, TurnaroundStats, WorklistPage};

pub const PAGE: usize = 50;
const TURNAROUND_DAYS: u32 = 7;

#[derive(Deserialize, Default)]
pub struct Params {
    #[serde(default)]
    show: String,
    #[serde(default)]
    read: String,
    #[serde(default)]
    page: usize,
}

pub async fn page_handler(s: &WebState, ctx: &Ctx, p: Params) -> Result<Response, Response> {
    let session = ctx.session(s, Action::Worklist).await?;
    let operator = session.who.caller.role == Role::Operator;
    let all = operator && p.show == "all";
    let read = p.read == "1";
    let q = ExamQuery {
        include_unflagged: all,
        read: Some(read),
        offset: p.page.min(10_000) * PAGE,
        limit: PAGE,
    };
    let list = s
        .cases
        .worklist(&session.who, q)
        .await
        .map_err(|e| denied_page(e, &session))?;
    let stats = s
        .cases
        .turnaround(&session.who, TURNAROUND_DAYS)
        .await
        .map_err(error_page)?;
    let body = render(&list, &stats, &session, operator, all, read, p.page);
    Ok(html(
        StatusCode::OK,
        layout("Worklist", session.bar(), &body),
    ))
}

/// A role with no worklist: the ministry goes to its dashboard; others get a page
/// saying so, with no case data.
fn denied_page(e: crate::error::HubError, session: &Session) -> Response {
    if session.who.caller.role == crate::auth::Role::Ministry {
        return axum::response::Redirect::to("/ministry").into_response();
    }
    match e {
        crate::error::HubError::Denied(why) => html(
            StatusCode::FORBIDDEN,
            layout(
                "Worklist",
                session.bar(),
                &format!("<h1>No worklist</h1><p id=\"error\">{}</p>", esc(&why)),
            ),
        ),
        e => error_page(e),
    }
}

pub async fn page(State(s): State<WebState>, ctx: Ctx, Query(p): Query<Params>) -> Response {
    page_handler(&s, &ctx, p).await.unwrap_or_else(|r| r)
}

fn link(show: &str, read: bool, page: usize) -> String {
    format!("/?show={show}&read={}&page={page}", u8::from(read))
}

fn render(
    list: &WorklistPage,
    stats: &TurnaroundStats,
    session: &Session,
    operator: bool,
    all: bool,
    read: bool,
    page_no: usize,
) -> String {
    let show = if all { "all" } else { "flagged" };
    let mut b = String::with_capacity(4096 + list.rows.len() * 600);
    let _ = write!(
        b,
        "<h1>{}</h1><nav class=\"filters\"><a id=\"filter-flagged\" href=\"{}\">Flagged</a>",
        if read {
            "Read examinations"
        } else {
            "Worklist"
        },
        link("flagged", read, 0)
    );
    if operator {
        let _ = write!(
            b,
            " <a id=\"filter-all\" href=\"{}\">All</a>",
            link("all", read, 0)
        );
    }
    let _ = write!(
        b,
        " <a id=\"filter-read\" href=\"{}\">{}</a> \
         <a id=\"models-link\" href=\"/models\">Candidate models</a></nav>",
        link(show, !read, 0),
        if read {
            "Awaiting a read"
        } else {
            "Already read"
        }
    );
    let t = stats;
    let _ = write!(
        b,
        "<p id=\"turnaround\">Last {} days ({} read): arrival → claim median {}, p90 {}; \
         arrival → verdict median {}, p90 {}.</p>",
        t.days,
        t.to_verdict.n,
        seconds(t.to_claim.median_s),
        seconds(t.to_claim.p90_s),
        seconds(t.to_verdict.median_s),
        seconds(t.to_verdict.p90_s)
    );
    b.push_str(
        "<table id=\"worklist\"><thead><tr><th>Tier</th><th>Time left</th><th>Clinic</th>\
         <th>Patient</th><th>Day</th><th>Severity</th><th>Flags</th><th>Uncertainty</th>\
         <th>Zones</th><th>Claimed by</th><th></th></tr></thead><tbody>",
    );
    for row in &list.rows {
        let e = &row.exam;
        let hexid = e.id.to_hex();
        let left = row.priority.time_left_ms(list.now_ms);
        let zones: Vec<String> = e
            .live()
            .map(|r| format!("{} {}", zone_label(r.zone.as_deref(), &r.id), r.severity))
            .collect();
        let flagged_zones = e.live().filter(|r| r.flagged).count();
        let claimed = row.claim.as_ref().map_or(String::new(), |c| esc(&c.user));
        let _ = write!(
            b,
            "<tr class=\"case-row tier-{tier}\" data-exam=\"{hexid}\"><td class=\"tier\">{tier}</td>\
             <td class=\"time-left{overdue}\">{left}</td><td>{clinic}</td><td>{patient}</td>\
             <td>{day}</td><td class=\"severity\">{sev}</td><td class=\"flags\">{flags}</td>\
             <td class=\"uncertainty\">{unc:.2}</td><td class=\"zones\">{zones}</td>\
             <td class=\"claimed-by\">{claimed}</td><td><a class=\"open-case\" href=\"/case/{hexid}\">Open</a>",
            tier = row.priority.tier,
            overdue = if left < 0 { " overdue" } else { "" },
            left = esc(&duration_ms(left)),
            clinic = esc(&e.clinic),
            patient = e.patient_key.as_ref().map_or("-".into(), short_pseudonym),
            day = super::html::day(e.day),
            sev = e.max_severity,
            flags = if e.flagged { format!("{flagged_zones} flagged") } else { "-".into() },
            unc = e.max_uncertainty,
            zones = esc(&zones.join(", ")),
        );
        if session.who.caller.role == Role::Specialist && row.claim.is_none() && !read {
            let _ = write!(
                b,
                " <form method=\"post\" action=\"/claim/{hexid}\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button class=\"claim-button\">Claim</button></form>",
                esc(&session.csrf)
            );
        }
        b.push_str("</td></tr>");
    }
    b.push_str("</tbody></table>");
    if list.rows.is_empty() {
        b.push_str("<p id=\"empty\">Nothing waiting.</p>");
    }
    b.push_str("<nav class=\"paging\">");
    if page_no > 0 {
        let _ = write!(
            b,
            "<a id=\"page-prev\" href=\"{}\">Previous</a> ",
            link(show, read, page_no - 1)
        );
    }
    if list.more {
        let _ = write!(
            b,
            "<a id=\"page-next\" href=\"{}\">Next</a>",
            link(show, read, page_no + 1)
        );
    }
    b.push_str("</nav>");
    b
}

pub async fn claim(
    State(s): State<WebState>,
    ctx: Ctx,
    Path(exam): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let Some(id) = ExamId::from_hex(&exam) else {
        return not_found();
    };
    let session = match ctx.post_session(&s, Action::Claim, &f.csrf).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match s.cases.claim(&session.who, id).await {
        Ok(ClaimResult::Claimed(_) | ClaimResult::HeldBy(_)) => {
            Redirect::to(&format!("/case/{}", id.to_hex())).into_response()
        }
        Err(e) => error_page(e),
    }
}

pub async fn release(
    State(s): State<WebState>,
    ctx: Ctx,
    Path(exam): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let Some(id) = ExamId::from_hex(&exam) else {
        return not_found();
    };
    let session = match ctx.post_session(&s, Action::Release, &f.csrf).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match s.cases.release(&session.who, id).await {
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => error_page(e),
    }
}
