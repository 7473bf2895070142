//! Domain types shared by the Pleura edge agent and hub: what a lung-ultrasound
//! analysis says, how a result is identified, pseudonymised and carried.

pub mod analysis;
pub mod calendar;
pub mod demographics;
pub mod exam;
pub mod fsutil;
pub mod holdings;
pub mod html;
pub mod ids;
pub mod journal;
pub mod pki;
pub mod pseudonym;
pub mod record;
pub mod release;
pub mod signing;
pub mod sled_open;
pub mod topics;

pub use analysis::{
    ClassProbs, Findings, FlagReason, LungClass, PatientSummary, ScanAnalysis, Severity,
    SeverityError,
};
pub use demographics::{AgeBand, Demographics, Sex};
pub use exam::ExamId;
pub use ids::{validate_name, IdError, ResultId};
pub use pleura_proto::{v1 as wire, SCHEMA_VERSION};
pub use pseudonym::PseudonymKey;
pub use record::{result_id_for, RecordError, ScanRecord};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
