//! The hub's durability (issue #11): a damaged case store is detected at start (log,
//! metrics, SyncStatus) and made whole by anti-entropy; retractions arrive in signed
//! batches; the first batch after a hub start is not lost to the hub's own late
//! subscription.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pleura_e2e::*;
use pleura_proto::v1::hub_client::HubClient;
use pleura_proto::v1::{
    AggregatesRequest, GetCaseRequest, ResultAck, SignedBatch, SyncStatusRequest,
    SyncStatusResponse,
};
use pleura_shared::holdings::{day_of_ms, Holdings};
use pleura_shared::record::sample_record;
use pleura_shared::signing::BatchSigner;
use pleura_shared::wire::{ResultBatch, Retraction};
use pleura_shared::{topics, ScanRecord, SCHEMA_VERSION};
use prost::Message;
use rumqttc::{Event, Packet, QoS};

/// A signed batch of results, retractions and/or holdings from `clinic`/`device`.
fn signed(
    clinic: &str,
    device: &str,
    results: &[ScanRecord],
    retractions: Vec<Retraction>,
    holdings: Option<&Holdings>,
    bundle: &Path,
) -> SignedBatch {
    let batch = ResultBatch {
        schema_version: SCHEMA_VERSION,
        clinic_id: clinic.into(),
        device_id: device.into(),
        results: results.iter().map(ScanRecord::to_wire).collect(),
        retractions,
        holdings: holdings.map(Holdings::to_wire),
        queue: None,
    }
    .encode_to_vec();
    let signature = BatchSigner::from_pem_file(&bundle.join("device.key"))
        .unwrap()
        .sign(&batch);
    SignedBatch { batch, signature }
}

fn upload(hub: &Hub, bundle: &Path, batch: SignedBatch) -> ResultAck {
    block_on(async {
        let mut c = HubClient::new(hub.channel(Some(bundle)).await?);
        Ok(c.upload(batch).await?.into_inner())
    })
    .unwrap()
}

fn sync_status(hub: &Hub) -> SyncStatusResponse {
    block_on(async {
        let token = hub.login(OPERATOR.0, OPERATOR.1).await?;
        let mut c = HubClient::new(hub.channel(None).await?);
        Ok(c.sync_status(bearer(SyncStatusRequest {}, &token))
            .await?
            .into_inner())
    })
    .unwrap()
}

fn holdings(recs: &[ScanRecord]) -> Holdings {
    let mut h = Holdings::default();
    for r in recs {
        h.add(day_of_ms(r.analysed_at_ms), &r.id);
    }
    h
}

/// 150 results of c1/d1 spread over 5 days.
fn results() -> Vec<ScanRecord> {
    (0..150u64)
        .map(|i| {
            let mut r = sample_record("c1", "d1", (i % 4) as u8, i % 3 == 0);
            r.analysed_at_ms = (20_400 + i % 5) * 86_400_000 + i * 1000;
            r
        })
        .collect()
}

/// Flips one byte of the store where sled wrote `id` (as a flipped disk sector would).
fn flip_store_byte_at(data: &Path, id: &[u8]) {
    let db = data.join("cases.sled/db");
    let mut bytes = std::fs::read(&db).unwrap();
    let at = bytes
        .windows(id.len())
        .position(|w| w == id)
        .expect("the result id is in the store file");
    bytes[at + 3] ^= 0x10;
    std::fs::write(&db, bytes).unwrap();
}

#[test]
fn a_damaged_case_store_is_reported_at_start_and_made_whole_by_anti_entropy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let bundle = hub.enroll("c1", "d1", "north").unwrap().unwrap();
    let all = results();
    for chunk in all.chunks(50) {
        let ack = upload(
            &hub,
            &bundle,
            signed("c1", "d1", chunk, vec![], None, &bundle),
        );
        assert_eq!(ack.committed.len(), 50);
    }
    assert_eq!(hub.case_ids().unwrap().len(), 150);
    assert_eq!(hub.metric("pleura_hub_store_missing_results"), Some(0));

    hub.kill9();
    let data = hub.dir.join("data");
    // One flipped byte in what the second batch wrote.
    flip_store_byte_at(&data, &all[60].id.0);
    hub.start().unwrap();

    let held: BTreeSet<String> = hub.case_ids().unwrap().into_iter().collect();
    let lost: Vec<&ScanRecord> = all
        .iter()
        .filter(|r| !held.contains(&hex(&r.id.0)))
        .collect();
    assert!(
        !lost.is_empty(),
        "the flipped byte cost nothing: test damage too weak"
    );
    println!("one flipped byte: {} of 150 results lost", lost.len());
    let n = lost.len() as u64;
    assert_eq!(hub.metric("pleura_hub_store_missing_results"), Some(n));
    let log = std::fs::read_to_string(hub.dir.join("hub.log")).unwrap();
    assert!(
        log.contains("ERROR") && log.contains("CASE STORE LOSS"),
        "{}",
        log_tail(&hub.dir.join("hub.log"), 20)
    );
    let st = sync_status(&hub);
    assert_eq!(st.missing, n);
    let d1 = st.devices.iter().find(|d| d.device_id == "d1").unwrap();
    assert_eq!(d1.missing, n);

    // The device's holdings: the hub asks for exactly the days it lost results of.
    let ack = upload(
        &hub,
        &bundle,
        signed("c1", "d1", &[], vec![], Some(&holdings(&all)), &bundle),
    );
    let lost_days: BTreeSet<u32> = lost.iter().map(|r| day_of_ms(r.analysed_at_ms)).collect();
    assert_eq!(
        ack.resend_days.iter().copied().collect::<BTreeSet<_>>(),
        lost_days
    );
    assert!(hub.metric("pleura_hub_resend_requests_total").unwrap() >= 1);

    // Re-sending those days makes the hub whole.
    let again: Vec<ScanRecord> = all
        .iter()
        .filter(|r| lost_days.contains(&day_of_ms(r.analysed_at_ms)))
        .cloned()
        .collect();
    for chunk in again.chunks(50) {
        let ack = upload(
            &hub,
            &bundle,
            signed("c1", "d1", chunk, vec![], None, &bundle),
        );
        assert_eq!(ack.committed.len(), chunk.len());
    }
    assert_eq!(hub.metric("pleura_hub_store_missing_results"), Some(0));
    assert_eq!(sync_status(&hub).missing, 0);
    assert_eq!(hub.case_ids().unwrap().len(), 150);
    let ack = upload(
        &hub,
        &bundle,
        signed("c1", "d1", &[], vec![], Some(&holdings(&all)), &bundle),
    );
    assert!(ack.resend_days.is_empty(), "{:?}", ack.resend_days);

    // And it stays whole across a restart.
    hub.kill9();
    hub.start().unwrap();
    assert_eq!(hub.metric("pleura_hub_store_missing_results"), Some(0));
}

#[test]
fn a_signed_retraction_marks_the_case_keeps_it_and_is_audited_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    hub.start().unwrap();
    let d1 = hub.enroll("c1", "d1", "north").unwrap().unwrap();
    let d2 = hub.enroll("c1", "d2", "north").unwrap().unwrap();
    let mine = sample_record("c1", "d1", 3, true);
    let theirs = sample_record("c1", "d2", 2, true);
    upload(
        &hub,
        &d1,
        signed("c1", "d1", std::slice::from_ref(&mine), vec![], None, &d1),
    );
    upload(
        &hub,
        &d2,
        signed("c1", "d2", std::slice::from_ref(&theirs), vec![], None, &d2),
    );

    let retract = vec![
        Retraction {
            result_id: mine.id.0.to_vec(),
            reason: "filed under the wrong patient".into(),
        },
        Retraction {
            result_id: theirs.id.0.to_vec(),
            reason: "not mine to retract".into(),
        },
    ];
    let batch = || signed("c1", "d1", &[], retract.clone(), None, &d1);
    let ack = upload(&hub, &d1, batch());
    assert_eq!(ack.retracted, vec![mine.id.0.to_vec()]);
    assert_eq!(ack.rejected.len(), 1);
    assert_eq!(ack.rejected[0].result_id, theirs.id.0.to_vec());
    // Repeated (a lost ack): acknowledged again.
    assert_eq!(upload(&hub, &d1, batch()).retracted, ack.retracted);

    block_on(async {
        let token = hub.login(OPERATOR.0, OPERATOR.1).await?;
        let mut c = HubClient::new(hub.channel(None).await?);
        let case = c
            .get_case(bearer(
                GetCaseRequest {
                    result_id: mine.id.0.to_vec(),
                },
                &token,
            ))
            .await?
            .into_inner();
        assert!(case.retracted);
        assert_eq!(case.retraction_reason, "filed under the wrong patient");
        let other = c
            .get_case(bearer(
                GetCaseRequest {
                    result_id: theirs.id.0.to_vec(),
                },
                &token,
            ))
            .await?
            .into_inner();
        assert!(!other.retracted);
        let rows = c
            .aggregates(bearer(AggregatesRequest::default(), &token))
            .await?
            .into_inner()
            .rows;
        assert_eq!(rows.iter().map(|r| r.scans).sum::<u64>(), 1, "{rows:?}");
        Ok(())
    })
    .unwrap();
    assert_eq!(hub.case_ids().unwrap().len(), 2, "a retracted case is kept");

    let audit = std::fs::read_to_string(hub.dir.join("data/audit.log")).unwrap();
    let lines: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"retract\""))
        .collect();
    let allowed = lines
        .iter()
        .filter(|l| l.contains(&hex(&mine.id.0)))
        .count();
    let denied = lines
        .iter()
        .filter(|l| l.contains(&hex(&theirs.id.0)) && l.contains("denied"))
        .count();
    assert_eq!((allowed, denied), (1, 2), "{lines:#?}");
    assert_eq!(hub.metric("pleura_hub_retractions_total"), Some(1));
    let data = hub.dir.join("data");
    let out = hub_admin(&["audit", "verify", &data.to_string_lossy()], None).unwrap();
    assert!(out.contains("chain intact"), "{out}");
    // Kept across a restart, and the journal holds it.
    hub.kill9();
    hub.start().unwrap();
    let journal = pleura_shared::journal::read(&data.join("cases.journal")).unwrap();
    assert_eq!(
        journal.lines.iter().filter(|l| l.starts_with("R ")).count(),
        1
    );
    assert_eq!(hub.metric("pleura_hub_store_missing_results"), Some(0));
}

/// One device session right after a hub start: connects as soon as the port takes it,
/// subscribes to its acks, publishes one batch; returns how long the hub's ack took.
fn first_batch_ack(port: u16, bundle: &Path, batch: Vec<u8>, within: Duration) -> Option<Duration> {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        let (client, mut conn) = device_mqtt(port, bundle, "c1", "d1").unwrap();
        let mut sent: Option<Instant> = None;
        loop {
            let wait = sent.map_or(Duration::from_secs(10), |s| {
                (s + within).saturating_duration_since(Instant::now())
            });
            match conn.recv_timeout(wait) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    client
                        .subscribe(topics::acks("c1", "d1"), QoS::AtLeastOnce)
                        .unwrap();
                }
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                    client
                        .publish(
                            topics::results("c1", "d1"),
                            QoS::AtLeastOnce,
                            false,
                            batch.clone(),
                        )
                        .unwrap();
                    sent = Some(Instant::now());
                }
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => return sent.map(|s| s.elapsed()),
                Ok(Ok(_)) => {}
                // Not accepting yet: try again at once.
                Ok(Err(_)) if sent.is_none() => break,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn the_first_batch_after_a_hub_start_is_acked_without_waiting_for_a_resend() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = Hub::new(&tmp.path().join("hub"), Broker::Embedded).unwrap();
    let bundle = hub.enroll("c1", "d1", "north").unwrap().unwrap();
    for round in 0..2 {
        // The hub started by hand: the device must not wait for /healthz, as a real one
        // reconnecting after a hub restart does not. The hook holds the hub's own
        // subscription back 1.5 s, so a device that gets in first certainly does.
        let log = std::fs::File::create(hub.dir.join(format!("hub-{round}.log"))).unwrap();
        let mut child = Some(
            Command::new(bin("hub-server"))
                .args(["serve", "--config"])
                .arg(hub.dir.join("hub.toml"))
                .env("RUST_LOG", "info,rumqttd=warn")
                .env("PLEURA_TEST_SUBSCRIBE_DELAY_MS", "1500")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let r = sample_record("c1", "d1", 2, true);
        let batch = signed("c1", "d1", &[r], vec![], None, &bundle).encode_to_vec();
        let took = first_batch_ack(hub.mqtt_port, &bundle, batch, Duration::from_secs(5));
        if let Some(mut c) = child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
        let took = took.unwrap_or_else(|| {
            panic!(
                "round {round}: the first batch was not acked within 5 s (lost before the \
                 hub subscribed); hub log:\n{}",
                log_tail(&hub.dir.join(format!("hub-{round}.log")), 20)
            )
        });
        println!("round {round}: first batch acked {took:?} after it was published");
    }
}
