//! The hub's media store as a test reads it (its files: the hub may be running), and a
//! clip request queued the way the case service queues one.

use std::sync::Arc;

use hub_server::ca::Pki;
use hub_server::downlink::Downlink;
use hub_server::metrics::Metrics;
use pleura_proto::v1::{downlink, ClipRequest};
use sha2::Digest;

use crate::*;

pub const PREVIEW: i64 = 1;
pub const CLIP: i64 = 2;

#[derive(Debug, Clone)]
pub struct HubItem {
    pub sha: String,
    pub kind: i64,
    pub result: String,
    pub total: u64,
    pub complete: bool,
    pub also: Vec<String>,
}

/// The hub's media index, read from its files (the hub may be running).
pub fn hub_items(hub: &Hub) -> Vec<HubItem> {
    let dir = hub.dir.join("data/media/index");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| HubItem {
            sha: v["sha256"].as_str().unwrap_or_default().into(),
            kind: v["kind"].as_i64().unwrap_or(0),
            result: v["result_id"].as_str().unwrap_or_default().into(),
            total: v["total"].as_u64().unwrap_or(0),
            complete: v["complete"].as_bool().unwrap_or(false),
            also: v["also"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// The complete item of `kind` the hub lists under `result` (as its first result, or
/// as another result of the same device with the very same bytes).
pub fn complete(hub: &Hub, result: &str, kind: i64) -> Option<HubItem> {
    hub_items(hub).into_iter().find(|i| {
        (i.result == result || i.also.iter().any(|a| a == result)) && i.kind == kind && i.complete
    })
}

/// A complete item's bytes, checked against its name (the SHA-256) and size.
pub fn object(hub: &Hub, item: &HubItem) -> Vec<u8> {
    let path = hub.dir.join("data/media/objects").join(&item.sha);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() as u64, item.total, "size of {}", item.sha);
    assert_eq!(
        hex(&sha2::Sha256::digest(&bytes)),
        item.sha,
        "hash of the stored item"
    );
    bytes
}

/// The stopped hub's downlink queue (its sled store is the running hub's alone), with
/// the key `ca init` made, as the case service holds it.
pub fn hub_downlink(hub: &Hub) -> Downlink {
    let pki = Pki::open(hub.pki.as_ref().unwrap()).unwrap();
    let (signer, created) = pki.downlink_signer().unwrap();
    assert!(!created, "`ca init` made the hub's downlink key");
    Downlink::open(
        &hub.dir.join("data"),
        Some(signer),
        Arc::new(Metrics::default()),
    )
    .unwrap()
}

/// Queues a ClipRequest for `result` at the hub (stopped: its store is its own).
pub fn request_clip(hub: &Hub, clinic: &str, device: &str, result: &str) {
    let dl = hub_downlink(hub);
    let req = ClipRequest {
        result_id: hex_decode(result),
        reason: "specialist asked for the whole scan".into(),
    };
    dl.send(clinic, device, downlink::Kind::ClipRequest(req))
        .unwrap();
}

pub fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
