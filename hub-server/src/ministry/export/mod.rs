//! Exports of a ministry [`Report`](super::report::Report) (issue #16): CSV tables
//! (`csv`), FHIR R4 MeasureReports (`fhir`), DHIS2 data value sets (`dhis2`) and their
//! push to a DHIS2 server (`dhis2_push`). Each reads only the published report, so a
//! suppressed number cannot reach an export.

pub mod csv;
pub mod dhis2;
pub mod dhis2_push;
pub mod fhir;

#[cfg(test)]
pub(crate) mod sample;
