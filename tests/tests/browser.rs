//! The review loop end to end in a real browser (issue #13): a clinic's flagged scans
//! reach the hub with their preview and clip; Debian's headless Chromium logs in as the
//! region's specialist, finds the most severe flagged examination first, plays its clip,
//! toggles the activation map, claims it and submits a verdict; the clinic page on the
//! agent then shows that verdict, and clinic staff record a patient's vitals with the
//! page's form (SpO₂ 88), which that patient's summary then weighs. Another region's
//! specialist, a ministry account and a logged-out browser get nothing, even with the
//! exact case and media URLs. The ministry account lands on its dashboard (curve,
//! completeness, every small count suppressed, on the page and in the CSV export); the
//! specialist and a logged-out browser get no dashboard.
//!
//! Real hub and agent processes over mTLS; the browser is driven over WebDriver by
//! tests/browser/review_loop.py (selenium, installed into .venv-test by scripts/test.sh).
//! Screenshots and page sources of a failure are kept in target/test-artifacts/browser/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pleura_e2e::*;
use pleura_shared::ExamId;

const PIN: &str = "clinic-pin-4821";

fn python() -> Option<PathBuf> {
    let venv = repo_root().join(".venv-test/bin/python");
    let ok = |p: &Path| {
        Command::new(p)
            .args(["-c", "import selenium"])
            .status()
            .is_ok_and(|s| s.success())
    };
    let chromium =
        Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists();
    (chromium && ok(&venv)).then_some(venv)
}

/// As the ultrasound device exports: into the patient's folder, atomically.
fn export(agent: &Agent, patient: &str, name: &str, src: &Path) {
    let dir = agent.inbox.join(patient);
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn required() -> bool {
    std::env::var("PLEURA_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

#[test]
fn specialist_reviews_in_a_browser_and_the_clinic_sees_the_verdict() {
    let Some(python) = python() else {
        assert!(
            !required(),
            "PLEURA_REQUIRE_BROWSER=1 but chromium, chromedriver or selenium is missing"
        );
        eprintln!(
            "SKIPPED: needs /usr/bin/chromium, /usr/bin/chromedriver and selenium in .venv-test"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.add_user("dr-north", "specialist", Some("north"), "north-pass-1")
        .unwrap();
    hub.add_user("dr-south", "specialist", Some("south"), "south-pass-1")
        .unwrap();
    hub.add_user("ministry", "ministry", None, "ministry-pass-1")
        .unwrap();
    hub.start().unwrap();

    let o = hub.agent_options();
    let clinic = o.clinic.clone();
    let mut agent = Agent::new(&tmp.path().join("agent"), hub.mqtt_port, o).unwrap();
    let page_port = free_port();
    let mut cfg = std::fs::read_to_string(&agent.config).unwrap();
    cfg.push_str(&format!(
        "[clinic_page]\nenabled = true\nlisten = \"127.0.0.1:{page_port}\"\n"
    ));
    std::fs::write(&agent.config, cfg).unwrap();
    let mut pin = Command::new(bin("edge-agent"))
        .args(["clinic-pin", "set", "--config"])
        .arg(&agent.config)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    pin.stdin.take().unwrap().write_all(PIN.as_bytes()).unwrap();
    assert!(pin.wait().unwrap().success(), "edge-agent clinic-pin set");
    agent.start().unwrap();

    // Two patients, each with a flagged scan (the model scores the MP4 severity 3; the still
    // is flagged COVID-suspected at severity 1), and an unflagged one (the A-lines clip,
    // read normal).
    let scans = repo_root().join("fixtures/scans");
    for (patient, name, fixture) in [
        ("P-7001", "L1.jpg", "pocus_cov_oliviera_fig4a.jpg"),
        ("P-7002", "L2.mp4", "cb_patient29_L2.mp4"),
        ("P-7002", "R1.mov", "pocus_reg_alines.mov"),
    ] {
        export(&agent, patient, name, &scans.join(fixture));
    }

    let cases = eventually("three results at the hub", Duration::from_secs(180), || {
        hub.cases().ok().filter(|c| c.len() == 3)
    });
    let mut flagged: Vec<_> = cases
        .iter()
        .filter_map(|c| c.result.clone())
        .filter(|r| r.flagged)
        .collect();
    assert_eq!(flagged.len(), 2, "the still and the L2 clip are flagged");
    flagged.sort_by_key(|r| std::cmp::Reverse(r.severity));
    assert!(
        flagged[0].severity > flagged[1].severity,
        "the scenario needs one exam clearly more severe than the other: {:?}",
        flagged.iter().map(|r| r.severity).collect::<Vec<_>>()
    );
    let exam = |r: &pleura_shared::wire::ScanResult| {
        let id = pleura_shared::ResultId::from_slice(&r.result_id).unwrap();
        ExamId::of(&clinic, &r.patient_key, r.scan_day, &id).to_hex()
    };
    let expected: Vec<String> = flagged.iter().map(exam).collect();

    let artifacts = repo_root().join("target/test-artifacts/browser");
    std::fs::create_dir_all(&artifacts).unwrap();
    let scenario = serde_json::json!({
        "hub_url": format!("https://127.0.0.1:{}", hub.metrics_port),
        "clinic_url": format!("https://127.0.0.1:{page_port}"),
        "specialist": {"username": "dr-north", "password": "north-pass-1"},
        "other_specialist": {"username": "dr-south", "password": "south-pass-1"},
        "ministry": {"username": "ministry", "password": "ministry-pass-1"},
        "clinic_pin": PIN,
        "clinic_id": clinic,
        "vitals_spo2": 88,
        "expected_exams": expected,
        "expected_first_exam": expected[0],
        "verdict": {
            "impression": "covid",
            "impression_text": "COVID-19",
            "recommendation": "refer",
            "comment": "B-lines and a subpleural consolidation; refer for oxygen.",
        },
        "case_markers": ["verdict-form", "lung-score", "keyframe", "<video"],
        "artifacts": artifacts,
        "profile_dir": tmp.path().join("chromium"),
    });
    let file = tmp.path().join("scenario.json");
    std::fs::write(&file, scenario.to_string()).unwrap();
    let out = Command::new(python)
        .arg(repo_root().join("tests/browser/review_loop.py"))
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(
        out.status.success(),
        "the browser test failed (screenshots in {}):\n{said}\nhub log:\n{}\nagent log:\n{}",
        artifacts.display(),
        log_tail(&hub.dir.join("hub.log"), 40),
        log_tail(&agent.dir.join("agent.log"), 40)
    );

    // The clinic holds the verdict once, durably (read with the agent stopped).
    agent.kill9();
    let out = Command::new(bin("edge-agent"))
        .args(["verdicts", "--config"])
        .arg(&agent.config)
        .output()
        .unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.len(), 1, "one verdict at the clinic: {v:?}");
}
