//! The review loop's histograms: arrival → first claim and arrival → first verdict of
//! examinations (`pleura_review_claim_seconds`, `pleura_review_verdict_seconds`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, seconds: 1 min to 2 days (the tiers' windows among them).
const BUCKETS_S: [u64; 10] = [
    60, 300, 900, 1800, 3600, 7200, 14_400, 43_200, 86_400, 172_800,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, ms: u64) {
        let s = ms / 1000;
        for (b, le) in self.buckets.iter().zip(BUCKETS_S) {
            if s <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, le) in self.buckets.iter().zip(BUCKETS_S) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{le}\"}} {}",
                b.load(Ordering::Relaxed)
            );
        }
        let n = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {n}");
    }
}

/// The review loop's histograms (in `Metrics`).
#[derive(Default)]
pub struct ReviewTimes {
    pub claim: Histogram,
    pub verdict: Histogram,
}

impl ReviewTimes {
    pub fn render(&self, out: &mut String) {
        self.claim.render(
            out,
            "pleura_review_claim_seconds",
            "Time from an examination's first result to its first claim.",
        );
        self.verdict.render(
            out,
            "pleura_review_verdict_seconds",
            "Time from an examination's first result to its first verdict.",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_their_buckets() {
        let h = Histogram::default();
        h.observe(30_000);
        h.observe(4_000_000);
        let mut out = String::new();
        h.render(&mut out, "x", "y");
        assert!(out.contains("x_bucket{le=\"60\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"7200\"} 2\n"));
        assert!(out.contains("x_count 2\n"));
    }
}
