//! The hub's acknowledgements: which results it committed (they leave the queue and
//! are kept as acknowledged), which it refused for good (parked), which retractions it
//! recorded or refused, and which days of acknowledged results it lacks (queued again:
//! anti-entropy).

use std::sync::Arc;

use pleura_shared::wire::ResultAck;
use pleura_shared::ResultId;

use crate::outbox::{Outbox, OutboxError};

/// What the hub prefixes a refused retraction's reason with (hub-server retraction.rs);
/// such a refusal concerns the retraction, never the queued result of that id.
pub const RETRACTION_REFUSED: &str = "retraction refused";

/// An ack, sorted by what the edge does with each part.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AckParts {
    pub committed: Vec<ResultId>,
    /// Results the hub will never accept: parked with the reason.
    pub parked: Vec<(ResultId, String)>,
    pub retracted: Vec<ResultId>,
    /// Retractions the hub refused for good (another device's result, no reason): dropped.
    pub refused_retractions: Vec<(ResultId, String)>,
    pub resend_days: Vec<u32>,
}

impl AckParts {
    /// Entries whose id is not 16 bytes are ignored (the hub never sends them).
    pub fn from_ack(ack: ResultAck) -> Self {
        let id = |b: &[u8]| ResultId::from_slice(b).ok();
        let mut parts = AckParts {
            committed: ack.committed.iter().filter_map(|b| id(b)).collect(),
            retracted: ack.retracted.iter().filter_map(|b| id(b)).collect(),
            resend_days: ack.resend_days,
            ..Default::default()
        };
        for r in ack.rejected {
            let Some(i) = id(&r.result_id) else { continue };
            if r.reason.starts_with(RETRACTION_REFUSED) {
                parts.refused_retractions.push((i, r.reason));
            } else {
                parts.parked.push((i, r.reason));
            }
        }
        parts
    }

    /// An answer with nothing about results or retractions: the answer to a holdings
    /// check (a batch carrying only the device's holdings).
    pub fn answers_holdings_only(&self) -> bool {
        self.committed.is_empty()
            && self.parked.is_empty()
            && self.retracted.is_empty()
            && self.refused_retractions.is_empty()
    }

    /// Retractions this ack settles (recorded or refused).
    pub fn settled_retractions(&self) -> Vec<ResultId> {
        self.retracted
            .iter()
            .copied()
            .chain(self.refused_retractions.iter().map(|r| r.0))
            .collect()
    }

    /// Results this ack settles (committed or parked).
    pub fn settled_results(&self) -> Vec<ResultId> {
        self.committed
            .iter()
            .copied()
            .chain(self.parked.iter().map(|r| r.0))
            .collect()
    }
}

/// What applying an ack changed in the outbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Queued results now acknowledged.
    pub acked: usize,
    pub parked: usize,
    /// Pending retractions the hub recorded or refused.
    pub retractions_done: usize,
    /// Acknowledged results queued again for the hub.
    pub requeued: usize,
}

/// Applies `parts` to the outbox (blocking: call from spawn_blocking). Stops at the
/// first store error: what was not applied is sent again and the hub deduplicates.
pub fn apply(outbox: &dyn Outbox, parts: &AckParts) -> Result<Applied, OutboxError> {
    let mut a = Applied {
        acked: outbox.remove(&parts.committed)?,
        ..Default::default()
    };
    for (id, reason) in &parts.parked {
        outbox.park(id, reason)?;
        a.parked += 1;
    }
    let done = parts.settled_retractions();
    if !done.is_empty() {
        a.retractions_done = outbox.retracted(&done)?;
    }
    if !parts.resend_days.is_empty() {
        a.requeued = outbox.requeue_days(&parts.resend_days)?;
    }
    Ok(a)
}

/// `apply` on the blocking pool.
pub async fn apply_async(outbox: Arc<dyn Outbox>, parts: AckParts) -> anyhow::Result<Applied> {
    Ok(tokio::task::spawn_blocking(move || apply(outbox.as_ref(), &parts)).await??)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pleura_shared::holdings::day_of_ms;
    use pleura_shared::record::sample_record;
    use pleura_shared::wire::Rejection;

    fn outbox() -> (tempfile::TempDir, crate::outbox::SledOutbox) {
        let tmp = tempfile::tempdir().unwrap();
        let o = crate::outbox::SledOutbox::open(tmp.path(), 1 << 30).unwrap();
        (tmp, o)
    }

    #[test]
    fn refused_retractions_are_not_parked_results() {
        let (a, b, c) = (ResultId::random(), ResultId::random(), ResultId::random());
        let parts = AckParts::from_ack(ResultAck {
            schema_version: pleura_shared::SCHEMA_VERSION,
            committed: vec![a.0.to_vec(), vec![1, 2]],
            rejected: vec![
                Rejection {
                    result_id: b.0.to_vec(),
                    reason: "field zone: out of range".into(),
                },
                Rejection {
                    result_id: c.0.to_vec(),
                    reason: "retraction refused: the hub holds this result from another device"
                        .into(),
                },
            ],
            retracted: vec![a.0.to_vec()],
            resend_days: vec![20_000],
        });
        assert_eq!(parts.committed, vec![a]);
        assert_eq!(parts.parked.len(), 1);
        assert_eq!(parts.parked[0].0, b);
        assert_eq!(parts.refused_retractions[0].0, c);
        assert_eq!(parts.settled_retractions(), vec![a, c]);
        assert_eq!(parts.settled_results(), vec![a, b]);
        assert!(!parts.answers_holdings_only());
        assert!(AckParts::from_ack(ResultAck {
            resend_days: vec![1],
            ..Default::default()
        })
        .answers_holdings_only());
    }

    #[test]
    fn resend_days_queue_acknowledged_results_again_and_retractions_settle() {
        let (_tmp, ob) = outbox();
        let mut recs = Vec::new();
        for i in 0..4u64 {
            let mut r = sample_record("c", "d", 1, false);
            // two days, two results each
            r.analysed_at_ms = 1_700_000_000_000 + (i % 2) * 86_400_000 + i;
            ob.put(&r).unwrap();
            recs.push(r);
        }
        let ids: Vec<ResultId> = recs.iter().map(|r| r.id).collect();
        let a = apply(
            &ob,
            &AckParts {
                committed: ids.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(a.acked, 4);
        assert_eq!(ob.stats().unwrap().pending, 0);
        let day = day_of_ms(recs[1].analysed_at_ms);
        ob.retract(&ids[0], "wrong patient").unwrap();
        let a = apply(
            &ob,
            &AckParts {
                retracted: vec![ids[0]],
                resend_days: vec![day],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((a.requeued, a.retractions_done), (2, 1));
        assert_eq!(ob.stats().unwrap().pending, 2);
        assert!(ob.retractions().unwrap().is_empty());
        let again = ob.next_batch(10, &|_| false).unwrap();
        let mut got: Vec<ResultId> = again.iter().map(|r| r.id).collect();
        got.sort();
        let mut want = vec![ids[1], ids[3]];
        want.sort();
        assert_eq!(got, want, "exactly the lacking day's results");
    }
}
