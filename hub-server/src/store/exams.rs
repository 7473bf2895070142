//! Examinations: the scans of one patient pseudonym at one clinic on one day, the unit a
//! specialist reads. The store keeps an index of them beside the results (updated in the
//! same transaction), the specialists' claims and their verdicts, and answers the
//! worklist in clinical priority order from an ordered index rather than a scan.

use pleura_shared::{Demographics, ExamId, FlagReason, LungClass, ResultId, ScanRecord};
use serde::{Deserialize, Serialize};

use super::ClinicScope;

/// Uncertainty at or above which a case moves up one urgency tier.
pub const HIGH_UNCERTAINTY: f32 = 0.5;
/// How long a claim holds unless renewed.
pub const CLAIM_TTL_MS: u64 = 30 * 60 * 1000;
const HOUR_MS: u64 = 3_600_000;
/// Time to a read per urgency tier: severity 3, severity 2, flagged, the rest.
pub const TIER_WINDOWS_MS: [u64; 4] = [HOUR_MS, 4 * HOUR_MS, 12 * HOUR_MS, 48 * HOUR_MS];

impl ExamResult {
    pub fn is_uncertain(&self) -> bool {
        self.uncertain
            .unwrap_or(self.uncertainty >= HIGH_UNCERTAINTY)
    }
}

/// One result of an examination, as the index keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExamResult {
    pub id: ResultId,
    pub device: String,
    pub zone: Option<String>,
    pub severity: u8,
    pub flagged: bool,
    pub uncertainty: f32,
    /// The model flagged it "uncertain" at its own operating point (models differ in how
    /// spread their probabilities are, so one fixed cut on `uncertainty` cannot serve all).
    /// None for results indexed before this was kept: `uncertainty >= HIGH_UNCERTAINTY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncertain: Option<bool>,
    pub received_at_ms: u64,
    /// Withdrawn by its device: kept here, but no longer part of the reading.
    #[serde(default)]
    pub retracted: bool,
    /// Arrived after the examination's latest verdict: it needs a new one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_read: bool,
    /// The scan it analyses; None: the same as `id` (the built-in model's results, and
    /// everything indexed before releases existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ResultId>,
    /// Release of the model that produced it (0: the agent's built-in model).
    #[serde(default)]
    pub release: u64,
    #[serde(default)]
    pub model_version: String,
    /// When the device analysed it (0 for results indexed before this was kept).
    #[serde(default)]
    pub analysed_at_ms: u64,
    /// A candidate model's reading beside the active one: never part of the reading.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// Shadow results only: whether the candidate would have flagged the scan.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub would_flag: bool,
    /// Another (later) analysis of the same scan is the current reading.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
    /// Flagged as COVID-19 suspected (the ministry's roll-ups count these).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub covid: bool,
    /// The most likely class, as its index in `LungClass::ALL` (None in examinations
    /// indexed before it was kept: counted as unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<u8>,
    /// The coarse age band and sex the clinic recorded, if any.
    #[serde(default, skip_serializing_if = "is_unknown")]
    pub demographics: Demographics,
}

fn is_unknown(d: &Demographics) -> bool {
    *d == Demographics::default()
}

impl ExamResult {
    /// The scan it analyses.
    pub fn scan_id(&self) -> ResultId {
        self.scan.unwrap_or(self.id)
    }

    /// Part of the examination's reading: not withdrawn, not a shadow, not superseded.
    pub fn is_live(&self) -> bool {
        !self.retracted && !self.shadow && !self.superseded
    }

    /// Which of two analyses of one scan is the current one: the later analysed, then
    /// the higher id (so every store and every arrival order agrees).
    fn current_key(&self) -> (u64, ResultId) {
        (self.analysed_at_ms, self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exam {
    #[serde(with = "exam_hex")]
    pub id: ExamId,
    pub clinic: String,
    pub patient_key: Option<[u8; 16]>,
    pub day: u32,
    pub results: Vec<ExamResult>,
    pub max_severity: u8,
    pub flagged: bool,
    pub max_uncertainty: f32,
    pub first_received_ms: u64,
    pub last_received_ms: u64,
    /// When it was first claimed, and first read (turnaround).
    pub claimed_at_ms: Option<u64>,
    pub read_at_ms: Option<u64>,
    /// Verdicts given: 0, 1 (first read) or 2 (second read).
    pub reads: u8,
    /// The latest verdict's impression (None before one, and in examinations read
    /// before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Impression>,
}

mod exam_hex {
    use pleura_shared::ExamId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ExamId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ExamId, D::Error> {
        let s = String::deserialize(d)?;
        ExamId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad exam id"))
    }
}

/// How urgent a case is: tier 0 most urgent, and by when it should be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub tier: u8,
    pub deadline_ms: u64,
}

impl Priority {
    pub fn of(max_severity: u8, flagged: bool, uncertain: bool, first_ms: u64) -> Self {
        let base: u8 = match (max_severity, flagged) {
            (3.., _) => 0,
            (2, _) => 1,
            (_, true) => 2,
            _ => 3,
        };
        let tier = if uncertain {
            base.saturating_sub(1)
        } else {
            base
        };
        Self {
            tier,
            deadline_ms: first_ms.saturating_add(TIER_WINDOWS_MS[usize::from(tier)]),
        }
    }

    /// Milliseconds until the deadline; negative when overdue.
    pub fn time_left_ms(&self, now_ms: u64) -> i64 {
        self.deadline_ms as i64 - now_ms as i64
    }
}

impl Exam {
    /// The examination a record belongs to, with nothing in it yet.
    pub fn empty_for(r: &ScanRecord) -> Self {
        let key = r.patient_key.map(|k| k.to_vec()).unwrap_or_default();
        Self {
            id: ExamId::of(&r.clinic, &key, r.scan_day, &r.scan),
            clinic: r.clinic.clone(),
            patient_key: r.patient_key,
            day: r.scan_day,
            results: Vec::new(),
            max_severity: 0,
            flagged: false,
            max_uncertainty: 0.0,
            first_received_ms: u64::MAX,
            last_received_ms: 0,
            claimed_at_ms: None,
            read_at_ms: None,
            reads: 0,
            verdict: None,
        }
    }

    pub fn id_of(r: &ScanRecord) -> ExamId {
        let key = r.patient_key.map(|k| k.to_vec()).unwrap_or_default();
        ExamId::of(&r.clinic, &key, r.scan_day, &r.scan)
    }

    /// Adds a result (once) and recomputes the summary. Returns the results this made
    /// superseded (the store marks them): of the non-shadow analyses of one scan only
    /// the one analysed last stays current. Withdrawn ones take part too, so the marks
    /// do not depend on the order results and retractions arrive in (a rebuilt index
    /// gives the same), and retracting the current reading revives no earlier one.
    pub fn add(&mut self, r: &ScanRecord, received_at_ms: u64, retracted: bool) -> Vec<ResultId> {
        if self.results.iter().any(|x| x.id == r.id) {
            return Vec::new();
        }
        let mut new = ExamResult {
            id: r.id,
            device: r.device.clone(),
            zone: r.zone.clone(),
            severity: r.analysis.severity.score().min(3),
            flagged: r.analysis.flagged,
            uncertainty: r.analysis.uncertainty,
            uncertain: Some(r.analysis.flag_reasons.contains(&FlagReason::Uncertain)),
            received_at_ms,
            retracted,
            after_read: self.reads > 0 && !retracted,
            scan: (r.scan != r.id).then_some(r.scan),
            release: r.release,
            model_version: r.analysis.model_version.clone(),
            analysed_at_ms: r.analysed_at_ms,
            shadow: r.is_shadow(),
            would_flag: r.shadow.as_ref().is_some_and(|f| !f.is_empty()),
            superseded: false,
            covid: r
                .analysis
                .flag_reasons
                .contains(&FlagReason::CovidSuspected),
            class: LungClass::ALL
                .iter()
                .position(|c| *c == r.analysis.class_probs.most_likely())
                .map(|i| i as u8),
            demographics: r.demographics,
        };
        let mut superseded = Vec::new();
        if !new.shadow {
            let scan = new.scan_id();
            // Only the device that read the scan can read it again: another device's
            // result never supersedes it (ids are bound to their scan at ingest).
            let rival = self.results.iter_mut().find(|x| {
                !x.shadow && !x.superseded && x.scan_id() == scan && x.device == new.device
            });
            if let Some(old) = rival {
                // A scan its device withdrew stays withdrawn: a later reading of it (a
                // rebuild, a re-analysis) arrives superseded, never current.
                if old.retracted {
                    new.superseded = true;
                    superseded.push(new.id);
                } else if old.current_key() < new.current_key() {
                    old.superseded = true;
                    superseded.push(old.id);
                } else {
                    new.superseded = true;
                    superseded.push(new.id);
                }
            }
        }
        self.results.push(new);
        self.recompute();
        superseded
    }

    /// The release whose reading of `scan` is current, if one is.
    pub fn current_release_of(&self, scan: &ResultId) -> Option<u64> {
        self.results
            .iter()
            .find(|x| !x.shadow && !x.superseded && x.scan_id() == *scan)
            .map(|x| x.release)
    }

    /// Whether it awaits a verdict: never read, or a live result arrived after the
    /// latest verdict (a rescan the same day).
    pub fn needs_read(&self) -> bool {
        self.reads == 0 || self.live().any(|r| r.after_read)
    }

    /// Live results that arrived after the latest verdict.
    pub fn new_since_read(&self) -> impl Iterator<Item = &ExamResult> {
        self.live().filter(|r| r.after_read)
    }

    /// A new verdict covers every result so far.
    pub fn mark_read(&mut self) {
        for r in &mut self.results {
            r.after_read = false;
        }
    }

    /// Marks a result withdrawn; true if it changed anything.
    pub fn retract(&mut self, id: &ResultId) -> bool {
        let Some(x) = self
            .results
            .iter_mut()
            .find(|x| x.id == *id && !x.retracted)
        else {
            return false;
        };
        x.retracted = true;
        self.recompute();
        true
    }

    /// The results that make up the reading: not withdrawn, not shadow, not superseded.
    pub fn live(&self) -> impl Iterator<Item = &ExamResult> {
        self.results.iter().filter(|r| r.is_live())
    }

    fn recompute(&mut self) {
        let live: Vec<ExamResult> = self.live().cloned().collect();
        self.max_severity = live.iter().map(|r| r.severity).max().unwrap_or(0);
        self.flagged = live.iter().any(|r| r.flagged);
        self.max_uncertainty = live.iter().map(|r| r.uncertainty).fold(0.0, f32::max);
        self.first_received_ms = live
            .iter()
            .map(|r| r.received_at_ms)
            .min()
            .unwrap_or(self.first_received_ms);
        self.last_received_ms = live
            .iter()
            .map(|r| r.received_at_ms)
            .max()
            .unwrap_or(self.last_received_ms);
    }

    /// Its urgency; the clock starts at the first live result, or, once read, at the
    /// first result that arrived after the verdict.
    pub fn priority(&self) -> Priority {
        let first = self
            .new_since_read()
            .map(|r| r.received_at_ms)
            .min()
            .unwrap_or(self.first_received_ms);
        let uncertain = self.live().any(ExamResult::is_uncertain);
        Priority::of(self.max_severity, self.flagged, uncertain, first)
    }

    /// Devices that sent a (live) scan of this examination.
    pub fn devices(&self) -> Vec<String> {
        let mut d: Vec<String> = self.live().map(|r| r.device.clone()).collect();
        d.sort();
        d.dedup();
        d
    }

    /// Its key in the worklist index (clinic, flagged, read, then priority order), or
    /// None when every result was withdrawn (it leaves the worklist).
    pub fn worklist_key(&self) -> Option<Vec<u8>> {
        self.live().next()?;
        let mut k = worklist_prefix(&self.clinic, self.flagged, !self.needs_read());
        let p = self.priority();
        k.push(p.tier);
        k.extend_from_slice(&p.deadline_ms.to_be_bytes());
        // Higher uncertainty first among equal deadlines.
        let unc = (self.max_uncertainty.clamp(0.0, 1.0) * 65535.0).round() as u16;
        k.extend_from_slice(&(u16::MAX - unc).to_be_bytes());
        k.extend_from_slice(self.id.as_bytes());
        Some(k)
    }
}

pub fn worklist_prefix(clinic: &str, flagged: bool, read: bool) -> Vec<u8> {
    let mut k = clinic.as_bytes().to_vec();
    k.push(0);
    k.push(u8::from(flagged));
    k.push(u8::from(read));
    k
}

/// Key of an examination in the per-patient index.
pub fn patient_key(clinic: &str, patient: &[u8; 16], day: u32, exam: &ExamId) -> Vec<u8> {
    let mut k = clinic.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(patient);
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(exam.as_bytes());
    k
}

/// A specialist working a case; it holds until `expires_at_ms` unless renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub user: String,
    pub at_ms: u64,
    pub expires_at_ms: u64,
}

impl Claim {
    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Claimed (or renewed) by the caller.
    Claimed(Claim),
    /// Someone else holds a live claim.
    HeldBy(Claim),
    NoSuchExam,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Impression {
    CovidCompatible,
    OtherPneumonia,
    Normal,
    NonDiagnostic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recommendation {
    Refer,
    TreatLocally,
    Rescan,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRead {
    pub result_id: ResultId,
    pub zone: String,
    pub model_score: u8,
    pub score: u8,
    pub overridden: bool,
}

/// One specialist's reading of an examination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub reviewer: String,
    pub at_ms: u64,
    pub zones: Vec<ZoneRead>,
    pub impression: Impression,
    pub recommendation: Recommendation,
    pub rescan_reason: String,
    pub comment: String,
    pub second_read: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reads {
    pub first: Read,
    pub second: Option<Read>,
    /// Verdicts given after results that arrived after the earlier ones, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later: Vec<Read>,
}

impl Reads {
    /// The newest verdict.
    pub fn latest(&self) -> &Read {
        self.later.last().unwrap_or(&self.first)
    }
}

/// A read whose verdict is not yet queued to every device of its examination (the
/// store's delivery outbox, written in the same transaction as the read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub exam: ExamId,
    pub at_ms: u64,
    pub reviewer: String,
}

impl Undelivered {
    pub fn of(exam: &ExamId, read: &Read) -> Self {
        Self {
            exam: *exam,
            at_ms: read.at_ms,
            reviewer: read.reviewer.clone(),
        }
    }

    /// exam id (16) ‖ given at (8, BE) ‖ reviewer.
    pub fn key(&self) -> Vec<u8> {
        let mut k = self.exam.as_bytes().to_vec();
        k.extend_from_slice(&self.at_ms.to_be_bytes());
        k.extend_from_slice(self.reviewer.as_bytes());
        k
    }

    pub fn from_key(k: &[u8]) -> Option<Self> {
        let exam = ExamId(k.get(..16)?.try_into().ok()?);
        let at_ms = u64::from_be_bytes(k.get(16..24)?.try_into().ok()?);
        let reviewer = String::from_utf8(k.get(24..)?.to_vec()).ok()?;
        Some(Self {
            exam,
            at_ms,
            reviewer,
        })
    }

    /// This read among the examination's reads (first, second, later).
    pub fn find<'a>(&self, reads: &'a Reads) -> Option<&'a Read> {
        std::iter::once(&reads.first)
            .chain(&reads.second)
            .chain(&reads.later)
            .find(|r| r.at_ms == self.at_ms && r.reviewer == self.reviewer)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    Recorded,
    NoSuchExam,
    /// A first read exists and this one is not marked second, or both exist.
    AlreadyRead,
    /// Marked second but there is no first read.
    NoFirstRead,
    /// Marked second by the specialist who gave the first read.
    OwnRead,
}

/// What the worklist asks for. `scope` fails closed (default: no clinic).
#[derive(Debug, Clone, Default)]
pub struct WorklistQuery {
    pub scope: ClinicScope,
    pub flagged: Option<bool>,
    /// Some(false): awaiting a read (never read, or a live result arrived after the
    /// latest verdict); Some(true): read; None: both.
    pub read: Option<bool>,
    pub offset: usize,
    /// 0 means 50.
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorklistRow {
    pub exam: Exam,
    pub priority: Priority,
    /// A live claim, if any.
    pub claim: Option<Claim>,
}

#[derive(Debug, Clone, Default)]
pub struct Worklist {
    pub rows: Vec<WorklistRow>,
    /// More rows follow this page.
    pub more: bool,
}

/// One read examination's turnaround.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turnaround {
    pub clinic: String,
    pub arrived_ms: u64,
    pub claimed_ms: Option<u64>,
    pub read_ms: u64,
}

#[cfg(test)]
mod tests;
