//! `cargo run --release -p pleura-demo`: starts a hub (embedded MQTT broker behind its
//! TLS gate) and two clinic agents on loopback, all on embedded defaults, with TLS on:
//! the demo creates the regional CA, enrols both devices and adds three accounts. The
//! southern clinic starts while the hub is down, analyses its scans offline, and
//! catches up once the hub is up. Prints what arrived where and who may see it; then the
//! northern specialist reads the flagged examination in the web application and the
//! verdict reaches the clinic's page. Both pages stay up until Ctrl-C
//! (`PLEURA_DEMO_EXIT=1`: end at once).

mod ministry;
mod report;
mod review;
pub mod scenario;
mod setup;

/// The demo's log filter: errors only, so the story stays readable.
pub const LOG_DEFAULT: &str = "error,rumqttd=off";

/// Runs the whole demo on a fresh runtime.
pub fn run() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(scenario::run())
}
