//! Which transport the worker sends on, without I/O. The primary transport (MQTT)
//! keeps its own connection and reports up/down; it is used whenever it is up. The
//! fallback (gRPC) answers each call; it is tried only once the primary has failed
//! `fallback_after` times in a row, and after a failed call only once its backoff
//! has passed. When the primary comes back, sending returns to it at once.

use std::time::{Duration, Instant};

use super::state::{describe, Backoff, LinkStatus, LinkView};

/// Where the next round goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Primary,
    Fallback,
    /// Neither may be used now: wait for the primary to come up or the backoff to pass.
    Wait,
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// MQTT in `status.json`: up while connected and subscribed to its acks.
    pub primary: LinkStatus,
    /// gRPC in `status.json`: up while its last call was answered.
    pub fallback: LinkStatus,
    /// Whether a fallback is configured (`hub.grpc_url`).
    has_fallback: bool,
    fallback_after: u32,
    backoff: Backoff,
    /// No fallback call before this (set by a failed call).
    fallback_not_before: Option<Instant>,
}

impl Policy {
    /// `fallback` is the backoff between failed fallback calls, None without one.
    pub fn new(fallback_after: u32, fallback: Option<Backoff>) -> Self {
        let has_fallback = fallback.is_some();
        Self {
            primary: LinkStatus::default(),
            fallback: LinkStatus::default(),
            has_fallback,
            fallback_after,
            backoff: fallback
                .unwrap_or_else(|| Backoff::new(Duration::from_secs(1), Duration::from_secs(1))),
            fallback_not_before: None,
        }
    }

    pub fn route(&self, now: Instant) -> Route {
        if self.primary.up {
            Route::Primary
        } else if self.fallback_allowed(now) {
            Route::Fallback
        } else {
            Route::Wait
        }
    }

    fn fallback_allowed(&self, now: Instant) -> bool {
        self.has_fallback
            && self.primary.failures >= self.fallback_after
            && self.fallback_not_before.is_none_or(|t| now >= t)
    }

    /// The primary is connected and ready. True when this is news (log it once).
    pub fn primary_up(&mut self, now_ms: u64) -> bool {
        // The fallback is not in use while the primary is: its "up" would go stale.
        self.fallback.up = false;
        self.primary.ok(now_ms)
    }

    /// The primary failed to connect or lost its connection. True when news.
    pub fn primary_down(&mut self, error: String) -> bool {
        self.primary.failed(error)
    }

    /// A fallback call was answered. True when news.
    pub fn fallback_ok(&mut self, now_ms: u64) -> bool {
        self.backoff.reset();
        self.fallback_not_before = None;
        self.fallback.ok(now_ms)
    }

    /// A fallback call failed: no other before the returned delay (jittered by `unit`
    /// in [0,1)). The flag says whether this is news.
    pub fn fallback_failed(&mut self, error: String, unit: f64, now: Instant) -> (bool, Duration) {
        let delay = self.backoff.next_delay(unit);
        self.fallback_not_before = Some(now + delay);
        (self.fallback.failed(error), delay)
    }

    /// The link as `status` shows it; `busy`: results wait for the hub.
    pub fn describe(&self, busy: bool) -> LinkView {
        let fallback = self.has_fallback.then_some(&self.fallback);
        describe(&self.primary, fallback, busy, self.fallback_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What can happen to the policy between two routing decisions.
    #[derive(Debug, Clone)]
    enum Step {
        PrimaryUp,
        PrimaryDown,
        FallbackOk,
        FallbackFailed(f64),
        /// Time passes (ms).
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => Just(Step::PrimaryUp),
            3 => Just(Step::PrimaryDown),
            1 => Just(Step::FallbackOk),
            2 => (0.0f64..1.0).prop_map(Step::FallbackFailed),
            2 => (0u64..5_000).prop_map(Step::Wait),
        ]
    }

    fn policy(after: u32, with_fallback: bool) -> Policy {
        let b = Backoff::new(Duration::from_millis(250), Duration::from_secs(60));
        Policy::new(after, with_fallback.then_some(b))
    }

    /// Applies a step the way the worker does: fallback outcomes only for a call the
    /// policy routed there.
    fn apply(p: &mut Policy, s: &Step, now: &mut Instant) {
        match s {
            Step::PrimaryUp => {
                p.primary_up(1);
            }
            Step::PrimaryDown => {
                p.primary_down("refused".into());
            }
            Step::FallbackOk if p.route(*now) == Route::Fallback => {
                p.fallback_ok(2);
            }
            Step::FallbackFailed(u) if p.route(*now) == Route::Fallback => {
                p.fallback_failed("deadline".into(), *u, *now);
            }
            Step::Wait(ms) => *now += Duration::from_millis(*ms),
            _ => {}
        }
    }

    proptest! {
        #[test]
        fn never_routes_to_a_transport_marked_down(
            steps in proptest::collection::vec(step(), 0..80),
            after in 0u32..6,
            with_fallback: bool,
        ) {
            let mut p = policy(after, with_fallback);
            let mut now = Instant::now();
            // Until when the last failed fallback call holds the fallback down.
            let mut fallback_down_until: Option<Instant> = None;
            for s in &steps {
                let routed = p.route(now);
                apply(&mut p, s, &mut now);
                match s {
                    Step::FallbackFailed(_) if routed == Route::Fallback => {
                        fallback_down_until = p.fallback_not_before;
                    }
                    Step::FallbackOk if routed == Route::Fallback => fallback_down_until = None,
                    _ => {}
                }
                match p.route(now) {
                    Route::Primary => prop_assert!(p.primary.up),
                    Route::Fallback => {
                        prop_assert!(with_fallback && !p.primary.up);
                        prop_assert!(p.primary.failures >= after);
                        prop_assert!(fallback_down_until.is_none_or(|t| now >= t));
                    }
                    Route::Wait => prop_assert!(!p.primary.up),
                }
            }
        }

        #[test]
        fn fallback_backoff_is_bounded_and_does_not_fall_until_a_success(
            units in proptest::collection::vec(0.0f64..1.0, 1..40),
        ) {
            let mut p = policy(1, true);
            p.primary_down("x".into());
            let mut now = Instant::now();
            let mut last_ceiling = Duration::ZERO;
            for u in units {
                // The caller waits exactly as long as told, then may call again.
                prop_assert_eq!(p.route(now), Route::Fallback);
                let ceiling = p.backoff.ceiling();
                prop_assert!(ceiling >= last_ceiling);
                let (_, d) = p.fallback_failed("x".into(), u, now);
                prop_assert!(d >= Duration::from_millis(250) && d <= ceiling);
                prop_assert!(d <= Duration::from_secs(60));
                prop_assert_eq!(p.route(now + d - Duration::from_millis(1)), Route::Wait);
                now += d;
                last_ceiling = ceiling;
            }
            p.fallback_ok(1);
            prop_assert_eq!(p.backoff.ceiling(), Duration::from_millis(250));
            prop_assert_eq!(p.route(now), Route::Fallback);
        }

        #[test]
        fn once_the_primary_recovers_sending_returns_to_it(
            steps in proptest::collection::vec(step(), 0..80),
            after in 0u32..6,
            with_fallback: bool,
        ) {
            let mut p = policy(after, with_fallback);
            let mut now = Instant::now();
            for s in &steps {
                apply(&mut p, s, &mut now);
            }
            p.primary_up(9);
            prop_assert_eq!(p.route(now), Route::Primary);
            prop_assert!(!p.fallback.up, "the fallback's up goes stale while unused");
            prop_assert_eq!(p.describe(false).transport, "mqtt");
        }

        #[test]
        fn the_fallback_waits_for_enough_primary_failures(after in 1u32..10, downs in 0u32..10) {
            let mut p = policy(after, true);
            for _ in 0..downs {
                p.primary_down("x".into());
            }
            let expected = if downs >= after { Route::Fallback } else { Route::Wait };
            prop_assert_eq!(p.route(Instant::now()), expected);
        }
    }

    #[test]
    fn without_a_fallback_it_only_waits_for_the_primary() {
        let mut p = policy(0, false);
        for _ in 0..10 {
            p.primary_down("x".into());
        }
        assert_eq!(p.route(Instant::now()), Route::Wait);
        assert!(p.describe(false).summary.contains("no grpc_url"));
    }
}
