//! The clinic page with the real agent binary: off by default, a PIN set with the CLI,
//! wrong PINs refused and then throttled, no content without a login, CSRF on POSTs,
//! HTTPS with the logged certificate fingerprint, and a scan dropped in the inbox shown
//! by its local patient id, model result and "queued" with no hub running.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "intake_hardening/harness.rs"]
mod harness;
use harness::*;

const PIN: &str = "735918";

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().to_ascii_lowercase() == name)
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// The value a Set-Cookie header gives `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.header("set-cookie").iter().find_map(|c| {
            let first = c.split(';').next()?;
            let (k, v) = first.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn request(method: &str, path: &str, cookie: Option<&str>, form: Option<&str>) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        r.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some(f) = form {
        r.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{f}",
            f.len()
        ));
    } else {
        r.push_str("\r\n");
    }
    r
}

fn http(port: u16, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>) -> Reply {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the page");
    exchange(s, method, path, cookie, form)
}

/// A request from the loopback address `source` (127.0.0.x: another client).
fn http_from(
    source: &str,
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Reply {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
        sock.connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connecting to the page")
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    exchange(s, method, path, cookie, form)
}

fn exchange(
    mut s: TcpStream,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Reply {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request(method, path, cookie, form).as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

fn wait_for_port(a: &mut Agent, port: u16) {
    let end = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(c) = a.child.as_mut() {
            if let Some(code) = c.try_wait().unwrap() {
                panic!("agent exited ({code}):\n{}", a.log());
            }
        }
        assert!(Instant::now() < end, "the page never opened:\n{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn set_pin(a: &Agent, pin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .current_dir(root())
        .args(["clinic-pin", "set", "--config", a.config.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{pin}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn page_config(port: u16, insecure: bool) -> String {
    format!(
        "[clinic_page]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ninsecure_http = {insecure}\n"
    )
}

/// The login form's token and cookie.
fn login_form(port: u16) -> (String, String) {
    let r = http(port, "GET", "/login", None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.cookie("pleura_clinic_login").expect("login cookie");
    let token = r
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf field")
        .to_string();
    (token, cookie)
}

fn try_login(port: u16, pin: &str) -> Reply {
    let (token, cookie) = login_form(port);
    http(
        port,
        "POST",
        "/login",
        Some(&format!("pleura_clinic_login={cookie}")),
        Some(&format!("csrf={token}&pin={pin}")),
    )
}

fn try_login_from(source: &str, port: u16, pin: &str) -> Reply {
    let (token, cookie) = login_form(port);
    http_from(
        source,
        port,
        "POST",
        "/login",
        Some(&format!("pleura_clinic_login={cookie}")),
        Some(&format!("csrf={token}&pin={pin}")),
    )
}

#[test]
fn the_page_is_off_by_default() {
    let mut a = Agent::new("");
    a.start();
    a.wait_for("the agent running", |s| s["pid"].as_u64().unwrap_or(0) > 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        TcpStream::connect(("127.0.0.1", 8480)).is_err(),
        "something listens on the default page port"
    );
    a.stop();
    let log = a.log();
    assert!(!log.contains("clinic page serving"), "{log}");
}

#[test]
fn a_pin_login_shows_the_days_scans_offline_with_throttling_and_csrf() {
    let port = free_port();
    let mut a = Agent::new(&page_config(port, true));
    // The PIN is checked, then only its hash is kept.
    assert!(!set_pin(&a, "123").status.success());
    let out = set_pin(&a, PIN);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = std::fs::read_to_string(a.data().join("clinic-page.pin")).unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains(PIN));

    let patient = "MRN-4711";
    let dir = a.inbox().join(patient);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("pocus_pneu_emdocs1.png"), dir.join("scan_R2.png")).unwrap();
    let odd = a.inbox().join("<script>alert(1)<");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::copy(fixture("cb_frame.bmp"), odd.join("scan_L1.bmp")).unwrap();
    a.start();
    a.wait_for("both scans analysed", |s| u(s, "analysed") == 2);
    wait_for_port(&mut a, port);

    // Nothing without a login.
    for path in ["/scans", "/", "/scans?day=2020-01-01"] {
        let r = http(port, "GET", path, None, None);
        assert!(matches!(r.status, 303 | 400), "{path}: {}", r.status);
        assert!(!r.body.contains(patient), "{path}: {}", r.body);
    }
    let r = http(port, "GET", "/scans", None, None);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), vec!["/login".to_string()]);
    let r = http(port, "GET", "/scans", Some("pleura_clinic=forged"), None);
    assert_eq!(r.status, 303);

    // A login POST without its form token is refused.
    let (_, cookie) = login_form(port);
    let r = http(
        port,
        "POST",
        "/login",
        Some(&format!("pleura_clinic_login={cookie}")),
        Some(&format!("csrf=wrong&pin={PIN}")),
    );
    assert_eq!(r.status, 403);
    assert!(r.cookie("pleura_clinic").is_none());

    // A wrong PIN is refused; the right one logs in with a strict cookie.
    let r = try_login(port, "000000");
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Wrong PIN"));
    assert!(r.cookie("pleura_clinic").is_none());
    let r = try_login(port, PIN);
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r
        .header("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("pleura_clinic="))
        .unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let session = format!("pleura_clinic={}", r.cookie("pleura_clinic").unwrap());

    // Today's scans: local patient ids (escaped), the model's result, queued (no hub).
    let r = http(port, "GET", "/scans", Some(&session), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let csp = r.header("content-security-policy").join(" ");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let b = &r.body;
    assert!(b.contains("Decision support only"), "{b}");
    assert!(b.contains("id=\"scans\""), "{b}");
    assert_eq!(b.matches("class=\"scan-row\"").count(), 2, "{b}");
    assert!(
        b.contains(&format!("class=\"patient-id\">{patient}<")),
        "{b}"
    );
    assert!(b.contains("&lt;script&gt;alert(1)&lt;"), "{b}");
    assert!(!b.contains("<script>"), "{b}");
    assert_eq!(b.matches("data-state=\"queued\">queued<").count(), 2, "{b}");
    assert!(
        b.contains("class=\"zone\">R2<") && b.contains("class=\"zone\">L1<"),
        "{b}"
    );
    assert!(b.contains("COVID-19 ") && b.contains(" / 3<"), "{b}");
    assert!(
        !b.contains("http://") && !b.contains("https://"),
        "an external resource: {b}"
    );
    let css = http(port, "GET", "/style.css", None, None);
    assert_eq!(css.status, 200);
    // The day selector offers the last 7 days only.
    let r = http(port, "GET", "/scans?day=2001-01-01", Some(&session), None);
    assert_eq!(r.status, 400);

    // CSRF: logging out needs the session's token.
    let token = b
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = http(port, "POST", "/logout", Some(&session), Some("csrf=forged"));
    assert_eq!(r.status, 403);
    assert_eq!(
        http(port, "GET", "/scans", Some(&session), None).status,
        200
    );
    let r = http(
        port,
        "POST",
        "/logout",
        Some(&session),
        Some(&format!("csrf={token}")),
    );
    assert_eq!(r.status, 303);
    assert_eq!(
        http(port, "GET", "/scans", Some(&session), None).status,
        303
    );

    // Five tries a minute per source, then 429 — for the right PIN too.
    for i in 0..5 {
        assert_eq!(try_login(port, "999999").status, 401, "try {i}");
    }
    let r = try_login(port, "999999");
    assert_eq!(r.status, 429);
    assert!(
        r.body.contains("from this address; wait a minute"),
        "{}",
        r.body
    );
    assert_eq!(try_login(port, PIN).status, 429);
    // A browser's idle keep-alive connection does not hold up the agent's stop.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.write_all(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    a.stop();
    let log = a.log();
    assert!(log.contains("agent stopped"), "{log}");
    assert!(!log.contains("did not stop"), "{log}");
    assert!(!log.contains(patient), "the log names the patient:\n{log}");
    assert!(!log.contains(PIN), "the log holds the PIN");
}

#[test]
fn logins_from_many_addresses_together_are_throttled_for_everyone() {
    let port = free_port();
    let mut a = Agent::new(&page_config(port, true));
    assert!(set_pin(&a, PIN).status.success());
    a.start();
    wait_for_port(&mut a, port);
    // Four addresses, five wrong PINs each: the device's twenty checks a minute.
    for host in 2..=5 {
        let source = format!("127.0.0.{host}");
        for i in 0..5 {
            let r = try_login_from(&source, port, "999999");
            assert_eq!(r.status, 401, "{source} try {i}: {}", r.body);
        }
    }
    // A fresh address is refused without a check, the right PIN too, and told why.
    let r = try_login_from("127.0.0.6", port, PIN);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("paused for everyone"), "{}", r.body);
    assert!(r.cookie("pleura_clinic").is_none());
    assert_eq!(try_login(port, PIN).status, 429);
    a.stop();
    let log = a.log();
    assert!(!log.contains(PIN), "the log holds the PIN");
}

#[test]
fn https_by_default_with_the_logged_certificate_fingerprint() {
    let port = free_port();
    let mut a = Agent::new(&page_config(port, false));
    a.start();
    wait_for_port(&mut a, port);
    let end = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let log = a.log();
        if let Some(l) = log.lines().find(|l| l.contains("clinic page serving")) {
            break l.to_string();
        }
        assert!(Instant::now() < end, "no start line:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        line.contains(&format!("https://127.0.0.1:{port}/")),
        "{line}"
    );
    let pem = std::fs::read(a.data().join("clinic-page.crt")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    use sha2::Digest;
    let fp: Vec<String> = sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert!(line.contains(&fp.join(":")), "{line}");

    // A client that trusts exactly this certificate gets the page over TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request("GET", "/login", None, None).as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let r = parse(&raw);
    assert_eq!(r.status, 200, "{}", r.head);
    let set = r.header("set-cookie").join("\n");
    assert!(
        set.contains("Secure") && set.contains("SameSite=Strict"),
        "{set}"
    );
    // Plain HTTP on the same port gets no page.
    let r = http(port, "GET", "/login", None, None);
    assert_ne!(r.status, 200);
    a.stop();
}

#[test]
fn a_verdict_kept_on_the_device_is_shown_with_its_examinations_scans() {
    use pleura_shared::wire::{Impression, Recommendation, Verdict, ZoneScore};
    use prost::Message;
    let port = free_port();
    let mut a = Agent::new(&page_config(port, true));
    assert!(set_pin(&a, PIN).status.success());
    // The clinic's key, as an installation has it, so the test knows the pseudonym.
    std::fs::write(a.data().join("pseudonym.key"), [7u8; 32]).unwrap();
    let patient = "MRN-0042";
    let dir = a.inbox().join(patient);
    std::fs::create_dir_all(&dir).unwrap();
    let scan = dir.join("scan_R1.png");
    std::fs::copy(fixture("pocus_pneu_emdocs1.png"), &scan).unwrap();
    // The examination (patient pseudonym, clinic, scan day = the file's day) the hub's
    // verdict names; stored where the downlink keeps verdicts (tree "verdicts": exam ‖
    // received-at ‖ message id → Verdict).
    let mtime = std::fs::metadata(&scan).unwrap().modified().unwrap();
    let day = (mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400) as u32;
    let key = pleura_shared::PseudonymKey::new(vec![7u8; 32]).unwrap();
    let pseudonym = key.pseudonym(patient);
    let exam = pleura_shared::ExamId::of(
        "clinic-a",
        &pseudonym,
        day,
        &pleura_shared::ResultId([0; 16]),
    );
    let verdict = Verdict {
        exam_id: exam.as_bytes().to_vec(),
        patient_key: pseudonym.to_vec(),
        scan_day: day,
        zones: vec![ZoneScore {
            zone: "R1".into(),
            model_score: 1,
            score: 3,
            overridden: true,
            ..Default::default()
        }],
        impression: Impression::OtherPneumonia as i32,
        recommendation: Recommendation::Refer as i32,
        comment: "consolidation <R1>".into(),
        reviewer: "dr.lung".into(),
        given_at_ms: u64::from(day) * 86_400_000 + 3_600_000,
        ..Default::default()
    };
    {
        let store = edge_agent::outbox::SledOutbox::open(&a.data(), 1 << 24).unwrap();
        let tree = store.tree("verdicts").unwrap();
        let mut k = exam.as_bytes().to_vec();
        k.extend_from_slice(&pleura_shared::now_ms().to_be_bytes());
        k.extend_from_slice(&[9u8; 16]);
        tree.insert(k, verdict.encode_to_vec()).unwrap();
        tree.flush().unwrap();
    }
    a.start();
    a.wait_for("the scan analysed", |s| u(s, "analysed") == 1);
    wait_for_port(&mut a, port);
    let r = try_login(port, PIN);
    assert_eq!(r.status, 303, "{}", r.body);
    let session = format!("pleura_clinic={}", r.cookie("pleura_clinic").unwrap());
    let r = http(port, "GET", "/scans", Some(&session), None);
    assert_eq!(r.status, 200);
    let b = &r.body;
    assert!(b.contains(&format!("data-exam-id=\"{exam}\"")), "{b}");
    // The verdict answers the examination but does not name this scan (a rescan the
    // same day, still queued here with no hub): shown, and the scan is not "reviewed".
    assert!(
        b.contains(
            "data-state=\"queued\">queued<br><span class=\"not-in-verdict\">not in the verdict<"
        ),
        "{b}"
    );
    assert!(!b.contains("data-state=\"reviewed\""), "{b}");
    assert_eq!(b.matches("class=\"verdict\"").count(), 1, "{b}");
    assert!(
        b.contains("class=\"verdict-impression\">other pneumonia<"),
        "{b}"
    );
    assert!(b.contains("class=\"verdict-recommendation\">refer<"), "{b}");
    assert!(
        b.contains("consolidation &lt;R1&gt;") && b.contains("dr.lung"),
        "{b}"
    );
    assert!(b.contains("class=\"override\""), "{b}");
    let id = b
        .split("data-result-id=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let id = pleura_shared::ResultId::from_slice(&hex::decode(id).unwrap()).unwrap();
    a.stop();

    // The hub acknowledged the scan and a second reading names it: now it is reviewed.
    {
        use edge_agent::outbox::Outbox;
        let store = edge_agent::outbox::SledOutbox::open(&a.data(), 1 << 24).unwrap();
        assert_eq!(store.remove(&[id]).unwrap(), 1);
        let tree = store.tree("verdicts").unwrap();
        let mut k = exam.as_bytes().to_vec();
        k.extend_from_slice(&(pleura_shared::now_ms() + 1).to_be_bytes());
        k.extend_from_slice(&[8u8; 16]);
        let second = Verdict {
            second_read: true,
            zones: vec![ZoneScore {
                zone: "R1".into(),
                result_id: id.as_bytes().to_vec(),
                model_score: 1,
                score: 2,
                overridden: true,
            }],
            ..verdict
        };
        tree.insert(k, second.encode_to_vec()).unwrap();
        tree.flush().unwrap();
    }
    a.start();
    wait_for_port(&mut a, port);
    let r = try_login(port, PIN);
    assert_eq!(r.status, 303, "{}", r.body);
    let session = format!("pleura_clinic={}", r.cookie("pleura_clinic").unwrap());
    let r = http(port, "GET", "/scans", Some(&session), None);
    assert_eq!(r.status, 200);
    let b = &r.body;
    assert!(b.contains("data-state=\"reviewed\">reviewed<"), "{b}");
    assert!(!b.contains("not-in-verdict"), "{b}");
    assert_eq!(b.matches("class=\"verdict\"").count(), 2, "{b}");
    assert!(b.contains("(second reading)"), "{b}");
    a.stop();
}
