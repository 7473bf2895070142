//! MQTT topic layout. Every topic is scoped to one clinic and one device, so that a
//! broker ACL (`.../clinic/<clinic>/device/<device>/...`) can confine each device.

use crate::ids::{validate_name, IdError};

pub const PREFIX: &str = "pleura/v1/clinic";

/// A device's MQTT client id, bound to its certificate identity so that no device can
/// take over another's persistent session (the hub's gate enforces it). `.` cannot occur
/// in a name, so the id is unambiguous; `/` would be refused by rumqttd.
pub fn client_id(clinic: &str, device: &str) -> String {
    format!("{clinic}.{device}")
}

/// Where a device publishes its result batches.
pub fn results(clinic: &str, device: &str) -> String {
    format!("{PREFIX}/{clinic}/device/{device}/results")
}

/// Where the hub publishes its acknowledgements for that device.
pub fn acks(clinic: &str, device: &str) -> String {
    format!("{PREFIX}/{clinic}/device/{device}/acks")
}

/// Where a device publishes everything else it sends the hub (`SignedUplink`: media
/// chunks, receipts of downlink messages, media queries).
pub fn uplink(clinic: &str, device: &str) -> String {
    format!("{PREFIX}/{clinic}/device/{device}/uplink")
}

/// Where the hub publishes what it sends one device (`SignedDownlink`: verdicts, clip
/// requests, media acks; later model offers and re-send requests).
pub fn downlink(clinic: &str, device: &str) -> String {
    format!("{PREFIX}/{clinic}/device/{device}/downlink")
}

/// What a device may publish to, and subscribe to: the gate's and the ACL's rule.
pub fn device_publishes(clinic: &str, device: &str) -> [String; 2] {
    [results(clinic, device), uplink(clinic, device)]
}

/// See [`device_publishes`].
pub fn device_subscribes(clinic: &str, device: &str) -> [String; 2] {
    [acks(clinic, device), downlink(clinic, device)]
}

/// The hub's subscription to every device's uplink, shared between hubs like the
/// results one but under a group name of its own (`<group>-uplink`): rumqttd 0.20 keeps
/// one read cursor per group name, so two filters in one group read each other's
/// positions and skip messages (the first uplink messages after a start were lost).
pub fn uplink_subscription(group: Option<&str>) -> String {
    let filter = format!("{PREFIX}/+/device/+/uplink");
    match group {
        Some(g) => format!("$share/{g}-uplink/{filter}"),
        None => filter,
    }
}

/// The hub's subscription to every device's results, shared between hubs in `group`
/// (MQTT 5 / Mosquitto / rumqttd shared subscription) so several hubs split the load.
pub fn results_subscription(group: Option<&str>) -> String {
    let filter = format!("{PREFIX}/+/device/+/results");
    match group {
        Some(g) => format!("$share/{g}/{filter}"),
        None => filter,
    }
}

/// Clinic and device named by a results topic.
pub fn parse_results(topic: &str) -> Result<(String, String), TopicError> {
    parse_device_topic(topic, "results")
}

/// Clinic and device named by an uplink topic.
pub fn parse_uplink(topic: &str) -> Result<(String, String), TopicError> {
    parse_device_topic(topic, "uplink")
}

/// Clinic and device named by a downlink topic (the agent checks what it receives).
pub fn parse_downlink(topic: &str) -> Result<(String, String), TopicError> {
    parse_device_topic(topic, "downlink")
}

fn parse_device_topic(topic: &str, leaf: &str) -> Result<(String, String), TopicError> {
    let rest = topic
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| TopicError(topic.chars().take(128).collect()))?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [clinic, "device", device, last] if *last == leaf => {
            validate_name("clinic", clinic)?;
            validate_name("device", device)?;
            Ok((clinic.to_string(), device.to_string()))
        }
        _ => Err(TopicError(topic.chars().take(128).collect())),
    }
}

/// `mqtt://host:port` (also `tcp://`; port defaults to 1883) or `mqtts://host:port`
/// (port defaults to 8883) → host and port.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), MqttUrlError> {
    let bad = || MqttUrlError(url.chars().take(128).collect());
    let (rest, default_port) = if let Some(r) = url.strip_prefix("mqtts://") {
        (r, 8883)
    } else {
        let r = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(bad)?;
        (r, 1883)
    };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        None if !rest.is_empty() => Ok((rest.to_string(), default_port)),
        _ => Err(bad()),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("MQTT url {0:?} must look like mqtts://host:port (or mqtt:// for plaintext)")]
pub struct MqttUrlError(String);

#[derive(Debug, thiserror::Error)]
#[error("not a device topic of the expected kind: {0:?}")]
pub struct TopicError(String);

impl From<IdError> for TopicError {
    fn from(e: IdError) -> Self {
        TopicError(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_topics_parse_back() {
        let t = results("c1", "d-2");
        assert_eq!(parse_results(&t).unwrap(), ("c1".into(), "d-2".into()));
        assert!(parse_results("pleura/v1/clinic/c1/device/d2/acks").is_err());
        assert!(parse_results("other/c1/device/d2/results").is_err());
        assert!(parse_results("pleura/v1/clinic/C!/device/d2/results").is_err());
        assert_eq!(
            parse_uplink(&uplink("c1", "d2")).unwrap(),
            ("c1".into(), "d2".into())
        );
        assert!(parse_uplink(&results("c1", "d2")).is_err());
        assert!(parse_downlink(&uplink("c1", "d2")).is_err());
        assert_eq!(
            parse_downlink(&downlink("c1", "d2")).unwrap(),
            ("c1".into(), "d2".into())
        );
        assert_eq!(parse_mqtt_url("mqtt://h:1884").unwrap(), ("h".into(), 1884));
        assert_eq!(parse_mqtt_url("tcp://h/").unwrap(), ("h".into(), 1883));
        assert!(parse_mqtt_url("http://h").is_err());
        assert!(parse_mqtt_url("mqtt://h:x").is_err());
        assert_eq!(parse_mqtt_url("mqtts://h").unwrap(), ("h".into(), 8883));
        assert_eq!(
            results_subscription(Some("hubs")),
            "$share/hubs/pleura/v1/clinic/+/device/+/results"
        );
        assert_eq!(
            uplink_subscription(Some("hubs")),
            "$share/hubs-uplink/pleura/v1/clinic/+/device/+/uplink"
        );
    }
}
