//! The edge half of retractions: requests spooled by `edge-agent retract` are taken
//! into the outbox (`take_spool`), sent to the hub in batches of their own, and kept
//! until the hub's ack names them (`ResultAck.retracted`) or refuses them for good.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pleura_shared::record::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_QUEUE_REPORT_BYTES};
use pleura_shared::wire::Retraction;
use pleura_shared::ResultId;
use prost::Message;

use crate::outbox::Outbox;
use crate::retract;

/// Retractions sent and not yet answered, and whether the outbox may hold more to send.
#[derive(Debug)]
pub struct Pending {
    sent: HashMap<ResultId, Instant>,
    ack_timeout: Duration,
    /// The outbox may hold retractions not sent yet (start, spool taken, timeout).
    pub dirty: bool,
}

impl Pending {
    pub fn new(ack_timeout: Duration) -> Self {
        Self {
            sent: HashMap::new(),
            ack_timeout,
            dirty: true,
        }
    }

    pub fn in_flight(&self, id: &ResultId) -> bool {
        self.sent.contains_key(id)
    }

    pub fn mark_sent(&mut self, ids: impl IntoIterator<Item = ResultId>, now: Instant) {
        for id in ids {
            self.sent.insert(id, now);
        }
    }

    pub fn settle(&mut self, ids: &[ResultId]) {
        for id in ids {
            self.sent.remove(id);
        }
    }

    /// Unanswered sends past the ack timeout are sent again.
    pub fn expire(&mut self, now: Instant) {
        let t = self.ack_timeout;
        let before = self.sent.len();
        self.sent.retain(|_, at| now.duration_since(*at) < t);
        if self.sent.len() < before {
            self.dirty = true;
        }
    }

    /// After a reconnect nothing is in flight any more.
    pub fn reset(&mut self) {
        self.sent.clear();
        self.dirty = true;
    }
}

/// How many of `items`, in order, fit in one signed batch from `clinic`/`device`
/// within the hub's limits (bytes and count), with no results and no holdings (and the
/// queue report every batch carries). At least one whenever `items` is not empty (a
/// reason is at most 200 characters).
pub fn fit(items: &[(ResultId, String)], clinic: &str, device: &str) -> usize {
    use prost::encoding::encoded_len_varint as varint;
    let field = |len: usize| 1 + varint(len as u64) + len;
    let mut batch_len = 6 + field(clinic.len()) + field(device.len()) + MAX_QUEUE_REPORT_BYTES;
    let envelope = 6 + field(64);
    let mut n = 0;
    for (id, reason) in items.iter().take(MAX_BATCH_RECORDS) {
        let w = Retraction {
            result_id: id.0.to_vec(),
            reason: reason.clone(),
        };
        let next = batch_len + field(w.encoded_len());
        if n > 0 && next + envelope > MAX_BATCH_BYTES {
            break;
        }
        batch_len = next;
        n += 1;
    }
    n
}

/// Takes spooled requests into the outbox (blocking). A request leaves the spool only
/// once the outbox holds it; a file that is not a valid request is renamed
/// `<name>.invalid` and reported. Returns how many were taken.
pub fn take_spool(outbox: &dyn Outbox, data_dir: &Path) -> anyhow::Result<usize> {
    let (good, bad) = retract::read_spool(data_dir)?;
    for (path, why) in bad {
        tracing::warn!(file = %path.display(), error = %why, "invalid retraction request set aside");
        if let Err(e) = retract::set_aside(&path) {
            tracing::warn!(file = %path.display(), error = %e, "could not set aside an invalid retraction request");
        }
    }
    let mut taken = 0;
    for s in good {
        outbox.retract(&s.id, &s.reason)?;
        std::fs::remove_file(&s.file)?;
        tracing::info!(result_id = %s.id, "retraction request taken; it goes to the hub at the next send");
        taken += 1;
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pleura_shared::wire::{ResultBatch, SignedBatch};

    #[test]
    fn the_fullest_retraction_batch_stays_within_the_hubs_limit() {
        // 200 four-byte characters: the longest reason the hub accepts, in bytes.
        let items: Vec<(ResultId, String)> = (0..300)
            .map(|_| (ResultId::random(), "😀".repeat(200)))
            .collect();
        let (c, d) = ("clinic-with-a-long-name", "pi-1");
        let n = fit(&items, c, d);
        assert!(n > 10 && n < items.len(), "{n} fit");
        let batch = ResultBatch {
            schema_version: u32::MAX,
            clinic_id: c.into(),
            device_id: d.into(),
            retractions: items[..n]
                .iter()
                .map(|(id, r)| Retraction {
                    result_id: id.0.to_vec(),
                    reason: r.clone(),
                })
                .collect(),
            queue: Some(pleura_shared::wire::QueueReport {
                pending: u64::MAX,
                oldest_pending_ms: u64::MAX,
                reported_at_ms: u64::MAX,
            }),
            ..Default::default()
        };
        let signed = SignedBatch {
            batch: batch.encode_to_vec(),
            signature: vec![0; 64],
        };
        assert!(signed.encoded_len() <= MAX_BATCH_BYTES);
        assert!(signed.encoded_len() + 820 > MAX_BATCH_BYTES, "tight");
        let short: Vec<_> = (0..600).map(|_| (ResultId::random(), "x".into())).collect();
        assert_eq!(fit(&short, c, d), MAX_BATCH_RECORDS);
        assert_eq!(fit(&[], c, d), 0);
    }

    #[test]
    fn unanswered_retractions_go_again_after_the_timeout() {
        let t0 = Instant::now();
        let mut p = Pending::new(Duration::from_secs(5));
        p.dirty = false;
        let (a, b) = (ResultId::random(), ResultId::random());
        p.mark_sent([a, b], t0);
        p.settle(&[a]);
        p.expire(t0 + Duration::from_secs(1));
        assert!(!p.dirty && p.in_flight(&b) && !p.in_flight(&a));
        p.expire(t0 + Duration::from_secs(6));
        assert!(p.dirty && !p.in_flight(&b));
    }

    #[test]
    fn spooled_requests_enter_the_outbox_and_leave_the_spool() {
        let tmp = tempfile::tempdir().unwrap();
        let ob = crate::outbox::SledOutbox::open(&tmp.path().join("data"), 1 << 30).unwrap();
        let id = ResultId::random();
        let file = retract::spool(tmp.path(), &id, "wrong patient").unwrap();
        std::fs::write(retract::spool_dir(tmp.path()).join("bad.json"), "[]").unwrap();
        assert_eq!(take_spool(&ob, tmp.path()).unwrap(), 1);
        assert_eq!(
            ob.retractions().unwrap(),
            vec![(id, "wrong patient".into())]
        );
        assert!(!file.exists());
        assert!(retract::spool_dir(tmp.path())
            .join("bad.json.invalid")
            .exists());
        assert_eq!(take_spool(&ob, tmp.path()).unwrap(), 0);
    }
}
