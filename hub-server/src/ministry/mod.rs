//! What health ministries see (issue #16): roll-up counts (`store::rollup`) turned into
//! a [`report::Report`] (`query`) in which every number went through small-cell
//! suppression (`suppress`), alerts when a region's counts rise above their expected
//! level (`alerts`), and the exports built from the same report (`export`). The
//! dashboard, the gRPC `Aggregates` call and the exports all read `query`.

pub mod alerts;
pub mod export;
pub mod hierarchy;
pub mod period;
pub mod query;
pub mod report;
pub mod suppress;
