//! The vitals form through the page's real router, over HTTP on a loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pleura_inference::ModelInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::clinic::auth;
use crate::clinic::auth::{Sessions, Throttle, SESSION_COOKIE};
use crate::clinic::server::router;
use crate::clinic::view::{PatientSource, Sources};
use crate::outbox::SledOutbox;
use crate::scanlog::{ScanEntry, ScanLog};
use crate::vitals::VITALS_FILE;

/// A model whose patient combiner weighs SpO2 (so `.vitals-used` shows with vitals).
const MODEL: &str = r#"{"name": "t", "version": "1", "sha256": "", "classes": [],
    "covid_threshold": 0.5, "uncertainty_flag": 0.9, "parameters": 0, "macs_per_frame": 0,
    "patient": {"threshold": 0.42,
        "image": {"features": ["covid_logit_max"], "mean": [0], "scale": [1],
                  "weights": [1], "bias": 0},
        "vitals": {"features": ["covid_logit_max", "spo2"], "mean": [0, 95],
                   "scale": [1, 5], "weights": [1, -1], "bias": 0, "threshold": 0.4}}}"#;

struct Clinic {
    _dir: tempfile::TempDir,
    root: PathBuf,
    inbox: PathBuf,
    addr: SocketAddr,
    cookie: String,
    csrf: String,
    day: u32,
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn location(&self) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location").then(|| v.trim())
        })
    }
}

/// A page over a scan log with one scan of patient `P-1` today, whose inbox folder exists.
async fn clinic() -> Clinic {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let inbox = root.join("inbox");
    std::fs::create_dir_all(inbox.join("P-1")).unwrap();
    let store = SledOutbox::open(&root.join("store"), 1 << 24).unwrap();
    let scans = ScanLog::open(&store).unwrap();
    let mut rec = pleura_shared::record::sample_record("clinic-a", "pi-1", 1, false);
    rec.analysed_at_ms = pleura_shared::now_ms();
    rec.patient_key = Some([5; 16]);
    scans.put(&ScanEntry::of(&rec, Some("P-1".into()))).unwrap();
    let page = Arc::new(Page {
        data_dir: root.join("data"),
        sources: Sources {
            scans,
            outbox: Arc::new(store),
            media: None,
            verdicts: None,
            patients: Some(PatientSource {
                info: Arc::new(ModelInfo::from_json(MODEL.as_bytes()).unwrap()),
                inbox: inbox.clone(),
            }),
        },
        sessions: Sessions::new(Duration::from_secs(600)),
        throttle: Throttle::default(),
        pin_checks: Arc::new(tokio::sync::Semaphore::new(auth::PIN_CHECKS)),
        secure: false,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(page.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (id, s) = page.sessions.create(Instant::now());
    Clinic {
        _dir: dir,
        root,
        inbox,
        addr,
        cookie: format!("{SESSION_COOKIE}={id}"),
        csrf: s.csrf,
        day: pleura_shared::holdings::day_of_ms(rec.analysed_at_ms),
    }
}

impl Clinic {
    async fn http(&self, method: &str, path: &str, cookie: bool, form: Option<&str>) -> Reply {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        if cookie {
            r.push_str(&format!("Cookie: {}\r\n", self.cookie));
        }
        match form {
            Some(f) => r.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{f}",
                f.len()
            )),
            None => r.push_str("\r\n"),
        }
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(r.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Reply {
            status: head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    /// A form for `patient` with the session's token and `fields` (already encoded).
    fn form(&self, patient: &str, fields: &str) -> String {
        format!(
            "csrf={}&patient={}&day={}&{fields}",
            self.csrf,
            url_encode(patient),
            date(self.day)
        )
    }

    fn file(&self, patient: &str) -> PathBuf {
        self.inbox.join(patient).join(VITALS_FILE)
    }
}

/// Every file under `dir` whose name mentions vitals (links are not followed).
fn vitals_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(vitals_files(&e.path()));
        } else if e.file_name().to_string_lossy().contains("vitals") {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test]
async fn the_form_and_saving_need_a_session() {
    let c = clinic().await;
    let r = c.http("GET", "/vitals?patient=P-1", false, None).await;
    assert_eq!(
        (r.status, r.location()),
        (303, Some("/login")),
        "{}",
        r.head
    );
    assert!(!r.body.contains("vitals-form"));
    let r = c
        .http("POST", "/vitals", false, Some(&c.form("P-1", "spo2=90")))
        .await;
    assert_eq!((r.status, r.location()), (303, Some("/login")));
    assert!(vitals_files(&c.root).is_empty());
    // The scans page needs one too, and offers the form only inside it.
    let r = c.http("GET", "/scans", false, None).await;
    assert_eq!(r.status, 303);
    assert!(!r.body.contains("vitals-link"));
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_writes_nothing() {
    let c = clinic().await;
    let wrong = format!("csrf={}&patient=P-1&spo2=90", "0".repeat(64));
    for body in ["patient=P-1&spo2=90", wrong.as_str()] {
        let r = c.http("POST", "/vitals", true, Some(body)).await;
        assert_eq!(r.status, 403, "{body}: {}", r.head);
        assert!(r.body.contains("CSRF"));
    }
    assert!(vitals_files(&c.root).is_empty());
}

#[tokio::test]
async fn a_valid_form_writes_the_documented_file_and_the_summary_uses_it() {
    let c = clinic().await;
    let scans = format!("/scans?day={}", date(c.day));
    let before = c.http("GET", &scans, true, None).await;
    assert_eq!(before.status, 200);
    assert!(
        before
            .body
            .contains("class=\"vitals-link\" href=\"/vitals?patient=P-1&amp;day="),
        "{}",
        before.body
    );
    assert!(!before.body.contains("class=\"vitals-used\""));

    let fields = "age_years=61&sex=m&spo2=88&respiratory_rate=24&pulse=104\
                  &temperature_c=38%2C4&fever=1&dyspnea=1";
    let r = c
        .http("POST", "/vitals", true, Some(&c.form("P-1", fields)))
        .await;
    assert_eq!(r.status, 303, "{}{}", r.head, r.body);
    assert_eq!(r.location(), Some(scans.as_str()));
    let text = std::fs::read_to_string(c.file("P-1")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "age_years",
            "pulse",
            "respiratory_rate",
            "sex",
            "spo2",
            "symptoms",
            "temperature_c"
        ]
    );
    assert_eq!(json["symptoms"], serde_json::json!(["fever", "dyspnea"]));
    assert_eq!(json["sex"], "m");
    let read = read_vitals(&c.inbox, "P-1").unwrap().unwrap();
    assert_eq!(
        read,
        Vitals {
            age_years: Some(61.0),
            sex: Some(Sex::Male),
            spo2: Some(88.0),
            respiratory_rate: Some(24.0),
            pulse: Some(104.0),
            temperature_c: Some(38.4),
            symptoms: Some(vec![Symptom::Fever, Symptom::Dyspnea]),
        }
    );
    assert_eq!(
        vitals_files(&c.root),
        [c.file("P-1")],
        "no temporary file left"
    );
    let after = c.http("GET", &scans, true, None).await;
    assert!(
        after.body.contains("class=\"vitals-used\""),
        "{}",
        after.body
    );

    // Only what was filled in: SpO2, symptoms not recorded.
    let r = c
        .http(
            "POST",
            "/vitals",
            true,
            Some(&c.form("P-1", "spo2=93&sex=&symptoms_unrecorded=1")),
        )
        .await;
    assert_eq!(r.status, 303);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.file("P-1")).unwrap()).unwrap();
    assert_eq!(json, serde_json::json!({"spo2": 93}));
}

#[tokio::test]
async fn an_out_of_range_spo2_is_refused_with_its_range_and_the_file_kept() {
    let c = clinic().await;
    let saved = br#"{"spo2": 97, "pulse": 80}"#;
    std::fs::write(c.file("P-1"), saved).unwrap();
    let r = c
        .http(
            "POST",
            "/vitals",
            true,
            Some(&c.form("P-1", "spo2=130&pulse=81&cough=1")),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.head);
    let error = r
        .body
        .split("id=\"vitals-error\"")
        .nth(1)
        .and_then(|rest| rest.split("</p>").next())
        .unwrap_or_else(|| panic!("no #vitals-error in {}", r.body));
    assert!(
        error.contains("SpO") && error.contains("130") && error.contains("50\u{2013}100"),
        "{error}"
    );
    // Shown again as typed.
    assert!(r.body.contains("id=\"vitals-form\""));
    assert!(r.body.contains("name=\"spo2\" type=\"number\" step=\"any\" min=\"50\" max=\"100\" inputmode=\"decimal\" value=\"130\""), "{}", r.body);
    assert!(r.body.contains("value=\"81\""));
    assert!(r
        .body
        .contains("id=\"cough\" name=\"cough\" value=\"1\" checked"));
    assert_eq!(std::fs::read(c.file("P-1")).unwrap(), saved);
    assert_eq!(vitals_files(&c.root), [c.file("P-1")]);

    // Not a number, and symptoms both ticked and "not recorded": named too.
    for (fields, names) in [
        ("temperature_c=warm", "Temperature"),
        ("fever=1&symptoms_unrecorded=1", "Symptoms"),
        ("sex=x", "Sex"),
        ("respiratory_rate=2", "Respiratory rate"),
    ] {
        let r = c
            .http("POST", "/vitals", true, Some(&c.form("P-1", fields)))
            .await;
        assert_eq!(r.status, 422, "{fields}");
        assert!(r.body.contains(names), "{fields}: {}", r.body);
        assert_eq!(std::fs::read(c.file("P-1")).unwrap(), saved);
    }
}

#[tokio::test]
async fn only_a_plain_existing_patient_folder_is_written() {
    let c = clinic().await;
    // Folders a naive join would reach: outside the inbox, nested, through a link.
    std::fs::create_dir_all(c.root.join("x")).unwrap();
    std::fs::create_dir_all(c.inbox.join("a/b")).unwrap();
    std::fs::create_dir_all(c.root.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(c.root.join("elsewhere"), c.inbox.join("L")).unwrap();
    std::fs::create_dir_all(c.inbox.join(".hidden")).unwrap();
    for patient in [
        "../x", "a/b", "L", "missing", "", ".", "..", ".hidden", "/tmp", "P-1/",
    ] {
        let q = format!("/vitals?patient={}", url_encode(patient));
        let r = c.http("GET", &q, true, None).await;
        assert_eq!(r.status, 404, "GET {patient:?}");
        let r = c
            .http("POST", "/vitals", true, Some(&c.form(patient, "spo2=90")))
            .await;
        assert_eq!(r.status, 404, "POST {patient:?}: {}", r.body);
    }
    assert!(
        vitals_files(&c.root).is_empty(),
        "{:?}",
        vitals_files(&c.root)
    );
    assert!(!c.inbox.join("missing").exists());
}

#[tokio::test]
async fn the_form_is_filled_in_from_the_saved_file() {
    let c = clinic().await;
    let q = format!("/vitals?patient=P-1&day={}", date(c.day));
    // No file yet: blank, symptoms not recorded.
    let r = c.http("GET", &q, true, None).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body.contains("id=\"vitals-form\""));
    assert!(r
        .body
        .contains("name=\"symptoms_unrecorded\" value=\"1\" checked"));
    assert!(r.body.contains("<option value=\"\" selected>not recorded"));
    assert!(r
        .body
        .contains(&format!("name=\"day\" value=\"{}\"", date(c.day))));
    std::fs::write(
        c.file("P-1"),
        br#"{"age_years": 61, "sex": "f", "spo2": 91, "temperature_c": 38.4,
            "symptoms": ["cough"]}"#,
    )
    .unwrap();
    let r = c.http("GET", &q, true, None).await;
    for want in [
        "id=\"age_years\" name=\"age_years\" type=\"number\" step=\"any\" min=\"0\" max=\"120\" inputmode=\"decimal\" value=\"61\"",
        "value=\"91\"",
        "value=\"38.4\"",
        "<option value=\"f\" selected>female",
        "id=\"cough\" name=\"cough\" value=\"1\" checked",
        "id=\"fever\" name=\"fever\" value=\"1\">",
        "id=\"symptoms_unrecorded\" name=\"symptoms_unrecorded\" value=\"1\">",
        "30\u{2013}45 \u{b0}C",
    ] {
        assert!(r.body.contains(want), "{want} not in {}", r.body);
    }
    assert!(!r.body.contains("vitals-notice"));
    // A file that breaks the rules: a blank form that says so, and saving replaces it.
    std::fs::write(c.file("P-1"), br#"{"spo2": 12}"#).unwrap();
    let r = c.http("GET", &q, true, None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("id=\"vitals-notice\""), "{}", r.body);
    let r = c
        .http("POST", "/vitals", true, Some(&c.form("P-1", "spo2=95")))
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        read_vitals(&c.inbox, "P-1").unwrap().unwrap().spo2,
        Some(95.0)
    );
}

#[test]
fn a_form_shows_the_vitals_it_records() {
    let v = Vitals {
        age_years: Some(4.5),
        sex: Some(Sex::Female),
        spo2: None,
        respiratory_rate: Some(30.0),
        pulse: None,
        temperature_c: Some(37.0),
        symptoms: Some(vec![]),
    };
    let f = VitalsForm::of(&v);
    assert_eq!(f.numbers[0], "4.5");
    assert!(!f.symptoms_unrecorded && f.symptoms == [false; 3]);
    assert_eq!(f.vitals(), Ok(v));
    assert_eq!(
        VitalsForm::of(&Vitals::default()).vitals(),
        Ok(Vitals::default())
    );
    let e = VitalsForm {
        numbers: ["".into(), "inf".into(), "".into(), "".into(), "".into()],
        ..VitalsForm::default()
    }
    .vitals()
    .unwrap_err();
    assert!(
        e.0.contains("SpO\u{2082}") && e.0.contains("not a number"),
        "{e}"
    );
}

#[test]
fn the_patient_in_a_link_is_encoded() {
    assert_eq!(
        href("MRN 7/<b>&x", 0),
        "/vitals?patient=MRN%207%2F%3Cb%3E%26x&day=1970-01-01"
    );
    let html = render(&FormPage {
        patient: "<script>",
        day: None,
        csrf: "t\"",
        form: &VitalsForm::default(),
        error: Some("<b>"),
        notice: None,
    });
    assert!(
        !html.contains("<script>") && !html.contains("<b>"),
        "{html}"
    );
    assert!(html.contains("value=\"&lt;script&gt;\""));
}
