//! The test suite every `Outbox` backend must pass. `open(quota)` reopens the same store.

use pleura_shared::record::sample_record;
use pleura_shared::ResultId;

use super::{Outbox, OutboxError, Put, QueueDepth};

/// `queue_depth`, checked against `stats` (which must agree with it).
fn depth<O: Outbox>(ob: &O) -> (u64, Option<u64>) {
    let QueueDepth {
        pending,
        oldest_pending_ms,
    } = ob.queue_depth().unwrap();
    let s = ob.stats().unwrap();
    assert_eq!(
        (s.pending, s.oldest_pending_ms),
        (pending, oldest_pending_ms)
    );
    (pending, oldest_pending_ms)
}

pub fn run<O: Outbox>(open: impl Fn(u64) -> O) {
    let ob = open(10_000);
    assert_eq!(depth(&ob), (0, None), "an empty queue");
    let mut old_mild = sample_record("c", "d", 1, false);
    old_mild.analysed_at_ms = 1_000;
    let mut new_mild = sample_record("c", "d", 1, false);
    new_mild.analysed_at_ms = 2_000;
    let mut severe = sample_record("c", "d", 3, true);
    severe.analysed_at_ms = 3_000;
    let mut normal = sample_record("c", "d", 0, false);
    normal.analysed_at_ms = 500;
    for r in [&new_mild, &normal, &severe, &old_mild] {
        assert_eq!(ob.put(r).unwrap(), Put::Stored);
    }
    assert_eq!(
        ob.put(&severe).unwrap(),
        Put::AlreadyQueued,
        "idempotent on id"
    );

    // Most urgent first, then oldest.
    let ids = |v: Vec<pleura_shared::ScanRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(ob.next_batch(10, &|_| false).unwrap()),
        vec![severe.id, old_mild.id, new_mild.id, normal.id]
    );
    let in_flight = [severe.id, old_mild.id];
    assert_eq!(
        ids(ob
            .next_batch(1, &|id: &ResultId| in_flight.contains(id))
            .unwrap()),
        vec![new_mild.id]
    );

    let s = ob.stats().unwrap();
    assert_eq!(s.pending, 4);
    assert_eq!(s.oldest_pending_ms, Some(500));
    // The oldest is the least urgent, last in the queue's order.
    assert_eq!(depth(&ob), (4, Some(500)));

    assert_eq!(ob.remove(&[severe.id, ResultId::random()]).unwrap(), 1);
    assert_eq!(
        ob.remove(&[severe.id]).unwrap(),
        0,
        "a second ack is harmless"
    );
    ob.park(&normal.id, "severity out of range").unwrap();
    let s = ob.stats().unwrap();
    assert_eq!((s.pending, s.parked), (2, 1));
    assert_eq!(
        depth(&ob),
        (2, Some(1_000)),
        "acked and parked are not queued"
    );

    // Survives a reopen, byte accounting included.
    let before = ob.stats().unwrap();
    drop(ob);
    let ob = open(10_000);
    assert_eq!(ob.stats().unwrap(), before);
    assert_eq!(depth(&ob), (2, Some(1_000)), "counted again at open");
    assert_eq!(
        ids(ob.next_batch(10, &|_| false).unwrap()),
        vec![old_mild.id, new_mild.id]
    );

    // At the quota new results are refused, not dropped; acks free room again.
    drop(ob);
    let ob = open(before.pending_bytes + 10);
    let extra = sample_record("c", "d", 2, true);
    match ob.put(&extra) {
        Err(OutboxError::QuotaExceeded { .. }) => {}
        other => panic!("expected quota refusal, got {other:?}"),
    }
    assert_eq!(ob.stats().unwrap().pending, 2);
    ob.remove(&[old_mild.id]).unwrap();
    assert_eq!(ob.put(&extra).unwrap(), Put::Stored);
    assert_eq!(depth(&ob), (2, Some(2_000)));
    acknowledged_results_stay_for_anti_entropy(&ob, &severe, &old_mild);
    drop(ob);
    retractions_wait_for_the_hub(&open);
}

fn acknowledged_results_stay_for_anti_entropy<O: Outbox>(
    ob: &O,
    severe: &pleura_shared::ScanRecord,
    old_mild: &pleura_shared::ScanRecord,
) {
    use super::Held;
    use pleura_shared::holdings::day_of_ms;
    assert_eq!(ob.held(&severe.id).unwrap(), Some(Held::Acked));
    assert_eq!(
        ob.put(severe).unwrap(),
        Put::AlreadyQueued,
        "acked is not queued again"
    );
    let h = ob.holdings().unwrap();
    assert_eq!(h.total(), 2);
    // The hub lost the day of old_mild: it is queued again, once.
    let day = day_of_ms(old_mild.analysed_at_ms);
    assert_eq!(
        ob.requeue_days(&[day, day]).unwrap(),
        2,
        "both acked results of day 0"
    );
    assert_eq!(ob.held(&old_mild.id).unwrap(), Some(Held::Queued));
    let (pending, oldest) = depth(ob);
    assert_eq!(
        (pending, oldest),
        (4, Some(1_000)),
        "requeued results count"
    );
    assert_eq!(ob.requeue_days(&[day]).unwrap(), 0, "already queued");
    assert_eq!(ob.remove(&[old_mild.id, severe.id]).unwrap(), 2);
    assert_eq!(depth(ob), (2, Some(2_000)));
    assert_eq!(ob.holdings().unwrap(), h, "re-acked, not counted twice");
    assert_eq!(ob.prune_acked(day + 1).unwrap(), 2);
    assert_eq!(ob.held(&old_mild.id).unwrap(), None);
    assert_eq!(ob.stats().unwrap().acked, 0);
}

fn retractions_wait_for_the_hub<O: Outbox>(open: &impl Fn(u64) -> O) {
    let id = ResultId::random();
    {
        let ob = open(10_000);
        ob.retract(&id, "filed under the wrong patient").unwrap();
    }
    let ob = open(10_000);
    assert_eq!(
        ob.retractions().unwrap(),
        vec![(id, "filed under the wrong patient".to_string())]
    );
    assert_eq!(ob.retracted(&[id]).unwrap(), 1);
    assert_eq!(ob.retracted(&[id]).unwrap(), 0);
    assert!(ob.retractions().unwrap().is_empty());
}
