//! Nothing that identifies a patient leaves the clinic: a DICOM with synthetic PHI in
//! its header, its folder name and burned into its pixels goes through a real agent
//! and hub; the hub's storage and a capture of the traffic are searched for every
//! PHI string.

use std::time::Duration;

use pleura_e2e::*;

const PHI: &[&str] = &[
    "DOE",
    "JANE",
    "MRN-4471",
    "4471",
    "19470312",
    "1947",
    "Kisumu",
    "Odinga",
    "OKELLO",
    "PHIOPERATOR",
    "ACC-PHI",
    "STUDY-PHI",
    "LUMIFY-PHI",
    "SN-PHI",
    "coughing",
    "PHITEST",
];

fn find_phi(hay: &[u8]) -> Vec<&'static str> {
    PHI.iter()
        .copied()
        .filter(|p| {
            hay.windows(p.len()).enumerate().any(|(at, w)| {
                w.eq_ignore_ascii_case(p.as_bytes()) && !inside_an_id(hay, at, p.len())
            })
        })
        .collect()
}

/// A match made only of hex digits inside a run of 16 or more of them: part of a hash or
/// an id written in hex ("1947" turns up in one of them by chance), not a date or a
/// record number, which PHI strings stand apart from.
fn inside_an_id(hay: &[u8], at: usize, len: usize) -> bool {
    let hex = |b: &u8| b.is_ascii_hexdigit();
    if !hay[at..at + len].iter().all(hex) {
        return false;
    }
    let start = hay[..at].iter().rev().take_while(|b| hex(b)).count();
    let end = hay[at + len..].iter().take_while(|b| hex(b)).count();
    start + len + end >= 16
}

/// What of a file is searched: a PEM file by its DER sections, since base64 text is
/// random letters and digits in which "DOE" or "1947" turn up by chance (seen: a freshly
/// generated hub certificate held "DOE"); names in a certificate are plain bytes in DER.
fn searchable(bytes: &[u8]) -> Vec<u8> {
    if !bytes.starts_with(b"-----BEGIN ") {
        return bytes.to_vec();
    }
    let mut rd = bytes;
    let mut der = Vec::new();
    while let Some((_, section)) =
        rustls::pki_types::pem::from_buf(&mut rd).expect("a PEM file the hub wrote parses")
    {
        der.extend(section);
    }
    assert!(!der.is_empty(), "a PEM file without a section");
    der
}

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Searches every file under `dir` for every PHI string; returns the files searched.
fn no_phi_in_files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    for f in &files {
        let bytes = searchable(&std::fs::read(f).unwrap());
        assert_eq!(
            find_phi(&bytes),
            Vec::<&str>::new(),
            "PHI in hub file {}",
            f.display()
        );
    }
    files
}

#[test]
fn no_phi_reaches_the_hub_storage_or_the_wire() {
    let tmp = tempfile::tempdir().unwrap();
    // Insecure mode on purpose: with TLS the capture would be ciphertext and prove
    // nothing about what the agent sends. Storage is the same in every mode.
    let mut hub = Hub::new_insecure(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let proxy = CountingProxy::start(hub.mqtt_port, true).unwrap();
    let mut agent = Agent::new(&tmp.path().join("a"), proxy.port, AgentOptions::default()).unwrap();
    let src = repo_root().join("fixtures/phi/synthetic_phi.dcm");
    assert_eq!(
        find_phi(&std::fs::read(&src).unwrap()).len(),
        PHI.len(),
        "fixture carries all PHI"
    );
    // The device exports into a folder named after the patient ID, as many do.
    std::fs::create_dir_all(agent.inbox.join("MRN-4471-PHI")).unwrap();
    std::fs::copy(&src, agent.inbox.join("MRN-4471-PHI/DOE_JANE_R2.dcm")).unwrap();
    agent.start().unwrap();
    eventually("the scan at the hub", Duration::from_secs(60), || {
        (hub.case_ids().ok()?.len() == 1).then_some(())
    });
    agent.kill9();
    hub.kill9();

    let wire = proxy.captured();
    assert!(
        wire.len() > 200,
        "traffic was captured ({} bytes)",
        wire.len()
    );
    assert_eq!(find_phi(&wire), Vec::<&str>::new(), "PHI on the wire");
    let files = no_phi_in_files_under(&hub.dir);
    assert!(files
        .iter()
        .any(|f| f.to_string_lossy().contains("cases.sled")));
}

/// The media a specialist can ask for carry no PHI either: the hub requests the clip of
/// the synthetic-PHI scan (unflagged, so only on request), and then no PHI string is in
/// any hub file or in the pages and media its web application serves, and the pixels
/// where the PHI was burned in are blank in every frame of the clip (OCR-free: the
/// text's pixels are found by comparing the fixture with the scan it was made from).
#[test]
fn no_phi_in_the_media_and_pages_the_hub_serves() {
    use pleura_e2e::media::{complete, object, request_clip, CLIP};
    use pleura_inference::decode::{decode_media, media_frames::MediaSampling};

    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    let opts = hub.agent_options();
    let (clinic, device) = (opts.clinic.clone(), opts.device.clone());
    hub.start().unwrap();
    let mut agent = Agent::new(&tmp.path().join("a"), hub.mqtt_port, opts).unwrap();
    let src = repo_root().join("fixtures/phi/synthetic_phi.dcm");
    std::fs::create_dir_all(agent.inbox.join("MRN-4471-PHI")).unwrap();
    std::fs::copy(&src, agent.inbox.join("MRN-4471-PHI/DOE_JANE_R2.dcm")).unwrap();
    agent.start().unwrap();
    let result = eventually("the scan at the hub", Duration::from_secs(60), || {
        hub.case_ids().ok()?.into_iter().next()
    });
    // A clip request, queued as the case service queues one (the hub's store is its own
    // while it runs).
    hub.kill9();
    request_clip(&hub, &clinic, &device, &result);
    hub.start().unwrap();
    let clip = eventually(
        "the requested clip at the hub",
        Duration::from_secs(120),
        || complete(&hub, &result, CLIP),
    );
    let mp4 = object(&hub, &clip);

    let every = MediaSampling {
        max_frames: 100_000,
        max_side: 100_000,
        frames: vec![],
        first_and_middle: false,
    };
    let frames = |b: &[u8]| decode_media(b, &every).unwrap().0;
    let phi = frames(&std::fs::read(&src).unwrap());
    let clean =
        frames(&std::fs::read(repo_root().join("fixtures/scans/cb_multiframe.dcm")).unwrap());
    let (a, b) = (&phi.frames[0].1.pixels, &clean.frames[0].1.pixels);
    let text: Vec<usize> = (0..a.len()).filter(|&i| a[i].abs_diff(b[i]) > 40).collect();
    assert!(
        text.len() > 200,
        "the fixture's burned-in text ({} pixels)",
        text.len()
    );
    let shown = frames(&mp4);
    assert_eq!(shown.size(), phi.size(), "the clip keeps the scan's size");
    assert!(!shown.frames.is_empty());
    println!(
        "clip of {} bytes, {} frames: the {} pixels of burned-in text checked in each",
        mp4.len(),
        shown.frames.len(),
        text.len()
    );
    for (n, f) in &shown.frames {
        let max = text.iter().map(|&i| f.pixels[i]).max().unwrap();
        let mean = text.iter().map(|&i| f.pixels[i] as f64).sum::<f64>() / text.len() as f64;
        assert!(
            max <= 40 && mean <= 3.0,
            "frame {n}: burned-in text shows through (max {max}, mean {mean:.1})"
        );
    }

    // What the web application serves the operator (who sees every examination).
    let tls =
        pleura_shared::pki::client_config(&hub.pki.as_ref().unwrap().join("ca.pem"), None).unwrap();
    let addr = format!("127.0.0.1:{}", hub.metrics_port).parse().unwrap();
    let served = block_on(async move {
        use pleura_runtime::web_client::Client;
        let mut web = Client::new(addr, std::sync::Arc::new(tls));
        let form = web.get("/login").await?;
        web.set_cookie("pleura_login", &form.cookie("pleura_login").unwrap());
        let csrf = form.field("csrf").unwrap();
        let r = web
            .post(
                "/login",
                &[
                    ("username", OPERATOR.0),
                    ("password", OPERATOR.1),
                    ("csrf", &csrf),
                ],
            )
            .await?;
        web.set_cookie("pleura_session", &r.cookie("pleura_session").unwrap());
        let list = web.get("/?show=all").await?;
        let mut served = vec![list.body.clone()];
        let t = list.text();
        let at = t.find("data-exam=\"").expect("the examination is listed") + 11;
        let exam = t[at..at + 32].to_string();
        let page = web.get(&format!("/case/{exam}")).await?;
        assert_eq!(page.status, 200);
        let media = format!("/media/{exam}/{}", clip.sha);
        assert!(page.text().contains(&media), "the case page links the clip");
        let video = web.get(&media).await?;
        assert_eq!(video.status, 200);
        served.extend([page.body, video.body]);
        Ok(served)
    })
    .unwrap();
    for body in &served {
        assert_eq!(
            find_phi(body),
            Vec::<&str>::new(),
            "PHI in a page or media the hub serves"
        );
    }
    agent.kill9();
    hub.kill9();
    no_phi_in_files_under(&hub.dir);
}
