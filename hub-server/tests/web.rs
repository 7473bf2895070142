//! The specialists' web application over real HTTPS, the hub running in this process on
//! a real sled store, media store and downlink queue: login, the worklist in priority
//! order, scope (another region, the ministry, nobody logged in: nothing, 404 or the
//! login page), media with Range, CSRF, the verdict form's checks, the verdict queued to
//! every device of the examination, and no patient key in any page.

#[path = "support/web_client.rs"]
mod client;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use client::{csrf, free_addr, rows, Answer, Client};
use hub_server::auth::{add_account, Role};
use hub_server::ca::Pki;
use hub_server::config::HubConfig;
use hub_server::media::{FsMediaStore, ItemClaim, MediaStore};
use hub_server::metrics::Metrics;
use hub_server::store::exams::Exam;
use hub_server::store::{HubStore, SledStore};
use pleura_proto::v1::{KeyFrame, MediaKind, MediaPreview};
use pleura_shared::record::sample_record;
use pleura_shared::ScanRecord;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const PW: &str = "a long enough password";

fn scan(
    clinic: &str,
    device: &str,
    patient: u8,
    day: u32,
    zone: &str,
    sev: u8,
    flagged: bool,
) -> ScanRecord {
    let mut r = sample_record(clinic, device, sev, flagged);
    r.patient_key = Some([patient; 16]);
    r.scan_day = day;
    r.zone = Some(zone.into());
    r.analysis.uncertainty = 0.2;
    r
}

fn put_media(store: &FsMediaStore, r: &ScanRecord, kind: MediaKind, bytes: &[u8]) -> String {
    let sha: [u8; 32] = Sha256::digest(bytes).into();
    let claim = ItemClaim {
        sha256: sha,
        kind,
        result_id: r.id,
        clinic: r.clinic.clone(),
        device: r.device.clone(),
        total: bytes.len() as u64,
    };
    store.write_chunk(&claim, 0, bytes, 1).unwrap();
    hex::encode(sha)
}

struct World {
    a_r1: ScanRecord,
    a_l1: ScanRecord,
    b: ScanRecord,
    earlier: ScanRecord,
    normal: ScanRecord,
    south: ScanRecord,
    preview_sha: String,
    clip_sha: String,
    south_preview_sha: String,
    preview: MediaPreview,
    clip: Vec<u8>,
}

/// Cases and media written before the hub starts, as if devices had sent them.
fn seed(data: &Path) -> World {
    std::fs::create_dir_all(data).unwrap();
    let day = 20_400;
    let w_records = (
        scan("nclinic", "n1", 1, day, "R1", 3, true),
        scan("nclinic", "n2", 1, day, "L1", 1, false),
        scan("nclinic", "n1", 2, day, "R2", 2, true),
        scan("nclinic", "n1", 1, day - 3, "R1", 1, true),
        scan("nclinic", "n1", 3, day, "R1", 0, false),
        scan("sclinic", "s1", 4, day, "R1", 3, true),
    );
    let (a_r1, a_l1, b, earlier, normal, south) = w_records;
    {
        let store = SledStore::open(data).unwrap();
        let now = pleura_shared::now_ms();
        store
            .commit(
                &[
                    a_r1.clone(),
                    a_l1.clone(),
                    b.clone(),
                    earlier.clone(),
                    normal.clone(),
                    south.clone(),
                ],
                now,
            )
            .unwrap();
    }
    let media = FsMediaStore::open(data).unwrap();
    let frame = |i: u8| KeyFrame {
        index: u32::from(i) * 10,
        time_ms: u32::from(i) * 500,
        role: 1,
        width: 64,
        height: 48,
        jpeg: vec![0xFF, 0xD8, 0xFF, i],
        overlay_png: vec![0x89, b'P', b'N', b'G', i],
        pathology: 0.8,
    };
    let preview = MediaPreview {
        source_width: 640,
        source_height: 480,
        frames_total: 60,
        fps: 20.0,
        frames: vec![frame(1), frame(2)],
    };
    let clip: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    World {
        preview_sha: put_media(&media, &a_r1, MediaKind::Preview, &preview.encode_to_vec()),
        clip_sha: put_media(&media, &a_r1, MediaKind::Clip, &clip),
        south_preview_sha: put_media(
            &media,
            &south,
            MediaKind::Preview,
            &MediaPreview {
                frames_total: 90,
                ..preview.clone()
            }
            .encode_to_vec(),
        ),
        preview,
        clip,
        a_r1,
        a_l1,
        b,
        earlier,
        normal,
        south,
    }
}

async fn login(c: &Client, user: &str) -> Client {
    let form = c.get("/login").await;
    assert_eq!(form.status, 200);
    let nonce = form.cookie("pleura_login").unwrap();
    let c2 = c.with_cookie("pleura_login", &nonce);
    let a = c2
        .post(
            "/login",
            &[
                ("username", user),
                ("password", PW),
                ("csrf", nonce.as_str()),
            ],
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.text());
    let line = a.set_cookie_line("pleura_session").unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(line.contains(attr), "{line}");
    }
    c.with_cookie("pleura_session", &a.cookie("pleura_session").unwrap())
}

fn hexid(r: &ScanRecord) -> String {
    Exam::id_of(r).to_hex()
}

/// Nothing of any case in a refused answer.
fn no_case_data(a: &Answer, w: &World) {
    let t = a.text();
    for r in [&w.a_r1, &w.b, &w.south] {
        assert!(!t.contains(&hexid(r)), "{t}");
        assert!(!t.contains("nclinic") && !t.contains("sclinic"), "{t}");
    }
    assert!(!t.contains("data-exam"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn specialists_review_examinations_in_the_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let (pki_dir, data) = (tmp.path().join("pki"), tmp.path().join("data"));
    let pki = Pki::init(&pki_dir, "test", &["127.0.0.1".into()]).unwrap();
    let now = (pleura_shared::now_ms() / 1000) as i64;
    for (clinic, device, region) in [
        ("nclinic", "n1", "north"),
        ("nclinic", "n2", "north"),
        ("sclinic", "s1", "south"),
    ] {
        pki.enroll(
            clinic,
            device,
            region,
            now - 60,
            now + 3600,
            &tmp.path().join(device),
        )
        .unwrap();
    }
    let accounts = tmp.path().join("accounts.json");
    add_account(&accounts, "ana", Role::Specialist, Some("north"), PW).unwrap();
    add_account(&accounts, "bob", Role::Specialist, Some("north"), PW).unwrap();
    add_account(&accounts, "sam", Role::Specialist, Some("south"), PW).unwrap();
    add_account(&accounts, "min", Role::Ministry, None, PW).unwrap();
    add_account(&accounts, "op", Role::Operator, None, PW).unwrap();
    let w = seed(&data);

    let web = free_addr();
    let cfg: HubConfig = toml::from_str(&format!(
        "data_dir = {data:?}\ngrpc_listen = \"{}\"\nmetrics_listen = \"{web}\"\n\
         [mqtt]\nlisten = \"{}\"\n\
         [security]\npki_dir = {pki_dir:?}\naccounts_file = {accounts:?}\n",
        free_addr(),
        free_addr(),
    ))
    .unwrap();
    let shutdown = CancellationToken::new();
    let hub = tokio::spawn(hub_server::run(cfg, shutdown.clone()));
    let anon = Client::new(web, &pki_dir.join("ca.pem"));
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(web).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (a, b) = (hexid(&w.a_r1), hexid(&w.b));
    assert_eq!(
        a,
        hexid(&w.a_l1),
        "one examination: same patient, clinic, day"
    );
    let media = |exam: &str, sha: &str| format!("/media/{exam}/{sha}");
    let frame = |exam: &str, sha: &str, i: u32, layer: &str| {
        format!("/media/{exam}/{sha}/frame/{i}/{layer}")
    };

    // Nobody logged in: every URL leads to the login page, with no case data.
    for path in [
        "/".to_string(),
        format!("/case/{a}"),
        media(&a, &w.clip_sha),
        frame(&a, &w.preview_sha, 0, "image"),
    ] {
        let r = anon.get(&path).await;
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some("/login")),
            "{path}"
        );
        no_case_data(&r, &w);
    }
    let forged = anon.with_cookie("pleura_session", "v1.00.forged");
    assert_eq!(forged.get(&format!("/case/{a}")).await.status, 303);

    // Login: a wrong password is refused, with the same page.
    let form = anon.get("/login").await;
    let nonce = form.cookie("pleura_login").unwrap();
    let bad = anon
        .with_cookie("pleura_login", &nonce)
        .post(
            "/login",
            &[
                ("username", "ana"),
                ("password", "wrong password!"),
                ("csrf", nonce.as_str()),
            ],
        )
        .await;
    assert_eq!(bad.status, 401);
    assert!(bad.text().contains("id=\"login-error\""));
    assert!(bad.cookie("pleura_session").is_none());
    let no_nonce = anon
        .post("/login", &[("username", "ana"), ("password", PW)])
        .await;
    assert_eq!(no_nonce.status, 403, "login without its form token");

    // The north specialist: the most severe flagged examination first; the south's and
    // the unflagged one never.
    let ana = login(&anon, "ana").await;
    let list = ana.get("/").await;
    assert_eq!(list.status, 200);
    for (h, v) in [
        (
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert!(
            list.header(h).is_some_and(|x| x.contains(v)),
            "{h}: {:?}",
            list.header(h)
        );
    }
    assert_eq!(rows(&list), vec![a.clone(), b.clone(), hexid(&w.earlier)]);
    let text = list.text();
    assert!(text.contains("id=\"worklist\"") && text.contains("id=\"turnaround\""));
    assert!(!text.contains(&hexid(&w.south)) && !text.contains(&hexid(&w.normal)));
    // No pseudonym in full, only its short form.
    for p in [1u8, 2, 4] {
        assert!(!text.contains(&hex::encode([p; 16])));
        assert!(!text.contains(&hex::encode([p; 8])));
    }
    assert!(text.contains(&hex::encode([1u8; 4])));

    // The examination page: every zone, key frames with overlays, the clip, the lung
    // score, the patient's earlier examination, the verdict form.
    let case = ana.get(&format!("/case/{a}")).await;
    assert_eq!(case.status, 200);
    let t = case.text();
    for needle in [
        "id=\"overlay-toggle\"",
        "id=\"clip\"",
        &format!("src=\"/media/{a}/{}\"", w.clip_sha),
        &format!("src=\"/media/{a}/{}/frame/1/overlay\"", w.preview_sha),
        "data-zone=\"R1\"",
        "data-zone=\"L1\"",
        "<strong id=\"lung-score\">4</strong>",
        &format!("href=\"/case/{}\"", hexid(&w.earlier)),
        "id=\"verdict-form\"",
        "name=\"zone-R1\"",
        "Do not write names or identifiers",
        "severity score 2 or higher",
    ] {
        assert!(t.contains(needle), "{needle} missing");
    }
    assert!(!t.contains(&hex::encode([1u8; 16])), "no full pseudonym");
    assert_eq!(case.header("cache-control"), Some("no-store"));

    // Media: the clip seeks (206), frames are images.
    let part = ana
        .get_with(&media(&a, &w.clip_sha), &[("Range", "bytes=100-199")])
        .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-type"), Some("video/mp4"));
    assert_eq!(part.header("content-range"), Some("bytes 100-199/100000"));
    assert_eq!(part.body, w.clip[100..200]);
    let whole = ana.get(&media(&a, &w.clip_sha)).await;
    assert_eq!((whole.status, whole.body.len()), (200, 100_000));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let past = ana
        .get_with(&media(&a, &w.clip_sha), &[("Range", "bytes=200000-")])
        .await;
    assert_eq!(past.status, 416);
    let img = ana.get(&frame(&a, &w.preview_sha, 1, "image")).await;
    assert_eq!(
        (img.status, img.header("content-type")),
        (200, Some("image/jpeg"))
    );
    assert_eq!(img.body, w.preview.frames[1].jpeg);
    let overlay = ana.get(&frame(&a, &w.preview_sha, 0, "overlay")).await;
    assert_eq!(overlay.body, w.preview.frames[0].overlay_png);
    // Guessed or mismatched media URLs: 404 alike.
    for path in [
        frame(&a, &w.preview_sha, 7, "image"),
        media(&a, &hex::encode([9u8; 32])),
        media(&b, &w.clip_sha),
        media(&a, &w.south_preview_sha),
        media(&hexid(&w.south), &w.south_preview_sha),
        format!("/case/{}", hexid(&w.south)),
        format!("/case/{}", hexid(&w.normal)),
        "/case/zz".into(),
        "/media/x/y".into(),
    ] {
        let r = ana.get(&path).await;
        assert_eq!(r.status, 404, "{path}");
        no_case_data(&r, &w);
    }

    // Another region's specialist and the ministry see nothing of it.
    let sam = login(&anon, "sam").await;
    assert_eq!(rows(&sam.get("/").await), vec![hexid(&w.south)]);
    let min = login(&anon, "min").await;
    // The ministry's worklist page sends it to its dashboard (clinics are org units
    // there, but no examination or result is); a specialist gets no dashboard.
    let ml = min.get("/").await;
    assert_eq!((ml.status, ml.header("location")), (303, Some("/ministry")));
    let t = min.get("/ministry").await.text();
    assert!(t.contains("id=\"epicurve\"") && !t.contains("data-exam") && !t.contains("/case/"));
    let ids = [&w.a_r1, &w.b, &w.south].map(|r| [hexid(r), r.id.to_string()]);
    assert!(ids.iter().flatten().all(|id| !t.contains(id.as_str())));
    assert_eq!(sam.get("/ministry").await.status, 404);
    for who in [&sam, &min] {
        for path in [
            format!("/case/{a}"),
            media(&a, &w.clip_sha),
            frame(&a, &w.preview_sha, 0, "image"),
        ] {
            let r = who.get(&path).await;
            assert_eq!(r.status, 404, "{path}");
            no_case_data(&r, &w);
        }
    }
    // The operator sees every examination, unflagged ones when asked.
    let op = login(&anon, "op").await;
    let all = rows(&op.get("/?show=all").await);
    assert_eq!(all.len(), 5);
    assert!(all.contains(&hexid(&w.normal)) && all.contains(&hexid(&w.south)));

    // CSRF: a POST without the session's token changes nothing.
    let token = csrf(&case);
    let verdict = |c: &Client, fields: Vec<(&'static str, String)>| {
        let c = c.clone();
        let a = a.clone();
        async move {
            let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.post(&format!("/case/{a}/verdict"), &f).await
        }
    };
    let good = |csrf: &str| {
        vec![
            ("csrf", csrf.to_string()),
            ("zone-R1", "2".into()),
            ("zone-L1", "1".into()),
            ("impression", "covid".into()),
            ("recommendation", "refer".into()),
            (
                "comment",
                "B-lines R1, small consolidation; SpO2 91%".into(),
            ),
        ]
    };
    for bad in ["", "00000000000000000000000000000000"] {
        let r = verdict(&ana, good(bad)).await;
        assert_eq!(r.status, 403, "csrf {bad:?}");
    }
    assert_eq!(ana.post(&format!("/claim/{a}"), &[]).await.status, 403);

    // Claims: ana claims; bob's verdict is refused while her claim lives.
    let claimed = ana
        .post(&format!("/claim/{a}"), &[("csrf", token.as_str())])
        .await;
    assert_eq!(
        (claimed.status, claimed.header("location")),
        (303, Some(&*format!("/case/{a}")))
    );
    let bob = login(&anon, "bob").await;
    let bob_case = bob.get(&format!("/case/{a}")).await;
    assert!(bob_case.text().contains("Claimed by ana"));
    let r = verdict(&bob, good(&csrf(&bob_case))).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("claimed by ana"));

    // The form's checks, each with a message that says what to fix.
    let with = |k: &'static str, v: &str| {
        let mut f = good(&token);
        f.retain(|(x, _)| *x != k);
        if !v.is_empty() {
            f.push((k, v.to_string()));
        }
        f
    };
    for (fields, msg) in [
        (with("recommendation", "rescan"), "a rescan needs a reason"),
        (with("comment", "DOB 12/03/1961"), "it names an identifier"),
        (with("comment", "call 0161 496 0000"), "phone"),
        (with("comment", "MRN A1234567"), "identifier"),
        (with("comment", &"x".repeat(2001)), "longer than 2000"),
        (with("impression", ""), "choose an impression"),
        (with("zone-R1", "5"), "outside 0-3"),
        (with("zone-X9", "1"), "not a zone of this examination"),
    ] {
        let r = verdict(&ana, fields).await;
        assert_eq!(r.status, 400, "{msg}");
        assert!(r.text().contains("id=\"form-error\""), "{msg}");
        assert!(r.text().contains(msg), "{msg}: {}", r.text());
    }
    assert!(!ana
        .get(&format!("/case/{a}"))
        .await
        .text()
        .contains("First read"));

    // A valid verdict: stored, shown, queued to both devices of the examination.
    let r = verdict(&ana, good(&token)).await;
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some(&*format!("/case/{a}?saved=1")))
    );
    let after = ana.get(&format!("/case/{a}?saved=1")).await.text();
    assert!(after.contains("id=\"verdict-saved\"") && after.contains("First read by ana"));
    assert!(after.contains("R1 2 (model 3)"), "override recorded");
    assert!(
        !after.contains("name=\"second_read\""),
        "no second read of one's own verdict is offered"
    );
    let mut own = good(&token);
    own.push(("second_read", "1".into()));
    let r = verdict(&ana, own).await;
    assert_eq!(r.status, 400, "no one seconds their own read");
    assert!(r.text().contains("another specialist"));
    assert!(
        bob.get(&format!("/case/{a}"))
            .await
            .text()
            .contains("name=\"second_read\""),
        "a second read is offered to another specialist"
    );
    assert_eq!(
        verdict(&ana, good(&token)).await.status,
        400,
        "a first read exists"
    );
    // A second specialist's second read.
    let mut second = good(&csrf(&bob_case));
    second.push(("second_read", "1".into()));
    assert_eq!(verdict(&bob, second.clone()).await.status, 303);
    let twice = ana.get(&format!("/case/{a}")).await.text();
    assert!(twice.contains("Second read by bob") && !twice.contains("id=\"verdict-form\""));
    assert_eq!(
        verdict(&bob, second).await.status,
        400,
        "read twice already"
    );
    assert!(
        !rows(&ana.get("/").await).contains(&a),
        "read: off the worklist"
    );
    assert!(rows(&ana.get("/?read=1").await).contains(&a));

    // A clip request for the other examination goes to its device.
    let b_result = w.b.id.to_string();
    let bcase = ana.get(&format!("/case/{b}")).await;
    assert!(bcase.text().contains("id=\"request-clip\""));
    let r = ana
        .post(
            &format!("/case/{b}/clip"),
            &[("csrf", token.as_str()), ("result", b_result.as_str())],
        )
        .await;
    assert_eq!(r.status, 303);
    let r = sam
        .post(
            &format!("/case/{b}/clip"),
            &[
                ("csrf", csrf(&sam.get("/").await).as_str()),
                ("result", b_result.as_str()),
            ],
        )
        .await;
    assert_eq!(r.status, 404, "another region cannot ask");

    // Turnaround in Prometheus and on the worklist.
    let metrics = anon.get("/metrics").await.text();
    assert!(
        metrics.contains("pleura_review_claim_seconds_count 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pleura_review_verdict_seconds_count 1"));
    assert!(ana.get("/").await.text().contains("(1 read)"));

    // Logout ends the browser session.
    let out = ana.post("/logout", &[("csrf", token.as_str())]).await;
    assert_eq!(out.status, 303);
    assert!(out
        .set_cookie_line("pleura_session")
        .unwrap()
        .contains("Max-Age=0"));

    shutdown.cancel();
    hub.await.unwrap().unwrap();

    // The downlink queue holds both reads for both devices of A and the clip request
    // for B's device; nothing for the south.
    let dl =
        hub_server::downlink::Downlink::open(&data, None, Arc::new(Metrics::default())).unwrap();
    assert_eq!(dl.pending("nclinic", "n1").unwrap(), 3);
    assert_eq!(dl.pending("nclinic", "n2").unwrap(), 2);
    assert_eq!(dl.pending("sclinic", "s1").unwrap(), 0);

    // Every view was audited, refusals too.
    let log = std::fs::read_to_string(data.join("audit.log")).unwrap();
    let has = |user: &str, action: &str, outcome: &str| {
        log.lines().any(|l| {
            l.contains(&format!("\"user\":\"{user}\""))
                && l.contains(&format!("\"action\":\"{action}\""))
                && l.contains(outcome)
        })
    };
    assert!(has("ana", "get_exam", "allowed"));
    assert!(has("ana", "get_media", "allowed"));
    assert!(has("ana", "verdict", "allowed"));
    assert!(has("sam", "get_exam", "denied"));
    assert!(has("min", "get_media", "denied"));
    assert!(has("bob", "verdict", "claimed by ana"));
}
