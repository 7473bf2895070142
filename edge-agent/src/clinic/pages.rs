//! The two pages: the login form and one day's scans. Pure functions from values to
//! HTML; every value goes through `esc` (patient folders are named by the exporting
//! device, verdict text by a person at the hub).

use std::fmt::Write;

use pleura_proto::v1::{Impression, Recommendation};

use super::html::{date, date_time, esc, frame, time_of_day};
use super::view::{PatientGroup, ReceivedVerdict, RecentVerdict, Row};

/// The login form; `csrf` is the login form's token (also in its cookie).
pub fn login(csrf: &str, error: Option<&str>) -> String {
    let mut b = String::new();
    if let Some(e) = error {
        let _ = write!(b, "<p class=\"error\" id=\"login-error\">{}</p>", esc(e));
    }
    let _ = write!(
        b,
        "<form class=\"login\" method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label for=\"pin\">Clinic PIN</label><br>\
         <input id=\"pin\" name=\"pin\" type=\"password\" autocomplete=\"current-password\" required autofocus> \
         <button type=\"submit\">Log in</button></form>",
        esc(csrf)
    );
    frame("log in", None, &b)
}

/// What the scans page shows.
pub struct DayPage<'a> {
    pub day: u32,
    /// The days offered (today first).
    pub days: &'a [u32],
    pub groups: &'a [PatientGroup],
    /// Verdicts received in the last days, whatever day their scans were.
    pub recent: &'a [RecentVerdict],
    pub csrf: &'a str,
}

pub fn scans(p: &DayPage<'_>) -> String {
    let mut b = String::new();
    b.push_str("<nav class=\"days\" id=\"days\" aria-label=\"day\">");
    for &d in p.days {
        let cur = if d == p.day {
            " aria-current=\"date\""
        } else {
            ""
        };
        let _ = write!(b, "<a href=\"/scans?day={0}\"{cur}>{0}</a>", date(d));
    }
    b.push_str("</nav>");
    recent(&mut b, p.recent);
    let n: usize = p.groups.iter().map(|g| g.rows.len()).sum();
    let _ = write!(
        b,
        "<section id=\"scans\" data-day=\"{}\" data-count=\"{n}\"><h2>Scans of {} ({n})</h2>",
        date(p.day),
        date(p.day)
    );
    if p.groups.is_empty() {
        b.push_str("<p class=\"muted\" id=\"no-scans\">No scans analysed on this day.</p>");
    }
    for g in p.groups {
        patient(&mut b, g, p.day);
    }
    b.push_str(
        "<p class=\"muted\">Times are UTC. Everything here is read on this device; it works \
         without the hub.</p></section>",
    );
    frame("clinic scans", Some(p.csrf), &b)
}

/// Verdicts that came back lately, newest first, each linking to its scans' day: a
/// clinic offline for days sees what arrived on today's page.
fn recent(b: &mut String, recent: &[RecentVerdict]) {
    if recent.is_empty() {
        return;
    }
    b.push_str(
        "<section id=\"recent-verdicts\"><h2>Verdicts received lately</h2><table><thead><tr>\
         <th>Received</th><th>Patient</th><th>Scanned</th><th>Impression</th>\
         <th>Recommendation</th></tr></thead><tbody>",
    );
    for r in recent {
        let v = &r.received.verdict;
        let who = match &r.patient {
            Some(p) => esc(p),
            None => "<span class=\"muted\">no patient identifier</span>".into(),
        };
        let _ = write!(
            b,
            "<tr class=\"recent-verdict\"><td>{}</td><td>{who}</td>\
             <td><a href=\"/scans?day={day}\">{day}</a></td><td>{}</td><td>{}</td></tr>",
            date_time(r.received.received_at_ms),
            impression(v.impression),
            recommendation(v.recommendation),
            day = date(v.scan_day),
        );
    }
    b.push_str("</tbody></table></section>");
}

fn patient(b: &mut String, g: &PatientGroup, day: u32) {
    let name = match &g.patient {
        Some(p) => esc(p),
        None => "<span class=\"muted\">no patient identifier</span>".into(),
    };
    let _ = write!(
        b,
        "<section class=\"patient\"><h3>Patient <span class=\"patient-id\">{name}</span></h3>\
         <table><thead><tr><th>Time</th><th>Zone</th><th>Model result</th><th>Severity</th>\
         <th>Uncertainty</th><th>Flag</th><th>Sync</th></tr></thead><tbody>"
    );
    for r in &g.rows {
        row(b, r);
    }
    b.push_str("</tbody></table>");
    if let Some(sum) = &g.summary {
        summary(b, sum);
    }
    if let (true, Some(p)) = (g.vitals_form, &g.patient) {
        let _ = write!(
            b,
            "<p><a class=\"vitals-link\" href=\"{}\">Vitals</a></p>",
            esc(&super::vitals_form::href(p, day))
        );
    }
    // One verdict answers an examination (the patient's scans of one day).
    let mut shown = Vec::new();
    for r in &g.rows {
        for v in &r.verdicts {
            if !shown.contains(&(r.entry.exam_id, v.received_at_ms)) {
                shown.push((r.entry.exam_id, v.received_at_ms));
                verdict(b, v);
            }
        }
    }
    b.push_str("</section>");
}

/// The local patient summary: lung score and the patient's COVID-19 probability (with
/// the clinic's vitals when the model weighed them).
fn summary(b: &mut String, s: &pleura_shared::PatientSummary) {
    let _ = write!(
        b,
        "<p class=\"patient-summary{}\">Lung score <span class=\"lung-score\">{}</span> \
         over {} zone(s) · COVID-19 probability <span class=\"patient-covid\">{:.0}%</span>{}{}</p>",
        if s.flagged { " flagged" } else { "" },
        s.lung_score,
        s.zones,
        s.covid_probability * 100.0,
        if s.vitals_used {
            " <span class=\"vitals-used\">(with the clinic's vitals)</span>"
        } else {
            ""
        },
        if s.flagged { " · <strong>flagged</strong>" } else { "" },
    );
}

fn row(b: &mut String, r: &Row) {
    let e = &r.entry;
    let a = &e.analysis;
    let p = a.class_probs.as_array();
    let flag = if a.flagged {
        let reasons: Vec<&str> = a.flag_reasons.iter().map(|f| f.describe()).collect();
        format!(
            "<span class=\"flagged\">flagged</span><br><span class=\"reasons\">{}</span>",
            esc(&reasons.join("; "))
        )
    } else {
        "<span class=\"muted\">not flagged</span>".into()
    };
    // The examination has a verdict that does not name this scan (a rescan that
    // reached the hub after it): the specialist has not seen it.
    let not_covered = if !r.verdicts.is_empty() && !r.in_verdict {
        "<br><span class=\"not-in-verdict\">not in the verdict</span>"
    } else {
        ""
    };
    let _ = write!(
        b,
        "<tr class=\"scan-row\" data-result-id=\"{id}\" data-exam-id=\"{exam}\">\
         <td class=\"time\">{time}</td><td class=\"zone\">{zone}</td>\
         <td class=\"model-result\">COVID-19 {c:.0}% · other pneumonia {o:.0}% · normal {n:.0}%</td>\
         <td class=\"severity\">{sev} / 3</td><td class=\"uncertainty\">{u:.2}</td>\
         <td class=\"flag\">{flag}</td>\
         <td class=\"sync-state\" data-state=\"{slug}\">{label}{not_covered}</td></tr>",
        id = e.result_id,
        exam = hex::encode(e.exam_id),
        time = time_of_day(e.analysed_at_ms),
        zone = esc(e.zone.as_deref().unwrap_or("\u{2014}")),
        c = p[0] * 100.0,
        o = p[1] * 100.0,
        n = p[2] * 100.0,
        sev = a.severity.score(),
        u = a.uncertainty,
        slug = r.sync.slug(),
        label = r.sync.label(),
    );
}

fn impression(i: i32) -> &'static str {
    match Impression::try_from(i) {
        Ok(Impression::CovidCompatible) => "compatible with COVID-19",
        Ok(Impression::OtherPneumonia) => "other pneumonia",
        Ok(Impression::Normal) => "normal",
        Ok(Impression::NonDiagnostic) => "non-diagnostic",
        _ => "not given",
    }
}

fn recommendation(r: i32) -> &'static str {
    match Recommendation::try_from(r) {
        Ok(Recommendation::Refer) => "refer",
        Ok(Recommendation::TreatLocally) => "treat locally",
        Ok(Recommendation::Rescan) => "rescan",
        _ => "not given",
    }
}

fn verdict(b: &mut String, rv: &ReceivedVerdict) {
    let v = &rv.verdict;
    let _ = write!(
        b,
        "<div class=\"verdict\"><h4>Specialist's verdict{second}</h4>\
         <p>Impression: <strong class=\"verdict-impression\">{imp}</strong><br>\
         Recommendation: <strong class=\"verdict-recommendation\">{rec}</strong>",
        second = if v.second_read {
            " (second reading)"
        } else {
            ""
        },
        imp = impression(v.impression),
        rec = recommendation(v.recommendation),
    );
    if !v.rescan_reason.is_empty() {
        let _ = write!(
            b,
            "<br>Rescan because: <span class=\"verdict-rescan-reason\">{}</span>",
            esc(&v.rescan_reason)
        );
    }
    b.push_str("</p>");
    if !v.zones.is_empty() {
        b.push_str(
            "<table class=\"verdict-zones\"><thead><tr><th>Zone</th><th>Model</th>\
             <th>Specialist</th></tr></thead><tbody>",
        );
        for z in &v.zones {
            let mark = if z.overridden {
                " <span class=\"override\" title=\"changed by the specialist\">(changed)</span>"
            } else {
                ""
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}{mark}</td></tr>",
                esc(&z.zone),
                z.model_score,
                z.score
            );
        }
        b.push_str("</tbody></table>");
    }
    if !v.comment.is_empty() {
        let _ = write!(b, "<p class=\"verdict-comment\">{}</p>", esc(&v.comment));
    }
    let _ = write!(
        b,
        "<p class=\"muted\">By <span class=\"verdict-reviewer\">{}</span>, {} UTC \
         (received {} UTC)</p></div>",
        esc(&v.reviewer),
        date_time(v.given_at_ms),
        date_time(rv.received_at_ms)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clinic::view::SyncState;
    use crate::scanlog::ScanEntry;
    use pleura_proto::v1::{Verdict, ZoneScore};

    fn group(patient: &str, verdicts: Vec<ReceivedVerdict>) -> PatientGroup {
        let covered = !verdicts.is_empty();
        group_of(patient, verdicts, covered)
    }

    fn group_of(patient: &str, verdicts: Vec<ReceivedVerdict>, covered: bool) -> PatientGroup {
        let mut rec = pleura_shared::record::sample_record("clinic-a", "pi-1", 2, true);
        rec.analysed_at_ms = 20_000 * 86_400_000 + 3_600_000;
        let entry = ScanEntry::of(&rec, Some(patient.into()));
        PatientGroup {
            patient: Some(patient.into()),
            rows: vec![Row {
                entry,
                sync: if covered {
                    SyncState::Reviewed
                } else {
                    SyncState::Queued
                },
                verdicts,
                in_verdict: covered,
            }],
            summary: None,
            vitals_form: true,
        }
    }

    #[test]
    fn the_patient_summary_says_whether_vitals_were_weighed() {
        let mut g = group("P-1", vec![]);
        g.summary = Some(pleura_shared::PatientSummary {
            zones: 2,
            lung_score: 3,
            covid_probability: 0.71,
            flagged: true,
            vitals_used: true,
        });
        let mut b = String::new();
        patient(&mut b, &g, 20_000);
        assert!(b.contains("<p class=\"patient-summary flagged\">Lung score <span class=\"lung-score\">3</span>"), "{b}");
        assert!(b.contains("71%") && b.contains("vitals-used"), "{b}");
        g.summary = None;
        let mut b = String::new();
        patient(&mut b, &g, 20_000);
        assert!(!b.contains("patient-summary"));
    }

    #[test]
    fn a_patient_folder_named_like_markup_is_shown_escaped() {
        let groups = [group("<script>alert(1)</script>", vec![])];
        let html = scans(&DayPage {
            day: 20_000,
            days: &[20_000, 19_999],
            groups: &groups,
            recent: &[],
            csrf: "tok\"en",
        });
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains(&format!(
            "class=\"vitals-link\" href=\"/vitals?patient=%3Cscript%3Ealert%281%29%3C%2Fscript%3E&amp;day={}\"",
            date(20_000)
        )));
        assert!(html.contains("value=\"tok&quot;en\""));
        assert!(html.contains("id=\"scans\""));
        assert!(html.contains("class=\"scan-row\""));
        assert!(html.contains("class=\"sync-state\" data-state=\"queued\">queued<"));
        assert!(html.contains("Decision support only \u{2014} not a diagnosis"));
        assert!(html.contains("2 / 3"));
        assert!(html.contains("flagged"));
        assert!(!html.contains("class=\"verdict\""));
    }

    #[test]
    fn a_verdict_shows_its_reading_and_overrides_escaped() {
        let v = Verdict {
            impression: Impression::CovidCompatible as i32,
            recommendation: Recommendation::Rescan as i32,
            rescan_reason: "probe <moved>".into(),
            comment: "see <b>R2</b>".into(),
            reviewer: "dr.who".into(),
            given_at_ms: 20_000 * 86_400_000 + 7_200_000,
            zones: vec![
                ZoneScore {
                    zone: "R2".into(),
                    model_score: 2,
                    score: 3,
                    overridden: true,
                    ..Default::default()
                },
                ZoneScore {
                    zone: "L1".into(),
                    model_score: 1,
                    score: 1,
                    overridden: false,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let groups = [group(
            "MRN-1",
            vec![ReceivedVerdict {
                received_at_ms: 20_000 * 86_400_000 + 7_300_000,
                verdict: v,
            }],
        )];
        let html = scans(&DayPage {
            day: 20_000,
            days: &[20_000],
            groups: &groups,
            recent: &[],
            csrf: "t",
        });
        assert_eq!(html.matches("class=\"verdict\"").count(), 1);
        assert!(html.contains("class=\"verdict-impression\">compatible with COVID-19<"));
        assert!(html.contains("class=\"verdict-recommendation\">rescan<"));
        assert!(html.contains("probe &lt;moved&gt;"));
        assert!(html.contains("see &lt;b&gt;R2&lt;/b&gt;"));
        assert_eq!(html.matches("class=\"override\"").count(), 1);
        assert!(html.contains("data-state=\"reviewed\""));
        assert!(html.contains("dr.who"));
        assert!(!html.contains("not-in-verdict"));
    }

    #[test]
    fn a_scan_the_examinations_verdict_does_not_name_says_so() {
        let v = ReceivedVerdict {
            received_at_ms: 20_000 * 86_400_000 + 7_300_000,
            verdict: Verdict {
                impression: Impression::Normal as i32,
                reviewer: "dr.who".into(),
                ..Default::default()
            },
        };
        let groups = [group_of("MRN-2", vec![v], false)];
        let html = scans(&DayPage {
            day: 20_000,
            days: &[20_000],
            groups: &groups,
            recent: &[],
            csrf: "t",
        });
        // The verdict is shown with the examination, the scan is not "reviewed".
        assert_eq!(html.matches("class=\"verdict\"").count(), 1, "{html}");
        assert!(html.contains(
            "data-state=\"queued\">queued<br><span class=\"not-in-verdict\">not in the verdict</span>"
        ));
        assert!(!html.contains("data-state=\"reviewed\""));
    }

    #[test]
    fn the_login_form_carries_its_token() {
        let html = login("abc", Some("Wrong PIN"));
        assert!(html.contains("name=\"csrf\" value=\"abc\""));
        assert!(html.contains("Wrong PIN"));
        assert!(!html.contains("/logout"));
    }

    #[test]
    fn verdicts_received_lately_are_listed_with_their_patient_and_scan_day() {
        let v = Verdict {
            impression: Impression::CovidCompatible as i32,
            recommendation: Recommendation::Refer as i32,
            scan_day: 20_400,
            ..Default::default()
        };
        let recent = [RecentVerdict {
            received: ReceivedVerdict {
                received_at_ms: 1,
                verdict: v,
            },
            patient: Some("<b>P-9</b>".into()),
        }];
        let html = scans(&DayPage {
            day: 20_410,
            days: &[20_410],
            groups: &[],
            recent: &recent,
            csrf: "t",
        });
        assert!(html.contains("id=\"recent-verdicts\""));
        assert!(html.contains("&lt;b&gt;P-9&lt;/b&gt;"), "escaped: {html}");
        assert!(html.contains(&format!("href=\"/scans?day={}\"", date(20_400))));
        assert!(html.contains("compatible with COVID-19"));
        let none = scans(&DayPage {
            day: 20_410,
            days: &[20_410],
            groups: &[],
            recent: &[],
            csrf: "t",
        });
        assert!(!none.contains("recent-verdicts"));
    }
}
