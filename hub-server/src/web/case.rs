//! The examination page: every zone's result (model outputs and why it was flagged), key
//! frames with the activation map as an overlay, the clip, the patient's lung score and
//! other examinations, the claim, earlier reads and the verdict form; and its POSTs.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use pleura_proto::v1::KeyFrameRole;
use pleura_shared::{ExamId, LungClass, ResultId};
use serde::Deserialize;

use super::html::{day, duration_ms, esc, page as layout, short_pseudonym};
use super::session::{Ctx, Session};
use super::{error_page, html, not_found, WebState};
use crate::auth::Role;
use crate::cases::review::zone_label;
use crate::cases::{Action, ExamDetail, VerdictForm};
use crate::error::HubError;
use crate::store::exams::{Impression, Read, Recommendation};

#[derive(Deserialize, Default)]
pub struct Params {
    #[serde(default)]
    saved: String,
    #[serde(default)]
    clip: String,
}

pub async fn page(
    State(s): State<WebState>,
    ctx: Ctx,
    Path(exam): Path<String>,
    Query(p): Query<Params>,
) -> Response {
    let Some(id) = ExamId::from_hex(&exam) else {
        return not_found();
    };
    let session = match ctx.session(&s, Action::GetExam).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    show(&s, &session, id, StatusCode::OK, notice(&p), None).await
}

/// The notice after a redirect: `saved=1` queued for every device, `saved=2` stored but
/// not yet queued everywhere (the delivery sweep retries it).
fn notice(p: &Params) -> Option<(&'static str, &'static str)> {
    match (p.saved.as_str(), p.clip.as_str()) {
        ("1", _) => Some(("verdict-saved", "Verdict saved; queued for the clinic.")),
        ("2", _) => Some((
            "verdict-saved",
            "Verdict saved; delivery to the clinic will be retried.",
        )),
        (_, "1") => Some(("clip-requested", "Clip requested from the clinic's device.")),
        _ => None,
    }
}

async fn show(
    s: &WebState,
    session: &Session,
    id: ExamId,
    status: StatusCode,
    notice: Option<(&str, &str)>,
    error: Option<&str>,
) -> Response {
    match s.cases.exam(&session.who, id).await {
        Ok(d) => {
            let body = render(&d, session, notice, error);
            html(status, layout("Examination", session.bar(), &body))
        }
        Err(e) => error_page(e),
    }
}

const IMPRESSIONS: [(&str, Impression, &str); 4] = [
    ("covid", Impression::CovidCompatible, "COVID-19 compatible"),
    ("other", Impression::OtherPneumonia, "Other pneumonia"),
    ("normal", Impression::Normal, "Normal"),
    (
        "nondiagnostic",
        Impression::NonDiagnostic,
        "Non-diagnostic image",
    ),
];
const RECOMMENDATIONS: [(&str, Recommendation, &str); 3] = [
    ("refer", Recommendation::Refer, "Refer"),
    ("treat", Recommendation::TreatLocally, "Treat locally"),
    ("rescan", Recommendation::Rescan, "Rescan"),
];

fn role_name(r: i32) -> &'static str {
    match KeyFrameRole::try_from(r) {
        Ok(KeyFrameRole::Pathological) => "most pathological",
        Ok(KeyFrameRole::First) => "first",
        Ok(KeyFrameRole::Middle) => "middle",
        _ => "frame",
    }
}

fn render(
    d: &ExamDetail,
    session: &Session,
    notice: Option<(&str, &str)>,
    error: Option<&str>,
) -> String {
    let e = &d.exam;
    let hexid = e.id.to_hex();
    let csrf = esc(&session.csrf);
    let specialist = session.who.caller.role == Role::Specialist;
    let mut b = String::with_capacity(16 * 1024);
    let p = e.priority();
    let left = p.time_left_ms(d.now_ms);
    let _ = write!(
        b,
        "<h1 id=\"exam\" data-exam=\"{hexid}\">Examination · {} · {} · patient {}</h1>\
         <p class=\"summary\">Tier {} · <span class=\"time-left{}\">{}</span> left · \
         lung score <strong id=\"lung-score\">{}</strong> (sum of the worst severity per zone) · \
         {} zone(s)</p>",
        esc(&e.clinic),
        day(e.day),
        e.patient_key.as_ref().map_or("-".into(), short_pseudonym),
        p.tier,
        if left < 0 { " overdue" } else { "" },
        esc(&duration_ms(left)),
        d.lung_score,
        e.live().count()
    );
    if let Some((id, text)) = notice {
        let _ = write!(b, "<p id=\"{id}\" class=\"notice\">{}</p>", esc(text));
    }
    // Claim.
    b.push_str("<div id=\"claim-status\">");
    match &d.claim {
        Some(c) if c.user == session.who.caller.username => {
            let _ = write!(
                b,
                "Claimed by you until {}. <form method=\"post\" action=\"/claim/{hexid}\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button id=\"renew-button\">Renew</button></form> \
                 <form method=\"post\" action=\"/release/{hexid}\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button id=\"release-button\">Release</button></form>",
                clock(c.expires_at_ms)
            );
        }
        Some(c) => {
            let _ = write!(b, "Claimed by {}.", esc(&c.user));
        }
        None => {
            b.push_str("Not claimed.");
            if specialist && offer(d, &session.who.caller.username) != Offer::Nothing {
                let _ = write!(
                    b,
                    " <form method=\"post\" action=\"/claim/{hexid}\" class=\"inline\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <button id=\"claim-button\">Claim</button></form>"
                );
            }
        }
    }
    b.push_str("</div>");
    // Zones.
    b.push_str(
        "<input type=\"checkbox\" id=\"overlay-toggle\" checked>\
         <label for=\"overlay-toggle\">Show the activation map</label><div id=\"zones\">",
    );
    let mut first_clip = true;
    let mut first_request = true;
    for c in &d.results {
        let r = &c.record;
        if superseded::render(&mut b, e, r) {
            continue;
        }
        let a = &r.analysis;
        let label = zone_label(r.zone.as_deref(), &r.id);
        let retracted = e.results.iter().any(|x| x.id == r.id && x.retracted);
        let new = e.new_since_read().any(|x| x.id == r.id);
        let _ = write!(
            b,
            "<section class=\"zone{}{}\" data-zone=\"{z}\"><h2>Zone {z}{}{}</h2>",
            if retracted { " retracted" } else { "" },
            if new { " new-since-verdict" } else { "" },
            if retracted {
                " (withdrawn by the clinic)"
            } else {
                ""
            },
            if new {
                " <span class=\"new-since-verdict\">new since the verdict</span>"
            } else {
                ""
            },
            z = esc(&label)
        );
        let probs = a.class_probs.as_array();
        let classes: Vec<String> = LungClass::ALL
            .iter()
            .zip(probs)
            .map(|(c, p)| format!("{} {:.0}%", c.as_str(), p * 100.0))
            .collect();
        let _ = write!(
            b,
            "<dl class=\"model-output\"><dt>Classes</dt><dd>{}</dd><dt>Severity</dt><dd>{} \
             (0-3: {})</dd><dt>Uncertainty</dt><dd>{:.2}</dd><dt>Frames</dt><dd>{} of {}</dd>\
             <dt>Model</dt><dd>{}</dd></dl>",
            esc(&classes.join(" · ")),
            a.severity.score(),
            a.severity_probs
                .iter()
                .map(|p| format!("{:.0}%", p * 100.0))
                .collect::<Vec<_>>()
                .join(" "),
            a.uncertainty,
            a.frames_analysed,
            a.frames_total,
            esc(&a.model_version)
        );
        findings::render(&mut b, a.findings.as_ref());
        if a.flagged {
            b.push_str("<ul class=\"flag-reasons\">");
            for f in &a.flag_reasons {
                let _ = write!(b, "<li>{}</li>", esc(f.describe()));
            }
            b.push_str("</ul>");
        }
        // A withdrawn scan's media are neither shown nor served.
        let media = d.media.get(&r.id).filter(|_| !retracted);
        if let Some((sha, preview)) = media.and_then(|m| m.preview.as_ref()) {
            let sha = hex::encode(sha);
            b.push_str("<div class=\"keyframes\">");
            for (i, f) in preview.frames.iter().enumerate() {
                let base = format!("/media/{hexid}/{sha}/frame/{i}");
                let _ = write!(
                    b,
                    "<figure class=\"keyframe\"><div class=\"stack\">\
                     <img class=\"frame\" src=\"{base}/image\" width=\"{w}\" height=\"{h}\" alt=\"key frame {i}\">\
                     <img class=\"overlay\" src=\"{base}/overlay\" width=\"{w}\" height=\"{h}\" alt=\"\"></div>\
                     <figcaption>{} · {:.1} s · pathology {:.0}%</figcaption></figure>",
                    role_name(f.role),
                    f64::from(f.time_ms) / 1000.0,
                    f.pathology * 100.0,
                    w = f.width,
                    h = f.height,
                );
            }
            b.push_str("</div>");
        } else if retracted {
            b.push_str(
                "<p class=\"withdrawn-media\">The withdrawn scan's media are not shown.</p>",
            );
        } else {
            b.push_str("<p class=\"no-preview\">No key frames received yet.</p>");
        }
        match media {
            Some(m) if m.clip.is_some() => {
                let clip = m.clip.as_ref().expect("checked");
                let id = if first_clip { " id=\"clip\"" } else { "" };
                first_clip = false;
                let _ = write!(
                    b,
                    "<video{id} class=\"clip\" controls preload=\"metadata\" src=\"/media/{hexid}/{}\"></video>",
                    hex::encode(clip.sha256)
                );
            }
            Some(m) if m.uploading => {
                b.push_str("<p class=\"clip-uploading\">Media upload under way.</p>")
            }
            _ if specialist && !retracted => {
                let id = if first_request {
                    " id=\"request-clip\""
                } else {
                    ""
                };
                first_request = false;
                let _ = write!(
                    b,
                    "<form method=\"post\" action=\"/case/{hexid}/clip\" class=\"inline\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                     <input type=\"hidden\" name=\"result\" value=\"{}\">\
                     <button{id} class=\"request-clip\">Request clip</button></form>",
                    r.id
                );
            }
            _ => {}
        }
        b.push_str("</section>");
    }
    b.push_str("</div>");
    // Other examinations of the same pseudonym.
    b.push_str("<h2>Other examinations of this patient</h2><ul id=\"earlier\">");
    for x in &d.earlier {
        let _ = write!(
            b,
            "<li><a class=\"earlier-exam\" href=\"/case/{}\">{}</a> · severity {} · lung score {}</li>",
            x.id.to_hex(),
            day(x.day),
            x.max_severity,
            crate::cases::review::lung_score(x)
        );
    }
    if d.earlier.is_empty() {
        b.push_str("<li>None.</li>");
    }
    b.push_str("</ul>");
    // Reads so far.
    b.push_str("<div id=\"reads\">");
    if let Some(reads) = &d.reads {
        read_block(&mut b, "First read", &reads.first);
        if let Some(r) = &reads.second {
            read_block(&mut b, "Second read", r);
        }
        for r in &reads.later {
            read_block(&mut b, "Verdict after later scans", r);
        }
    }
    b.push_str("</div>");
    match offer(d, &session.who.caller.username) {
        o if specialist && o != Offer::Nothing => verdict_form(&mut b, d, &csrf, error, o),
        _ => {
            // A refused verdict still says why, with no form to show it in.
            if let Some(e) = error {
                let _ = write!(b, "<p id=\"form-error\" class=\"error\">{}</p>", esc(e));
            }
        }
    }
    b
}

/// Which verdict the form offers a specialist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    Nothing,
    /// A first verdict, or a new one covering scans that arrived after the last.
    Verdict,
    /// A second read of someone else's first read.
    Second,
}

fn offer(d: &ExamDetail, user: &str) -> Offer {
    match &d.reads {
        None => Offer::Verdict,
        Some(_) if d.exam.new_since_read().next().is_some() => Offer::Verdict,
        Some(r) if r.second.is_none() && r.first.reviewer != user => Offer::Second,
        Some(_) => Offer::Nothing,
    }
}

/// A time of day, UTC.
fn clock(ms: u64) -> String {
    let min = ms / 60_000;
    format!("{:02}:{:02} UTC", (min / 60) % 24, min % 60)
}

fn read_block(b: &mut String, title: &str, r: &Read) {
    let imp = IMPRESSIONS
        .iter()
        .find(|x| x.1 == r.impression)
        .map_or("", |x| x.2);
    let rec = RECOMMENDATIONS
        .iter()
        .find(|x| x.1 == r.recommendation)
        .map_or("", |x| x.2);
    let zones: Vec<String> = r
        .zones
        .iter()
        .map(|z| {
            format!(
                "{} {}{}",
                z.zone,
                z.score,
                if z.overridden {
                    format!(" (model {})", z.model_score)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    let _ = write!(
        b,
        "<div class=\"read\"><h3>{title} by {}</h3><p>{} · {}{}</p><p>Zones: {}</p><p class=\"comment\">{}</p></div>",
        esc(&r.reviewer),
        esc(imp),
        esc(rec),
        if r.rescan_reason.is_empty() { String::new() } else { format!(": {}", esc(&r.rescan_reason)) },
        esc(&zones.join(", ")),
        esc(&r.comment)
    );
}

fn verdict_form(b: &mut String, d: &ExamDetail, csrf: &str, error: Option<&str>, o: Offer) {
    let hexid = d.exam.id.to_hex();
    let _ = write!(
        b,
        "<h2>Verdict</h2><form id=\"verdict-form\" method=\"post\" action=\"/case/{hexid}/verdict\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">"
    );
    if let Some(e) = error {
        let _ = write!(b, "<p id=\"form-error\" class=\"error\">{}</p>", esc(e));
    }
    if o == Offer::Verdict && d.reads.is_some() {
        b.push_str(
            "<p id=\"new-scans-note\">Scans arrived after the verdict: this verdict covers \
             every scan of the examination.</p>",
        );
    }
    // One score per zone, defaulting to the model's (the worst of the zone's results).
    let mut zones: BTreeMap<String, u8> = BTreeMap::new();
    for r in d.exam.live() {
        let s = zones
            .entry(zone_label(r.zone.as_deref(), &r.id))
            .or_default();
        *s = (*s).max(r.severity);
    }
    b.push_str("<fieldset><legend>Score per zone (0-3; the model's is preselected)</legend>");
    for (zone, model) in &zones {
        let z = esc(zone);
        let _ = write!(b, "<label>{z} <select name=\"zone-{z}\">");
        for v in 0..=3u8 {
            let _ = write!(
                b,
                "<option value=\"{v}\"{}>{v}{}</option>",
                if v == *model { " selected" } else { "" },
                if v == *model { " (model)" } else { "" }
            );
        }
        b.push_str("</select></label> ");
    }
    b.push_str("</fieldset><fieldset><legend>Impression</legend>");
    for (v, _, label) in IMPRESSIONS {
        let _ = write!(
            b,
            "<label><input type=\"radio\" name=\"impression\" value=\"{v}\" required> {label}</label> "
        );
    }
    b.push_str("</fieldset><fieldset><legend>Recommendation</legend>");
    for (v, _, label) in RECOMMENDATIONS {
        let _ = write!(
            b,
            "<label><input type=\"radio\" name=\"recommendation\" value=\"{v}\" required> {label}</label> "
        );
    }
    b.push_str(
        "<label>Rescan reason <input name=\"rescan_reason\" maxlength=\"200\"></label></fieldset>\
         <label>Comment <textarea name=\"comment\" maxlength=\"2000\" rows=\"4\"></textarea></label>\
         <p class=\"identifier-warning\"><strong>Do not write names or identifiers</strong> \
         (no names, dates of birth, phone or record numbers).</p>",
    );
    if o == Offer::Second {
        b.push_str(
            "<label><input type=\"checkbox\" name=\"second_read\" value=\"1\" checked> Second read</label>",
        );
    }
    b.push_str("<button id=\"submit-verdict\">Submit verdict</button></form>");
}

/// Reads the verdict form's fields; the message names a field that cannot be read.
fn parse_form(fields: &[(String, String)]) -> Result<(String, VerdictForm), String> {
    let mut f = VerdictForm::default();
    let mut csrf = String::new();
    for (k, v) in fields {
        match k.as_str() {
            "csrf" => csrf = v.clone(),
            "impression" => {
                f.impression = Some(
                    IMPRESSIONS
                        .iter()
                        .find(|x| x.0 == v)
                        .ok_or("unknown impression")?
                        .1,
                )
            }
            "recommendation" => {
                f.recommendation = Some(
                    RECOMMENDATIONS
                        .iter()
                        .find(|x| x.0 == v)
                        .ok_or("unknown recommendation")?
                        .1,
                )
            }
            "rescan_reason" => f.rescan_reason = v.clone(),
            "comment" => f.comment = v.clone(),
            "second_read" => f.second_read = !v.is_empty(),
            k => {
                if let Some(zone) = k.strip_prefix("zone-") {
                    let score = v
                        .parse::<u8>()
                        .map_err(|_| format!("zone {zone}: the score must be 0-3"))?;
                    f.scores.insert(zone.to_string(), score);
                }
            }
        }
    }
    Ok((csrf, f))
}

pub async fn verdict(
    State(s): State<WebState>,
    ctx: Ctx,
    Path(exam): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let Some(id) = ExamId::from_hex(&exam) else {
        return not_found();
    };
    let parsed = parse_form(&fields);
    let csrf = parsed.as_ref().map_or_else(
        |_| {
            fields
                .iter()
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        },
        |(c, _)| c.clone(),
    );
    let session = match ctx.post_session(&s, Action::Verdict, &csrf).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let form = match parsed {
        Ok((_, f)) => f,
        Err(m) => return show(&s, &session, id, StatusCode::BAD_REQUEST, None, Some(&m)).await,
    };
    match s.cases.submit_verdict(&session.who, id, form).await {
        Ok(done) => {
            let saved = if done.queued_everywhere() { 1 } else { 2 };
            Redirect::to(&format!("/case/{}?saved={saved}", id.to_hex())).into_response()
        }
        Err(HubError::Invalid(m)) => {
            show(&s, &session, id, StatusCode::BAD_REQUEST, None, Some(&m)).await
        }
        Err(e) => error_page(e),
    }
}

#[derive(Deserialize)]
pub struct ClipForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    result: String,
}

pub async fn request_clip(
    State(s): State<WebState>,
    ctx: Ctx,
    Path(exam): Path<String>,
    Form(f): Form<ClipForm>,
) -> Response {
    let Some(id) = ExamId::from_hex(&exam) else {
        return not_found();
    };
    let session = match ctx.post_session(&s, Action::RequestClip, &f.csrf).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(result) = hex::decode(&f.result)
        .ok()
        .and_then(|b| ResultId::from_slice(&b).ok())
    else {
        return not_found();
    };
    match s.cases.request_clip(&session.who, id, result).await {
        Ok(()) => Redirect::to(&format!("/case/{}?clip=1", id.to_hex())).into_response(),
        Err(e) => error_page(e),
    }
}

mod findings;
mod superseded;
#[cfg(test)]
mod tests;
