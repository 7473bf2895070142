//! The sync protocol without I/O: what is in flight, what an ack releases, when an
//! unacknowledged batch is sent again, and what the agent tells its operator about the
//! link (`describe`). Which transport to use and when is in policy.rs.

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

/// The workspace's one backoff (jittered, bounded), shared with the MQTT link.
pub use pleura_runtime::mqtt_link::Backoff;

pub use crate::status::LinkStatus;

/// How the agent reaches the hub now, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// idle, sending, connecting, reconnecting, backing-off
    pub state: &'static str,
    /// The transport in use: "mqtt", "grpc", or "" when none works.
    pub transport: &'static str,
    /// Whether the hub answers on some transport.
    pub reachable: bool,
    /// One line for the operator, e.g. "reachable via grpc (mqtt down: …); idle".
    pub summary: String,
}

/// The link as the operator should see it. `grpc` is None without a gRPC URL; `busy`
/// says whether results wait for the hub (MQTT: in flight; gRPC: still queued);
/// `fallback_after` is `sync.grpc_fallback_after`.
pub fn describe(
    mqtt: &LinkStatus,
    grpc: Option<&LinkStatus>,
    busy: bool,
    fallback_after: u32,
) -> LinkView {
    let work = if busy { "sending" } else { "idle" };
    let err = |l: &LinkStatus| l.last_error.clone().unwrap_or_else(|| "no answer".into());
    if mqtt.up {
        return LinkView {
            state: work,
            transport: "mqtt",
            reachable: true,
            summary: format!("reachable via mqtt; {work}"),
        };
    }
    if grpc.is_some_and(|g| g.up) {
        return LinkView {
            state: work,
            transport: "grpc",
            reachable: true,
            summary: format!("reachable via grpc (mqtt down: {}); {work}", err(mqtt)),
        };
    }
    if mqtt.failures == 0 {
        return LinkView {
            state: "connecting",
            transport: "",
            reachable: false,
            summary: "connecting to the hub by mqtt".into(),
        };
    }
    match grpc {
        Some(g) if g.failures > 0 => LinkView {
            state: "backing-off",
            transport: "",
            reachable: false,
            summary: format!(
                "unreachable: mqtt fails ({}) and grpc fails ({}); retrying with backoff",
                err(mqtt),
                err(g)
            ),
        },
        Some(_) if mqtt.failures >= fallback_after => LinkView {
            state: "reconnecting",
            transport: "",
            reachable: false,
            summary: format!("unreachable via mqtt ({}); trying grpc", err(mqtt)),
        },
        Some(_) => LinkView {
            state: "reconnecting",
            transport: "",
            reachable: false,
            summary: format!(
                "unreachable via mqtt ({}); retrying, grpc after {fallback_after} failures",
                err(mqtt)
            ),
        },
        None => LinkView {
            state: "backing-off",
            transport: "",
            reachable: false,
            summary: format!(
                "unreachable via mqtt ({}); retrying with backoff (no grpc_url)",
                err(mqtt)
            ),
        },
    }
}

/// For `edge-agent status` on a stopped agent: the link fields of its last status file
/// are no longer current. Keeps the last contacts (`last_ok_ms`) and errors as history.
pub fn mark_stopped(sync: &mut crate::status::SyncStatus) {
    sync.reachable = false;
    sync.mqtt.up = false;
    sync.grpc.up = false;
    sync.mqtt_connected = false;
    sync.transport.clear();
    sync.summary = "agent not running: nothing is sent to the hub".into();
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

    #[test]
    fn a_working_grpc_fallback_is_reported_as_reachable_not_backing_off() {
        // MQTT blocked, gRPC answering: the "hub unreachable … backing-off"
        // after a successful drain over gRPC.
        let mut mqtt = LinkStatus::default();
        let mut grpc = LinkStatus::default();
        for _ in 0..5 {
            mqtt.failed("connection refused".into());
        }
        assert!(grpc.ok(1_000));
        let v = describe(&mqtt, Some(&grpc), false, 3);
        assert_eq!((v.state, v.transport, v.reachable), ("idle", "grpc", true));
        assert_eq!(
            v.summary,
            "reachable via grpc (mqtt down: connection refused); idle"
        );
        assert_eq!(describe(&mqtt, Some(&grpc), true, 3).state, "sending");
        // gRPC fails too: now it is backing off, and both errors are named.
        grpc.failed("deadline exceeded".into());
        let v = describe(&mqtt, Some(&grpc), true, 3);
        assert_eq!((v.state, v.reachable), ("backing-off", false));
        assert!(
            v.summary.contains("connection refused") && v.summary.contains("deadline exceeded")
        );
        // MQTT back: reachable via mqtt whatever gRPC did.
        mqtt.ok(2_000);
        let v = describe(&mqtt, Some(&grpc), false, 3);
        assert_eq!((v.state, v.transport, v.reachable), ("idle", "mqtt", true));
    }

    #[test]
    fn link_states_before_and_between_fallbacks() {
        let mut mqtt = LinkStatus::default();
        let grpc = LinkStatus::default();
        assert_eq!(describe(&mqtt, Some(&grpc), false, 3).state, "connecting");
        mqtt.failed("refused".into());
        let v = describe(&mqtt, Some(&grpc), false, 3);
        assert_eq!((v.state, v.reachable), ("reconnecting", false));
        assert!(v.summary.contains("grpc after 3"), "{}", v.summary);
        assert!(describe(&mqtt, None, false, 3)
            .summary
            .contains("no grpc_url"));
    }

    #[test]
    fn link_transitions_are_news_once() {
        let mut l = LinkStatus::default();
        assert!(l.failed("a".into()), "the first failure is news");
        assert!(!l.failed("b".into()), "a retry is not");
        assert_eq!(l.failures, 2);
        assert!(l.ok(5));
        assert!(!l.ok(6));
        assert_eq!(
            (l.failures, l.last_ok_ms, l.last_error.clone()),
            (0, Some(6), None)
        );
        assert!(l.failed("c".into()), "up to down is news");
    }

    #[test]
    fn a_stopped_agent_shows_no_live_link() {
        let mut y = crate::status::SyncStatus {
            reachable: true,
            summary: "reachable via grpc (mqtt down: x); idle".into(),
            transport: "grpc".into(),
            ..Default::default()
        };
        y.grpc.ok(7);
        mark_stopped(&mut y);
        assert!(!y.reachable && !y.grpc.up && y.transport.is_empty());
        assert_eq!(y.grpc.last_ok_ms, Some(7), "history kept");
        assert!(y.summary.starts_with("agent not running"));
    }
}
