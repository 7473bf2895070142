//! Taking a `ModelOffer`: the root chain and the signed release are verified before
//! anything is fetched; a refusal changes nothing but is reported with a named reason;
//! an accepted offer is persisted as a pending download before its receipt goes out.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use pleura_shared::fsutil::write_atomic;
use pleura_shared::release::{ReleaseError, SignedRelease, SignedRoot, TrustState};
use pleura_shared::wire::ModelOffer;
use serde::{Deserialize, Serialize};

use super::slots::Layout;
use super::{refusal, ModelsError, AGENT_VERSION};

/// `download/<version>.json`: an accepted offer and how much of its file is held
/// (fsynced in `<version>.part` before `held` says so).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub version: u64,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub held: u64,
    pub shadow: bool,
    pub release: SignedRelease,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OfferOutcome {
    /// Nothing changed; report REFUSED with `reason` (`"<name>: <message>"`).
    Refused { version: u64, reason: String },
    /// Persisted as a pending download.
    Accepted(Pending),
    /// Already pending or installed under the same version: nothing to do.
    Duplicate { version: u64 },
    /// An offer with no release: only its root metadata (kept when it verified).
    RootOnly { root_version: u64 },
}

/// The device's model state on disk, shared by the downlink receiver and the worker.
pub struct ModelStore {
    pub layout: Layout,
    /// From `[models] root_key`; without it every offer is refused.
    pub root_key: Option<[u8; 32]>,
    /// Serialises read-modify-write of `trust.json`, the pending files and `current.json`.
    pub lock: Mutex<()>,
    warned_no_root: AtomicBool,
}

impl ModelStore {
    pub fn new(layout: Layout, root_key: Option<[u8; 32]>) -> Self {
        Self {
            layout,
            root_key,
            lock: Mutex::new(()),
            warned_no_root: AtomicBool::new(false),
        }
    }

    pub fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `trust.json`, or a fresh state trusting the configured root key.
    pub fn trust(&self) -> Result<TrustState, ReleaseError> {
        let path = self.layout.trust();
        let key = self.root_key.ok_or_else(|| ReleaseError::KeyFile {
            path: "[models] root_key".into(),
            reason: "no model root key configured".into(),
        })?;
        if path.exists() {
            TrustState::load(&path)
        } else {
            Ok(TrustState::new(key))
        }
    }

    pub fn save_trust(&self, t: &TrustState) -> Result<(), ReleaseError> {
        t.save(&self.layout.trust())
    }

    pub fn pending_json(&self, version: u64) -> PathBuf {
        self.layout.download_dir().join(format!("{version}.json"))
    }

    pub fn part_file(&self, version: u64) -> PathBuf {
        self.layout.download_dir().join(format!("{version}.part"))
    }

    /// The pending download, if any (the highest version when several were left).
    pub fn pending(&self) -> Result<Option<Pending>, ModelsError> {
        let dir = self.layout.download_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ModelsError::io(&dir, e)),
        };
        let mut best: Option<Pending> = None;
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            match serde_json::from_slice::<Pending>(&bytes) {
                Ok(pd) if best.as_ref().is_none_or(|b| pd.version > b.version) => best = Some(pd),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "unreadable pending model download ignored")
                }
            }
        }
        Ok(best)
    }

    pub fn save_pending(&self, p: &Pending) -> Result<(), ModelsError> {
        let path = self.pending_json(p.version);
        let bytes = serde_json::to_vec(p).map_err(|e| ModelsError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes, 0o600).map_err(|e| ModelsError::io(&path, e))
    }

    /// Drops every pending download (`keep`: except that version).
    /// Removes release `version`'s download (its record and partial file), leaving any
    /// other pending download alone (one accepted meanwhile keeps its receipted offer).
    pub fn drop_download(&self, version: u64) -> Result<(), ModelsError> {
        for p in [self.pending_json(version), self.part_file(version)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ModelsError::io(&p, e)),
            }
        }
        Ok(())
    }

    pub fn drop_pending(&self, keep: Option<u64>) -> Result<(), ModelsError> {
        let dir = self.layout.download_dir();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let p = e.path();
            let v = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok());
            if keep.is_some() && v == keep {
                continue;
            }
            std::fs::remove_file(&p).map_err(|e| ModelsError::io(&p, e))?;
        }
        Ok(())
    }

    /// Verifies `offer` and, if it is acceptable, persists it as the pending download.
    /// Blocking; `now_ms` is the device clock.
    pub fn take_offer(&self, offer: &ModelOffer, now_ms: u64) -> Result<OfferOutcome, ModelsError> {
        let _g = self.guard();
        let version = offer.release_version;
        let refused = |reason: String| {
            tracing::warn!(version, %reason, "model offer refused");
            Ok(OfferOutcome::Refused { version, reason })
        };
        if self.root_key.is_none() {
            if !self.warned_no_root.swap(true, Ordering::Relaxed) {
                tracing::warn!("no [models] root_key configured: every model offer is refused");
            }
            return Ok(OfferOutcome::Refused {
                version,
                reason: "no_root_key: no model root key configured".into(),
            });
        }
        let mut trust = match self.trust() {
            Ok(t) => t,
            Err(e) => return refused(refusal(&e)),
        };
        let mut roots = Vec::new();
        for r in &offer.roots {
            match SignedRoot::from_json(r) {
                Ok(r) => roots.push(r),
                Err(e) => return refused(refusal(&e)),
            }
        }
        let applied = match trust.update_root_chain(&roots) {
            Ok(n) => n,
            Err(e) => return refused(refusal(&e)),
        };
        // Kept as soon as it verifies, whatever becomes of the release: a revocation or
        // key rotation reaches the device with any offer, even one it refuses, and with
        // a root-only offer (no release: the hub announcing new root metadata).
        if applied > 0 {
            self.save_trust(&trust)?;
            tracing::info!(root = trust.root().version(), "model root metadata updated");
        }
        if offer.release.is_empty() {
            return Ok(OfferOutcome::RootOnly {
                root_version: trust.root().version(),
            });
        }
        let signed = match SignedRelease::from_json(&offer.release) {
            Ok(s) => s,
            Err(e) => return refused(refusal(&e)),
        };
        let verified =
            match trust.verify_release(&signed, super::trusted_now(now_ms), AGENT_VERSION) {
                Ok(v) => v,
                Err(e) => return refused(refusal(&e)),
            };
        let m = verified.manifest();
        if hex::encode(&offer.sha256) != m.model_sha256
            || offer.size != m.model_size
            || version != m.version
        {
            return refused(format!(
                "offer_mismatch: the offer says version {version}, {} bytes, SHA-256 {}; the signed release says version {}, {} bytes, {}",
                offer.size,
                hex::encode(&offer.sha256),
                m.version,
                m.model_size,
                m.model_sha256
            ));
        }
        if self.layout.rolled_back().iter().any(|&v| v >= version) {
            return refused(format!(
                "rolled_back: this device rolled back release {version} or a later one"
            ));
        }
        if let Ok(c) = self.layout.read_current() {
            for slot in [Some(c.active), c.shadow].into_iter().flatten() {
                if let Ok(s) = self.layout.check_slot(slot) {
                    if s.version == version && slot != super::Slot::Builtin {
                        return Ok(OfferOutcome::Duplicate { version });
                    }
                    if s.version > version {
                        return refused(refusal(&ReleaseError::NotNewer {
                            offered: version,
                            installed: s.version,
                        }));
                    }
                }
            }
        }
        if let Some(p) = self.pending()? {
            if p.version == version {
                return Ok(OfferOutcome::Duplicate { version });
            }
            if p.version > version {
                return refused(refusal(&ReleaseError::NotNewer {
                    offered: version,
                    installed: p.version,
                }));
            }
        }
        let pending = Pending {
            version,
            name: m.name.clone(),
            sha256: m.model_sha256.clone(),
            size: m.model_size,
            held: 0,
            shadow: offer.shadow,
            release: signed,
        };
        let dir = self.layout.download_dir();
        pleura_shared::fsutil::private_dir(&dir).map_err(|e| ModelsError::io(&dir, e))?;
        self.drop_pending(None)?;
        let part = self.part_file(version);
        let f = std::fs::File::create(&part).map_err(|e| ModelsError::io(&part, e))?;
        f.sync_all().map_err(|e| ModelsError::io(&part, e))?;
        self.save_pending(&pending)?;
        tracing::info!(version, name = %pending.name, size = pending.size, shadow = pending.shadow,
            key_id = %verified.key_id(), "model offer accepted: download pending");
        Ok(OfferOutcome::Accepted(pending))
    }
}
