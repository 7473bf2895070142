//! The outbox's journal: one CRC-checked line each time a result changes place
//! (queued, acknowledged, parked, pruned, lost) or a retraction is asked for or
//! recorded, kept beside the store and independent of it. At open it is compared with
//! what the store holds: a result the journal has queued but the store lacks was lost
//! by the store (sled drops everything after the first bad checksum when it recovers)
//! and is rebuilt from its scan; nothing depends on the store's own checks.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use pleura_shared::journal::{self, Journal};
use pleura_shared::ResultId;

/// Where the journal last put a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Acked(u32),
    Parked,
    Lost,
    /// Acknowledged by the hub, but its record went with a damaged store: nothing to
    /// rebuild or send (the hub holds it); forgotten after the acked retention.
    Gone(u32),
}

/// One journal line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    Queued(ResultId),
    /// Acknowledged by the hub; the day its result was analysed.
    Acked(ResultId, u32),
    Parked(ResultId),
    /// An acknowledged result forgotten after its retention.
    Pruned(ResultId),
    /// Lost by the store, to be rebuilt from its scan.
    Lost(ResultId),
    /// Acknowledged, its record lost with the store (a tombstone).
    Gone(ResultId, u32),
    RetractAsked(ResultId),
    RetractDone(ResultId),
}

impl Line {
    fn text(&self) -> String {
        match self {
            Line::Queued(id) => format!("Q {id}"),
            Line::Acked(id, day) => format!("A {id} {day}"),
            Line::Parked(id) => format!("P {id}"),
            Line::Pruned(id) => format!("X {id}"),
            Line::Lost(id) => format!("L {id}"),
            Line::Gone(id, day) => format!("G {id} {day}"),
            Line::RetractAsked(id) => format!("R {id}"),
            Line::RetractDone(id) => format!("D {id}"),
        }
    }

    fn parse(s: &str) -> Option<Line> {
        let mut p = s.split(' ');
        let tag = p.next()?;
        let id = ResultId::from_slice(&hex::decode(p.next()?).ok()?).ok()?;
        let line = match tag {
            "Q" => Line::Queued(id),
            "A" => Line::Acked(id, p.next()?.parse().ok()?),
            "P" => Line::Parked(id),
            "X" => Line::Pruned(id),
            "L" => Line::Lost(id),
            "G" => Line::Gone(id, p.next()?.parse().ok()?),
            "R" => Line::RetractAsked(id),
            "D" => Line::RetractDone(id),
            _ => return None,
        };
        p.next().is_none().then_some(line)
    }
}

pub struct Ledger {
    journal: Journal,
    pub state: HashMap<ResultId, State>,
    /// The ids whose state is `Lost`, kept beside `state`: intake asks at every poll
    /// and `state` holds every acknowledged id of the retention window.
    lost: HashSet<ResultId>,
    pub retractions: HashSet<ResultId>,
    /// Lines that failed their checksum or did not parse when the journal was read.
    pub damaged: u64,
    /// Lines appended since the last compaction.
    appended: u64,
}

impl Ledger {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let replay = journal::read(path)?;
        let mut l = Ledger {
            journal: Journal::open(path)?,
            state: HashMap::new(),
            lost: HashSet::new(),
            retractions: HashSet::new(),
            damaged: replay.damaged,
            appended: 0,
        };
        for text in &replay.lines {
            match Line::parse(text) {
                Some(line) => l.apply(line),
                None => l.damaged += 1,
            }
        }
        Ok(l)
    }

    /// A ledger whose every write fails with ENOSPC (`/dev/full`), for tests.
    #[cfg(test)]
    pub fn on_full_disk() -> Self {
        Ledger {
            journal: Journal::open(Path::new("/dev/full")).expect("/dev/full"),
            state: HashMap::new(),
            lost: HashSet::new(),
            retractions: HashSet::new(),
            damaged: 0,
            appended: 0,
        }
    }

    fn apply(&mut self, line: Line) {
        let (id, now) = match line {
            Line::Queued(id) => (id, Some(State::Queued)),
            Line::Acked(id, day) => (id, Some(State::Acked(day))),
            Line::Parked(id) => (id, Some(State::Parked)),
            Line::Lost(id) => (id, Some(State::Lost)),
            Line::Gone(id, day) => (id, Some(State::Gone(day))),
            Line::Pruned(id) => (id, None),
            Line::RetractAsked(id) => {
                self.retractions.insert(id);
                return;
            }
            Line::RetractDone(id) => {
                self.retractions.remove(&id);
                return;
            }
        };
        if now == Some(State::Lost) {
            self.lost.insert(id);
        } else {
            self.lost.remove(&id);
        }
        match now {
            Some(s) => drop(self.state.insert(id, s)),
            None => drop(self.state.remove(&id)),
        }
    }

    /// Appends `lines` durably, then applies them. On an error nothing is applied.
    pub fn record(&mut self, lines: &[Line]) -> std::io::Result<()> {
        let text: Vec<String> = lines.iter().map(Line::text).collect();
        self.journal.append(&text)?;
        self.appended += lines.len() as u64;
        for l in lines {
            self.apply(*l);
        }
        Ok(())
    }

    /// Rewrites the journal as the current state, when it has grown well past it.
    pub fn compact_if_large(&mut self) -> std::io::Result<()> {
        let live = (self.state.len() + self.retractions.len()) as u64;
        if self.appended > 1_000 && self.appended > 2 * live {
            self.compact()?;
        }
        Ok(())
    }

    pub fn compact(&mut self) -> std::io::Result<()> {
        let mut lines: Vec<String> = self
            .state
            .iter()
            .map(|(id, s)| {
                match *s {
                    State::Queued => Line::Queued(*id),
                    State::Acked(d) => Line::Acked(*id, d),
                    State::Parked => Line::Parked(*id),
                    State::Lost => Line::Lost(*id),
                    State::Gone(d) => Line::Gone(*id, d),
                }
                .text()
            })
            .collect();
        lines.extend(
            self.retractions
                .iter()
                .map(|id| Line::RetractAsked(*id).text()),
        );
        self.journal.rewrite(&lines)?;
        self.appended = 0;
        Ok(())
    }

    /// Tombstones of acknowledged results analysed before `day`, to forget.
    pub fn gone_before(&self, day: u32) -> Vec<ResultId> {
        self.state
            .iter()
            .filter(|(_, s)| matches!(s, State::Gone(d) if *d < day))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn lost(&self) -> Vec<ResultId> {
        self.lost.iter().copied().collect()
    }

    pub fn lost_count(&self) -> usize {
        self.lost.len()
    }
}

/// What the store holds, for the comparison at open.
#[derive(Debug, Default)]
pub struct Holding {
    pub queued: HashSet<ResultId>,
    pub acked: HashMap<ResultId, u32>,
    pub parked: HashSet<ResultId>,
    pub retractions: HashSet<ResultId>,
}

/// What the comparison found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Check {
    /// Queued results the store lost (now `Lost` in the journal, to be rebuilt).
    pub lost_queued: u64,
    pub lost_acked: u64,
    pub lost_parked: u64,
    pub lost_retractions: u64,
    /// Results the store holds that the journal did not know (adopted).
    pub adopted: u64,
    pub damaged_lines: u64,
}

impl Check {
    pub fn is_clean(&self) -> bool {
        *self
            == Check {
                adopted: self.adopted,
                ..Default::default()
            }
    }
}

impl Ledger {
    /// Compares the journal with what the store holds and makes the journal say what
    /// is true now (lost results marked `Lost`, unknown stored ones adopted), compacted.
    /// Lost retractions are restored into `held.retractions` by the caller from the
    /// returned list.
    pub fn reconcile(&mut self, held: &Holding) -> std::io::Result<(Check, Vec<ResultId>)> {
        let mut c = Check {
            damaged_lines: self.damaged,
            ..Default::default()
        };
        let mut next = HashMap::new();
        for (id, s) in &self.state {
            let now = if held.queued.contains(id) {
                Some(State::Queued)
            } else if let Some(d) = held.acked.get(id) {
                Some(State::Acked(*d))
            } else if held.parked.contains(id) {
                Some(State::Parked)
            } else {
                match s {
                    State::Queued | State::Lost => {
                        c.lost_queued += 1;
                        Some(State::Lost)
                    }
                    State::Acked(d) => {
                        c.lost_acked += 1;
                        Some(State::Gone(*d))
                    }
                    State::Gone(d) => Some(State::Gone(*d)),
                    State::Parked => {
                        c.lost_parked += 1;
                        None
                    }
                }
            };
            if let Some(n) = now {
                next.insert(*id, n);
            }
        }
        let adopt = |id: &ResultId, s: State, next: &mut HashMap<ResultId, State>| {
            next.entry(*id).or_insert(s);
        };
        let known = next.len();
        for id in &held.queued {
            adopt(id, State::Queued, &mut next);
        }
        for (id, d) in &held.acked {
            adopt(id, State::Acked(*d), &mut next);
        }
        for id in &held.parked {
            adopt(id, State::Parked, &mut next);
        }
        c.adopted = (next.len() - known) as u64;
        let lost_retractions: Vec<ResultId> = self
            .retractions
            .difference(&held.retractions)
            .copied()
            .collect();
        c.lost_retractions = lost_retractions.len() as u64;
        self.retractions.extend(held.retractions.iter().copied());
        self.lost = next
            .iter()
            .filter(|(_, s)| **s == State::Lost)
            .map(|(id, _)| *id)
            .collect();
        self.state = next;
        self.damaged = 0;
        // Not fatal (a full disk must not stop the agent): the journal as it is replays
        // to the same verdict next time.
        if let Err(e) = self.compact() {
            tracing::warn!(error = %e, "cannot compact the outbox journal; it is kept as it is");
            self.appended = u64::MAX / 4;
        }
        Ok((c, lost_retractions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let id = ResultId::random();
        for l in [
            Line::Queued(id),
            Line::Acked(id, 20_000),
            Line::Parked(id),
            Line::Pruned(id),
            Line::Lost(id),
            Line::Gone(id, 3),
            Line::RetractAsked(id),
            Line::RetractDone(id),
        ] {
            assert_eq!(Line::parse(&l.text()), Some(l));
        }
        assert_eq!(Line::parse("Q zz"), None);
        assert_eq!(Line::parse(&format!("Q {id} extra")), None);
    }

    #[test]
    fn reconcile_marks_losses_and_adopts_unknowns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("outbox.journal");
        let [a, b, c, d, e] = [(); 5].map(|_| ResultId::random());
        let mut l = Ledger::open(&p).unwrap();
        l.record(&[
            Line::Queued(a),
            Line::Queued(b),
            Line::Queued(c),
            Line::Acked(c, 7),
            Line::Parked(d),
        ])
        .unwrap();
        let held = Holding {
            queued: [b, e].into(),
            ..Default::default()
        };
        let (check, _) = l.reconcile(&held).unwrap();
        assert_eq!(
            (
                check.lost_queued,
                check.lost_acked,
                check.lost_parked,
                check.adopted
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(l.lost(), vec![a]);
        // The verdict survives a reopen (compacted journal).
        let l = Ledger::open(&p).unwrap();
        assert_eq!(l.state.get(&a), Some(&State::Lost));
        assert_eq!(l.state.get(&e), Some(&State::Queued));
        // The lost acknowledged one is remembered as such: not rebuilt, not resent.
        assert_eq!(l.state.get(&c), Some(&State::Gone(7)));
        assert_eq!(l.state.len(), 4);
        // Replayed from the journal, and kept as results leave the lost state.
        let mut l = l;
        assert_eq!(l.lost(), vec![a]);
        l.record(&[Line::Queued(a)]).unwrap();
        assert!(l.lost().is_empty());
        l.record(&[Line::Lost(b), Line::Pruned(b)]).unwrap();
        assert!(l.lost().is_empty());
    }
}
