use super::*;
use pleura_shared::record::sample_record;
use pleura_shared::ResultId;

fn ingest(dir: &std::path::Path) -> Ingest {
    let metrics = Arc::new(Metrics::default());
    let recovered = crate::recovery::open_checked(dir, metrics.clone()).unwrap();
    let mut ing = Ingest::new(recovered, metrics, None);
    ing.max_payload = 4096;
    ing
}

fn batch(clinic: &str, device: &str, recs: &[ScanRecord]) -> ResultBatch {
    ResultBatch {
        schema_version: SCHEMA_VERSION,
        clinic_id: clinic.into(),
        device_id: device.into(),
        results: recs.iter().map(|r| r.to_wire()).collect(),
        ..Default::default()
    }
}

/// An unsigned envelope (insecure mode).
fn env(b: &ResultBatch) -> Vec<u8> {
    SignedBatch {
        batch: b.encode_to_vec(),
        signature: vec![],
    }
    .encode_to_vec()
}

fn signed(b: &ResultBatch, key: &std::path::Path) -> SignedBatch {
    let batch = b.encode_to_vec();
    let signature = signing::BatchSigner::from_pem_file(key)
        .unwrap()
        .sign(&batch);
    SignedBatch { batch, signature }
}

#[test]
fn only_the_enrolled_unrevoked_device_can_vouch_for_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let pki = crate::ca::Pki::init(&pki_dir, "t", &["localhost".into()]).unwrap();
    let now = (now_ms() / 1000) as i64;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    pki.enroll("c1", "a", "north", now - 60, now + 3600, &a)
        .unwrap();
    pki.enroll("c2", "b", "south", now - 60, now + 3600, &b)
        .unwrap();
    let mut ing = ingest(&dir.path().join("store"));
    ing.registry = Some(Arc::new(Registry::new(&pki_dir).unwrap()));
    let r = sample_record("c1", "a", 2, true);
    let good = batch("c1", "a", std::slice::from_ref(&r));
    let label = |res: Result<Outcome, IngestError>| res.err().map(|e| e.label());

    // Unsigned, or signed by another device's key, or claiming another device.
    assert_eq!(
        label(ing.upload(SignedBatch::decode(env(&good).as_slice()).unwrap(), None)),
        Some("signature")
    );
    assert_eq!(
        label(ing.upload(signed(&good, &b.join("device.key")), None)),
        Some("signature")
    );
    let forged = batch("c2", "b", &[sample_record("c2", "b", 2, true)]);
    assert_eq!(
        label(ing.upload(
            signed(&forged, &a.join("device.key")),
            Some(("c1".into(), "a".into()))
        )),
        Some("signature")
    );
    // Correctly signed by b but sent over a's connection: the transport identity wins.
    assert_eq!(
        label(ing.upload(
            signed(&forged, &b.join("device.key")),
            Some(("c1".into(), "a".into()))
        )),
        Some("identity_mismatch")
    );
    // Tampered after signing.
    let mut t = signed(&good, &a.join("device.key"));
    let last = t.batch.len() - 1;
    t.batch[last] ^= 1;
    assert!(ing.upload(t, None).is_err());
    assert_eq!(ing.store.count().unwrap(), 0);

    let out = ing
        .upload(signed(&good, &a.join("device.key")), None)
        .unwrap();
    assert_eq!(out.ack.committed.len(), 1);

    std::thread::sleep(std::time::Duration::from_millis(20));
    pki.revoke("c1", "a").unwrap();
    assert_eq!(
        label(ing.upload(signed(&good, &a.join("device.key")), None)),
        Some("untrusted_device")
    );
}

#[test]
fn a_device_cannot_preempt_another_devices_result_id() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let ing = ingest(dir.path());
    let genuine = sample_record("c2", "b", 3, true);
    // Device a sends a record of its own under b's future result id.
    let mut squat = sample_record("c1", "a", 0, false);
    squat.id = genuine.id;
    squat.scan = squat.id;
    ing.mqtt_message(
        &topics::results("c1", "a"),
        &env(&batch("c1", "a", &[squat])),
    )
    .unwrap();
    // b's genuine severity-3 result: not acked, not counted as a duplicate.
    let send_b = || {
        ing.mqtt_message(
            &topics::results("c2", "b"),
            &env(&batch("c2", "b", std::slice::from_ref(&genuine))),
        )
        .unwrap()
    };
    let out = send_b();
    assert!(out.ack.committed.is_empty(), "acked as if committed");
    assert_eq!(out.ack.rejected.len(), 1);
    assert!(out.ack.rejected[0].reason.contains("conflict"));
    assert_eq!(ing.metrics.results_duplicate.load(Relaxed), 0);
    assert_eq!(ing.metrics.results_conflict.load(Relaxed), 1);
    // Redelivered, still refused; nothing overwritten either way.
    assert!(send_b().ack.committed.is_empty());
    assert_eq!(
        ing.store.get(&genuine.id).unwrap().unwrap().record.device,
        "a"
    );

    // The same device re-using an id for different content is a conflict as well.
    let first = sample_record("c2", "b", 1, false);
    let mut changed = first.clone();
    changed.analysis.flagged = true;
    let topic = topics::results("c2", "b");
    ing.mqtt_message(
        &topic,
        &env(&batch("c2", "b", std::slice::from_ref(&first))),
    )
    .unwrap();
    let out = ing
        .mqtt_message(&topic, &env(&batch("c2", "b", &[changed, first.clone()])))
        .unwrap();
    assert_eq!(out.ack.committed, vec![first.id.0.to_vec()]);
    assert_eq!(out.ack.rejected.len(), 1);
    assert_eq!(ing.metrics.results_conflict.load(Relaxed), 3);
    assert_eq!(ing.store.get(&first.id).unwrap().unwrap().record, first);
}

#[test]
fn one_batch_limit_holds_for_mqtt_and_grpc() {
    use pleura_shared::record::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
    let dir = tempfile::tempdir().unwrap();
    let mut ing = ingest(dir.path());
    ing.max_payload = MAX_BATCH_BYTES;
    ing.max_records = MAX_BATCH_RECORDS;
    let topic = topics::results("c1", "d1");
    let recs = |n: usize| -> Vec<ScanRecord> {
        (0..n)
            .map(|_| sample_record("c1", "d1", 1, false))
            .collect()
    };
    let grpc = |ing: &Ingest, b: &ResultBatch| {
        ing.upload(SignedBatch::decode(env(b).as_slice()).unwrap(), None)
            .err()
            .map(|e| e.label())
    };
    // The 1,500-result batch gRPC used to take: refused on both paths.
    let big = batch("c1", "d1", &recs(1500));
    assert!(env(&big).len() > 250_000);
    assert_eq!(grpc(&ing, &big), Some("too_large"));
    assert_eq!(
        ing.mqtt_message(&topic, &env(&big))
            .err()
            .map(|e| e.label()),
        Some("too_large")
    );
    // Past the count limit, even under the byte limit.
    ing.max_payload = 1 << 20;
    let many = batch("c1", "d1", &recs(MAX_BATCH_RECORDS + 1));
    assert_eq!(grpc(&ing, &many), Some("too_many_records"));
    assert_eq!(
        ing.mqtt_message(&topic, &env(&many))
            .err()
            .map(|e| e.label()),
        Some("too_many_records")
    );
    assert_eq!(ing.store.count().unwrap(), 0);
    // What the edge sends by default (50 results) passes; ~300 fit in the byte limit.
    ing.max_payload = MAX_BATCH_BYTES;
    let per = env(&batch("c1", "d1", &recs(100))).len() / 100;
    assert!(MAX_BATCH_BYTES / per >= 250, "{per} bytes a result");
    assert_eq!(grpc(&ing, &batch("c1", "d1", &recs(50))), None);
    assert_eq!(grpc(&ing, &batch("c1", "d1", &recs(250))), None);
    assert_eq!(ing.store.count().unwrap(), 300);
}

#[test]
fn bad_messages_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ing = ingest(dir.path());
    let topic = topics::results("c1", "d1");
    let r = sample_record("c1", "d1", 2, true);
    let label = |res: Result<Outcome, IngestError>| res.err().map(|e| e.label());
    assert_eq!(
        label(ing.mqtt_message(&topic, b"\xff\xff garbage")),
        Some("malformed")
    );
    assert_eq!(
        label(ing.mqtt_message(&topic, &vec![0; 5000])),
        Some("too_large")
    );
    assert_eq!(
        label(ing.mqtt_message("pleura/v1/other", b"")),
        Some("topic")
    );
    let mut b = batch("c1", "d1", std::slice::from_ref(&r));
    b.schema_version = 99;
    assert_eq!(
        label(ing.mqtt_message(&topic, &env(&b))),
        Some("schema_version")
    );
    let b = batch("c2", "d1", std::slice::from_ref(&r));
    assert_eq!(
        label(ing.mqtt_message(&topic, &env(&b))),
        Some("identity_mismatch")
    );
    assert_eq!(ing.store.count().unwrap(), 0);

    // A valid message afterwards still goes through.
    let out = ing
        .mqtt_message(&topic, &env(&batch("c1", "d1", std::slice::from_ref(&r))))
        .unwrap();
    assert_eq!(out.ack.committed, vec![r.id.0.to_vec()]);
    assert_eq!(ing.store.count().unwrap(), 1);
}

#[test]
fn a_bad_record_is_rejected_alone_and_duplicates_are_acked_again() {
    let dir = tempfile::tempdir().unwrap();
    let ing = ingest(dir.path());
    let good = sample_record("c1", "d1", 1, false);
    let foreign = sample_record("c9", "d1", 1, false);
    let mut b = batch("c1", "d1", &[good.clone(), foreign.clone()]);
    b.results.push({
        let mut w = good.to_wire();
        w.result_id = vec![1; 16];
        w.severity = 7;
        w
    });
    let out = ing
        .upload(SignedBatch::decode(env(&b).as_slice()).unwrap(), None)
        .unwrap();
    assert_eq!(out.ack.committed.len(), 1);
    assert_eq!(out.ack.rejected.len(), 2);
    assert!(out.ack.rejected[0].reason.contains("c9/d1"));
    assert!(out.ack.rejected[1].reason.contains("severity"));
    let again = ing
        .upload(
            SignedBatch::decode(env(&batch("c1", "d1", std::slice::from_ref(&good))).as_slice())
                .unwrap(),
            None,
        )
        .unwrap();
    assert_eq!(again.ack.committed, vec![good.id.0.to_vec()]);
    assert_eq!(
        ing.metrics
            .results_duplicate
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(ing.store.count().unwrap(), 1);
}

/// A record of `day` (UTC days of analysed_at_ms), as the edge files them.
fn on_day(clinic: &str, device: &str, day: u32) -> ScanRecord {
    let mut r = sample_record(clinic, device, 1, false);
    r.analysed_at_ms = u64::from(day) * 86_400_000 + 3_600_000;
    r
}

fn send(ing: &Ingest, b: &ResultBatch) -> Result<Outcome, IngestError> {
    ing.mqtt_message(&topics::results(&b.clinic_id, &b.device_id), &env(b))
}

fn holdings_of(recs: &[ScanRecord]) -> Holdings {
    let mut h = Holdings::default();
    for r in recs {
        h.add(pleura_shared::holdings::day_of_ms(r.analysed_at_ms), &r.id);
    }
    h
}

fn retraction(id: &ResultId, reason: &str) -> pleura_shared::wire::Retraction {
    pleura_shared::wire::Retraction {
        result_id: id.0.to_vec(),
        reason: reason.into(),
    }
}

#[test]
fn a_batch_needs_results_retractions_or_holdings_and_valid_holdings() {
    let dir = tempfile::tempdir().unwrap();
    let ing = ingest(dir.path());
    let empty = batch("c1", "d1", &[]);
    assert_eq!(send(&ing, &empty).err().map(|e| e.label()), Some("empty"));

    let mut only_holdings = empty.clone();
    only_holdings.holdings = Some(Holdings::default().to_wire());
    let ack = send(&ing, &only_holdings).unwrap().ack;
    assert!(ack.committed.is_empty() && ack.resend_days.is_empty());

    let mut only_retraction = empty.clone();
    only_retraction.retractions = vec![retraction(&ResultId::random(), "wrong patient")];
    assert_eq!(send(&ing, &only_retraction).unwrap().ack.retracted.len(), 1);

    let mut bad = empty.clone();
    let mut h = holdings_of(&[on_day("c1", "d1", 20_000)]).to_wire();
    h.days[0].xor.truncate(3);
    bad.holdings = Some(h);
    assert_eq!(send(&ing, &bad).err().map(|e| e.label()), Some("malformed"));
    let mut twice = holdings_of(&[on_day("c1", "d1", 20_000)]).to_wire();
    twice.days.push(twice.days[0].clone());
    bad.holdings = Some(twice);
    assert_eq!(send(&ing, &bad).err().map(|e| e.label()), Some("malformed"));
    assert_eq!(
        ing.metrics.rejected_messages("malformed"),
        0,
        "counted by the MQTT loop"
    );
}

#[test]
fn holdings_the_hub_lacks_come_back_as_resend_days_for_that_device_only() {
    let dir = tempfile::tempdir().unwrap();
    let ing = ingest(dir.path());
    let day = |d| on_day("c1", "d1", d);
    let sent = vec![day(20_000), day(20_000), day(20_001), day(20_003)];
    send(&ing, &batch("c1", "d1", &sent)).unwrap();
    // What the device holds as acknowledged: all four, plus one of 20 001 and one of
    // 20 002 the hub does not have (lost to a damaged store).
    let lost = vec![day(20_001), day(20_002)];
    let device: Vec<ScanRecord> = sent.iter().chain(&lost).cloned().collect();
    let mut b = batch("c1", "d1", &[]);
    b.holdings = Some(holdings_of(&device).to_wire());
    assert_eq!(
        send(&ing, &b).unwrap().ack.resend_days,
        vec![20_001, 20_002]
    );
    // Another device's identical summary is compared with that device's holdings.
    let mut other = b.clone();
    other.device_id = "d2".into();
    assert_eq!(
        send(&ing, &other).unwrap().ack.resend_days,
        vec![20_000, 20_001, 20_002, 20_003]
    );
    // The device re-sends those days (in the same batch as its holdings): whole again.
    let mut again = batch("c1", "d1", &device);
    again.holdings = Some(holdings_of(&device).to_wire());
    let ack = send(&ing, &again).unwrap().ack;
    assert_eq!(ack.committed.len(), 6);
    assert!(ack.resend_days.is_empty(), "{:?}", ack.resend_days);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(ing.metrics.resend_requests.load(Relaxed), 2);
    assert_eq!(ing.metrics.holdings_checks.load(Relaxed), 3);
    // A restarted hub rebuilds its holdings from the store.
    drop(ing);
    let ing = ingest(dir.path());
    assert_eq!(ing.holdings.of("c1", "d1"), holdings_of(&device));
}

#[test]
fn only_the_sending_device_retracts_and_each_retraction_is_audited_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut ing = ingest(&dir.path().join("hub"));
    let audit = Arc::new(
        crate::audit::AuditLog::open(&dir.path().join("hub"), ing.metrics.clone()).unwrap(),
    );
    ing.audit = Some(audit.clone());
    let mine = sample_record("c1", "d1", 2, true);
    let theirs = sample_record("c2", "d9", 2, true);
    send(&ing, &batch("c1", "d1", std::slice::from_ref(&mine))).unwrap();
    send(&ing, &batch("c2", "d9", std::slice::from_ref(&theirs))).unwrap();
    let later = sample_record("c1", "d1", 1, false);
    let mut b = batch("c1", "d1", &[]);
    b.retractions = vec![
        retraction(&mine.id, "wrong\u{7} patient\n folder"),
        retraction(&theirs.id, "not mine"),
        retraction(&later.id, "retracted before it arrived"),
        retraction(&ResultId::random(), &"x".repeat(201)),
        retraction(&ResultId::random(), " \t "),
        pleura_shared::wire::Retraction {
            result_id: vec![1; 3],
            reason: "short id".into(),
        },
    ];
    let ack = send(&ing, &b).unwrap().ack;
    assert_eq!(ack.retracted, vec![mine.id.0.to_vec(), later.id.0.to_vec()]);
    assert_eq!(ack.rejected.len(), 4, "{:?}", ack.rejected);
    assert!(ack
        .rejected
        .iter()
        .any(|r| r.result_id == theirs.id.0.to_vec() && r.reason.contains("another device")));
    let case = ing.store.get(&mine.id).unwrap().unwrap();
    assert_eq!(case.retraction.unwrap().reason, "wrong patient folder");
    assert!(ing
        .store
        .get(&theirs.id)
        .unwrap()
        .unwrap()
        .retraction
        .is_none());
    assert!(ing
        .store
        .retraction(&theirs.id, "c1", "d1")
        .unwrap()
        .is_none());

    // Repeated: acknowledged again, audited once; the early one applies on arrival.
    let again = send(&ing, &b).unwrap().ack;
    assert_eq!(again.retracted, ack.retracted);
    send(&ing, &batch("c1", "d1", std::slice::from_ref(&later))).unwrap();
    assert!(ing
        .store
        .get(&later.id)
        .unwrap()
        .unwrap()
        .retraction
        .is_some());
    let log = std::fs::read_to_string(audit.path()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("\"retract\"")).collect();
    let allowed = lines.iter().filter(|l| l.contains("\"allowed: ")).count();
    let denied = lines.iter().filter(|l| l.contains("denied: ")).count();
    assert_eq!((allowed, denied), (2, 2), "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("\"c1/d1\"")));
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(ing.metrics.retractions.load(Relaxed), 2);
    assert_eq!(ing.metrics.retractions_denied.load(Relaxed), 2);
    // Journaled once each: a store that loses them gets them back at start.
    let journal = pleura_shared::journal::read(&dir.path().join("hub/cases.journal")).unwrap();
    assert_eq!(
        journal.lines.iter().filter(|l| l.starts_with("R ")).count(),
        2
    );
}

mod fleet;
mod repair;
