//! A scan result as it leaves the clinic: de-identified, self-describing, and
//! convertible to and from the wire (`pleura.v1.ScanResult`) with validation.

use pleura_proto::v1 as pb;
use prost::Message;
use serde::Serialize;

use crate::analysis::{ClassProbs, Findings, FlagReason, ScanAnalysis, Severity};
use crate::demographics::Demographics;
use crate::ids::{validate_name, IdError, ResultId};
use crate::pseudonym::PSEUDONYM_LEN;

/// Largest encoded result we accept (a real one is ~250 bytes).
pub const MAX_RECORD_BYTES: usize = 4096;

/// Largest signed batch (`SignedBatch`, encoded) the hub takes, on MQTT and gRPC alike:
/// the hub's default `mqtt.max_payload`. A sender must split by bytes as well as by
/// count: at ~200 bytes a result, about 300 results fit.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Most results in one batch, on MQTT and gRPC alike.
pub const MAX_BATCH_RECORDS: usize = 500;

/// Most bytes a batch's `queue` field (`QueueReport`: three u64 varints, tag and length
/// included) adds: every batch an edge sends carries one, so batch fitting reserves it.
pub const MAX_QUEUE_REPORT_BYTES: usize = 2 + 3 * (1 + 10);

/// How many of `records`, taken in order, fit in one signed batch from `clinic`/`device`
/// within [`MAX_BATCH_BYTES`] and [`MAX_BATCH_RECORDS`]. Counts the protobuf framing
/// and a 64-byte signature, so it never overestimates. At least one whenever `records`
/// is not empty: a valid record is at most [`MAX_RECORD_BYTES`].
pub fn batch_fit(records: &[ScanRecord], clinic: &str, device: &str) -> usize {
    use prost::encoding::encoded_len_varint as varint;
    let field = |len: usize| 1 + varint(len as u64) + len;
    // ResultBatch: schema_version (≤ 1 + 5), clinic, device, the queue report;
    // SignedBatch: the batch's tag and length (≤ 1 + 5) and the signature.
    let mut batch_len = 6 + field(clinic.len()) + field(device.len()) + MAX_QUEUE_REPORT_BYTES;
    let envelope = 6 + field(64);
    let mut n = 0;
    for r in records.iter().take(MAX_BATCH_RECORDS) {
        let next = batch_len + field(r.to_wire().encoded_len());
        if n > 0 && next + envelope > MAX_BATCH_BYTES {
            break;
        }
        batch_len = next;
        n += 1;
    }
    n
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanRecord {
    pub id: ResultId,
    pub clinic: String,
    pub device: String,
    /// Keyed pseudonym of the patient, if the scan named one.
    pub patient_key: Option<[u8; PSEUDONYM_LEN]>,
    pub zone: Option<String>,
    /// Days since 1970-01-01.
    pub scan_day: u32,
    pub analysed_at_ms: u64,
    pub format: String,
    pub analysis: ScanAnalysis,
    /// Quantised localisation map (0..=255), `localisation_size`² cells.
    pub localisation: Vec<u8>,
    pub localisation_size: u32,
    /// The scan analysed: the same for every analysis of it (by another release, or in
    /// shadow). Equal to `id` for the built-in model's results, and for results from
    /// agents that did not send one.
    pub scan: ResultId,
    /// Release version of the model that produced it; 0 is the agent's built-in model.
    pub release: u64,
    /// `Some` for a shadow result (a candidate model run beside the active one): what the
    /// candidate would have flagged. A shadow result's `analysis.flagged` is always
    /// false and its `flag_reasons` empty, so nothing that counts flags can count it.
    pub shadow: Option<Vec<FlagReason>>,
    /// Age band and sex, each only if the clinic recorded it (`demographics`).
    pub demographics: Demographics,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("field {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("undecodable protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("record of {0} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge(usize),
}

fn invalid(field: &'static str, problem: impl Into<String>) -> RecordError {
    RecordError::Invalid {
        field,
        problem: problem.into(),
    }
}

impl ScanRecord {
    /// Quantises a 0..1 localisation map to bytes.
    pub fn quantise_map(map: &[f32]) -> Vec<u8> {
        map.iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }

    /// Severity-first queue priority: flagged and severe results sync first.
    /// Higher is more urgent (0..=7).
    /// A shadow reading comes last: it must never hold up a clinical result.
    pub fn priority(&self) -> u8 {
        if self.is_shadow() {
            return 0;
        }
        (u8::from(self.analysis.flagged) << 2) | self.analysis.severity.score().min(3)
    }

    pub fn to_wire(&self) -> pb::ScanResult {
        let a = &self.analysis;
        pb::ScanResult {
            result_id: self.id.0.to_vec(),
            clinic_id: self.clinic.clone(),
            device_id: self.device.clone(),
            patient_key: self.patient_key.map(|k| k.to_vec()).unwrap_or_default(),
            zone: self.zone.clone().unwrap_or_default(),
            scan_day: self.scan_day,
            analysed_at_ms: self.analysed_at_ms,
            format: self.format.clone(),
            class_probs: a.class_probs.as_array().to_vec(),
            severity: a.severity.score().into(),
            severity_probs: a.severity_probs.to_vec(),
            uncertainty: a.uncertainty,
            flagged: a.flagged,
            flag_reasons: a
                .flag_reasons
                .iter()
                .map(|r| flag_to_wire(*r) as i32)
                .collect(),
            frames_analysed: a.frames_analysed,
            frames_total: a.frames_total,
            model_version: a.model_version.clone(),
            localisation: self.localisation.clone(),
            localisation_size: self.localisation_size,
            finding_probs: a
                .findings
                .map(|f| f.as_array().to_vec())
                .unwrap_or_default(),
            // Sent only when it differs from the result id (older hubs see no change).
            scan_id: if self.scan == self.id {
                Vec::new()
            } else {
                self.scan.0.to_vec()
            },
            shadow: self.shadow.is_some(),
            model_release: self.release,
            shadow_flag_reasons: self
                .shadow
                .iter()
                .flatten()
                .map(|r| flag_to_wire(*r) as i32)
                .collect(),
            age_band: self.demographics.age_to_wire(),
            sex: self.demographics.sex_to_wire(),
        }
    }

    /// Whether it is a candidate model's shadow result.
    pub fn is_shadow(&self) -> bool {
        self.shadow.is_some()
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        Self::from_wire(pb::ScanResult::decode(bytes)?)
    }

    /// Validates everything a rogue or buggy sender could get wrong.
    pub fn from_wire(w: pb::ScanResult) -> Result<Self, RecordError> {
        let id = ResultId::from_slice(&w.result_id)?;
        validate_name("clinic", &w.clinic_id)?;
        validate_name("device", &w.device_id)?;
        let patient_key = match w.patient_key.len() {
            0 => None,
            PSEUDONYM_LEN => Some(w.patient_key.as_slice().try_into().expect("length checked")),
            n => return Err(invalid("patient_key", format!("{n} bytes, expected 16"))),
        };
        let zone = match w.zone.as_str() {
            "" => None,
            z if is_zone(z) => Some(z.to_string()),
            z => {
                return Err(invalid(
                    "zone",
                    format!(
                        "{:?} is not L1-L6/R1-R6",
                        z.chars().take(16).collect::<String>()
                    ),
                ))
            }
        };
        let probs = probabilities("class_probs", &w.class_probs, 3)?;
        let sev_probs = probabilities("severity_probs", &w.severity_probs, 4)?;
        let severity = u8::try_from(w.severity)
            .ok()
            .and_then(|s| Severity::new(s).ok())
            .ok_or_else(|| invalid("severity", format!("{} is outside 0-3", w.severity)))?;
        if !(0.0..=1.0).contains(&w.uncertainty) {
            return Err(invalid(
                "uncertainty",
                format!("{} outside 0..1", w.uncertainty),
            ));
        }
        let flag_reasons = w
            .flag_reasons
            .iter()
            .map(|r| flag_from_wire(*r))
            .collect::<Result<Vec<_>, _>>()?;
        if w.localisation.len() as u64 != u64::from(w.localisation_size).pow(2)
            || w.localisation_size > 32
        {
            return Err(invalid(
                "localisation",
                format!(
                    "{} cells for a {}x{} map",
                    w.localisation.len(),
                    w.localisation_size,
                    w.localisation_size
                ),
            ));
        }
        let findings = finding_probs(&w.finding_probs)?;
        let scan = match w.scan_id.len() {
            0 => id,
            _ => ResultId::from_slice(&w.scan_id).map_err(|e| invalid("scan_id", e.to_string()))?,
        };
        let shadow_flags = w
            .shadow_flag_reasons
            .iter()
            .map(|r| flag_from_wire(*r))
            .collect::<Result<Vec<_>, _>>()?;
        let shadow =
            match (w.shadow, w.flagged || !flag_reasons.is_empty()) {
                (true, true) => return Err(invalid(
                    "flagged",
                    "a shadow result never flags (its candidate's flags go in shadow_flag_reasons)",
                )),
                (true, false) => Some(shadow_flags),
                (false, _) if !shadow_flags.is_empty() => {
                    return Err(invalid(
                        "shadow_flag_reasons",
                        "set on a result that is not a shadow result",
                    ))
                }
                (false, _) => None,
            };
        if shadow.is_some() && w.model_release == 0 {
            return Err(invalid(
                "model_release",
                "a shadow result comes from a release (version above 0)",
            ));
        }
        // The id is bound to the scan, the release and the role: a sender cannot claim
        // another scan's identity for a result of its own (or one result under two scans).
        if result_id_for(&scan, w.model_release, shadow.is_some()) != id {
            return Err(invalid(
                "result_id",
                "does not derive from scan_id, model_release and shadow",
            ));
        }
        if w.format.len() > 16 || w.model_version.len() > 64 {
            return Err(invalid("format/model_version", "too long"));
        }
        let demographics = Demographics::from_wire(w.age_band, w.sex)
            .map_err(|(field, problem)| invalid(field, problem))?;
        Ok(Self {
            id,
            clinic: w.clinic_id,
            device: w.device_id,
            patient_key,
            zone,
            scan_day: w.scan_day,
            analysed_at_ms: w.analysed_at_ms,
            format: w.format,
            analysis: ScanAnalysis {
                class_probs: ClassProbs::from_slice(&[probs[0], probs[1], probs[2]]),
                severity,
                severity_probs: [sev_probs[0], sev_probs[1], sev_probs[2], sev_probs[3]],
                uncertainty: w.uncertainty,
                flagged: w.flagged,
                flag_reasons,
                frames_total: w.frames_total,
                frames_analysed: w.frames_analysed,
                model_version: w.model_version,
                findings,
            },
            localisation: w.localisation,
            localisation_size: w.localisation_size,
            scan,
            release: w.model_release,
            shadow,
            demographics,
        })
    }
}

/// The id of one analysis of `scan`: the scan's own id for the built-in model's active
/// reading (as before releases existed), otherwise a hash of the scan, release and role.
/// Another release's reading (a re-analysis after a rollback) or a shadow reading is a
/// distinct result at the hub; the same release re-reading it after a crash, the same.
pub fn result_id_for(scan: &ResultId, release: u64, shadow: bool) -> ResultId {
    use sha2::{Digest, Sha256};
    if release == 0 && !shadow {
        return *scan;
    }
    let mut h = Sha256::new();
    h.update(b"pleura-result-of-release-v1\0");
    h.update(scan.as_bytes());
    h.update(release.to_be_bytes());
    h.update([u8::from(shadow)]);
    ResultId::from_slice(&h.finalize()[..16]).expect("16 bytes")
}

/// "L1".."L6" or "R1".."R6": the 12-zone Soldati protocol.
pub fn is_zone(z: &str) -> bool {
    let b = z.as_bytes();
    b.len() == 2 && (b[0] == b'L' || b[0] == b'R') && (b'1'..=b'6').contains(&b[1])
}

fn probabilities(field: &'static str, p: &[f32], n: usize) -> Result<Vec<f32>, RecordError> {
    if p.len() != n {
        return Err(invalid(field, format!("{} values, expected {n}", p.len())));
    }
    if p.iter().any(|v| !(0.0..=1.0).contains(v)) {
        return Err(invalid(field, "value outside 0..1"));
    }
    let sum: f32 = p.iter().sum();
    if (sum - 1.0).abs() > 0.01 {
        return Err(invalid(field, format!("sums to {sum}, not 1")));
    }
    Ok(p.to_vec())
}

/// `finding_probs`: empty (no findings head) or exactly 5 finite probabilities.
fn finding_probs(p: &[f32]) -> Result<Option<Findings>, RecordError> {
    const FIELD: &str = "finding_probs";
    match p.len() {
        0 => return Ok(None),
        5 => {}
        n => return Err(invalid(FIELD, format!("{n} values, expected 0 or 5"))),
    }
    if let Some(v) = p.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(invalid(FIELD, format!("value {v} outside 0..1")));
    }
    Ok(Some(Findings::from_array([p[0], p[1], p[2], p[3], p[4]])))
}

fn flag_to_wire(r: FlagReason) -> pb::FlagReason {
    match r {
        FlagReason::CovidSuspected => pb::FlagReason::CovidSuspected,
        FlagReason::PneumoniaSuspected => pb::FlagReason::PneumoniaSuspected,
        FlagReason::HighSeverity => pb::FlagReason::HighSeverity,
        FlagReason::Uncertain => pb::FlagReason::Uncertain,
    }
}

fn flag_from_wire(v: i32) -> Result<FlagReason, RecordError> {
    match pb::FlagReason::try_from(v) {
        Ok(pb::FlagReason::CovidSuspected) => Ok(FlagReason::CovidSuspected),
        Ok(pb::FlagReason::PneumoniaSuspected) => Ok(FlagReason::PneumoniaSuspected),
        Ok(pb::FlagReason::HighSeverity) => Ok(FlagReason::HighSeverity),
        Ok(pb::FlagReason::Uncertain) => Ok(FlagReason::Uncertain),
        _ => Err(invalid("flag_reasons", format!("unknown reason {v}"))),
    }
}

/// A plausible record for tests, fixtures and benchmarks (not from a real scan).
pub fn sample_record(clinic: &str, device: &str, severity: u8, flagged: bool) -> ScanRecord {
    let sev = Severity::new(severity.min(3)).expect("clamped");
    let mut severity_probs = [0.1f32; 4];
    severity_probs[usize::from(sev.score())] = 0.7;
    let id = ResultId::random();
    ScanRecord {
        id,
        clinic: clinic.into(),
        device: device.into(),
        patient_key: Some(rand::random()),
        zone: Some("R2".into()),
        scan_day: 20_000,
        analysed_at_ms: 1_730_000_000_000,
        format: "mp4".into(),
        analysis: ScanAnalysis {
            class_probs: ClassProbs::from_slice(&[0.2, 0.1, 0.7]),
            severity: sev,
            severity_probs,
            uncertainty: 0.4,
            flagged,
            flag_reasons: if flagged {
                vec![FlagReason::HighSeverity]
            } else {
                vec![]
            },
            frames_total: 60,
            frames_analysed: 32,
            model_version: "pleura-lite@2026.12.01".into(),
            findings: None,
        },
        localisation: vec![128; 49],
        localisation_size: 7,
        scan: id,
        release: 0,
        shadow: None,
        demographics: Demographics::default(),
    }
}

#[cfg(test)]
mod tests;
