//! What the hub knows it should hold, independently of the store: `cases.journal`
//! (pleura_shared::journal, CRC per line) gets one line per result the hub acknowledged
//! and per retraction it recorded, synced before the ack is sent. At start the journal
//! is compared with what the store can still read back; a result the journal has and
//! the store lacks was lost (sled drops everything after a bad checksum when it
//! recovers) and counts as missing until its device sends it again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use pleura_shared::holdings::day_of_ms;
use pleura_shared::journal::Journal;
use pleura_shared::{ResultId, ScanRecord};

use super::{Retraction, Scan};
use crate::metrics::Metrics;

pub const JOURNAL_FILE: &str = "cases.journal";

/// A device, as (clinic, device).
pub type DeviceKey = (String, String);

/// One journal line: `C <id> <clinic>/<device> <day>` for a committed result,
/// `R <id> <clinic>/<device> <at_ms> <reason>` for a recorded retraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Committed {
        id: ResultId,
        clinic: String,
        device: String,
        day: u32,
    },
    Retracted(Retraction),
}

impl Line {
    pub fn committed(r: &ScanRecord) -> Self {
        Line::Committed {
            id: r.id,
            clinic: r.clinic.clone(),
            device: r.device.clone(),
            day: day_of_ms(r.analysed_at_ms),
        }
    }

    pub fn encode(&self) -> String {
        match self {
            Line::Committed {
                id,
                clinic,
                device,
                day,
            } => format!("C {id} {clinic}/{device} {day}"),
            Line::Retracted(r) => format!(
                "R {} {}/{} {} {}",
                r.id, r.clinic, r.device, r.at_ms, r.reason
            ),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.splitn(5, ' ');
        let kind = it.next()?;
        let id = ResultId::from_slice(&hex::decode(it.next()?).ok()?).ok()?;
        let (clinic, device) = it.next()?.split_once('/')?;
        let (clinic, device) = (clinic.to_string(), device.to_string());
        let n: u64 = it.next()?.parse().ok()?;
        match (kind, it.next()) {
            ("C", None) => Some(Line::Committed {
                id,
                clinic,
                device,
                day: u32::try_from(n).ok()?,
            }),
            ("R", Some(reason)) => Some(Line::Retracted(Retraction {
                id,
                clinic,
                device,
                at_ms: n,
                reason: reason.to_string(),
            })),
            _ => None,
        }
    }
}

/// Journal against store, at start.
#[derive(Debug, Default, PartialEq)]
pub struct Comparison {
    /// Results the journal has and the store cannot return, per device.
    pub missing: BTreeMap<DeviceKey, BTreeSet<ResultId>>,
    /// Results the store holds that the journal lacks (a store from before the journal,
    /// or a crash between commit and journal append): written to the journal now.
    pub backfill: Vec<Line>,
    /// Retractions the journal has and the store lost: recorded again.
    pub restore: Vec<Retraction>,
    /// Lines that are intact but not journal lines.
    pub unreadable: u64,
}

pub fn compare(lines: &[String], scan: &Scan) -> Comparison {
    let mut out = Comparison::default();
    let held: HashSet<ResultId> = scan.cases.iter().map(|c| c.id).collect();
    let retracted: HashSet<(ResultId, &str, &str)> = scan
        .retractions
        .iter()
        .map(|r| (r.id, r.clinic.as_str(), r.device.as_str()))
        .collect();
    let mut journaled = HashSet::new();
    let mut restored = HashSet::new();
    let parsed: Vec<Option<Line>> = lines.iter().map(|l| Line::parse(l)).collect();
    let journaled_retractions: HashSet<(ResultId, &str, &str)> = parsed
        .iter()
        .filter_map(|l| match l {
            Some(Line::Retracted(r)) => Some((r.id, r.clinic.as_str(), r.device.as_str())),
            _ => None,
        })
        .collect();
    for l in parsed.iter().cloned() {
        match l {
            Some(Line::Committed {
                id, clinic, device, ..
            }) => {
                journaled.insert(id);
                if !held.contains(&id) {
                    out.missing.entry((clinic, device)).or_default().insert(id);
                }
            }
            Some(Line::Retracted(r)) => {
                let key = (r.id, r.clinic.clone(), r.device.clone());
                if !retracted.contains(&(r.id, r.clinic.as_str(), r.device.as_str()))
                    && restored.insert(key)
                {
                    out.restore.push(r);
                }
            }
            None => out.unreadable += 1,
        }
    }
    for c in &scan.cases {
        if !journaled.contains(&c.id) {
            out.backfill.push(Line::Committed {
                id: c.id,
                clinic: c.clinic.clone(),
                device: c.device.clone(),
                day: day_of_ms(c.analysed_at_ms),
            });
        }
    }
    for r in &scan.retractions {
        if !journaled_retractions.contains(&(r.id, r.clinic.as_str(), r.device.as_str())) {
            out.backfill.push(Line::Retracted(r.clone()));
        }
    }
    out
}

fn cut_to(path: &Path, len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

/// Removes a last line cut short by a crash mid-append (never acknowledged), so that the
/// next append starts a line of its own.
pub fn drop_torn_tail(path: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    cut_to(path, keep as u64)
}

/// What the start-up check found, for the log, metrics and SyncStatus.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub journal_lines: u64,
    /// Journal lines that fail their checksum (or are not journal lines).
    pub journal_damaged: u64,
    pub journal_torn_tail: bool,
    /// Stored cases (and retractions) whose bytes no longer decode.
    pub corrupt_cases: u64,
    /// Where an unopenable store was moved (a fresh one was started).
    pub set_aside: Option<PathBuf>,
    pub restored_retractions: u64,
}

struct State {
    journaled: HashSet<ResultId>,
    retractions: HashSet<(ResultId, String, String)>,
    missing: BTreeMap<DeviceKey, BTreeSet<ResultId>>,
    /// The UTC day (of `analysed_at_ms`) the journal gives each missing result.
    missing_days: HashMap<ResultId, u32>,
}

/// The live side: the journal being appended to, and the results still missing.
pub struct Integrity {
    journal: Mutex<Journal>,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    pub report: Report,
}

impl Integrity {
    /// Opens the journal at `path` for appending, after `compare` (whose backfill the
    /// caller has written).
    pub fn new(
        path: &Path,
        lines: &[String],
        cmp: &Comparison,
        report: Report,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let mut state = State {
            journaled: HashSet::new(),
            retractions: HashSet::new(),
            missing: cmp.missing.clone(),
            missing_days: HashMap::new(),
        };
        for l in lines
            .iter()
            .filter_map(|l| Line::parse(l))
            .chain(cmp.backfill.clone())
        {
            match l {
                Line::Committed {
                    id,
                    clinic,
                    device,
                    day,
                } => {
                    state.journaled.insert(id);
                    if cmp
                        .missing
                        .get(&(clinic, device))
                        .is_some_and(|ids| ids.contains(&id))
                    {
                        state.missing_days.insert(id, day);
                    }
                }
                Line::Retracted(r) => {
                    state.retractions.insert((r.id, r.clinic, r.device));
                }
            }
        }
        let me = Self {
            journal: Mutex::new(Journal::open(path)?),
            state: Mutex::new(state),
            metrics,
            report,
        };
        let m = &me.metrics;
        m.journal_damaged
            .store(me.report.journal_damaged, Ordering::Relaxed);
        m.corrupt_cases
            .store(me.report.corrupt_cases, Ordering::Relaxed);
        m.store_set_aside
            .store(u64::from(me.report.set_aside.is_some()), Ordering::Relaxed);
        me.update_gauge(&me.state.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(me)
    }

    fn update_gauge(&self, st: &State) {
        let n: usize = st.missing.values().map(BTreeSet::len).sum();
        self.metrics
            .store_missing
            .store(n as u64, Ordering::Relaxed);
    }

    fn append(&self, lines: &[Line]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let text: Vec<String> = lines.iter().map(Line::encode).collect();
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::fs::metadata(j.path())?.len();
        let res = j.append(&text);
        if res.is_err() {
            // A partial line left behind would swallow the next append's first line.
            let _ = cut_to(j.path(), before);
        }
        res
    }

    /// Results the store now holds (newly committed or duplicates): journaled if they
    /// are not yet, and no longer missing. An error means the journal could not be
    /// synced: nothing may be acknowledged.
    pub fn committed(&self, records: &[&ScanRecord]) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        let fresh: Vec<Line> = records
            .iter()
            .filter(|r| !st.journaled.contains(&r.id) && seen.insert(r.id))
            .map(|r| Line::committed(r))
            .collect();
        self.append(&fresh)?;
        st.journaled.extend(seen);
        let st = &mut *st;
        let mut repaired = 0;
        for r in records {
            let key = (r.clinic.clone(), r.device.clone());
            if let Some(set) = st.missing.get_mut(&key) {
                if set.remove(&r.id) {
                    repaired += 1;
                    st.missing_days.remove(&r.id);
                }
                if set.is_empty() {
                    st.missing.remove(&key);
                }
            }
        }
        if repaired > 0 {
            tracing::info!(
                repaired,
                still_missing = st.missing.values().map(BTreeSet::len).sum::<usize>(),
                "lost results received again"
            );
            self.update_gauge(st);
        }
        Ok(())
    }

    /// Retractions the store has recorded: journaled once each.
    pub fn retracted(&self, rs: &[Retraction]) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fresh: Vec<Line> = rs
            .iter()
            .filter(|r| {
                !st.retractions
                    .contains(&(r.id, r.clinic.clone(), r.device.clone()))
            })
            .map(|r| Line::Retracted(r.clone()))
            .collect();
        self.append(&fresh)?;
        for r in rs {
            st.retractions
                .insert((r.id, r.clinic.clone(), r.device.clone()));
        }
        Ok(())
    }

    /// Results still missing, per device.
    pub fn missing(&self) -> BTreeMap<DeviceKey, BTreeSet<ResultId>> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .missing
            .clone()
    }

    /// The days (UTC, of `analysed_at_ms`, as journaled) of `clinic`/`device`'s results
    /// that are still missing.
    pub fn missing_days(&self, clinic: &str, device: &str) -> BTreeSet<u32> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.missing
            .get(&(clinic.to_string(), device.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|id| st.missing_days.get(id).copied())
            .collect()
    }

    pub fn missing_total(&self) -> u64 {
        self.metrics.store_missing.load(Ordering::Relaxed)
    }
}
