//! Pleura's clinic agent: analyses lung-ultrasound scans next to the probe, keeps
//! every result in a durable outbox, and syncs them to the regional hub.

pub mod cli;
pub mod clinic;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod deid;
pub mod downlink;
pub mod intake;
pub mod lock;
pub mod media;
pub mod models;
pub mod outbox;
pub mod processed;
pub mod retract;
pub mod scanlog;
pub mod status;
pub mod sync;
pub mod vitals;
