//! What the model task needs from the rest of the hub: somewhere to queue messages to
//! devices, and the list of devices a rollout may reach.

use pleura_shared::wire::downlink;

use crate::ca::Registry;
use crate::downlink::Downlink;
use crate::error::HubError;

/// Where offers and commands go: the durable, signed downlink (a fake in tests).
pub trait ModelOutbox: Send + Sync {
    fn send_with_id(
        &self,
        clinic: &str,
        device: &str,
        id: [u8; 16],
        kind: downlink::Kind,
    ) -> Result<(), HubError>;
    fn publish_ephemeral(&self, clinic: &str, device: &str, kind: downlink::Kind);
}

impl ModelOutbox for Downlink {
    fn send_with_id(
        &self,
        clinic: &str,
        device: &str,
        id: [u8; 16],
        kind: downlink::Kind,
    ) -> Result<(), HubError> {
        Downlink::send_with_id(self, clinic, device, id, kind).map(drop)
    }
    fn publish_ephemeral(&self, clinic: &str, device: &str, kind: downlink::Kind) {
        Downlink::publish_ephemeral(self, clinic, device, kind)
    }
}

/// The devices a rollout may reach: enrolled and not revoked.
pub trait DeviceList: Send + Sync {
    fn enrolled(&self) -> Result<Vec<(String, String)>, String>;
}

impl DeviceList for Registry {
    fn enrolled(&self) -> Result<Vec<(String, String)>, String> {
        Ok(self
            .pki()
            .devices()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|d| d.revoked_at_ms.is_none())
            .map(|d| (d.clinic, d.device))
            .collect())
    }
}

impl DeviceList for Vec<(String, String)> {
    fn enrolled(&self) -> Result<Vec<(String, String)>, String> {
        Ok(self.clone())
    }
}
