//! The sync protocol without I/O: what is in flight, what an ack releases, when an
//! unacknowledged batch is sent again, and how long to wait before reconnecting.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pleura_shared::ResultId;

/// Results sent but not yet acknowledged by the hub.
#[derive(Debug)]
pub struct InFlight {
    sent: HashMap<ResultId, Instant>,
    pub max: usize,
    pub ack_timeout: Duration,
}

impl InFlight {
    pub fn new(max: usize, ack_timeout: Duration) -> Self {
        Self {
            sent: HashMap::new(),
            max,
            ack_timeout,
        }
    }

    /// Forgets sends older than the ack timeout so they are sent again: the broker
    /// or the hub may have lost them (a PUBACK is not the hub's ack).
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.sent.len();
        let t = self.ack_timeout;
        self.sent.retain(|_, at| now.duration_since(*at) < t);
        before - self.sent.len()
    }

    pub fn room(&self) -> usize {
        self.max.saturating_sub(self.sent.len())
    }

    pub fn contains(&self, id: &ResultId) -> bool {
        self.sent.contains_key(id)
    }

    pub fn mark_sent(&mut self, ids: impl IntoIterator<Item = ResultId>, now: Instant) {
        for id in ids {
            self.sent.insert(id, now);
        }
    }

    /// The hub committed (or rejected) these; they leave the flight.
    pub fn settle(&mut self, ids: &[ResultId]) {
        for id in ids {
            self.sent.remove(id);
        }
    }

    /// After a reconnect everything unacknowledged is eligible again.
    pub fn clear(&mut self) {
        self.sent.clear();
    }

    pub fn ids(&self) -> impl Iterator<Item = ResultId> + '_ {
        self.sent.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

/// Exponential backoff with full jitter: after a long outage the clinics do not all
/// reconnect in the same second.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay: min·2^attempt, capped at max.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay, uniform in [min, ceiling], with `unit` in [0,1) from an RNG.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.min);
        self.min + span.mul_f64(unit.clamp(0.0, 1.0))
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unacked_sends_expire_and_acks_settle() {
        let t0 = Instant::now();
        let mut f = InFlight::new(3, Duration::from_secs(10));
        let (a, b) = (ResultId::random(), ResultId::random());
        f.mark_sent([a, b], t0);
        assert_eq!(f.room(), 1);
        f.settle(&[a]);
        assert!(!f.contains(&a) && f.contains(&b));
        assert_eq!(f.expire(t0 + Duration::from_secs(5)), 0);
        assert_eq!(f.expire(t0 + Duration::from_secs(11)), 1);
        assert!(f.is_empty());
    }

    proptest! {
        #[test]
        fn backoff_stays_within_bounds_and_grows(units in proptest::collection::vec(0.0f64..1.0, 1..40)) {
            let min = Duration::from_millis(200);
            let max = Duration::from_secs(60);
            let mut b = Backoff::new(min, max);
            let mut last_ceiling = Duration::ZERO;
            for u in units {
                let c = b.ceiling();
                prop_assert!(c >= last_ceiling);
                let d = b.next_delay(u);
                prop_assert!(d >= min && d <= c && d <= max);
                last_ceiling = c;
            }
        }

        #[test]
        fn in_flight_never_exceeds_its_bound_when_callers_respect_room(n in 0usize..50, max in 1usize..20) {
            let mut f = InFlight::new(max, Duration::from_secs(1));
            let now = Instant::now();
            let ids: Vec<ResultId> = (0..n).map(|_| ResultId::random()).collect();
            let take = f.room().min(ids.len());
            f.mark_sent(ids[..take].iter().copied(), now);
            prop_assert!(f.len() <= max);
        }
    }

    #[test]
    fn backoff_resets_after_success() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        for _ in 0..10 {
            b.next_delay(0.5);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
