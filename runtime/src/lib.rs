//! What the Pleura binaries run on. Each `main.rs` parses its arguments and hands a
//! library `run` to [`shell`]; both daemons keep their broker connection with
//! [`mqtt_link`]; the demo, tests and benchmarks drive the web pages with [`web_client`].

pub mod mqtt_link;
pub mod shell;
pub mod web_client;
