//! The reports to the hub not yet sent (`reports.json`): what became of each release on
//! this device must reach the hub even if the agent restarts before the link comes back
//! (a rollback at start, a refusal, a shadow model dropped). At most `MAX_KEPT`, oldest
//! dropped first; each is the encoded `ModelReport`, hex.

use std::collections::VecDeque;
use std::path::Path;

use pleura_shared::fsutil::write_atomic;
use pleura_shared::wire::ModelReport;
use prost::Message;

const MAX_KEPT: usize = 64;

pub fn load(path: &Path) -> VecDeque<ModelReport> {
    let Ok(bytes) = std::fs::read(path) else {
        return VecDeque::new();
    };
    let hexes: Vec<String> = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "unsent model reports unreadable; dropped");
        Vec::new()
    });
    hexes
        .iter()
        .filter_map(|h| ModelReport::decode(hex::decode(h).ok()?.as_slice()).ok())
        .collect()
}

/// Saves `reports` (keeping the newest `MAX_KEPT`); a failure is logged, not fatal: the
/// reports still go out while the agent runs.
pub fn save(path: &Path, reports: &mut VecDeque<ModelReport>) {
    while reports.len() > MAX_KEPT {
        reports.pop_front();
    }
    let hexes: Vec<String> = reports
        .iter()
        .map(|r| hex::encode(r.encode_to_vec()))
        .collect();
    let bytes = serde_json::to_vec(&hexes).unwrap_or_default();
    if let Err(e) = write_atomic(path, &bytes, 0o600) {
        tracing::warn!(path = %path.display(), error = %e, "saving unsent model reports");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_reports_survive_a_restart_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports.json");
        assert!(load(&path).is_empty());
        let mut q: VecDeque<ModelReport> = (0..MAX_KEPT as u64 + 5)
            .map(|v| ModelReport {
                release_version: v,
                reason: format!("r{v}"),
                ..Default::default()
            })
            .collect();
        save(&path, &mut q);
        let back = load(&path);
        assert_eq!(back.len(), MAX_KEPT);
        assert_eq!(back.front().unwrap().release_version, 5, "oldest dropped");
        assert_eq!(back, q);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_empty(), "damaged: dropped, not fatal");
    }
}
