//! Pleura's wire contract, generated from `pleura/v1/pleura.proto`.

/// Version carried in every batch and ack; a receiver refuses versions it does not know.
pub const SCHEMA_VERSION: u32 = 1;

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/pleura.v1.rs"));
}
