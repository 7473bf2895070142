//! When the agent rolls a model back by itself: it fails to load at start, produces
//! non-finite or out-of-range outputs, or its jobs crash `MAX_FAULTS` times within
//! `WINDOW_MS`. The decision is here, without I/O; `worker::rollback` carries it out.

use std::collections::VecDeque;

use super::slots::{Current, Slot};

pub const MAX_FAULTS: usize = 3;
pub const WINDOW_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Default)]
pub struct FaultWindow {
    at: VecDeque<u64>,
}

impl FaultWindow {
    /// Records a fault at `now_ms`; true once `MAX_FAULTS` fall within `WINDOW_MS`.
    pub fn record(&mut self, now_ms: u64) -> bool {
        self.at.push_back(now_ms);
        while self
            .at
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) > WINDOW_MS)
        {
            self.at.pop_front();
        }
        self.at.len() >= MAX_FAULTS
    }
}

/// `current` after rolling back its active slot: the previous slot (or the built-in
/// model), no previous left, the shadow kept unless it is what is rolled back to.
pub fn rolled_back(current: &Current) -> Current {
    // Never to the shadow slot: an unpromoted release must not become active this way.
    let to = current
        .previous
        .filter(|p| *p != current.active && Some(*p) != current.shadow)
        .unwrap_or(Slot::Builtin);
    Current {
        active: to,
        previous: None,
        shadow: current.shadow.filter(|s| *s != to && *s != current.active),
    }
}

/// The alarm shown by `edge-agent status`.
pub fn alarm(name: &str, version: u64, reason: &str) -> String {
    format!("model {name} {version} rolled back: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_faults_in_ten_minutes_trip() {
        let mut w = FaultWindow::default();
        assert!(!w.record(0));
        assert!(!w.record(1000));
        assert!(w.record(2000));
        let mut w = FaultWindow::default();
        assert!(!w.record(0));
        assert!(!w.record(WINDOW_MS));
        // The first is out of the window by now.
        assert!(!w.record(WINDOW_MS + 1));
        assert!(w.record(WINDOW_MS + 2));
    }

    #[test]
    fn rollback_goes_to_previous_or_builtin() {
        let c = Current {
            active: Slot::B,
            previous: Some(Slot::A),
            shadow: None,
        };
        assert_eq!(rolled_back(&c).active, Slot::A);
        assert_eq!(rolled_back(&rolled_back(&c)).active, Slot::Builtin);
        let c = Current {
            active: Slot::A,
            previous: None,
            shadow: Some(Slot::B),
        };
        let r = rolled_back(&c);
        assert_eq!((r.active, r.shadow), (Slot::Builtin, Some(Slot::B)));
        assert!(alarm("pleura-lite", 4, "x").starts_with("model pleura-lite 4 rolled back"));
    }

    #[test]
    fn rollback_never_activates_an_unpromoted_shadow() {
        // A shadow installed in the slot that still names the previous model: rolling
        // back the active release must not run the shadow (nobody promoted it).
        let c = Current {
            active: Slot::A,
            previous: Some(Slot::B),
            shadow: Some(Slot::B),
        };
        let r = rolled_back(&c);
        assert_eq!(r.active, Slot::Builtin);
        assert_eq!(r.shadow, Some(Slot::B));
    }
}
