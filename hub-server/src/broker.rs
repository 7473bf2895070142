//! The embedded MQTT broker (rumqttd) for hubs that do not run Mosquitto or EMQX.
//! rumqttd keeps sessions in memory only; durability comes from the edge outbox and
//! the hub's own acknowledgements, not from the broker.

use std::collections::HashMap;
use std::net::SocketAddr;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

pub fn config(listen: SocketAddr, max_payload: usize) -> Config {
    let server = ServerSettings {
        name: "pleura-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: max_payload,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 104_857_600,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("pleura-v4".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Starts rumqttd on its own thread (it blocks the thread it runs on). It stops with
/// the process.
pub fn start(listen: SocketAddr, max_payload: usize) -> std::io::Result<()> {
    // Fail early and clearly if the port is taken, before rumqttd's thread dies quietly.
    drop(std::net::TcpListener::bind(listen)?);
    let cfg = config(listen, max_payload);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })?;
    Ok(())
}
