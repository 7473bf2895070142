//! What health ministries see (issue #16): aggregate tables with small cells suppressed
//! (`suppress`), and alerts when a region's counts rise above their expected level
//! (`alerts`). Pure code, no I/O: the dashboard, the gRPC `Aggregates` call and the
//! exports build their tables through it.

pub mod alerts;
pub mod suppress;
