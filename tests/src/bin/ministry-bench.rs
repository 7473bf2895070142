//! `cargo run --release -p pleura-e2e --bin ministry-bench`: the ministry dashboard
//! benchmark of issue #16 (BENCHMARKS.md), as ratios against a baseline measured in the
//! same run.
//!
//! A year of 2,000 clinics in 20 regions (≈ 10 million results) in the hub's default
//! store. A sample goes through the real write path (`HubStore::commit`, verdicts through
//! `record_read`): every clinic's latest day, and the whole year of a few clinics; its
//! throughput and bytes per result are reported. The other clinic-days' roll-up rows are
//! built with `Rollup::of_exam` over the same kind of synthetic examinations and loaded
//! directly (`SledStore::load_rollups`): the report reads only roll-up rows, so its cost
//! depends on the rows, not on how they got there. The run checks that the sample's rows
//! equal the ones the loader would have written.
//!
//! Timed, for the dashboard's default 12 weeks and for 53 weeks: (a) the baseline, the
//! same roll-up rows read directly (`HubStore::rollups`) in-process; (b) the report built
//! from them (`ministry::query::build`) in-process; then, with a real hub process on the
//! same store, (c) `GET /ministry?from=…&to=…` over loopback HTTPS (ministry account)
//! and (d) the gRPC `Aggregates` call, which returns every table.
//! `PLEURA_BENCH_REQUESTS` (default 50) timed requests after `WARMUP` untimed ones.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use hub_server::ca::{Pki, Registry};
use hub_server::cases::ministry::MinistrySettings;
use hub_server::directory::Directory;
use hub_server::ministry::period::IsoWeek;
use hub_server::ministry::query::{self, ClinicDetail, ReportQuery};
use hub_server::store::exams::{Exam, Impression, Read, Recommendation};
use hub_server::store::rollup::{Rollup, RollupRow};
use hub_server::store::{AggregateQuery, ClinicScope, HubStore, SledStore};
use pleura_e2e::timing::{pct, report_line, timed};
use pleura_e2e::*;
use pleura_proto::v1::hub_client::HubClient;
use pleura_proto::v1::AggregatesRequest;
use pleura_shared::record::sample_record;
use pleura_shared::{AgeBand, ClassProbs, Demographics, FlagReason, ScanRecord, Severity, Sex};
use prost::Message;
use rand::Rng;

const CLINICS: usize = 2_000;
const REGIONS: usize = 20;
const DAYS: u32 = 365;
/// Mean results per clinic-day: 10 million over 2,000 clinics × 365 days.
const MEAN: f64 = 13.7;
/// Clinics whose whole year goes through `commit` (every clinic's latest day does too).
const SAMPLE_CLINICS: usize = 5;
const WARMUP: usize = 3;
const PW: &str = "a long enough password";
const DAY_MS: u64 = 86_400_000;
const ZONES: [&str; 12] = [
    "R1", "R2", "R3", "R4", "R5", "R6", "L1", "L2", "L3", "L4", "L5", "L6",
];

/// One synthetic examination: its readings, and the verdict a specialist gave (if any).
struct GenExam {
    records: Vec<ScanRecord>,
    verdict: Option<Impression>,
}

fn main() -> Result<()> {
    let requests: usize = std::env::var("PLEURA_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let tmp = tempfile::tempdir()?;
    println!("setup     temp dir {}", tmp.path().display());
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded)?;
    hub.add_user("min", "ministry", None, PW)?;
    let clinics: Vec<(String, String)> = (0..CLINICS)
        .map(|i| (format!("c{i:04}"), format!("r{:02}", i * REGIONS / CLINICS)))
        .collect();
    let pki_dir = hub.pki.clone().context("a TLS hub")?;
    enrol(&pki_dir, &hub.dir.join("bundles"), &clinics)?;

    let data = hub.data_dir();
    std::fs::create_dir_all(&data)?;
    let today = (pleura_shared::now_ms() / DAY_MS) as u32;
    let first_day = today + 1 - DAYS;
    let results = {
        let store = SledStore::open(&data)?;
        let sampled = sample(&store, &clinics, first_day, today)?;
        drop(store);
        let bytes = du(&data);
        println!(
            "sample    store after the sample: {:.1} MB, {:.0} bytes per result; {} results committed \
             would be ≈ {:.1} GB",
            bytes as f64 / 1e6,
            bytes as f64 / sampled as f64,
            10_000_000,
            bytes as f64 / sampled as f64 * 1e7 / 1e9
        );
        let store = SledStore::open(&data)?;
        sampled + load(&store, &clinics, first_day, today)?
    };
    let store = SledStore::open(&data)?;
    let all = store.rollups(&AggregateQuery::everything())?;
    let (scans, exams) = all
        .iter()
        .fold((0, 0), |(s, e), r| (s + r.rollup.scans, e + r.rollup.exams));
    anyhow::ensure!(
        scans == results,
        "{scans} scans in the roll-ups, {results} results made"
    );
    drop(all);
    println!(
        "store     {} on disk; {} roll-up rows (clinic-days); {scans} results in {exams} examinations",
        human(du(&data)),
        store.rollups(&AggregateQuery::everything())?.len()
    );

    let to = IsoWeek::of_day(today);
    let ranges = [("12 weeks", to.minus(11)), ("53 weeks", to.minus(52))];
    let registry = Registry::new(&pki_dir)?;
    let mut inproc = Vec::new();
    for (name, from) in ranges {
        let q = report_query(from, to);
        let (from_day, to_day) = q.days();
        let aq = AggregateQuery {
            scope: ClinicScope::All,
            from_day: Some(from_day),
            to_day: Some(to_day),
        };
        let mut rows = Vec::new();
        let read = timed(WARMUP, requests, || {
            rows = store.rollups(&aq)?;
            Ok(())
        })?;
        let regions = registry.regions();
        anyhow::ensure!(regions.len() == CLINICS, "{} clinics", regions.len());
        let dir = timed(WARMUP, requests, || {
            anyhow::ensure!(registry.regions().len() == CLINICS);
            Ok(())
        })?;
        let devices = store.devices()?;
        let build = timed(WARMUP, requests, || {
            let r = query::build(&q, &rows, &regions, &devices);
            anyhow::ensure!(r.regions.len() == REGIONS);
            Ok(())
        })?;
        // Threshold 1: no count is small, nothing is hidden; the difference is suppression.
        let plain_q = ReportQuery {
            threshold: 1,
            ..q.clone()
        };
        let plain = timed(WARMUP, requests.min(10), || {
            query::build(&plain_q, &rows, &regions, &devices);
            Ok(())
        })?;
        println!(
            "rows      [{name}] {}..{}: {} roll-up rows (days {from_day}..{to_day}, alert history included)",
            from.label(),
            to.label(),
            rows.len()
        );
        report_line(&format!("baseline  [{name}] HubStore::rollups"), &read);
        report_line(&format!("in-proc   [{name}] directory regions()"), &dir);
        report_line(&format!("in-proc   [{name}] query::build"), &build);
        report_line(
            &format!("in-proc   [{name}] query::build, threshold 1 (nothing suppressed)"),
            &plain,
        );
        inproc.push((name, from, read, build));
    }
    drop(store);
    let fsync = fsync_floor(&hub.dir.join("fsync-probe"), requests)?;
    report_line("floor     append + fsync of one line (audit)", &fsync);

    let t = Instant::now();
    hub.start()?;
    println!("setup     hub ready in {:.1} s", t.elapsed().as_secs_f64());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let web: std::net::SocketAddr = format!("127.0.0.1:{}", hub.metrics_port).parse()?;
    let cfg = pleura_shared::pki::client_config(&pki_dir.join("ca.pem"), None)?;
    let anon = pleura_runtime::web_client::Client::new(web, Arc::new(cfg));
    let floor = timed(WARMUP, requests, || {
        anyhow::ensure!(rt.block_on(anon.get("/healthz"))?.status == 200);
        Ok(())
    })?;
    report_line("floor     GET /healthz (TLS handshake + HTTP)", &floor);
    let browser = rt.block_on(login(&anon, "min"))?;
    let (token, mut grpc) = rt.block_on(async {
        let token = hub.login("min", PW).await?;
        let c = HubClient::new(hub.channel(None).await?).max_decoding_message_size(1 << 30);
        anyhow::Ok((token, c))
    })?;
    let mut table = Vec::new();
    for (name, from, read, build) in inproc {
        let path = format!("/ministry?from={}&to={}", from.label(), to.label());
        let mut page_bytes = 0;
        let page = timed(WARMUP, requests, || {
            let a = rt.block_on(browser.get(&path))?;
            anyhow::ensure!(
                a.status == 200 && a.text().contains("curve-examinations-regions"),
                "GET {path}: {}",
                a.status
            );
            page_bytes = a.body.len();
            Ok(())
        })?;
        let (mut tables, mut reply_bytes) = (0, 0);
        let call = timed(WARMUP, requests, || {
            let req = AggregatesRequest {
                from_week: from.label(),
                to_week: to.label(),
                ..Default::default()
            };
            let r = rt
                .block_on(grpc.aggregates(bearer(req, &token)))?
                .into_inner();
            anyhow::ensure!(!r.tables.is_empty());
            (tables, reply_bytes) = (r.tables.len(), r.encoded_len());
            Ok(())
        })?;
        report_line(
            &format!("pleura    [{name}] GET /ministry ({page_bytes} bytes)"),
            &page,
        );
        report_line(
            &format!("pleura    [{name}] gRPC Aggregates ({tables} tables, {reply_bytes} bytes)"),
            &call,
        );
        table.push((name, read, build, page, call));
    }
    hub.kill9();
    println!();
    println!("| range | (a) rows read p50 / p99 | (b) build p50 / p99 | (c) page p50 / p99 | (d) gRPC p50 / p99 | b/a p99 | c/a p99 | d/a p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, a, b, c, d) in &table {
        let f = |v: &[f64]| format!("{:.1} / {:.1} ms", pct(v, 50), pct(v, 99));
        let r = |v: &[f64]| pct(v, 99) / pct(a, 99);
        println!(
            "| {name} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            f(a),
            f(b),
            f(c),
            f(d),
            r(b),
            r(c),
            r(d)
        );
    }
    Ok(())
}

/// Enrols one device per clinic with the PKI API (what `hub-server enroll` does, without a
/// process each), so the hub's directory knows every clinic's region.
fn enrol(pki_dir: &Path, bundles: &Path, clinics: &[(String, String)]) -> Result<()> {
    let t = Instant::now();
    let pki = Pki::open(pki_dir)?;
    let now = (pleura_shared::now_ms() / 1000) as i64;
    for (i, (clinic, region)) in clinics.iter().enumerate() {
        pki.enroll(
            clinic,
            "d1",
            region,
            now - 60,
            now + 400 * 86_400,
            &bundles.join(clinic),
        )?;
        if (i + 1) % 500 == 0 {
            println!(
                "setup     {} devices enrolled in {:.1} s",
                i + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    std::fs::remove_dir_all(bundles)?;
    Ok(())
}

/// A clinic's size factor, 0.15-1.85 (mean 1): small clinics make small cells.
fn size(c: usize) -> f64 {
    0.15 + 1.7 * ((c * 7_919) % 1_000) as f64 / 1_000.0
}

/// The readings of one clinic-day, as examinations (1-6 zones each), varied by clinic
/// size, weekday, and a seasonal wave that peaks at a different time in each region.
fn clinic_day(c: usize, clinic: &str, day: u32, first: u32, rng: &mut impl Rng) -> Vec<GenExam> {
    let weekday = if (day + 3) % 7 >= 5 { 0.4 } else { 1.24 };
    let region = (c * REGIONS / CLINICS) as f64;
    let phase = std::f64::consts::TAU * (f64::from(day) + region * 18.0) / 365.0;
    let mean = MEAN * size(c) * weekday * (1.0 + 0.5 * phase.sin());
    let mut n = (mean * rng.random_range(0.5..1.5) + rng.random::<f64>()) as usize;
    // A new model version half-way through the year.
    let old_model = day < first + DAYS / 2;
    let mut out = Vec::new();
    while n > 0 {
        let k = rng.random_range(1..=6usize).min(n);
        n -= k;
        let patient: [u8; 16] = rng.random();
        let demographics = Demographics {
            age_band: (rng.random::<f64>() > 0.1).then(|| AgeBand::ALL[rng.random_range(0..5)]),
            sex: (rng.random::<f64>() > 0.1).then(|| Sex::ALL[rng.random_range(0..2)]),
        };
        let zone0 = rng.random_range(0..ZONES.len());
        let records: Vec<ScanRecord> = (0..k)
            .map(|z| {
                let u: f64 = rng.random();
                let sev = [0.5, 0.75, 0.9, 1.0]
                    .iter()
                    .position(|p| u < *p)
                    .unwrap_or(3) as u8;
                let flagged = sev >= 2 || rng.random::<f64>() < 0.08;
                let mut r = sample_record(clinic, "d1", sev, flagged);
                r.patient_key = Some(patient);
                r.scan_day = day;
                r.zone = Some(ZONES[(zone0 + z) % ZONES.len()].into());
                r.analysed_at_ms = u64::from(day) * DAY_MS + 8 * 3_600_000 + z as u64 * 60_000;
                r.demographics = demographics;
                let mut probs = [0.15f32; 3];
                probs[rng.random_range(0..3)] = 0.7;
                r.analysis.class_probs = ClassProbs::from_slice(&probs);
                r.analysis.severity = Severity::new(sev).expect("0-3");
                if flagged && rng.random::<f64>() < 0.3 {
                    r.analysis.flag_reasons = vec![FlagReason::CovidSuspected];
                }
                if old_model {
                    r.analysis.model_version = "pleura-lite@2026.06.01".into();
                }
                r
            })
            .collect();
        let flagged = records.iter().any(|r| r.analysis.flagged);
        let verdict = (flagged && rng.random::<f64>() < 0.7).then(|| {
            [
                Impression::CovidCompatible,
                Impression::OtherPneumonia,
                Impression::Normal,
                Impression::NonDiagnostic,
            ][rng.random_range(0..4)]
        });
        out.push(GenExam { records, verdict });
    }
    out
}

/// What committing `exams` (and recording their verdicts) adds to their clinic-day's
/// roll-up: the store's own per-examination function over the examinations it would hold.
fn rollup_of(exams: &[GenExam], received_ms: u64) -> Rollup {
    let mut total = Rollup::default();
    for g in exams {
        let mut e = Exam::empty_for(&g.records[0]);
        for r in &g.records {
            e.add(r, received_ms, false);
        }
        if let Some(v) = g.verdict {
            // What `record_read` sets on the examination (a first read).
            (e.reads, e.verdict) = (1, Some(v));
        }
        total.add(&Rollup::of_exam(&e));
    }
    total
}

fn read(v: Impression) -> Read {
    Read {
        reviewer: "dr-bench".into(),
        at_ms: pleura_shared::now_ms(),
        zones: Vec::new(),
        impression: v,
        recommendation: Recommendation::TreatLocally,
        rescan_reason: String::new(),
        comment: String::new(),
        second_read: false,
    }
}

/// The real write path: the whole year of the first `SAMPLE_CLINICS` clinics and the
/// latest day of every other, one commit per clinic-day, then the verdicts. Checks the
/// stored roll-ups against `rollup_of` over the same examinations; returns the results.
fn sample(store: &SledStore, clinics: &[(String, String)], first: u32, today: u32) -> Result<u64> {
    let mut rng = rand::rng();
    let mut expected: BTreeMap<(String, u32), Rollup> = BTreeMap::new();
    let (mut results, mut commit_s, mut reads, mut read_s) = (0u64, 0.0, 0u64, 0.0);
    let days = |c: usize| if c < SAMPLE_CLINICS { first } else { today };
    let t = Instant::now();
    for (c, (clinic, _)) in clinics.iter().enumerate() {
        for day in days(c)..=today {
            let exams = clinic_day(c, clinic, day, first, &mut rng);
            let records: Vec<ScanRecord> = exams
                .iter()
                .flat_map(|g| g.records.iter().cloned())
                .collect();
            if records.is_empty() {
                continue;
            }
            let received = u64::from(day) * DAY_MS + 20 * 3_600_000;
            let s = Instant::now();
            store.commit(&records, received)?;
            commit_s += s.elapsed().as_secs_f64();
            let s = Instant::now();
            for g in &exams {
                if let Some(v) = g.verdict {
                    store.record_read(&Exam::id_of(&g.records[0]), read(v))?;
                    reads += 1;
                }
            }
            read_s += s.elapsed().as_secs_f64();
            results += records.len() as u64;
            expected.insert((clinic.clone(), day), rollup_of(&exams, received));
        }
        if (c + 1) % 500 == 0 {
            println!("sample    {} clinics, {results} results committed", c + 1);
        }
    }
    println!(
        "sample    {results} results committed in {} commits (one per clinic-day) in {commit_s:.1} s: \
         {:.0} results/s; {reads} verdicts recorded in {read_s:.1} s ({:.0}/s); {:.1} s in all",
        expected.len(),
        results as f64 / commit_s,
        reads as f64 / read_s,
        t.elapsed().as_secs_f64()
    );
    let stored: BTreeMap<(String, u32), Rollup> = store
        .rollups(&AggregateQuery::everything())?
        .into_iter()
        .map(|r| ((r.clinic, r.day), r.rollup))
        .collect();
    expected.retain(|_, r| !r.is_empty());
    anyhow::ensure!(
        stored == expected,
        "the committed roll-ups differ from what the loader builds"
    );
    println!(
        "sample    check: the {} committed clinic-days' roll-ups equal the loader's rows for the same examinations",
        stored.len()
    );
    Ok(results)
}

/// Every clinic-day the sample did not commit: roll-up rows built from synthetic
/// examinations (two threads), loaded 40 clinics at a time. Returns the results counted.
fn load(store: &SledStore, clinics: &[(String, String)], first: u32, today: u32) -> Result<u64> {
    let t = Instant::now();
    let (mut results, mut rows_n, mut load_s) = (0u64, 0usize, 0.0);
    let todo: Vec<usize> = (SAMPLE_CLINICS..clinics.len()).collect();
    for (i, chunk) in todo.chunks(40).enumerate() {
        let halves: Vec<(Vec<RollupRow>, u64)> = std::thread::scope(|s| {
            let parts: Vec<_> = chunk
                .chunks(chunk.len().div_ceil(2))
                .map(|part| {
                    s.spawn(move || {
                        let mut rng = rand::rng();
                        let (mut rows, mut n) = (Vec::new(), 0u64);
                        for &c in part {
                            let clinic = &clinics[c].0;
                            for day in first..today {
                                let exams = clinic_day(c, clinic, day, first, &mut rng);
                                n += exams.iter().map(|g| g.records.len() as u64).sum::<u64>();
                                let received = u64::from(day) * DAY_MS + 20 * 3_600_000;
                                let rollup = rollup_of(&exams, received);
                                if !rollup.is_empty() {
                                    rows.push(RollupRow {
                                        clinic: clinic.clone(),
                                        day,
                                        rollup,
                                    });
                                }
                            }
                        }
                        (rows, n)
                    })
                })
                .collect();
            parts
                .into_iter()
                .map(|h| h.join().expect("generator"))
                .collect()
        });
        for (rows, n) in halves {
            let s = Instant::now();
            store.load_rollups(&rows)?;
            load_s += s.elapsed().as_secs_f64();
            results += n;
            rows_n += rows.len();
        }
        if (i + 1) % 10 == 0 {
            println!(
                "load      {} clinics, {rows_n} rows ({results} results) in {:.0} s",
                SAMPLE_CLINICS + (i + 1) * 40,
                t.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "load      {rows_n} roll-up rows for {results} results built and loaded in {:.1} s ({load_s:.1} s of it writing)",
        t.elapsed().as_secs_f64()
    );
    Ok(results)
}

fn report_query(from: IsoWeek, to: IsoWeek) -> ReportQuery {
    let s = MinistrySettings::default();
    ReportQuery {
        from,
        to,
        threshold: s.threshold,
        silent_days: s.silent_days,
        clinics_of: ClinicDetail::None,
        disaggregate: false,
        now_ms: pleura_shared::now_ms(),
    }
}

/// A browser session of `user` (the login form, its nonce, then the session cookie).
async fn login(
    anon: &pleura_runtime::web_client::Client,
    user: &str,
) -> Result<pleura_runtime::web_client::Client> {
    let form = anon.get("/login").await?;
    let nonce = form.cookie("pleura_login").context("login nonce")?;
    let a = anon
        .with_cookie("pleura_login", &nonce)
        .post(
            "/login",
            &[
                ("username", user),
                ("password", PW),
                ("csrf", nonce.as_str()),
            ],
        )
        .await?;
    let s = a.cookie("pleura_session").context("session cookie")?;
    Ok(anon.with_cookie("pleura_session", &s))
}

/// Appending one line and fsyncing it, as the audit log does per request.
fn fsync_floor(path: &Path, n: usize) -> Result<Vec<f64>> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    timed(WARMUP, n, || {
        f.write_all(b"{\"who\":\"min\",\"action\":\"ministry_report\",\"outcome\":\"allowed\"}\n")?;
        f.sync_data()?;
        Ok(())
    })
}

/// Bytes under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn human(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}
