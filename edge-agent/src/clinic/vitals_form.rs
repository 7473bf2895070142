//! The vitals form (README "Clinic vitals"), for staff who should not hand-write JSON:
//! `GET /vitals?patient=<local id>&day=YYYY-MM-DD` shows the patient's
//! `inbox/<patient>/vitals.json` in a form; `POST /vitals` checks it with the file's own
//! validation (`Vitals::validate`; the ranges beside the fields are `Vitals::range`),
//! writes the file (`vitals::write_vitals`: only into an existing patient folder, never
//! through a link) and goes back to the day's scans, whose summaries read the file when
//! the page is rendered. The values are never logged.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use pleura_inference::patient::{Sex, Symptom, VitalsError};
use pleura_inference::Vitals;

use super::html::{date, esc, frame, parse_date};
use super::server::{form_value, html, posting_session, redirect, respond, session, Page};
use crate::vitals::{has_patient_folder, read_vitals, write_vitals, VitalsFileError};

/// The numeric fields: name (in the form and in the file), label, unit.
const NUMBERS: [(&str, &str, &str); 5] = [
    ("age_years", "Age", "years"),
    ("spo2", "SpO\u{2082}", "% on room air"),
    ("respiratory_rate", "Respiratory rate", "breaths/min"),
    ("pulse", "Pulse", "beats/min"),
    ("temperature_c", "Temperature", "\u{b0}C"),
];

const SYMPTOMS: [(&str, Symptom); 3] = [
    ("fever", Symptom::Fever),
    ("cough", Symptom::Cough),
    ("dyspnea", Symptom::Dyspnea),
];

/// The checkbox saying nobody asked about symptoms (the file then has no `symptoms`).
const UNRECORDED: &str = "symptoms_unrecorded";

/// The form's values as typed, so a refused form is shown again as it was sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VitalsForm {
    /// The `NUMBERS` fields, in order.
    pub numbers: [String; 5],
    /// `""` (not recorded), `"f"` or `"m"`.
    pub sex: String,
    /// The `SYMPTOMS` ticked, in order.
    pub symptoms: [bool; 3],
    pub symptoms_unrecorded: bool,
}

/// Why a form was refused, for the person who filled it in: names the field and what it
/// allows.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct FormError(pub String);

/// "50–100 % on room air": a numeric field's allowed range, as `Vitals` checks it.
fn allowed(name: &str, unit: &str) -> String {
    match Vitals::range(name) {
        Some((lo, hi)) => format!("{lo}\u{2013}{hi} {unit}"),
        None => unit.to_string(),
    }
}

impl VitalsForm {
    /// The form showing `v` (a blank form: `Vitals::default()`, symptoms not recorded).
    pub fn of(v: &Vitals) -> Self {
        let n = |x: Option<f32>| x.map(|x| x.to_string()).unwrap_or_default();
        Self {
            numbers: [
                n(v.age_years),
                n(v.spo2),
                n(v.respiratory_rate),
                n(v.pulse),
                n(v.temperature_c),
            ],
            sex: match v.sex {
                Some(Sex::Female) => "f",
                Some(Sex::Male) => "m",
                None => "",
            }
            .into(),
            symptoms: SYMPTOMS.map(|(_, s)| v.symptoms.as_ref().is_some_and(|l| l.contains(&s))),
            symptoms_unrecorded: v.symptoms.is_none(),
        }
    }

    /// The form as posted (`application/x-www-form-urlencoded`).
    pub fn from_body(body: &str) -> Self {
        let get = |k: &str| form_value(body, k).unwrap_or_default();
        Self {
            numbers: NUMBERS.map(|(k, _, _)| get(k)),
            sex: get("sex"),
            symptoms: SYMPTOMS.map(|(k, _)| form_value(body, k).is_some()),
            symptoms_unrecorded: form_value(body, UNRECORDED).is_some(),
        }
    }

    /// The vitals the form records, checked by `Vitals::validate` (what the file reader
    /// checks); an empty field is not recorded.
    pub fn vitals(&self) -> Result<Vitals, FormError> {
        let mut n = [None; 5];
        for (slot, (raw, (name, label, unit))) in n.iter_mut().zip(self.numbers.iter().zip(NUMBERS))
        {
            let t = raw.trim();
            if t.is_empty() {
                continue;
            }
            // A decimal comma is how many clinics write 38,4.
            match t.replace(',', ".").parse::<f32>() {
                Ok(x) if x.is_finite() => *slot = Some(x),
                _ => {
                    return Err(FormError(format!(
                        "{label}: \u{201c}{t}\u{201d} is not a number (allowed: {}).",
                        allowed(name, unit)
                    )))
                }
            }
        }
        let sex = match self.sex.as_str() {
            "" => None,
            "f" => Some(Sex::Female),
            "m" => Some(Sex::Male),
            _ => {
                return Err(FormError(
                    "Sex: choose female, male or not recorded.".into(),
                ))
            }
        };
        let ticked: Vec<Symptom> = SYMPTOMS
            .iter()
            .zip(self.symptoms)
            .filter(|(_, on)| *on)
            .map(|((_, s), _)| *s)
            .collect();
        let symptoms = match (self.symptoms_unrecorded, ticked.is_empty()) {
            (true, true) => None,
            (true, false) => {
                return Err(FormError(
                    "Symptoms: tick the symptoms the patient has, or \u{201c}symptoms not \
                     recorded\u{201d}, not both."
                        .into(),
                ))
            }
            (false, _) => Some(ticked),
        };
        let v = Vitals {
            age_years: n[0],
            sex,
            spo2: n[1],
            respiratory_rate: n[2],
            pulse: n[3],
            temperature_c: n[4],
            symptoms,
        };
        v.validate().map_err(|e| FormError(message(&e)))?;
        Ok(v)
    }
}

/// `Vitals::validate`'s error in the form's words.
fn message(e: &VitalsError) -> String {
    match e {
        VitalsError::Range { field, value, .. } => {
            let (label, unit) = NUMBERS
                .iter()
                .find(|(n, _, _)| n == field)
                .map_or((*field, ""), |(_, l, u)| (*l, *u));
            format!(
                "{label}: {value} is outside the allowed range {}.",
                allowed(field, unit)
            )
        }
        VitalsError::Json(_) => e.to_string(),
    }
}

/// `/vitals?patient=...&day=...`: the form's address for a patient of `day`'s scans.
pub fn href(patient: &str, day: u32) -> String {
    format!("/vitals?patient={}&day={}", url_encode(patient), date(day))
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn scans_of(day: Option<u32>) -> String {
    day.map_or_else(|| "/scans".into(), |d| format!("/scans?day={}", date(d)))
}

/// What the form page shows: `error` when a form was refused (`#vitals-error`), `notice`
/// about the file already saved.
pub struct FormPage<'a> {
    pub patient: &'a str,
    pub day: Option<u32>,
    pub csrf: &'a str,
    pub form: &'a VitalsForm,
    pub error: Option<&'a str>,
    pub notice: Option<&'a str>,
}

pub fn render(p: &FormPage<'_>) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<p><a href=\"{}\">Back to the scans</a></p>\
         <h2>Vitals of patient <span class=\"patient-id\">{}</span></h2>\
         <p class=\"muted\">Every field is optional: leave empty what was not measured. \
         Kept on this device only, in the patient's inbox folder; vitals never leave the \
         clinic.</p>",
        esc(&scans_of(p.day)),
        esc(p.patient)
    );
    if let Some(e) = p.error {
        let _ = write!(
            b,
            "<p class=\"error\" id=\"vitals-error\" role=\"alert\">{}</p>",
            esc(e)
        );
    }
    if let Some(n) = p.notice {
        let _ = write!(b, "<p class=\"error\" id=\"vitals-notice\">{}</p>", esc(n));
    }
    let _ = write!(
        b,
        "<form id=\"vitals-form\" class=\"vitals\" method=\"post\" action=\"/vitals\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"patient\" value=\"{}\">",
        esc(p.csrf),
        esc(p.patient)
    );
    if let Some(d) = p.day {
        let _ = write!(
            b,
            "<input type=\"hidden\" name=\"day\" value=\"{}\">",
            date(d)
        );
    }
    for ((name, label, unit), value) in NUMBERS.iter().zip(&p.form.numbers) {
        let (lo, hi) = Vitals::range(name).unwrap_or((f32::MIN, f32::MAX));
        let _ = write!(
            b,
            "<p><label for=\"{name}\">{label}</label> <input id=\"{name}\" name=\"{name}\" \
             type=\"number\" step=\"any\" min=\"{lo}\" max=\"{hi}\" inputmode=\"decimal\" \
             value=\"{}\"> <span class=\"range\">{}</span></p>",
            esc(value),
            esc(&allowed(name, unit))
        );
    }
    b.push_str("<p><label for=\"sex\">Sex</label> <select id=\"sex\" name=\"sex\">");
    for (value, text) in [("", "not recorded"), ("f", "female"), ("m", "male")] {
        let sel = if p.form.sex == value { " selected" } else { "" };
        let _ = write!(b, "<option value=\"{value}\"{sel}>{text}</option>");
    }
    b.push_str("</select></p><fieldset><legend>Symptoms</legend>");
    let check = |on: bool| if on { " checked" } else { "" };
    for ((name, _), on) in SYMPTOMS.iter().zip(p.form.symptoms) {
        let _ = write!(
            b,
            "<label><input type=\"checkbox\" id=\"{name}\" name=\"{name}\" value=\"1\"{}> \
             {name}</label> ",
            check(on)
        );
    }
    let _ = write!(
        b,
        "<br><label><input type=\"checkbox\" id=\"{UNRECORDED}\" name=\"{UNRECORDED}\" \
         value=\"1\"{}> symptoms not recorded</label>\
         <p class=\"muted\">Tick the symptoms the patient has (none ticked: none of them), \
         or \u{201c}symptoms not recorded\u{201d} when nobody asked.</p></fieldset>\
         <button type=\"submit\" id=\"vitals-save\">Save vitals</button></form>",
        check(p.form.symptoms_unrecorded)
    );
    frame("patient vitals", Some(p.csrf), &b)
}

fn no_folder() -> Response {
    respond(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "no such patient folder in the inbox\n".into(),
    )
}

fn failed() -> Response {
    respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        "text/plain; charset=utf-8",
        "the vitals could not be read or saved; see the agent's log\n".into(),
    )
}

fn inbox(page: &Page) -> Option<std::path::PathBuf> {
    page.sources.patients.as_ref().map(|p| p.inbox.clone())
}

/// `GET /vitals`: the form, filled in from the file already saved, if any.
pub async fn form(State(page): State<Arc<Page>>, headers: HeaderMap, uri: Uri) -> Response {
    let Some((_, s)) = session(&page, &headers) else {
        return redirect("/login", None);
    };
    let q = uri.query().unwrap_or_default();
    let patient = form_value(q, "patient").unwrap_or_default();
    let day = form_value(q, "day").and_then(|d| parse_date(&d));
    let Some(inbox) = inbox(&page) else {
        return no_folder();
    };
    let p = patient.clone();
    let read = tokio::task::spawn_blocking(move || {
        Ok::<_, std::io::Error>(has_patient_folder(&inbox, &p)?.then(|| read_vitals(&inbox, &p)))
    })
    .await;
    let (saved, notice) = match read {
        Ok(Ok(Some(Ok(v)))) => (v.unwrap_or_default(), None),
        Ok(Ok(Some(Err(e)))) => (
            Vitals::default(),
            Some(format!(
                "The vitals file saved for this patient is not valid ({e}); saving this form \
                 replaces it."
            )),
        ),
        Ok(Ok(None)) => return no_folder(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "clinic page: looking for a patient folder");
            return failed();
        }
        Err(e) => {
            tracing::error!(error = %e, "clinic page: reading vitals");
            return failed();
        }
    };
    html(
        StatusCode::OK,
        render(&FormPage {
            patient: &patient,
            day,
            csrf: &s.csrf,
            form: &VitalsForm::of(&saved),
            error: None,
            notice: notice.as_deref(),
        }),
    )
}

enum Saved {
    Yes,
    Refused(FormError),
    NoFolder,
}

/// `POST /vitals`: checks the session's CSRF token, the patient folder and the values;
/// writes the file, or shows the form again (422) with what was typed and why.
pub async fn save(State(page): State<Arc<Page>>, headers: HeaderMap, body: String) -> Response {
    let (_, s) = match posting_session(&page, &headers, &body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let patient = form_value(&body, "patient").unwrap_or_default();
    let day = form_value(&body, "day").and_then(|d| parse_date(&d));
    let Some(inbox) = inbox(&page) else {
        return no_folder();
    };
    let typed = VitalsForm::from_body(&body);
    let (p, f) = (patient.clone(), typed.clone());
    let done = tokio::task::spawn_blocking(move || -> Result<Saved, VitalsFileError> {
        if !has_patient_folder(&inbox, &p)? {
            return Ok(Saved::NoFolder);
        }
        let v = match f.vitals() {
            Ok(v) => v,
            Err(e) => return Ok(Saved::Refused(e)),
        };
        match write_vitals(&inbox, &p, &v) {
            Ok(()) => Ok(Saved::Yes),
            Err(VitalsFileError::NoFolder) => Ok(Saved::NoFolder),
            Err(VitalsFileError::Invalid(e)) => Ok(Saved::Refused(FormError(message(&e)))),
            Err(e) => Err(e),
        }
    })
    .await;
    match done {
        Ok(Ok(Saved::Yes)) => {
            // Nothing identifying, no values: the vitals stay in the patient's folder.
            tracing::info!("clinic page: vitals saved");
            redirect(&scans_of(day), None)
        }
        Ok(Ok(Saved::Refused(e))) => html(
            StatusCode::UNPROCESSABLE_ENTITY,
            render(&FormPage {
                patient: &patient,
                day,
                csrf: &s.csrf,
                form: &typed,
                error: Some(&e.0),
                notice: None,
            }),
        ),
        Ok(Ok(Saved::NoFolder)) => no_folder(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "clinic page: vitals not saved");
            failed()
        }
        Err(e) => {
            tracing::error!(error = %e, "clinic page: saving vitals");
            failed()
        }
    }
}

#[cfg(test)]
mod tests;
