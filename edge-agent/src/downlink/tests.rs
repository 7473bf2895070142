use pleura_shared::signing::{BatchSigner, Domain};
use pleura_shared::wire::{downlink, ClipRequest, Downlink, MediaAck, SignedDownlink, Verdict};
use pleura_shared::{ExamId, ResultId, SCHEMA_VERSION};
use prost::Message;
use tokio::sync::mpsc;

use super::receive::Outcome;
use super::*;
use crate::outbox::SledOutbox;

struct Fixture {
    _dir: tempfile::TempDir,
    hub: BatchSigner,
    receiver: Receiver,
    clips_rx: mpsc::Receiver<ClipRequest>,
    acks_rx: mpsc::Receiver<MediaAck>,
    outbox: Option<SledOutbox>,
}

fn fixture(trust: impl FnOnce(&BatchSigner) -> HubTrust) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let outbox = SledOutbox::open(dir.path(), 1 << 20).unwrap();
    let (hub, _) = BatchSigner::generate().unwrap();
    let (ack_tx, acks_rx) = mpsc::channel(8);
    let (clip_tx, clips_rx) = mpsc::channel(8);
    let receiver = Receiver::new(
        "clinic-a",
        "pi-1",
        trust(&hub),
        open_stores(&outbox).unwrap(),
        ack_tx,
        clip_tx,
    );
    Fixture {
        _dir: dir,
        hub,
        receiver,
        clips_rx,
        acks_rx,
        outbox: Some(outbox),
    }
}

fn key_of(s: &BatchSigner) -> HubTrust {
    HubTrust::Key(s.public_key().to_vec())
}

fn message(
    signer: &BatchSigner,
    clinic: &str,
    device: &str,
    id: &[u8],
    kind: downlink::Kind,
) -> Vec<u8> {
    let body = Downlink {
        schema_version: SCHEMA_VERSION,
        clinic_id: clinic.into(),
        device_id: device.into(),
        message_id: id.to_vec(),
        created_at_ms: 1,
        kind: Some(kind),
    }
    .encode_to_vec();
    let signature = signer.sign_in(Domain::Downlink, &body);
    SignedDownlink { body, signature }.encode_to_vec()
}

fn verdict(exam: [u8; 16]) -> downlink::Kind {
    downlink::Kind::Verdict(Verdict {
        exam_id: exam.to_vec(),
        reviewer: "dr-a".into(),
        comment: "B-lines R2".into(),
        ..Default::default()
    })
}

#[test]
fn a_verdict_delivered_twice_is_kept_once_and_receipted_both_times() {
    let f = fixture(key_of);
    let m = message(&f.hub, "clinic-a", "pi-1", &[9; 16], verdict([1; 16]));
    assert_eq!(
        f.receiver.handle(&m).unwrap(),
        Outcome::Stored { receipt: [9; 16] }
    );
    assert_eq!(
        f.receiver.handle(&m).unwrap(),
        Outcome::Duplicate { receipt: [9; 16] }
    );
    let held = f.receiver.verdicts.for_exam(&ExamId([1; 16])).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].message_id, [9; 16]);
    assert_eq!(held[0].verdict.comment, "B-lines R2");
    assert_eq!(f.receiver.verdicts.since(0).unwrap().len(), 1);
    assert!(f
        .receiver
        .verdicts
        .for_exam(&ExamId([2; 16]))
        .unwrap()
        .is_empty());
    let c = &f.receiver.counters;
    assert_eq!(c.verdicts.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(c.duplicates.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn what_another_key_signed_or_another_device_is_named_in_is_dropped() {
    let f = fixture(key_of);
    let (other, _) = BatchSigner::generate().unwrap();
    let forged = message(&other, "clinic-a", "pi-1", &[1; 16], verdict([1; 16]));
    let e = f.receiver.handle(&forged).unwrap_err();
    assert_eq!(e.label(), "signature");
    let elsewhere = message(&f.hub, "clinic-a", "pi-2", &[2; 16], verdict([1; 16]));
    assert_eq!(
        f.receiver.handle(&elsewhere).unwrap_err().label(),
        "other_device"
    );
    let other_clinic = message(&f.hub, "clinic-b", "pi-1", &[3; 16], verdict([1; 16]));
    assert_eq!(
        f.receiver.handle(&other_clinic).unwrap_err().label(),
        "other_device"
    );
    // A device's uplink signature is no downlink signature, even by the hub's key.
    let mut wrong_domain = SignedDownlink::decode(
        message(&f.hub, "clinic-a", "pi-1", &[4; 16], verdict([1; 16])).as_slice(),
    )
    .unwrap();
    wrong_domain.signature = f.hub.sign_in(Domain::Uplink, &wrong_domain.body);
    assert_eq!(
        f.receiver
            .handle(&wrong_domain.encode_to_vec())
            .unwrap_err()
            .label(),
        "signature"
    );
    // Tampered body.
    let mut tampered = SignedDownlink::decode(
        message(&f.hub, "clinic-a", "pi-1", &[5; 16], verdict([1; 16])).as_slice(),
    )
    .unwrap();
    *tampered.body.last_mut().unwrap() ^= 1;
    assert!(f.receiver.handle(&tampered.encode_to_vec()).is_err());
    assert_eq!(f.receiver.counters.dropped("signature"), 3);
    assert_eq!(f.receiver.counters.dropped("other_device"), 2);
    assert_eq!(f.receiver.verdicts.count(), 0, "nothing dropped was kept");
    assert_eq!(f.receiver.seen.len(), 0, "nor marked seen");
}

#[test]
fn without_a_hub_key_everything_is_dropped_and_insecure_mode_takes_unsigned() {
    let f = fixture(|_| HubTrust::Missing);
    let m = message(&f.hub, "clinic-a", "pi-1", &[1; 16], verdict([1; 16]));
    assert_eq!(f.receiver.handle(&m).unwrap_err().label(), "no_hub_key");
    assert_eq!(f.receiver.verdicts.count(), 0);

    let f = fixture(|_| HubTrust::Insecure);
    let mut unsigned = SignedDownlink::decode(m.as_slice()).unwrap();
    unsigned.signature.clear();
    assert!(matches!(
        f.receiver.handle(&unsigned.encode_to_vec()).unwrap(),
        Outcome::Stored { .. }
    ));
}

#[test]
fn the_receipt_comes_only_after_the_verdict_is_durable() {
    let mut f = fixture(key_of);
    let m = message(&f.hub, "clinic-a", "pi-1", &[9; 16], verdict([3; 16]));
    let Outcome::Stored { receipt } = f.receiver.handle(&m).unwrap() else {
        panic!("not stored")
    };
    assert_eq!(receipt, [9; 16]);
    // Reopen the store from disk as a restarted agent would: the verdict is there, and
    // the repeat the hub sends (it may have missed the receipt) is not kept again.
    let dir = f._dir.path().to_path_buf();
    drop(f.receiver);
    drop(f.outbox.take());
    let outbox = SledOutbox::open(&dir, 1 << 20).unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let (tx2, _rx2) = mpsc::channel(1);
    let again = Receiver::new(
        "clinic-a",
        "pi-1",
        key_of(&f.hub),
        open_stores(&outbox).unwrap(),
        tx,
        tx2,
    );
    assert_eq!(again.verdicts.for_exam(&ExamId([3; 16])).unwrap().len(), 1);
    assert_eq!(again.handle(&m).unwrap(), Outcome::Duplicate { receipt });
    assert_eq!(again.verdicts.count(), 1);
    // Ids are forgotten only once old; the verdict itself stays.
    assert_eq!(again.forget_seen_before(1).unwrap(), 0);
    assert_eq!(again.forget_seen_before(u64::MAX).unwrap(), 1);
    assert_eq!(again.seen.len(), 0);
    assert_eq!(again.verdicts.count(), 1);
}

#[test]
fn clip_requests_are_kept_until_done_and_media_acks_passed_on() {
    let mut f = fixture(key_of);
    let req = downlink::Kind::ClipRequest(ClipRequest {
        result_id: vec![5; 16],
        reason: "review".into(),
    });
    let m = message(&f.hub, "clinic-a", "pi-1", &[8; 16], req);
    assert!(matches!(
        f.receiver.handle(&m).unwrap(),
        Outcome::Stored { .. }
    ));
    assert!(matches!(
        f.receiver.handle(&m).unwrap(),
        Outcome::Duplicate { .. }
    ));
    assert_eq!(f.clips_rx.try_recv().unwrap().result_id, vec![5; 16]);
    assert!(f.clips_rx.try_recv().is_err(), "passed on once");
    let pending = f.receiver.clips.pending_clip_requests().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].result_id, ResultId([5; 16]));
    assert_eq!(pending[0].reason, "review");
    f.receiver
        .clips
        .clip_request_done(&ResultId([5; 16]))
        .unwrap();
    assert!(f.receiver.clips.pending_clip_requests().unwrap().is_empty());

    let ack = downlink::Kind::MediaAck(MediaAck {
        sha256: vec![1; 32],
        held: 16384,
        ..Default::default()
    });
    let m = message(&f.hub, "clinic-a", "pi-1", &[], ack);
    assert_eq!(f.receiver.handle(&m).unwrap(), Outcome::Forwarded);
    assert_eq!(f.acks_rx.try_recv().unwrap().held, 16384);
    // A durable kind without an id is malformed.
    let m = message(&f.hub, "clinic-a", "pi-1", &[], verdict([1; 16]));
    assert_eq!(f.receiver.handle(&m).unwrap_err().label(), "malformed");
}

#[test]
fn uplink_messages_are_signed_with_the_device_key_in_the_uplink_domain() {
    let (device, _) = BatchSigner::generate().unwrap();
    let public = device.public_key().to_vec();
    let (ch, _rx) = Channel::new("clinic-a", "pi-1", Some(device));
    let s = ch.seal(pleura_shared::wire::uplink::Kind::Receipt(
        pleura_shared::wire::Receipt {
            message_ids: vec![vec![1; 16]],
        },
    ));
    pleura_shared::signing::verify_in(Domain::Uplink, &public, &s.body, &s.signature, "d").unwrap();
    assert!(pleura_shared::signing::verify_in(
        Domain::Downlink,
        &public,
        &s.body,
        &s.signature,
        "d"
    )
    .is_err());
    let body = pleura_shared::wire::Uplink::decode(s.body.as_slice()).unwrap();
    assert_eq!(
        (body.clinic_id.as_str(), body.device_id.as_str()),
        ("clinic-a", "pi-1")
    );
    assert!(!ch.is_up());
    // Not attached to a link yet: busy, try later.
    assert!(ch
        .send(pleura_shared::wire::uplink::Kind::Receipt(
            Default::default()
        ))
        .is_err());
}

#[test]
fn hub_keys_parse_from_the_bundle_file() {
    let (k, _) = BatchSigner::generate().unwrap();
    let text = format!("{}\n", hex::encode(k.public_key()));
    assert_eq!(parse_hub_key(&text).unwrap(), k.public_key());
    assert!(parse_hub_key("abcd").is_err());
    assert!(parse_hub_key("zz").is_err());
}
