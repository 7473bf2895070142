//! The model comparison page (`GET /models`): each candidate release shadowing beside the
//! active model, compared on the scans specialists have given a verdict on (what the
//! hub's model task wrote to `shadow.json`; `models::shadow`). Counts only, no case.

use std::fmt::Write;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::html::{esc, page as layout};
use super::session::Ctx;
use super::{error_page, html, WebState};
use crate::cases::Action;
use crate::models::shadow::{Comparison, Rate, ShadowReport};

pub async fn page(State(s): State<WebState>, ctx: Ctx) -> Response {
    let session = match ctx.session(&s, Action::ModelComparison).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(path) = s.shadow_report.clone() else {
        return error_page(crate::error::HubError::Unavailable(
            "the model comparison is not configured".into(),
        ));
    };
    match s.cases.model_comparison(&session.who, path).await {
        Ok(report) => html(
            StatusCode::OK,
            layout("Models", session.bar(), &render(report.as_ref())),
        ),
        Err(e) => error_page(e),
    }
}

fn rate(r: &Rate) -> String {
    esc(&r.to_string())
}

fn kappa(k: Option<f64>) -> String {
    k.map_or_else(|| "n/a".into(), |k| format!("{k:.2}"))
}

fn row(b: &mut String, c: &Comparison) {
    let versions = if c.model_versions.is_empty() {
        "-".to_string()
    } else {
        c.model_versions.join(", ")
    };
    let _ = write!(
        b,
        "<tr class=\"candidate\" data-release=\"{}\"><td>{}</td><td>{}</td><td>{} / {}</td>\
         <td class=\"sensitivity\">{} → {}</td><td class=\"specificity\">{} → {}</td>\
         <td class=\"kappa\">{} ({}) → {} ({})</td><td class=\"agreement\">{}</td>\
         <td>{} · κ {}</td></tr>{}",
        c.release,
        c.release,
        esc(&versions),
        c.exams_compared,
        c.scans_compared,
        rate(&c.active.sensitivity),
        rate(&c.candidate.sensitivity),
        rate(&c.active.specificity),
        rate(&c.candidate.specificity),
        kappa(c.active.severity_kappa),
        c.active.scored_scans,
        kappa(c.candidate.severity_kappa),
        c.candidate.scored_scans,
        rate(&c.flag_agreement),
        rate(&c.severity_agreement),
        kappa(c.severity_kappa_vs_active),
        if c.unoffered > 0 {
            format!(
                "<tr class=\"unoffered\"><td colspan=\"8\">{} shadow reading(s) of release {} \
                 left out: from devices the hub never offered it in shadow</td></tr>",
                c.unoffered, c.release
            )
        } else {
            String::new()
        },
    );
}

pub(super) fn render(report: Option<&ShadowReport>) -> String {
    let mut b = String::from(
        "<h1>Candidate models</h1><p>Each release running in shadow beside the active model, \
         compared on the same scans of examinations with a verdict (positive: COVID-compatible \
         or other pneumonia; negative: normal; non-diagnostic left out). Shadow readings are \
         never shown to clinics, never flag and never enter the worklist.</p>",
    );
    let Some(report) = report.filter(|r| !r.candidates.is_empty()) else {
        b.push_str("<p id=\"no-candidates\">No candidate has shadow results yet.</p>");
        return b;
    };
    let _ = write!(
        b,
        "<p id=\"generated\">Computed at {} (refreshed every 30 s).</p>\
         <table id=\"shadow-comparison\"><thead><tr><th>Release</th><th>Model</th>\
         <th>Exams / scans</th><th>Sensitivity active → candidate</th>\
         <th>Specificity active → candidate</th><th>Severity κ vs specialist (scans)</th>\
         <th>Flag agreement</th><th>Same severity · κ vs active</th></tr></thead><tbody>",
        esc(&super::html::clock_utc(report.generated_at_ms))
    );
    for c in report.candidates.values() {
        row(&mut b, c);
    }
    b.push_str("</tbody></table>");
    b.push_str(
        "<p id=\"kappa-caveat\">The specialist's score per zone starts at the active model's, \
         so the severity κ leans toward the active model; sensitivity and specificity rest on \
         the impression, which the form never preselects.</p>",
    );
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_devices_named_and_says_when_there_is_nothing() {
        assert!(render(None).contains("id=\"no-candidates\""));
        let mut report = ShadowReport::default();
        report.candidates.insert(
            4,
            Comparison {
                release: 4,
                model_versions: vec!["<script>x</script>".into()],
                exams_compared: 3,
                active: crate::models::shadow::Operating {
                    sensitivity: Rate { hits: 2, of: 2 },
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let page = render(Some(&report));
        assert!(!page.contains("<script>x"), "{page}");
        assert!(page.contains("&lt;script&gt;x"), "{page}");
        assert!(page.contains("data-release=\"4\""));
        assert!(page.contains("100.0% (2/2) → n/a (0/0)"), "{page}");
        assert!(
            page.contains("id=\"kappa-caveat\""),
            "the κ's anchoring is said"
        );
    }
}
