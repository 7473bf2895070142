use std::sync::Arc;

use pleura_shared::signing::{verify_in, BatchSigner, Domain};
use pleura_shared::wire::{
    downlink, ClipRequest, Downlink as Body, MediaAck, SignedDownlink, Verdict,
};
use prost::Message;

use super::*;

fn verdict() -> downlink::Kind {
    downlink::Kind::Verdict(Verdict {
        exam_id: vec![7; 16],
        reviewer: "dr-a".into(),
        ..Default::default()
    })
}

fn open(dir: &Path) -> (Downlink, Vec<u8>) {
    let (signer, _) = BatchSigner::generate().unwrap();
    let public = signer.public_key().to_vec();
    let dl = Downlink::open(dir, Some(signer), Arc::new(Metrics::default())).unwrap();
    (dl, public)
}

#[test]
fn queued_messages_are_signed_for_their_device_and_survive_a_restart_until_receipted() {
    let dir = tempfile::tempdir().unwrap();
    let (dl, public) = open(dir.path());
    let a = dl.send("clinic-a", "pi-1", verdict()).unwrap();
    let b = dl
        .send(
            "clinic-a",
            "pi-1",
            downlink::Kind::ClipRequest(ClipRequest {
                result_id: vec![1; 16],
                reason: "zone R2".into(),
            }),
        )
        .unwrap();
    dl.send("clinic-a", "pi-2", verdict()).unwrap();
    assert_ne!(a, b);
    assert_eq!(dl.pending("clinic-a", "pi-1").unwrap(), 2);
    assert_eq!(dl.metrics.downlink_pending.load(Ordering::Relaxed), 3);

    // What would go on the wire: signed with the downlink key, for that device only.
    let stored: Vec<SignedDownlink> = dl
        .queue
        .scan_prefix(device_prefix("clinic-a", "pi-1"))
        .map(|r| SignedDownlink::decode(r.unwrap().1.as_ref()).unwrap())
        .collect();
    for s in &stored {
        verify_in(Domain::Downlink, &public, &s.body, &s.signature, "hub").unwrap();
        assert!(verify_in(Domain::Uplink, &public, &s.body, &s.signature, "hub").is_err());
        let body = Body::decode(s.body.as_slice()).unwrap();
        assert_eq!(
            (body.clinic_id.as_str(), body.device_id.as_str()),
            ("clinic-a", "pi-1")
        );
        assert_eq!(body.message_id.len(), 16);
    }
    drop(dl);

    let (dl, _) = open(dir.path());
    assert_eq!(dl.pending("clinic-a", "pi-1").unwrap(), 2);
    // Another device's receipt removes nothing of this one's.
    assert_eq!(dl.receipt("clinic-a", "pi-2", &[a.to_vec()]).unwrap(), 0);
    assert_eq!(
        dl.receipt("clinic-a", "pi-1", &[a.to_vec(), vec![1, 2]])
            .unwrap(),
        1
    );
    assert_eq!(
        dl.receipt("clinic-a", "pi-1", &[a.to_vec()]).unwrap(),
        0,
        "a repeat removes nothing"
    );
    assert_eq!(dl.pending("clinic-a", "pi-1").unwrap(), 1);
    assert_eq!(dl.metrics.downlink_receipts.load(Ordering::Relaxed), 1);
    assert_eq!(dl.metrics.downlink_pending.load(Ordering::Relaxed), 2);
}

#[test]
fn messages_a_device_cannot_act_on_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (dl, _) = open(dir.path());
    let no_exam = downlink::Kind::Verdict(Verdict::default());
    assert!(matches!(
        dl.send("clinic-a", "pi-1", no_exam),
        Err(HubError::Invalid(_))
    ));
    let ack = downlink::Kind::MediaAck(MediaAck::default());
    assert!(dl.send("clinic-a", "pi-1", ack).is_err());
    assert!(dl.send("clinic/a", "pi-1", verdict()).is_err());
    assert_eq!(dl.pending("clinic-a", "pi-1").unwrap(), 0);
    // Without a link nothing is published, and the queue is kept for later.
    assert_eq!(dl.republish_all(), 0);
}

#[test]
fn queue_keys_name_their_device() {
    let mut k = device_prefix("clinic-a", "pi-1");
    k.extend_from_slice(&[b'/'; 16]);
    assert_eq!(split_key(&k), Some(("clinic-a".into(), "pi-1".into())));
    assert_eq!(split_key(b"short"), None);
}

/// Stands in for the MQTT link: takes messages while it has room.
#[derive(Default)]
pub(super) struct FakeLink {
    pub room: usize,
    pub took: Vec<String>,
}

impl FakeLink {
    pub fn take(&mut self, clinic: &str, device: &str) -> bool {
        if self.room == 0 {
            return false;
        }
        self.room -= 1;
        self.took.push(format!("{clinic}/{device}"));
        true
    }
}

fn with_link(dl: &Downlink, room: usize) {
    *locked(&dl.test_link) = Some(FakeLink {
        room,
        took: Vec::new(),
    });
}

fn took(dl: &Downlink) -> usize {
    locked(&dl.test_link).as_ref().map_or(0, |l| l.took.len())
}

#[test]
fn the_policy_republishes_only_to_a_device_seen_since_and_backs_off() {
    let s = |last_ms, times| Some(Sent { last_ms, times });
    assert!(due(None, None, 0), "never taken by the link");
    assert!(!due(s(1000, 1), None, u64::MAX), "device never seen");
    assert!(!due(s(1000, 1), Some(1000), u64::MAX), "not seen since");
    assert!(!due(s(1000, 1), Some(1001), 1_999), "backoff");
    assert!(due(s(1000, 1), Some(1001), 2_000), "back: soon");
    assert_eq!(retry_after_ms(1), 1_000);
    assert_eq!(retry_after_ms(2), 60_000);
    assert_eq!(retry_after_ms(3), 120_000);
    assert_eq!(retry_after_ms(8), 3_600_000, "capped at an hour");
    assert_eq!(retry_after_ms(u32::MAX), 3_600_000);
    assert!(!due(s(0, 3), Some(5), 119_999));
    assert!(due(s(0, 3), Some(5), 120_000));
}

#[test]
fn an_offline_device_gets_no_copies_until_it_is_seen_again() {
    let dir = tempfile::tempdir().unwrap();
    let (dl, _) = open(dir.path());
    with_link(&dl, 100);
    dl.send("clinic-a", "pi-1", verdict()).unwrap();
    dl.send("clinic-a", "pi-1", verdict()).unwrap();
    assert_eq!(took(&dl), 2, "published once on send");
    let t0 = now_ms();
    // Two days offline: 8,640 periodic passes, not one copy.
    for i in 1..=8_640u64 {
        dl.republish_due(t0 + i * 20_000);
    }
    assert_eq!(took(&dl), 2);
    // Back online (any message from it): published again at once, then backoff.
    let back = t0 + 2 * 86_400_000;
    dl.device_seen_at("clinic-a", "pi-1", back);
    assert_eq!(took(&dl), 4, "heard from: its messages go at once");
    assert_eq!(dl.republish_due(back + 1), 0, "not twice");
    dl.device_seen_at("clinic-a", "pi-1", back + 2);
    assert_eq!(took(&dl), 4, "seen again within a second: no second look");
    dl.device_seen_at("clinic-a", "pi-1", back + 5_000);
    assert_eq!(took(&dl), 4, "backoff (1 min now)");
    assert_eq!(dl.republish_due(back + 60_001), 2);
    // Another device's activity does nothing for this one's messages.
    dl.device_seen_at("clinic-a", "pi-2", back + 300_000);
    assert_eq!(dl.republish_due(back + 400_000), 0);
    // A receipt ends it; link-up re-publishes what is left, once each.
    dl.send("clinic-a", "pi-2", verdict()).unwrap();
    let ids: Vec<Vec<u8>> = dl
        .queue
        .scan_prefix(device_prefix("clinic-a", "pi-1"))
        .map(|r| r.unwrap().0[..].to_vec())
        .map(|k| k[k.len() - 16..].to_vec())
        .collect();
    assert_eq!(dl.receipt("clinic-a", "pi-1", &ids[..1]).unwrap(), 1);
    assert_eq!(dl.republish_all(), 2);
    assert!(locked(&dl.sent).len() == 2, "receipted: forgotten");
}

#[test]
fn a_busy_link_does_not_stop_the_pass_and_what_it_refused_goes_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let (dl, _) = open(dir.path());
    with_link(&dl, 0);
    for d in ["pi-1", "pi-2", "pi-3"] {
        dl.send("clinic-a", d, verdict()).unwrap();
    }
    assert_eq!(took(&dl), 0, "the link took nothing");
    // Room for one: the first goes; the others stay due.
    locked(&dl.test_link).as_mut().unwrap().room = 1;
    assert_eq!(dl.republish_due(now_ms()), 1);
    locked(&dl.test_link).as_mut().unwrap().room = 10;
    assert_eq!(
        dl.republish_due(now_ms()),
        2,
        "the two refused, not the one taken"
    );
    let l = locked(&dl.test_link);
    let mut devices = l.as_ref().unwrap().took.clone();
    devices.sort();
    assert_eq!(devices, ["clinic-a/pi-1", "clinic-a/pi-2", "clinic-a/pi-3"]);
}
