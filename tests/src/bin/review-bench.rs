//! `cargo run --release -p pleura-e2e --bin review-bench`: the review benchmarks of
//! issue #13 (BENCHMARKS.md), as ratios against a baseline measured in the same run.
//!
//! 1. Preview vs clip over a simulated 256 kbit/s link (a token-bucket TCP proxy,
//!    32,000 bytes/s each way): an agent analyses a flagged scan and prepares its media
//!    while the hub is down; the hub then starts (link-up, T0). Baseline: the clip's own
//!    transfer time (preview complete → clip complete); Pleura: T0 → preview complete.
//!    Results go before media, so both include the results' upload; times from link-up.
//! 2. Bytes: preview per flagged scan and clip vs the original file, for every fixture
//!    in fixtures/scans (unflagged scans' clips asked for by the hub), read from the
//!    hub's media store.
//! 3. The worklist page with 100,000 examinations in the store: per-request time of
//!    GET / over loopback HTTPS (a fresh TLS connection each) against the bare
//!    `HubStore::worklist` query with the same filter on the same store, timed in this
//!    process before the hub opens it (sled holds a lock).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hub_server::store::exams::WorklistQuery;
use hub_server::store::{ClinicScope, HubStore, SledStore};
use pleura_e2e::timing::{pct, report_line, timed};
use pleura_e2e::*;
use pleura_shared::record::sample_record;
use pleura_shared::ScanRecord;

/// 256 kbit/s.
const RATE: u64 = 32_000;
const PREVIEW: i64 = 1;
const CLIP: i64 = 2;
const EXAMS: u32 = 100_000;
const REQUESTS: usize = 200;
const WARMUP: usize = 5;
const PW: &str = "a long enough password";

fn main() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fixtures = repo_root().join("fixtures/scans");
    let mut scans: Vec<(String, Vec<PathBuf>)> = ["pocus_cov_atlas45.gif", "cb_patient29_L2.mp4"]
        .iter()
        .map(|f| (f.to_string(), vec![fixtures.join(f)]))
        .collect();
    let shared = repo_root().join("../shared/data");
    if shared.join("README.md").exists() {
        let cands: Vec<PathBuf> = [
            "pocus/pocus_videos/convex/Cov-Atlas-suspectedCovid.mp4",
            "pocus/pocus_videos/convex/Cov_convex_volpecelli_sonographic_v1.mov",
            "covid-blues/lus_videos/patient_13_L3.mp4",
            "covid-blues/lus_videos/patient_9_L2.mp4",
        ]
        .iter()
        .filter_map(|p| shared.join(p).canonicalize().ok())
        .collect();
        scans.push(("a real video from ../shared/data".into(), cands));
    } else {
        println!("skipped   [real video] ../shared/data is absent");
    }
    for (i, (what, cands)) in scans.iter().enumerate() {
        match link_up(&tmp.path().join(format!("link{i}")), cands)? {
            Some(l) => l.print(),
            None => println!("skipped   [{what}] the model flagged none of {cands:?}"),
        }
    }
    bytes_table(&tmp.path().join("bytes"), &fixtures)?;
    worklist(&tmp.path().join("worklist"))
}

struct Link {
    name: String,
    original: u64,
    preview: u64,
    clip: u64,
    result: Option<f64>,
    preview_seen: f64,
    preview_done: f64,
    clip_seen: Option<f64>,
    clip_done: f64,
    wire_up: u64,
    ack_timeouts: u64,
}

impl Link {
    fn print(&self) {
        let n = &self.name;
        let clip_alone = self.clip_done - self.preview_done;
        let clip_own = self.clip_done - self.clip_seen.unwrap_or(self.preview_done);
        let preview_own = self.preview_done - self.preview_seen;
        println!(
            "baseline  [{n}] full clip, {} bytes (original {} bytes), over 256 kbit/s: preview complete → clip \
             complete {clip_alone:.2} s (first chunk listed → complete {clip_own:.2} s); link-up → clip complete {:.2} s",
            self.clip, self.original, self.clip_done
        );
        println!(
            "pleura    [{n}] preview, {} bytes: link-up → complete at the hub {:.2} s (first chunk listed → complete \
             {preview_own:.2} s; result committed at {}; media ack timeouts at the agent: {})",
            self.preview,
            self.preview_done,
            self.result.map_or("?".into(), |r| format!("{r:.2} s")),
            self.ack_timeouts
        );
        println!(
            "ratio     [{n}] clip transfer / link-up → preview = {:.1} (goal ≥ 10); link-up → clip / link-up → preview = {:.1}; \
             clip own transfer / preview own transfer = {:.1}; agent → hub bytes on the wire {}",
            clip_alone / self.preview_done,
            self.clip_done / self.preview_done,
            clip_own / preview_own.max(0.001),
            self.wire_up
        );
    }
}

/// A hub (down) and an agent behind a 256 kbit/s proxy; the first flagged candidate's
/// media prepared, then the hub starts and the hub's media index is watched.
fn link_up(dir: &Path, cands: &[PathBuf]) -> Result<Option<Link>> {
    let mut hub = Hub::new(&dir.join("hub"), Broker::Embedded)?;
    let opts = hub.agent_options();
    let proxy = CountingProxy::throttled(hub.mqtt_port, RATE)?;
    let mut agent = Agent::new(&dir.join("agent"), proxy.port, opts)?;
    agent.start()?;
    let mut chosen = None;
    for (i, src) in cands.iter().enumerate() {
        let patient = format!("p{i}");
        export(&agent, &patient, src)?;
        let done = wait_for("the scan analysed", 900, || {
            let rejected = agent.status().ok()?["intake"]["rejected"].as_u64()?;
            let a = analysed(&agent);
            (a.len() + rejected as usize > i).then_some(a)
        })?;
        let id = result_of(&agent, &patient);
        match done.iter().find(|(r, _)| Some(r) == id.as_ref()) {
            Some((r, true)) => {
                chosen = Some((src, r.clone()));
                break;
            }
            Some(_) => println!("note      {} not flagged by the model", src.display()),
            None => println!("note      {} rejected by the intake", src.display()),
        }
    }
    let Some((src, id)) = chosen else {
        return Ok(None);
    };
    let items = wait_for("the preview and clip prepared", 900, || {
        let p: Vec<_> = prepared(&agent)
            .into_iter()
            .filter(|(r, _, _)| *r == id)
            .collect();
        (p.len() >= 2).then_some(p)
    })?;
    let size_of = |k: &str| items.iter().find(|i| i.1.contains(k)).map_or(0, |i| i.2);
    let (preview, clip) = (size_of("PREVIEW"), size_of("CLIP"));
    let up0 = proxy.up.load(Ordering::Relaxed);
    hub.start()?;
    let t0 = Instant::now();
    let (mut result, mut preview_seen, mut preview_done, mut clip_seen) = (None, None, None, None);
    let clip_done = loop {
        let now = t0.elapsed().as_secs_f64();
        anyhow::ensure!(now < 900.0, "clip not at the hub in 15 min");
        if result.is_none()
            && hub
                .metric("pleura_hub_results_committed_total ")
                .unwrap_or(0)
                > 0
        {
            result = Some(now);
        }
        let idx = hub_items(&hub);
        let has = |k: i64, complete: bool| idx.iter().any(|i| i.1 == k && (i.2 || !complete));
        if preview_seen.is_none() && has(PREVIEW, false) {
            preview_seen = Some(now);
        }
        if preview_done.is_none() && has(PREVIEW, true) {
            preview_done = Some(now);
        }
        if clip_seen.is_none() && has(CLIP, false) {
            clip_seen = Some(now);
        }
        if has(CLIP, true) {
            break now;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Some(Link {
        name: src
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into()),
        original: std::fs::metadata(src)?.len(),
        preview,
        clip,
        result,
        preview_seen: preview_seen.context("preview")?,
        preview_done: preview_done.context("preview")?,
        clip_seen,
        clip_done,
        wire_up: proxy.up.load(Ordering::Relaxed) - up0,
        ack_timeouts: agent.status()?["media"]["ack_timeouts"]
            .as_u64()
            .unwrap_or(0),
    }))
}

/// Every fixture through one agent and hub (no throttle): the preview of each flagged
/// scan, the clip of every scan (the hub asks for the unflagged ones).
fn bytes_table(dir: &Path, fixtures: &Path) -> Result<()> {
    let mut hub = Hub::new(&dir.join("hub"), Broker::Embedded)?;
    let opts = hub.agent_options();
    let (clinic, device) = (opts.clinic.clone(), opts.device.clone());
    hub.start()?;
    let mut agent = Agent::new(&dir.join("agent"), hub.mqtt_port, opts)?;
    agent.start()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate() {
        export(&agent, &format!("p{i}"), f)?;
    }
    let n = files.len();
    let done = wait_for("every fixture analysed", 1800, || {
        let rejected = agent.status().ok()?["intake"]["rejected"].as_u64()?;
        let a = analysed(&agent);
        (a.len() + rejected as usize >= n).then_some(a)
    })?;
    wait_for("every result at the hub", 300, || {
        (hub.cases().ok()?.len() >= done.len()).then_some(())
    })?;
    let rows: Vec<(PathBuf, Option<(String, bool)>)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let id = result_of(&agent, &format!("p{i}"));
            let row = done.iter().find(|(r, _)| Some(r) == id.as_ref()).cloned();
            (f.clone(), row)
        })
        .collect();
    hub.kill9();
    for (_, row) in &rows {
        if let Some((r, false)) = row {
            request_clip(&hub, &clinic, &device, r)?;
        }
    }
    hub.start()?;
    let want = |r: &str, flagged: bool| {
        let idx = hub_items(&hub);
        let get = |k| {
            idx.iter()
                .find(|i| i.0 == r && i.1 == k && i.2)
                .map(|i| i.3)
        };
        let clip = get(CLIP)?;
        let preview = if flagged { Some(get(PREVIEW)?) } else { None };
        Some((preview, clip))
    };
    let sizes = wait_for("every preview and clip at the hub", 1800, || {
        rows.iter()
            .map(|(_, row)| match row {
                Some((r, f)) => want(r, *f).map(Some),
                None => Some(None),
            })
            .collect::<Option<Vec<_>>>()
    })?;
    println!("bytes     fixture                          original   flagged  preview  clip     clip/original");
    let mut previews = Vec::new();
    for ((f, row), size) in rows.iter().zip(&sizes) {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        let orig = std::fs::metadata(f)?.len();
        match (row, size) {
            (Some((_, flagged)), Some((preview, clip))) => {
                previews.extend(*preview);
                println!(
                    "bytes     {name:<32} {orig:>9}  {:<7}  {:>7}  {clip:>7}  {:.2}",
                    if *flagged { "yes" } else { "no" },
                    preview.map_or("-".into(), |p| p.to_string()),
                    *clip as f64 / orig as f64
                );
            }
            _ => println!("bytes     {name:<32} {orig:>9}  rejected by the intake"),
        }
    }
    if let Some(max) = previews.iter().max() {
        println!(
            "pleura    preview per flagged scan: max {max} bytes, mean {:.0} bytes over {} flagged (goal ≤ 60 kB)",
            previews.iter().sum::<u64>() as f64 / previews.len() as f64,
            previews.len()
        );
    }
    agent.kill9();
    hub.kill9();
    Ok(())
}

/// The worklist page with `EXAMS` examinations: the bare store query, then the page.
fn worklist(dir: &Path) -> Result<()> {
    let mut hub = Hub::new(dir, Broker::Embedded)?;
    let clinics: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    for (i, c) in clinics.iter().enumerate() {
        hub.enroll(c, "d1", if i < 5 { "north" } else { "south" })?;
    }
    hub.add_user("ana", "specialist", Some("north"), PW)?;
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let north: std::collections::BTreeSet<String> = clinics[..5].iter().cloned().collect();
    // What the page asks the store for (cases/review.rs): flagged, awaiting a read,
    // page 1 of 50; the specialist within the region.
    let queries = [
        (
            "specialist",
            WorklistQuery {
                scope: ClinicScope::Only(north),
                flagged: Some(true),
                read: Some(false),
                offset: 0,
                limit: 50,
            },
        ),
        (
            "operator",
            WorklistQuery {
                scope: ClinicScope::All,
                flagged: Some(true),
                read: Some(false),
                offset: 0,
                limit: 50,
            },
        ),
    ];
    let mut bare = Vec::new();
    {
        let t = Instant::now();
        let store = SledStore::open(&data)?;
        let now = pleura_shared::now_ms();
        for batch in 0..EXAMS / 500 {
            let records: Vec<ScanRecord> = (0..500u32)
                .map(|i| {
                    let n = batch * 500 + i;
                    let sev = (n % 4) as u8;
                    let mut r = sample_record(
                        &clinics[(n % 20) as usize],
                        "d1",
                        sev,
                        sev >= 2 || n % 3 == 0,
                    );
                    let mut key = [0u8; 16];
                    key[..4].copy_from_slice(&n.to_be_bytes());
                    r.patient_key = Some(key);
                    r
                })
                .collect();
            store.commit(&records, now - u64::from(batch) * 1000)?;
        }
        println!(
            "setup     {EXAMS} examinations committed in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        for (who, q) in &queries {
            let times = timed(WARMUP, REQUESTS, || {
                let rows = store.worklist(q, pleura_shared::now_ms())?.rows.len();
                anyhow::ensure!(rows == 50, "{rows} rows");
                Ok(())
            })?;
            bare.push((*who, times));
        }
    }
    let t = Instant::now();
    hub.start()?;
    println!(
        "setup     hub ready with {EXAMS} examinations in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", hub.metrics_port).parse()?;
    let ca = hub.pki.clone().context("a TLS hub")?.join("ca.pem");
    let cfg = pleura_shared::pki::client_config(&ca, None)?;
    let anon = pleura_runtime::web_client::Client::new(web, Arc::new(cfg));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let floor = timed(WARMUP, REQUESTS, || {
        let a = rt.block_on(anon.get("/healthz"))?;
        anyhow::ensure!(a.status == 200, "healthz {}", a.status);
        Ok(())
    })?;
    report_line(
        "baseline  GET /healthz (TLS handshake + HTTP, same port)",
        &floor,
    );
    for ((who, store_times), user) in bare.iter().zip(["ana", OPERATOR.0]) {
        let pw = if user == "ana" { PW } else { OPERATOR.1 };
        let c = rt.block_on(async {
            let form = anon.get("/login").await?;
            let nonce = form.cookie("pleura_login").context("login nonce")?;
            let a = anon
                .with_cookie("pleura_login", &nonce)
                .post(
                    "/login",
                    &[
                        ("username", user),
                        ("password", pw),
                        ("csrf", nonce.as_str()),
                    ],
                )
                .await?;
            let s = a.cookie("pleura_session").context("session cookie")?;
            anyhow::Ok(anon.with_cookie("pleura_session", &s))
        })?;
        let page = timed(WARMUP, REQUESTS, || {
            let a = rt.block_on(c.get("/"))?;
            let rows = a.text().matches("class=\"case-row").count();
            anyhow::ensure!(
                a.status == 200 && rows == 50,
                "{} with {rows} rows",
                a.status
            );
            Ok(())
        })?;
        report_line(
            &format!("baseline  [{who}] bare HubStore::worklist"),
            store_times,
        );
        report_line(
            &format!("pleura    [{who}] GET / (worklist page, HTTPS)"),
            &page,
        );
        println!(
            "ratio     [{who}] p99 page / p99 store = {:.1}; p50 page / p50 store = {:.1}; p50 page − p50 /healthz = {:.2} ms",
            pct(&page, 99) / pct(store_times, 99),
            pct(&page, 50) / pct(store_times, 50),
            pct(&page, 50) - pct(&floor, 50)
        );
    }
    hub.kill9();
    Ok(())
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {secs} s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Copies `src` to `inbox/<patient>/R1.<ext>` (aside, then renamed).
fn export(agent: &Agent, patient: &str, src: &Path) -> Result<()> {
    let dir = agent.inbox.join(patient);
    std::fs::create_dir_all(&dir)?;
    let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("bin");
    let tmp = dir.join(format!(".R1.{ext}.part"));
    std::fs::copy(src, &tmp)?;
    std::fs::rename(tmp, dir.join(format!("R1.{ext}")))?;
    Ok(())
}

/// The agent's result id of the scan it took from `inbox/<patient>/`.
fn result_of(agent: &Agent, patient: &str) -> Option<String> {
    let dir = agent.dir.join("data/processed").join(patient);
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find_map(|e| Some(e.file_name().to_str()?.split_once("--")?.0.to_string()))
}

/// The agent log's lines with `msg`, without colour codes.
fn log_lines(agent: &Agent, msg: &str) -> Vec<String> {
    let text = std::fs::read_to_string(agent.dir.join("agent.log")).unwrap_or_default();
    text.lines()
        .map(strip_ansi)
        .filter(|l| l.contains(msg))
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn field(line: &str, name: &str) -> Option<String> {
    let i = line.find(&format!(" {name}="))? + name.len() + 2;
    Some(
        line[i..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// (result id, flagged) of each scan the agent analysed.
fn analysed(agent: &Agent) -> Vec<(String, bool)> {
    log_lines(agent, "scan analysed and queued")
        .iter()
        .filter_map(|l| Some((field(l, "result_id")?, field(l, "flagged")? == "true")))
        .collect()
}

/// (result id, kind, bytes) of each media item the agent made.
fn prepared(agent: &Agent) -> Vec<(String, String, u64)> {
    log_lines(agent, "media item prepared")
        .iter()
        .filter_map(|l| {
            Some((
                field(l, "result_id")?,
                field(l, "kind")?,
                field(l, "bytes")?.parse().ok()?,
            ))
        })
        .collect()
}

/// (result id, kind, complete, total bytes) of each item the hub lists, once per
/// result it is listed under.
fn hub_items(hub: &Hub) -> Vec<(String, i64, bool, u64)> {
    let Ok(rd) = std::fs::read_dir(hub.dir.join("data/media/index")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in rd
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    {
        let (kind, complete) = (
            v["kind"].as_i64().unwrap_or(0),
            v["complete"].as_bool().unwrap_or(false),
        );
        let total = v["total"].as_u64().unwrap_or(0);
        let mut ids = vec![v["result_id"].as_str().unwrap_or_default().to_string()];
        if let Some(a) = v["also"].as_array() {
            ids.extend(a.iter().filter_map(|x| x.as_str().map(String::from)));
        }
        out.extend(ids.into_iter().map(|r| (r, kind, complete, total)));
    }
    out
}

/// Queues a ClipRequest for `result` at the hub (stopped: its store is its own).
fn request_clip(hub: &Hub, clinic: &str, device: &str, result: &str) -> Result<()> {
    use hub_server::{ca::Pki, downlink::Downlink, metrics::Metrics};
    use pleura_proto::v1::{downlink, ClipRequest};
    let pki = Pki::open(hub.pki.as_ref().context("a TLS hub")?)?;
    let (signer, _) = pki.downlink_signer()?;
    let dl = Downlink::open(
        &hub.dir.join("data"),
        Some(signer),
        Arc::new(Metrics::default()),
    )?;
    let req = ClipRequest {
        result_id: hex::decode(result)?,
        reason: "review-bench: clip of an unflagged scan".into(),
    };
    dl.send(clinic, device, downlink::Kind::ClipRequest(req))?;
    Ok(())
}
