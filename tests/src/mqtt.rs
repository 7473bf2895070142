//! Raw MQTT clients (tests that misbehave on a device's behalf) and a hub behind Mosquitto.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::*;

/// Mosquitto as deployed (TLS, the hub's CA, the shipped ACL), started, and a hub in
/// `<root>/hub` using it as its external broker (not started).
pub fn hub_behind_mosquitto(root: &Path) -> Result<(Mosquitto, Hub)> {
    let pki = root.join("hub/pki");
    ca_init(&pki)?;
    let mut mosq = Mosquitto::with_tls(&root.join("mosquitto"), &pki)?;
    mosq.start()?;
    let hub = Hub::new(&root.join("hub"), Broker::External(mosq.port))?;
    Ok((mosq, hub))
}

/// A raw MQTT client speaking as the device of `bundle` (TLS with its certificate),
/// for tests that misbehave on its behalf.
pub fn device_mqtt(
    port: u16,
    bundle: &Path,
    clinic: &str,
    device: &str,
) -> Result<(rumqttc::Client, rumqttc::Connection)> {
    let tls = pleura_shared::pki::client_config(
        &bundle.join("ca.pem"),
        Some((&bundle.join("device.pem"), &bundle.join("device.key"))),
    )?;
    Ok(mqtt_client(
        &pleura_shared::topics::client_id(clinic, device),
        port,
        Some(tls),
    ))
}

pub fn mqtt_client(
    client_id: &str,
    port: u16,
    tls: Option<rustls::ClientConfig>,
) -> (rumqttc::Client, rumqttc::Connection) {
    let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20)
        .set_keep_alive(Duration::from_secs(5));
    if let Some(t) = tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(t)),
        ));
    }
    rumqttc::Client::new(opts, 16)
}

/// `records` in a batch signed with the key of `bundle`, as that device would send it.
pub fn signed(
    clinic: &str,
    device: &str,
    records: &[pleura_shared::ScanRecord],
    bundle: &Path,
) -> pleura_proto::v1::SignedBatch {
    pleura_shared::signing::BatchSigner::from_pem_file(&bundle.join("device.key"))
        .expect("the bundle's device key")
        .seal(&pleura_shared::wire::ResultBatch {
            schema_version: pleura_shared::SCHEMA_VERSION,
            clinic_id: clinic.into(),
            device_id: device.into(),
            results: records
                .iter()
                .map(pleura_shared::ScanRecord::to_wire)
                .collect(),
            ..Default::default()
        })
}
