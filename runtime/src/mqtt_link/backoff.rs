//! The one reconnect backoff of the workspace: exponential with full jitter, bounded.
//! Pure (the caller supplies the random draw), so it is property-tested.

use std::time::Duration;

/// Exponential backoff with full jitter: after a long outage the clinics do not all
/// reconnect in the same second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    attempt: u32,
}

impl Backoff {
    /// `min` is raised to 1 ms and `max` to `min`, so the bounds always hold.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
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

    /// [`Backoff::next_delay`] with a random draw.
    pub fn next_random(&mut self) -> Duration {
        self.next_delay(rand::random())
    }

    /// Failures since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// A success: the next failure waits about `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delays_stay_within_bounds_and_ceilings_never_fall_until_a_reset(
            min_ms in 1u64..5_000,
            extra_ms in 0u64..120_000,
            draws in proptest::collection::vec(0.0f64..1.0, 1..60),
        ) {
            let (min, max) = (Duration::from_millis(min_ms), Duration::from_millis(min_ms + extra_ms));
            let mut b = Backoff::new(min, max);
            let mut last = Duration::ZERO;
            for u in draws {
                let c = b.ceiling();
                prop_assert!(c >= last && c <= max);
                let d = b.next_delay(u);
                prop_assert!(d >= min && d <= c);
                last = c;
            }
            b.reset();
            prop_assert_eq!(b.ceiling(), min);
        }

        #[test]
        fn the_ceiling_reaches_max_after_enough_failures(min_ms in 1u64..1_000, extra_ms in 0u64..600_000) {
            let max = Duration::from_millis(min_ms + extra_ms);
            let mut b = Backoff::new(Duration::from_millis(min_ms), max);
            for _ in 0..40 {
                b.next_delay(0.0);
            }
            prop_assert_eq!(b.ceiling(), max);
        }
    }

    #[test]
    fn degenerate_bounds_are_made_sane() {
        let b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(
            (b.min, b.max),
            (Duration::from_millis(1), Duration::from_millis(1))
        );
    }
}
