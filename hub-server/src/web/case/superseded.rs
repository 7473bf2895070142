//! A reading another analysis of the same scan replaced (a re-analysis after a model
//! rollback): shown greyed with what replaced it, never with media, flags or actions.

use std::fmt::Write;

use pleura_shared::html::esc;
use pleura_shared::ScanRecord;

use crate::cases::review::zone_label;
use crate::store::exams::Exam;

/// Renders `r` as superseded and returns true, or returns false if it is current.
pub(super) fn render(b: &mut String, e: &Exam, r: &ScanRecord) -> bool {
    let Some(x) = e.results.iter().find(|x| x.id == r.id && x.superseded) else {
        return false;
    };
    let by = match e.current_release_of(&x.scan_id()) {
        Some(0) => "the built-in model".to_string(),
        Some(v) => format!("release {v}"),
        None => "a later analysis".to_string(),
    };
    let _ = write!(
        b,
        "<section class=\"superseded\" data-result=\"{}\"><h3>Zone {} · <span class=\"superseded-by\">\
         superseded by {}</span></h3><p>Severity {} · model {}</p></section>",
        r.id,
        esc(&zone_label(r.zone.as_deref(), &r.id)),
        esc(&by),
        r.analysis.severity.score(),
        esc(&r.analysis.model_version)
    );
    true
}
