//! The hub's side of anti-entropy: per device, a summary of every result it stores
//! (per UTC day of `analysed_at_ms`: count and XOR of ids, `pleura_shared::holdings`),
//! built from the store at start and kept current on each new commit. A device's batch
//! may carry its own summary of what the hub acknowledged; the days where the hub's
//! falls short go back in the ack's `resend_days`.

use std::collections::HashMap;
use std::sync::Mutex;

use pleura_shared::holdings::{day_of_ms, Holdings};
use pleura_shared::{ResultId, ScanRecord};

use crate::store::CaseSummary;

#[derive(Default)]
pub struct AntiEntropy {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    of: HashMap<(String, String), Holdings>,
    /// Results counted on the day of a rebuilt copy's `analysed_at_ms` instead of the
    /// stored record's (see `rebuilt`): the day each is counted on now.
    moved: HashMap<ResultId, u32>,
}

impl AntiEntropy {
    /// From every readable case of a start-up scan.
    pub fn from_cases(cases: &[CaseSummary]) -> Self {
        let mut held: HashMap<(String, String), Holdings> = HashMap::new();
        for c in cases {
            held.entry((c.clinic.clone(), c.device.clone()))
                .or_default()
                .add(day_of_ms(c.analysed_at_ms), &c.id);
        }
        Self {
            held: Mutex::new(Held {
                of: held,
                moved: HashMap::new(),
            }),
        }
    }

    /// A result newly stored (`Commit::New` only: adding one twice cancels it out).
    pub fn add(&self, r: &ScanRecord) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .of
            .entry((r.clinic.clone(), r.device.clone()))
            .or_default()
            .add(day_of_ms(r.analysed_at_ms), &r.id);
    }

    /// `sent` was acknowledged as a duplicate of the stored `held`: a copy rebuilt at
    /// the edge (re-analysed from its scan) differs only in `analysed_at_ms`, and the
    /// device files it under that day. The result is counted on the device's day from
    /// now on, or that day would look short of one result at every holdings check. The
    /// store keeps `held`, so a restart counts it on the stored day again, until the
    /// device's next resend of that day moves it back.
    pub fn rebuilt(&self, held: &ScanRecord, sent: &ScanRecord) {
        let to = day_of_ms(sent.analysed_at_ms);
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let from = h
            .moved
            .get(&held.id)
            .copied()
            .unwrap_or_else(|| day_of_ms(held.analysed_at_ms));
        if from == to {
            return;
        }
        let of =
            h.of.entry((held.clinic.clone(), held.device.clone()))
                .or_default();
        of.remove(from, &held.id);
        of.add(to, &held.id);
        h.moved.insert(held.id, to);
    }

    /// Days of `device`'s holdings the hub lacks results of.
    pub fn lacking(&self, clinic: &str, device: &str, theirs: &Holdings) -> Vec<u32> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.of.get(&(clinic.to_string(), device.to_string())) {
            Some(ours) => ours.lacking(theirs),
            None => Holdings::default().lacking(theirs),
        }
    }

    /// What the hub holds of one device (for tests and diagnostics).
    pub fn of(&self, clinic: &str, device: &str) -> Holdings {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .of
            .get(&(clinic.to_string(), device.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}
