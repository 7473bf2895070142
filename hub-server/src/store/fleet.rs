//! Fleet health (issue #16): what the hub knows of each device beyond its results —
//! when it last heard from it, and the queue the device reported with its last batch
//! (`ResultBatch.queue`). Recorded by `HubStore::note_contact` for every verified batch,
//! holdings-only checks included, so a device with nothing to send still shows as alive.
//! Backend-independent: a backend reads the device's `DeviceStats`, applies
//! `DeviceStats::note`, and writes it back in one transaction with the commits that
//! update the same entry.

use super::DeviceStats;

/// A device's queue as it reported it (`pleura.v1.QueueReport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Results queued at the edge, not yet acknowledged by the hub.
    pub pending: u64,
    /// `analysed_at_ms` of the oldest of them; 0 if none is pending.
    pub oldest_pending_ms: u64,
    /// When the device took the report (its clock, ms since the epoch).
    pub reported_at_ms: u64,
}

/// One verified batch from a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contact {
    /// When the hub received it (hub clock, ms since the epoch).
    pub at_ms: u64,
    /// The queue report it carried; None from agents that send none (before #16).
    pub queue: Option<QueueState>,
}

/// A stored report dated further than this past the hub's clock came from a device
/// clock that ran ahead: a later report replaces it even if dated earlier.
pub const CLOCK_AHEAD_MS: u64 = 24 * 3600 * 1000;

impl QueueState {
    pub fn from_wire(w: &pleura_shared::wire::QueueReport) -> Self {
        Self {
            pending: w.pending,
            oldest_pending_ms: w.oldest_pending_ms,
            reported_at_ms: w.reported_at_ms,
        }
    }
}

impl Contact {
    /// `other` folded in (two batches of one device in one group commit): the later
    /// arrival, and the later-dated report.
    pub fn merge(&mut self, other: &Contact) {
        self.at_ms = self.at_ms.max(other.at_ms);
        match (&self.queue, &other.queue) {
            (Some(mine), Some(theirs)) if theirs.reported_at_ms < mine.reported_at_ms => {}
            (_, Some(theirs)) => self.queue = Some(*theirs),
            (_, None) => {}
        }
    }
}

impl DeviceStats {
    /// Records `c`: `last_seen_ms` never goes back; the queue report replaces the stored
    /// one unless it is older (a resent or reordered batch), or the stored one is dated
    /// more than `CLOCK_AHEAD_MS` past the hub's clock. A contact without a report keeps
    /// the last one.
    pub fn note(&mut self, c: &Contact) {
        self.last_seen_ms = self.last_seen_ms.max(c.at_ms);
        let Some(q) = c.queue else {
            return;
        };
        let stored_ahead = self.queue_reported_ms > c.at_ms.saturating_add(CLOCK_AHEAD_MS);
        if q.reported_at_ms >= self.queue_reported_ms || stored_ahead {
            self.queue_pending = q.pending;
            self.oldest_pending_ms = q.oldest_pending_ms;
            self.queue_reported_ms = q.reported_at_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pending: u64, oldest: u64, at: u64) -> Option<QueueState> {
        Some(QueueState {
            pending,
            oldest_pending_ms: oldest,
            reported_at_ms: at,
        })
    }

    #[test]
    fn the_latest_report_stands_and_last_seen_never_goes_back() {
        let mut s = DeviceStats::default();
        s.note(&Contact {
            at_ms: 10_000,
            queue: q(5, 1_000, 9_000),
        });
        assert_eq!(
            (
                s.last_seen_ms,
                s.queue_pending,
                s.oldest_pending_ms,
                s.queue_reported_ms
            ),
            (10_000, 5, 1_000, 9_000)
        );
        // A resent older batch: seen, but its report is stale.
        s.note(&Contact {
            at_ms: 11_000,
            queue: q(7, 500, 8_000),
        });
        assert_eq!((s.last_seen_ms, s.queue_pending), (11_000, 5));
        // No report (an old agent): the last one is kept.
        s.note(&Contact {
            at_ms: 12_000,
            queue: None,
        });
        assert_eq!((s.last_seen_ms, s.queue_pending), (12_000, 5));
        // Received out of order at the hub: last_seen keeps the later time.
        s.note(&Contact {
            at_ms: 11_500,
            queue: q(0, 0, 12_000),
        });
        assert_eq!(
            (s.last_seen_ms, s.queue_pending, s.oldest_pending_ms),
            (12_000, 0, 0)
        );
        // A report from a clock that ran a year ahead gives way once it is corrected.
        s.note(&Contact {
            at_ms: 13_000,
            queue: q(1, 2, 365 * CLOCK_AHEAD_MS),
        });
        s.note(&Contact {
            at_ms: 14_000,
            queue: q(3, 13_500, 13_900),
        });
        assert_eq!((s.queue_pending, s.queue_reported_ms), (3, 13_900));
    }

    #[test]
    fn merging_keeps_the_later_arrival_and_report() {
        let mut c = Contact {
            at_ms: 5,
            queue: q(1, 1, 50),
        };
        c.merge(&Contact {
            at_ms: 4,
            queue: q(2, 2, 40),
        });
        assert_eq!(
            c,
            Contact {
                at_ms: 5,
                queue: q(1, 1, 50)
            }
        );
        c.merge(&Contact {
            at_ms: 6,
            queue: None,
        });
        assert_eq!(
            c,
            Contact {
                at_ms: 6,
                queue: q(1, 1, 50)
            }
        );
        c.merge(&Contact {
            at_ms: 7,
            queue: q(0, 0, 60),
        });
        assert_eq!(
            c,
            Contact {
                at_ms: 7,
                queue: q(0, 0, 60)
            }
        );
    }
}
