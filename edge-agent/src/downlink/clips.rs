//! Clip requests the hub sent, kept until the media module has dealt with them (clip
//! prepared and queued, or found impossible), so a restart does not lose one. Key:
//! result id (16); value: requested_at_ms (8, big-endian) ‖ reason (UTF-8).

use pleura_shared::ResultId;

use super::DownlinkError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingClip {
    pub result_id: ResultId,
    pub reason: String,
    pub requested_at_ms: u64,
}

#[derive(Clone)]
pub struct ClipRequests {
    tree: sled::Tree,
}

pub(crate) fn value(requested_at_ms: u64, reason: &str) -> Vec<u8> {
    let mut v = requested_at_ms.to_be_bytes().to_vec();
    v.extend_from_slice(reason.as_bytes());
    v
}

impl ClipRequests {
    pub fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Every request not yet marked done, oldest first.
    pub fn pending_clip_requests(&self) -> Result<Vec<PendingClip>, DownlinkError> {
        let mut out = Vec::new();
        for r in self.tree.iter() {
            let (k, v) = r?;
            let result_id =
                ResultId::from_slice(&k).map_err(|e| DownlinkError::Corrupt(e.to_string()))?;
            let at: [u8; 8] = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| DownlinkError::Corrupt("clip request entry".into()))?;
            out.push(PendingClip {
                result_id,
                reason: String::from_utf8_lossy(&v[8..]).into_owned(),
                requested_at_ms: u64::from_be_bytes(at),
            });
        }
        out.sort_by_key(|c| c.requested_at_ms);
        Ok(out)
    }

    /// The media module has dealt with the request (durably, on its side).
    pub fn clip_request_done(&self, result_id: &ResultId) -> Result<(), DownlinkError> {
        self.tree.remove(result_id.as_bytes())?;
        self.tree.flush()?;
        Ok(())
    }
}
