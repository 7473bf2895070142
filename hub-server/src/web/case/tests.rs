//! The verdict form's parsing and what the examination page offers each reader.

use super::*;

#[test]
fn the_form_is_read_field_by_field() {
    let f = |kv: &[(&str, &str)]| {
        parse_form(
            &kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    };
    let (csrf, form) = f(&[
        ("csrf", "t"),
        ("zone-R1", "2"),
        ("impression", "covid"),
        ("recommendation", "rescan"),
        ("rescan_reason", "shadow"),
        ("second_read", "1"),
    ])
    .unwrap();
    assert_eq!(csrf, "t");
    assert_eq!(form.scores.get("R1"), Some(&2));
    assert_eq!(form.impression, Some(Impression::CovidCompatible));
    assert_eq!(form.recommendation, Some(Recommendation::Rescan));
    assert!(form.second_read);
    assert!(f(&[("zone-R1", "x")]).is_err());
    assert!(f(&[("impression", "bad")]).is_err());
}

fn page_for(d: &ExamDetail, user: &str) -> String {
    let session = Session {
        who: crate::cases::Who {
            caller: crate::auth::Caller {
                username: user.into(),
                role: Role::Specialist,
                region: "north".into(),
            },
            source: "10.0.0.1".into(),
        },
        csrf: "t".into(),
    };
    render(d, &session, None, None)
}

#[test]
fn the_form_offers_what_the_reader_may_give() {
    use crate::store::exams::{Exam, Reads};
    use crate::store::StoredCase;
    let morning = pleura_shared::record::sample_record("n1", "d1", 1, true);
    let mut exam = Exam::empty_for(&morning);
    exam.add(&morning, 1000, false);
    let case = |r: &pleura_shared::ScanRecord| StoredCase {
        record: r.clone(),
        received_at_ms: 1000,
        retraction: None,
    };
    let first = Read {
        reviewer: "ana".into(),
        at_ms: 2000,
        zones: Vec::new(),
        impression: Impression::Normal,
        recommendation: Recommendation::TreatLocally,
        rescan_reason: String::new(),
        comment: String::new(),
        second_read: false,
    };
    exam.reads = 1;
    let mut d = ExamDetail {
        exam: exam.clone(),
        results: vec![case(&morning)],
        media: BTreeMap::new(),
        claim: None,
        reads: Some(Reads {
            first: first.clone(),
            second: None,
            later: Vec::new(),
        }),
        earlier: Vec::new(),
        lung_score: 1,
        now_ms: 3000,
    };
    // The first reader is offered no second read of their own; another is.
    let ana = page_for(&d, "ana");
    assert!(!ana.contains("id=\"verdict-form\"") && !ana.contains("claim-button"));
    let bob = page_for(&d, "bob");
    assert!(bob.contains("name=\"second_read\"") && bob.contains("claim-button"));
    // A rescan after the verdict: marked new, and a new (not second) verdict.
    let mut afternoon = morning.clone();
    afternoon.id = pleura_shared::ResultId::random();
    afternoon.scan = afternoon.id;
    afternoon.zone = Some("L2".into());
    d.exam.add(&afternoon, 5000, false);
    d.results.push(case(&afternoon));
    for user in ["ana", "bob"] {
        let page = page_for(&d, user);
        assert!(page.contains("id=\"verdict-form\""), "{user}");
        assert!(page.contains("id=\"new-scans-note\""), "{user}");
        assert!(!page.contains("name=\"second_read\""), "{user}");
        assert_eq!(page.matches("new since the verdict").count(), 1, "{user}");
    }
}

#[test]
fn the_saved_notice_says_whether_the_verdict_is_queued() {
    let p = |saved: &str| Params {
        saved: saved.into(),
        clip: String::new(),
    };
    let queued = notice(&p("1")).unwrap();
    assert_eq!(
        queued,
        ("verdict-saved", "Verdict saved; queued for the clinic.")
    );
    let retried = notice(&p("2")).unwrap();
    assert_eq!(
        retried,
        (
            "verdict-saved",
            "Verdict saved; delivery to the clinic will be retried."
        )
    );
    assert!(notice(&p("")).is_none());
}

#[test]
fn a_withdrawn_scans_media_are_not_shown() {
    use crate::cases::review::ResultMedia;
    use crate::store::exams::Exam;
    use crate::store::StoredCase;
    let r = pleura_shared::record::sample_record("n1", "d1", 2, true);
    let mut exam = Exam::empty_for(&r);
    exam.add(&r, 1000, true);
    let d = ExamDetail {
        exam,
        results: vec![StoredCase {
            record: r.clone(),
            received_at_ms: 1000,
            retraction: None,
        }],
        media: BTreeMap::from([(
            r.id,
            ResultMedia {
                uploading: true,
                ..Default::default()
            },
        )]),
        claim: None,
        reads: None,
        earlier: Vec::new(),
        lung_score: 0,
        now_ms: 3000,
    };
    let page = page_for(&d, "ana");
    assert!(page.contains("class=\"withdrawn-media\""));
    assert!(!page.contains("Media upload under way") && !page.contains("request-clip"));
}
