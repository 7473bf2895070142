//! The edge half of anti-entropy. After each (re)connect and every
//! `sync.reconcile_interval_s`, the worker sends the hub a batch with no results and
//! the per-day digests of what the hub has acknowledged (`Outbox::holdings`); the hub
//! answers with the days it lacks (`ResultAck.resend_days`) and those results are
//! queued again (acks.rs). Acknowledged results older than
//! `sync.acked_retention_days` are forgotten about once an hour.

use std::time::{Duration, Instant};

use pleura_shared::holdings::{Holdings, MAX_HOLDINGS_DAYS};
use pleura_shared::wire as pb;

/// Unanswered holdings checks sent again after the ack timeout before the worker
/// falls back to the interval (a hub that never answers is not asked every 15 s).
pub const MAX_RETRIES: u32 = 3;

/// How often acknowledged results past their retention are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// When the next holdings check and prune are due.
#[derive(Debug)]
pub struct Schedule {
    interval: Duration,
    ack_timeout: Duration,
    next: Instant,
    awaiting: Option<Instant>,
    unanswered: u32,
    next_prune: Instant,
}

impl Schedule {
    /// A check and a prune are due at once.
    pub fn new(interval: Duration, ack_timeout: Duration, now: Instant) -> Self {
        Self {
            interval,
            ack_timeout,
            next: now,
            awaiting: None,
            unanswered: 0,
            next_prune: now,
        }
    }

    /// A (re)connect: check now.
    pub fn on_connect(&mut self, now: Instant) {
        self.next = now;
        self.awaiting = None;
        self.unanswered = 0;
    }

    pub fn due(&self, now: Instant) -> bool {
        if let Some(at) = self.awaiting {
            if now.duration_since(at) < self.ack_timeout {
                return false;
            }
            if self.unanswered < MAX_RETRIES {
                return true;
            }
        }
        now >= self.next
    }

    pub fn sent(&mut self, now: Instant) {
        if self.awaiting.is_some() {
            self.unanswered += 1;
        }
        self.awaiting = Some(now);
        self.next = now + self.interval;
    }

    pub fn answered(&mut self) {
        self.awaiting = None;
        self.unanswered = 0;
    }

    /// True about once per `PRUNE_EVERY` (and at the first call).
    pub fn prune_due(&mut self, now: Instant) -> bool {
        if now < self.next_prune {
            return false;
        }
        self.next_prune = now + PRUNE_EVERY;
        true
    }
}

/// The holdings as sent: the most recent `MAX_HOLDINGS_DAYS` days (the hub refuses
/// more; older days are pruned anyway).
pub fn to_wire(h: &Holdings) -> pb::Holdings {
    let mut w = h.to_wire();
    let extra = w.days.len().saturating_sub(MAX_HOLDINGS_DAYS);
    w.days.drain(..extra);
    w
}

/// The first day whose acknowledged results are kept, `retention_days` before today.
pub fn prune_before(today: u32, retention_days: u32) -> u32 {
    today.saturating_sub(retention_days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pleura_shared::ResultId;

    #[test]
    fn checks_come_on_connect_on_the_interval_and_retry_a_few_times() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut r = Schedule::new(Duration::from_secs(600), Duration::from_secs(15), t0);
        assert!(r.due(t0), "due at start");
        r.sent(t0);
        assert!(!r.due(s(10)));
        r.answered();
        assert!(!r.due(s(599)));
        assert!(r.due(s(600)), "due on the interval");
        r.on_connect(s(100));
        assert!(r.due(s(100)), "due after a reconnect");
        r.sent(s(100));
        // No answer: sent again after the ack timeout, MAX_RETRIES times, then only
        // on the interval.
        let mut t = 100;
        for _ in 0..MAX_RETRIES {
            t += 15;
            assert!(r.due(s(t)), "retry at {t}");
            r.sent(s(t));
        }
        assert!(!r.due(s(t + 15)));
        assert!(r.due(s(t + 600)));
    }

    #[test]
    fn prune_about_once_an_hour() {
        let t0 = Instant::now();
        let mut r = Schedule::new(Duration::from_secs(600), Duration::from_secs(15), t0);
        assert!(r.prune_due(t0));
        assert!(!r.prune_due(t0 + Duration::from_secs(3599)));
        assert!(r.prune_due(t0 + PRUNE_EVERY));
        assert_eq!(prune_before(20_090, 90), 20_000);
        assert_eq!(prune_before(10, 90), 0);
    }

    #[test]
    fn holdings_on_the_wire_keep_the_newest_days_within_the_hubs_limit() {
        let mut h = Holdings::default();
        for day in 0..(MAX_HOLDINGS_DAYS as u32 + 5) {
            h.add(day, &ResultId::random());
        }
        let w = to_wire(&h);
        assert_eq!(w.days.len(), MAX_HOLDINGS_DAYS);
        assert_eq!(w.days[0].day, 5);
        assert!(Holdings::from_wire(&w).is_ok());
    }
}
