//! Pleura's clinic agent: analyses lung-ultrasound scans next to the probe.

pub mod analyze;
pub mod bench;
pub mod cli;
pub mod datasets;
pub mod engine;
pub mod eval;
