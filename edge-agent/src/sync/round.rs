//! One `info` line per sync round: what a burst of sending and acknowledging did,
//! in counts only (no ids, no patient data). A round ends when the worker has a tick
//! with nothing new, or after `MAX_ROUND`, so an idle agent logs nothing and a long
//! drain logs every few seconds.

use std::time::{Duration, Instant};

/// Longest a round is summed up before its line is written.
pub const MAX_ROUND: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub batches: u64,
    pub sent: u64,
    pub acked: u64,
    pub parked: u64,
    /// Results sent again because no ack came in time.
    pub resent: u64,
    /// Acknowledged results queued again because the hub lacks them.
    pub requeued: u64,
    pub retractions_sent: u64,
    pub retracted: u64,
    pub retractions_refused: u64,
    /// Anti-entropy summaries sent.
    pub reconciles: u64,
    /// The transport of the round's last send or ack.
    pub transport: &'static str,
    started: Option<Instant>,
}

impl Tally {
    /// Marks activity now (the round starts at its first activity).
    pub fn touch(&mut self, now: Instant, transport: &'static str) {
        self.started.get_or_insert(now);
        self.transport = transport;
    }

    /// The round's line, if it should be written now: `active` says whether this tick
    /// did anything. The tally starts afresh after a line.
    pub fn finish(&mut self, now: Instant, active: bool) -> Option<String> {
        let started = self.started?;
        if active && now.duration_since(started) < MAX_ROUND {
            return None;
        }
        let line = self.line();
        *self = Tally::default();
        Some(line)
    }

    fn line(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |n: u64, what: &str| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        add(self.sent, "sent");
        add(self.batches, "batch(es)");
        add(self.acked, "acknowledged");
        add(self.parked, "refused by the hub and parked");
        add(self.resent, "unacknowledged, to send again");
        add(self.requeued, "queued again (the hub lacks them)");
        add(self.retractions_sent, "retraction(s) sent");
        add(self.retracted, "retraction(s) recorded");
        add(self.retractions_refused, "retraction(s) refused");
        add(self.reconciles, "holdings check(s)");
        if parts.is_empty() {
            parts.push("hub answered".into());
        }
        let via = if self.transport.is_empty() {
            "-"
        } else {
            self.transport
        };
        format!("sync round via {via}: {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_ticks_write_nothing_and_a_burst_writes_one_line() {
        let t0 = Instant::now();
        let mut t = Tally::default();
        for i in 0..50 {
            assert_eq!(t.finish(t0 + Duration::from_millis(200 * i), false), None);
        }
        t.touch(t0, "mqtt");
        t.sent += 100;
        t.batches += 2;
        assert_eq!(t.finish(t0 + Duration::from_millis(200), true), None);
        t.touch(t0 + Duration::from_millis(400), "mqtt");
        t.acked += 100;
        assert_eq!(t.finish(t0 + Duration::from_millis(400), true), None);
        let line = t.finish(t0 + Duration::from_millis(600), false).unwrap();
        assert_eq!(
            line,
            "sync round via mqtt: 100 sent, 2 batch(es), 100 acknowledged"
        );
        assert_eq!(t, Tally::default());
        assert_eq!(t.finish(t0 + Duration::from_millis(800), false), None);
    }

    #[test]
    fn a_long_drain_writes_a_line_every_max_round() {
        let t0 = Instant::now();
        let mut t = Tally::default();
        t.touch(t0, "grpc");
        t.requeued = 7;
        assert_eq!(t.finish(t0 + Duration::from_secs(1), true), None);
        let line = t.finish(t0 + MAX_ROUND, true).unwrap();
        assert_eq!(
            line,
            "sync round via grpc: 7 queued again (the hub lacks them)"
        );
    }
}
