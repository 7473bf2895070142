//! What the Pleura binaries run on. Each `main.rs` parses its arguments and hands a
//! library `run` to [`shell`]; both daemons keep their broker connection with
//! [`mqtt_link`].

pub mod mqtt_link;
pub mod shell;
