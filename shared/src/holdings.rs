//! Anti-entropy between an edge and its hub: both sides summarise the acknowledged
//! results of one device per day (count and XOR of ids). Where the hub's summary of a
//! day falls short of the device's, the hub has lost results (a damaged store, a
//! restore from an older backup) and asks the device to send that day again.

use std::collections::BTreeMap;

use crate::{wire as pb, ResultId};

/// Most days one Holdings message may carry (edges keep about 90).
pub const MAX_HOLDINGS_DAYS: usize = 400;

/// UTC day (days since 1970-01-01) of a millisecond timestamp.
pub fn day_of_ms(ms: u64) -> u32 {
    (ms / 86_400_000) as u32
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayDigest {
    pub count: u64,
    pub xor: [u8; 16],
}

impl DayDigest {
    fn toggle(&mut self, id: &ResultId) {
        for (x, b) in self.xor.iter_mut().zip(id.as_bytes()) {
            *x ^= b;
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HoldingsError {
    #[error("holdings carry {0} days (at most {MAX_HOLDINGS_DAYS})")]
    TooManyDays(usize),
    #[error("holdings name day {0} twice")]
    DuplicateDay(u32),
    #[error("holdings digest of day {0} is not 16 bytes")]
    BadDigest(u32),
}

/// Per-day digests of one device's acknowledged results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings(pub BTreeMap<u32, DayDigest>);

impl Holdings {
    /// Adds a result analysed on `day`. Adding an id twice would cancel it out of the
    /// XOR: callers add each stored result once.
    pub fn add(&mut self, day: u32, id: &ResultId) {
        let d = self.0.entry(day).or_default();
        d.count += 1;
        d.toggle(id);
    }

    pub fn remove(&mut self, day: u32, id: &ResultId) {
        if let Some(d) = self.0.get_mut(&day) {
            d.count = d.count.saturating_sub(1);
            d.toggle(id);
            if d.count == 0 {
                self.0.remove(&day);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().map(|d| d.count).sum()
    }

    pub fn to_wire(&self) -> pb::Holdings {
        pb::Holdings {
            days: self
                .0
                .iter()
                .map(|(day, d)| pb::DayDigest {
                    day: *day,
                    count: d.count,
                    xor: d.xor.to_vec(),
                })
                .collect(),
        }
    }

    pub fn from_wire(w: &pb::Holdings) -> Result<Self, HoldingsError> {
        if w.days.len() > MAX_HOLDINGS_DAYS {
            return Err(HoldingsError::TooManyDays(w.days.len()));
        }
        let mut out = BTreeMap::new();
        for d in &w.days {
            let xor: [u8; 16] = d
                .xor
                .as_slice()
                .try_into()
                .map_err(|_| HoldingsError::BadDigest(d.day))?;
            if out
                .insert(
                    d.day,
                    DayDigest {
                        count: d.count,
                        xor,
                    },
                )
                .is_some()
            {
                return Err(HoldingsError::DuplicateDay(d.day));
            }
        }
        Ok(Self(out))
    }

    /// Called on the hub's holdings for a device with the device's own: the days the
    /// hub lacks results of. A day counts when the hub holds fewer results than the
    /// device, or as many but different ones. (A hub holding more than the device of a
    /// day is the device's loss, not the hub's: nothing to resend.)
    pub fn lacking(&self, device: &Holdings) -> Vec<u32> {
        device
            .0
            .iter()
            .filter(|(day, theirs)| {
                let ours = self.0.get(day).copied().unwrap_or_default();
                ours.count < theirs.count || (ours.count == theirs.count && ours.xor != theirs.xor)
            })
            .map(|(day, _)| *day)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ResultId {
        ResultId::from_slice(&[n; 16]).unwrap()
    }

    #[test]
    fn a_lost_result_makes_its_day_lacking_and_only_that_day() {
        let mut edge = Holdings::default();
        let mut hub = Holdings::default();
        for n in 1..=6u8 {
            edge.add(u32::from(n % 3), &id(n));
            hub.add(u32::from(n % 3), &id(n));
        }
        assert!(hub.lacking(&edge).is_empty());
        hub.remove(1, &id(4));
        assert_eq!(hub.lacking(&edge), vec![1]);
        // Same count, different ids: still lacking.
        hub.add(1, &id(99));
        assert_eq!(hub.lacking(&edge), vec![1]);
        // The hub holding more than the device is not the hub's loss.
        let mut more = hub.clone();
        more.add(2, &id(77));
        edge.remove(1, &id(4));
        edge.add(1, &id(99));
        assert!(more.lacking(&edge).is_empty());
    }

    #[test]
    fn wire_round_trip_and_limits() {
        let mut h = Holdings::default();
        h.add(20_000, &id(1));
        h.add(20_001, &id(2));
        assert_eq!(Holdings::from_wire(&h.to_wire()).unwrap(), h);
        let mut w = h.to_wire();
        w.days[1].day = w.days[0].day;
        assert_eq!(
            Holdings::from_wire(&w),
            Err(HoldingsError::DuplicateDay(20_000))
        );
        let mut w = h.to_wire();
        w.days[0].xor.pop();
        assert!(Holdings::from_wire(&w).is_err());
        let w = pb::Holdings {
            days: (0..=MAX_HOLDINGS_DAYS as u32)
                .map(|d| pb::DayDigest {
                    day: d,
                    count: 1,
                    xor: vec![0; 16],
                })
                .collect(),
        };
        assert!(matches!(
            Holdings::from_wire(&w),
            Err(HoldingsError::TooManyDays(_))
        ));
    }
}
