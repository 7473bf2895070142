//! A specialist's verdict on an examination: the form checked (zones of the examination,
//! scores 0-3, an impression and a recommendation, a reason for a rescan, a short comment
//! without obvious identifiers), stored as a first or second read, then queued to every
//! device that sent a scan of the examination (see `delivery`: certain and idempotent).

use std::collections::BTreeMap;

use pleura_proto::v1 as pb;
use pleura_shared::{now_ms, ExamId};

use crate::error::HubError;
use crate::store::exams::{
    Exam, Impression, Read, ReadOutcome, Recommendation, Undelivered, ZoneRead,
};

use super::delivery::deliver;
use super::policy::{self, Action};
use super::review::zone_label;
use super::{blocking, CaseService, Who};

pub const MAX_COMMENT_CHARS: usize = 2000;
pub const MAX_RESCAN_REASON_CHARS: usize = 200;

/// What the verdict form sends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerdictForm {
    /// Score 0-3 per zone label (see `review::zone_label`); a zone left out keeps the
    /// model's score.
    pub scores: BTreeMap<String, u8>,
    pub impression: Option<Impression>,
    pub recommendation: Option<Recommendation>,
    pub rescan_reason: String,
    pub comment: String,
    pub second_read: bool,
}

/// A verdict stored, and where it was queued.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub read: Read,
    /// Devices the verdict is queued for.
    pub queued: Vec<String>,
    /// Devices it could not be queued for, and why (the verdict is stored regardless, and
    /// the delivery sweep queues it later: see `delivery`).
    pub failed: Vec<(String, String)>,
}

impl Submitted {
    /// Queued for every device of the examination now.
    pub fn queued_everywhere(&self) -> bool {
        self.failed.is_empty() && !self.queued.is_empty()
    }
}

/// Why a comment looks like it identifies someone, or None.
pub fn identifier_in(text: &str) -> Option<&'static str> {
    let lower = text.to_lowercase();
    for word in [
        "dob",
        "d.o.b",
        "date of birth",
        "born on",
        "mrn",
        "nhs no",
        "phone",
        "tel:",
    ] {
        if lower
            .match_indices(word)
            .any(|(i, _)| word_boundary(&lower, i, word.len()))
        {
            return Some("it names an identifier (date of birth, record number or phone)");
        }
    }
    let chars: Vec<char> = text.chars().collect();
    // A date: d/m/y with 1-4, 1-2 and 2-4 digits and one kind of separator.
    for sep in ['/', '-', '.'] {
        for w in text.split(|c: char| c.is_whitespace() || c == ',' || c == ';') {
            let parts: Vec<&str> = w
                .trim_matches(|c| c == '(' || c == ')')
                .split(sep)
                .collect();
            let digits = |s: &str, lo, hi| {
                (lo..=hi).contains(&s.len()) && s.chars().all(|c| c.is_ascii_digit())
            };
            if parts.len() == 3
                && ((digits(parts[0], 1, 2) && digits(parts[1], 1, 2) && digits(parts[2], 2, 4))
                    || (digits(parts[0], 4, 4) && digits(parts[1], 1, 2) && digits(parts[2], 1, 2)))
            {
                return Some("it contains a date (a date of birth identifies a patient)");
            }
        }
    }
    // A phone number: 7 or more digits in one run of digits, spaces, dashes, dots, brackets.
    let mut run = 0;
    for c in &chars {
        if c.is_ascii_digit() {
            run += 1;
            if run >= 7 {
                return Some("it contains a phone number or a long number");
            }
        } else if !matches!(c, ' ' | '-' | '.' | '(' | ')' | '+' | '/') {
            run = 0;
        }
    }
    // A record number: one word with 5 or more digits, or letters and 4 or more digits.
    for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
        let d = w.chars().filter(char::is_ascii_digit).count();
        let letters = w.chars().any(|c| c.is_ascii_alphabetic());
        if d >= 5 || (letters && d >= 4) {
            return Some("it contains a record-number-like code");
        }
    }
    None
}

fn word_boundary(s: &str, i: usize, len: usize) -> bool {
    let before = s[..i].chars().next_back();
    let after = s[i + len..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

/// Checks `form` against `exam` and builds the read; the message names what to fix.
pub fn validate(
    form: &VerdictForm,
    exam: &Exam,
    reviewer: &str,
    at_ms: u64,
) -> Result<Read, HubError> {
    let bad = |m: String| Err(HubError::Invalid(m));
    // The model's score per zone: the worst of the zone's live results.
    let mut model: BTreeMap<String, (u8, pleura_shared::ResultId)> = BTreeMap::new();
    for r in exam.live() {
        let e = model
            .entry(zone_label(r.zone.as_deref(), &r.id))
            .or_insert((r.severity, r.id));
        if r.severity > e.0 {
            *e = (r.severity, r.id);
        }
    }
    for (zone, score) in &form.scores {
        if !model.contains_key(zone) {
            return bad(format!("zone {zone:?} is not a zone of this examination"));
        }
        if *score > 3 {
            return bad(format!("zone {zone}: score {score} is outside 0-3"));
        }
    }
    let Some(impression) = form.impression else {
        return bad("choose an impression".into());
    };
    let Some(recommendation) = form.recommendation else {
        return bad("choose a recommendation".into());
    };
    let rescan_reason = form.rescan_reason.trim().to_string();
    if recommendation == Recommendation::Rescan && rescan_reason.is_empty() {
        return bad("a rescan needs a reason".into());
    }
    if rescan_reason.chars().count() > MAX_RESCAN_REASON_CHARS {
        return bad(format!(
            "the rescan reason is longer than {MAX_RESCAN_REASON_CHARS} characters"
        ));
    }
    let comment = form.comment.trim().to_string();
    if comment.chars().count() > MAX_COMMENT_CHARS {
        return bad(format!(
            "the comment is longer than {MAX_COMMENT_CHARS} characters"
        ));
    }
    for (what, text) in [("comment", &comment), ("rescan reason", &rescan_reason)] {
        if let Some(why) = identifier_in(text) {
            return bad(format!(
                "the {what} was not saved: {why}. Do not write names or identifiers"
            ));
        }
    }
    Ok(Read {
        reviewer: reviewer.to_string(),
        at_ms,
        zones: model
            .into_iter()
            .map(|(zone, (model_score, result_id))| {
                let score = form.scores.get(&zone).copied().unwrap_or(model_score);
                ZoneRead {
                    result_id,
                    zone,
                    model_score,
                    score,
                    overridden: score != model_score,
                }
            })
            .collect(),
        impression,
        recommendation,
        rescan_reason: if recommendation == Recommendation::Rescan {
            rescan_reason
        } else {
            String::new()
        },
        comment,
        second_read: form.second_read,
    })
}

/// The verdict as it travels to the clinic.
pub fn to_wire(exam: &Exam, read: &Read) -> pb::Verdict {
    pb::Verdict {
        exam_id: exam.id.as_bytes().to_vec(),
        patient_key: exam.patient_key.map(|k| k.to_vec()).unwrap_or_default(),
        scan_day: exam.day,
        zones: read
            .zones
            .iter()
            .map(|z| pb::ZoneScore {
                zone: z.zone.clone(),
                result_id: z.result_id.as_bytes().to_vec(),
                model_score: z.model_score.into(),
                score: z.score.into(),
                overridden: z.overridden,
            })
            .collect(),
        impression: match read.impression {
            Impression::CovidCompatible => pb::Impression::CovidCompatible,
            Impression::OtherPneumonia => pb::Impression::OtherPneumonia,
            Impression::Normal => pb::Impression::Normal,
            Impression::NonDiagnostic => pb::Impression::NonDiagnostic,
        } as i32,
        recommendation: match read.recommendation {
            Recommendation::Refer => pb::Recommendation::Refer,
            Recommendation::TreatLocally => pb::Recommendation::TreatLocally,
            Recommendation::Rescan => pb::Recommendation::Rescan,
        } as i32,
        rescan_reason: read.rescan_reason.clone(),
        comment: read.comment.clone(),
        reviewer: read.reviewer.clone(),
        given_at_ms: read.at_ms,
        second_read: read.second_read,
    }
}

impl CaseService {
    /// Checks and stores a specialist's verdict, then queues it to every device that sent
    /// a scan of the examination. Refused while another specialist's claim lives.
    pub async fn submit_verdict(
        &self,
        who: &Who,
        id: ExamId,
        form: VerdictForm,
    ) -> Result<Submitted, HubError> {
        let action = Action::Verdict;
        let exam = self.readable(who, action, id).await?;
        let target = id.to_hex();
        let now = now_ms();
        let read = match validate(&form, &exam, &who.caller.username, now) {
            Ok(r) => r,
            Err(e) => {
                self.record(who, action, &target, "refused: invalid form")
                    .await?;
                return Err(e);
            }
        };
        let parts = self.parts()?;
        let store = self.store.clone();
        let (user, r) = (who.caller.username.clone(), read.clone());
        let outcome = blocking(move || {
            if let Some(c) = store.claim_of(&id, now)?.filter(|c| c.user != user) {
                return Ok(Err(format!("claimed by {}", c.user)));
            }
            Ok(Ok(store.record_read(&id, r)?))
        })
        .await?;
        let why = match outcome {
            Ok(ReadOutcome::Recorded) => None,
            Ok(ReadOutcome::AlreadyRead) => Some(if form.second_read {
                "this examination already has a second read".to_string()
            } else {
                "this examination already has a first read: tick second read".to_string()
            }),
            Ok(ReadOutcome::NoFirstRead) => Some("there is no first read to second".into()),
            Ok(ReadOutcome::OwnRead) => Some(
                "you gave the first read: a second read must come from another specialist".into(),
            ),
            Ok(ReadOutcome::NoSuchExam) => {
                return Err(self.deny(who, action, &target, policy::NOT_IN_SCOPE).await)
            }
            Err(held) => Some(held),
        };
        if let Some(why) = why {
            self.record(who, action, &target, &format!("refused: {why}"))
                .await?;
            return Err(HubError::Invalid(why));
        }
        self.record(who, action, &target, "allowed").await?;
        if exam.read_at_ms.is_none() {
            self.metrics
                .review
                .verdict
                .observe(now.saturating_sub(exam.first_received_ms));
        }
        let (store, me) = (self.store.clone(), Undelivered::of(&id, &read));
        let devices = exam.devices();
        let delivered = blocking(move || deliver(&*store, &parts.downlink, Some(&id))).await;
        let (queued, failed) = match delivered {
            Ok(all) => all
                .into_iter()
                .find(|d| d.read == me)
                .map_or_else(Default::default, |d| (d.queued, d.failed)),
            Err(e) => {
                tracing::error!(error = %e, "verdict stored but not queued yet; retried");
                let why = e.to_string();
                (
                    Vec::new(),
                    devices.into_iter().map(|d| (d, why.clone())).collect(),
                )
            }
        };
        Ok(Submitted {
            read,
            queued,
            failed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obvious_identifiers_are_refused_and_clinical_text_is_not() {
        for bad in [
            "born 12/03/1961",
            "DOB 1961-03-12",
            "call +44 20 7946 0958",
            "MRN A123456",
            "patient 0012345",
            "record HX-20931",
            "mrn: see chart",
        ] {
            assert!(identifier_in(bad).is_some(), "{bad}");
        }
        for ok in [
            "B-lines in 3 of 8 zones, pleural thickening R2; SpO2 92%",
            "Consolidation L1 2.5 cm; rescan in 48 h",
            "COVID-19 compatible pattern, score 14/36",
            "",
        ] {
            assert_eq!(identifier_in(ok), None, "{ok}");
        }
    }
}
