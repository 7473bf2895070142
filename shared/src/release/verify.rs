//! Accepting a release offer and checking the model file it describes.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::envelope::SignedRelease;
use super::hexstr;
use super::manifest::ReleaseManifest;
use super::trust::TrustState;
use super::version::AgentVersion;
use super::ReleaseError;
use crate::signing::{verify_in, Domain};

/// How far past the device clock a release's `created_at_ms` may lie (clocks on
/// clinic devices drift; a day is well above drift and well below a release cycle).
pub const CREATED_AT_SLACK_MS: u64 = 24 * 60 * 60 * 1000;

/// A release whose signature, key, version and compatibility checked out. The model
/// file is checked separately (`check_model_file`) once it is on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedRelease {
    manifest: ReleaseManifest,
    key_id: String,
    clock_unsure: bool,
    warnings: Vec<String>,
}

impl VerifiedRelease {
    pub fn manifest(&self) -> &ReleaseManifest {
        &self.manifest
    }

    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    /// The signing key that signed it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// True when the caller could not vouch for its clock and expiry was not checked.
    pub fn clock_unsure(&self) -> bool {
        self.clock_unsure
    }

    /// Checks skipped or worth showing a person, one sentence each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Streams `model` through SHA-256 (never more than one buffer in memory) and
    /// compares size and digest with the manifest. Reading stops one byte past the
    /// expected size, so an endless or oversized stream is refused quickly.
    pub fn check_model_file(&self, model: impl Read) -> Result<(), ReleaseError> {
        let expected = self.manifest.model_size;
        let mut reader = model.take(expected.saturating_add(1));
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ReleaseError::Io {
                        path: "model file".to_string(),
                        reason: e.to_string(),
                    })
                }
            };
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        if total != expected {
            return Err(ReleaseError::ModelSizeMismatch {
                expected,
                actual: total,
            });
        }
        let actual = hex::encode(hasher.finalize());
        if actual != self.manifest.model_sha256 {
            return Err(ReleaseError::ModelHashMismatch {
                expected: self.manifest.model_sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// `check_model_file` on the file at `path`.
    pub fn check_model_path(&self, path: &Path) -> Result<(), ReleaseError> {
        let f = std::fs::File::open(path).map_err(|e| ReleaseError::io(path, e))?;
        self.check_model_file(std::io::BufReader::new(f))
    }
}

/// Read first, alone, so that an agent too old to parse a newer manifest says so.
#[derive(Deserialize)]
struct MinAgent {
    min_agent_version: String,
}

fn malformed(what: &str, e: impl std::fmt::Display) -> ReleaseError {
    ReleaseError::Malformed(format!("{what}: {e}"))
}

impl TrustState {
    /// Decides whether to install `signed`. `now_ms` is the device clock when the caller
    /// trusts it (synchronised, or confirmed by a person), `None` when it does not: then
    /// expiry and creation time go unchecked and the result says `clock_unsure`.
    /// `agent_version` is this agent's `MAJOR.MINOR.PATCH`.
    pub fn verify_release(
        &self,
        signed: &SignedRelease,
        now_ms: Option<u64>,
        agent_version: &str,
    ) -> Result<VerifiedRelease, ReleaseError> {
        let key_id = &signed.key_id;
        if self.revoked.contains(key_id) {
            return Err(ReleaseError::RevokedSigningKey {
                key_id: key_id.clone(),
            });
        }
        let key = self.root.metadata().signing_key(key_id).ok_or_else(|| {
            ReleaseError::UnknownSigningKey {
                key_id: key_id.clone(),
            }
        })?;
        let public = hexstr::decode_key("signing key", &key.public_key)?;
        verify_in(
            Domain::ModelRelease,
            &public,
            &signed.manifest,
            &signed.signature,
            "",
        )
        .map_err(|_| ReleaseError::BadSignature {
            key_id: key_id.clone(),
            what: "release manifest",
        })?;

        let min: MinAgent =
            serde_json::from_slice(&signed.manifest).map_err(|e| malformed("manifest", e))?;
        let min = AgentVersion::parse("min_agent_version", &min.min_agent_version)?;
        let agent = AgentVersion::parse("agent version", agent_version)?;
        if agent < min {
            return Err(ReleaseError::AgentTooOld {
                min: min.to_string(),
                agent: agent.to_string(),
            });
        }
        let manifest: ReleaseManifest =
            serde_json::from_slice(&signed.manifest).map_err(|e| malformed("manifest", e))?;
        manifest.validate()?;

        if manifest.created_at_ms > key.not_after_ms {
            return Err(ReleaseError::SigningKeyExpired {
                key_id: key_id.clone(),
                not_after: key.not_after_ms,
                created_at: manifest.created_at_ms,
            });
        }
        if let Some(installed) = self.installed_version {
            if manifest.version <= installed {
                return Err(ReleaseError::NotNewer {
                    offered: manifest.version,
                    installed,
                });
            }
        }
        let mut warnings = Vec::new();
        match now_ms {
            Some(now) => {
                if manifest.created_at_ms > now.saturating_add(CREATED_AT_SLACK_MS) {
                    return Err(ReleaseError::CreatedInFuture {
                        created_at: manifest.created_at_ms,
                        now,
                        slack_ms: CREATED_AT_SLACK_MS,
                    });
                }
                if now > manifest.expires_at_ms {
                    return Err(ReleaseError::ReleaseExpired {
                        expires_at: manifest.expires_at_ms,
                        now,
                    });
                }
            }
            None => warnings.push(format!(
                "device clock unsure: expiry ({} ms) and creation time ({} ms) not checked",
                manifest.expires_at_ms, manifest.created_at_ms
            )),
        }
        Ok(VerifiedRelease {
            manifest,
            key_id: key_id.clone(),
            clock_unsure: now_ms.is_none(),
            warnings,
        })
    }

    /// Records that `release` is now installed (after its model file checked out and
    /// the model was swapped in); persist the state afterwards. Refuses a version not
    /// newer than the installed one.
    pub fn record_installed(&mut self, release: &VerifiedRelease) -> Result<(), ReleaseError> {
        if let Some(installed) = self.installed_version {
            if release.version() <= installed {
                return Err(ReleaseError::NotNewer {
                    offered: release.version(),
                    installed,
                });
            }
        }
        self.installed_version = Some(release.version());
        Ok(())
    }
}
