//! Fleet health at ingest: every verified batch, a holdings-only check included,
//! records its sender's last contact and queue report; a batch that fails the
//! signature or identity checks records nothing.

use super::*;
use crate::store::DeviceStats;
use pleura_shared::wire::QueueReport;

fn stats_of(ing: &Ingest, clinic: &str, device: &str) -> Option<DeviceStats> {
    ing.store
        .devices()
        .unwrap()
        .into_iter()
        .find(|d| d.clinic == clinic && d.device == device)
}

fn fleet(d: &DeviceStats) -> (u64, u64, u64) {
    (d.queue_pending, d.oldest_pending_ms, d.queue_reported_ms)
}

/// A holdings-only check from `clinic`/`device` reporting `pending` queued results.
fn check(clinic: &str, device: &str, pending: u64, oldest: u64, at: u64) -> ResultBatch {
    let mut b = batch(clinic, device, &[]);
    b.holdings = Some(Holdings::default().to_wire());
    b.queue = Some(QueueReport {
        pending,
        oldest_pending_ms: oldest,
        reported_at_ms: at,
    });
    b
}

#[test]
fn a_verified_batch_records_contact_and_queue_and_a_forged_one_nothing() {
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
    let (a_key, b_key) = (a.join("device.key"), b.join("device.key"));

    // Unsigned, signed by another device's key, signed by b over a's connection, or
    // tampered with: refused, and nothing recorded for anyone.
    let lie = check("c1", "a", 999, 1, now_ms());
    let unsigned = SignedBatch::decode(env(&lie).as_slice()).unwrap();
    assert!(ing.upload(unsigned, None).is_err());
    assert!(ing.upload(signed(&lie, &b_key), None).is_err());
    let b_check = check("c2", "b", 999, 1, now_ms());
    assert!(ing
        .upload(signed(&b_check, &b_key), Some(("c1".into(), "a".into())))
        .is_err());
    let on_a_topic = signed(&b_check, &b_key).encode_to_vec();
    assert!(ing
        .mqtt_message(&topics::results("c1", "a"), &on_a_topic)
        .is_err());
    let mut tampered = signed(&check("c1", "a", 5, 100, now_ms()), &a_key);
    let last = tampered.batch.len() - 1;
    tampered.batch[last] ^= 1;
    assert!(ing.upload(tampered, None).is_err());
    assert_eq!(stats_of(&ing, "c1", "a"), None);
    assert_eq!(stats_of(&ing, "c2", "b"), None);

    // A holdings-only check over gRPC: seen, with its queue, though it carries no result.
    let before = now_ms();
    ing.upload(signed(&check("c1", "a", 7, 1_000, 2_000), &a_key), None)
        .unwrap();
    let s = stats_of(&ing, "c1", "a").expect("recorded");
    assert!(s.last_seen_ms >= before && s.last_seen_ms <= now_ms());
    assert_eq!(fleet(&s), (7, 1_000, 2_000));
    assert_eq!((s.results, s.last_received_ms), (0, 0));

    // The same over MQTT, and a forged report for a afterwards changes nothing.
    let over_mqtt = signed(&check("c1", "a", 4, 1_500, 3_000), &a_key).encode_to_vec();
    ing.mqtt_message(&topics::results("c1", "a"), &over_mqtt)
        .unwrap();
    let s = stats_of(&ing, "c1", "a").unwrap();
    assert_eq!(fleet(&s), (4, 1_500, 3_000));
    assert!(ing
        .upload(signed(&check("c1", "a", 0, 0, 9_000), &b_key), None)
        .is_err());
    assert_eq!(stats_of(&ing, "c1", "a").unwrap(), s);

    // A results batch: the counters and the contact, in the same entry.
    let r = sample_record("c1", "a", 2, true);
    let mut with_result = batch("c1", "a", std::slice::from_ref(&r));
    with_result.queue = Some(QueueReport {
        pending: 1,
        oldest_pending_ms: r.analysed_at_ms,
        reported_at_ms: 4_000,
    });
    ing.upload(signed(&with_result, &a_key), None).unwrap();
    let s = stats_of(&ing, "c1", "a").unwrap();
    assert_eq!(s.results, 1);
    assert_eq!(fleet(&s), (1, r.analysed_at_ms, 4_000));
}

#[test]
fn a_group_commit_records_each_device_once_with_its_latest_report() {
    let dir = tempfile::tempdir().unwrap();
    let ing = ingest(dir.path());
    let prepared = [
        check("c1", "d1", 9, 100, 5_000),
        check("c1", "d1", 3, 300, 6_000),
        check("c1", "d2", 1, 50, 4_000),
    ]
    .iter()
    .map(|b| {
        ing.prepare_mqtt(&topics::results(&b.clinic_id, &b.device_id), &env(b))
            .unwrap()
    })
    .collect();
    assert_eq!(ing.commit(prepared).unwrap().len(), 3);
    assert_eq!(fleet(&stats_of(&ing, "c1", "d1").unwrap()), (3, 300, 6_000));
    assert_eq!(fleet(&stats_of(&ing, "c1", "d2").unwrap()), (1, 50, 4_000));
    // A batch from an agent before the report: seen, its last report kept.
    let mut old_agent = batch("c1", "d1", &[]);
    old_agent.holdings = Some(Holdings::default().to_wire());
    let seen = stats_of(&ing, "c1", "d1").unwrap().last_seen_ms;
    std::thread::sleep(std::time::Duration::from_millis(2));
    send(&ing, &old_agent).unwrap();
    let s = stats_of(&ing, "c1", "d1").unwrap();
    assert!(s.last_seen_ms > seen);
    assert_eq!(fleet(&s), (3, 300, 6_000));
}
