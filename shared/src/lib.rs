//! Domain types shared by the Pleura edge agent and hub: what a lung-ultrasound
//! analysis says, independent of how it was computed or carried.

pub mod analysis;

pub use analysis::{
    ClassProbs, FlagReason, LungClass, PatientSummary, ScanAnalysis, Severity, SeverityError,
};
