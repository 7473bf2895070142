//! `model publish`: a model file, its sidecar and self-test vectors become a signed
//! release in `releases/<N>/`.

use std::io::Read;
use std::path::{Path, PathBuf};

use pleura_shared::release::{
    AgentVersion, InputSpec, ReleaseManifest, SelfTest, SigningKey, MODEL_FILE, RELEASE_FILE,
    SEVERITY_LEVELS,
};
use sha2::{Digest, Sha256};

use super::store::{ModelStore, StoredRelease};
use super::{io_err, ModelsError, MAX_OFFER_RELEASE_BYTES};

const DAY_MS: u64 = 86_400_000;

/// What the operator asks to publish.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub model: PathBuf,
    pub version: u64,
    /// `{tolerance, vectors: [{frame_hex, expected}]}`, computed by the training
    /// pipeline or `edge-agent model self-test-vectors`.
    pub self_test: PathBuf,
    pub card_summary: String,
    pub expires_days: u64,
    pub min_agent: String,
}

/// `<stem>.json` beside the model.
pub fn sidecar_path(model: &Path) -> PathBuf {
    model.with_extension("json")
}

fn sha256_file(path: &Path) -> Result<(String, u64), ModelsError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// The manifest for `req`'s model (copied to `model_copy`, whose digest is taken, so the
/// hash signed is the hash of the bytes stored).
fn build_manifest(
    req: &PublishRequest,
    model_copy: &Path,
    now_ms: u64,
) -> Result<ReleaseManifest, ModelsError> {
    let (sha, size) = sha256_file(model_copy)?;
    let side_path = sidecar_path(&req.model);
    let bad_side = |reason: String| ModelsError::Sidecar {
        path: side_path.clone(),
        reason,
    };
    let text = std::fs::read(&side_path).map_err(|e| bad_side(e.to_string()))?;
    let sidecar: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad_side(e.to_string()))?;
    match sidecar.get("sha256").and_then(|v| v.as_str()) {
        Some(s) if s == sha => {}
        Some(s) => {
            return Err(ModelsError::SidecarHashMismatch {
                sidecar: side_path,
                expected: s.to_string(),
                actual: sha,
            })
        }
        None => return Err(bad_side("has no \"sha256\" of the model".into())),
    }
    let name = sidecar
        .get("name")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad_side("has no \"name\"".into()))?
        .to_string();
    let size_px = sidecar
        .pointer("/input/size")
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| bad_side("has no \"input.size\"".into()))?;
    let channels = match sidecar.pointer("/input/channels") {
        None => 1,
        Some(v) => v
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad_side("\"input.channels\" is not a number".into()))?,
    };
    let class_labels = sidecar
        .get("classes")
        .and_then(|v| v.as_array())
        .and_then(|a| {
            a.iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| bad_side("has no \"classes\" list of names".into()))?;
    let bad_test = |reason: String| ModelsError::SelfTest {
        path: req.self_test.clone(),
        reason,
    };
    let test_text = std::fs::read(&req.self_test).map_err(|e| bad_test(e.to_string()))?;
    let self_test: SelfTest =
        serde_json::from_slice(&test_text).map_err(|e| bad_test(e.to_string()))?;
    AgentVersion::parse("min_agent_version", &req.min_agent)?;
    Ok(ReleaseManifest {
        name,
        version: req.version,
        model_sha256: sha,
        model_size: size,
        input: InputSpec {
            size: size_px,
            channels,
        },
        class_labels,
        severity_levels: SEVERITY_LEVELS,
        sidecar,
        card_summary: req.card_summary.clone(),
        min_agent_version: req.min_agent.clone(),
        created_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(req.expires_days.max(1) * DAY_MS),
        self_test,
    })
}

/// Signs and stores release `req.version`. Refuses a version at or below the highest
/// published, a model whose hash differs from its sidecar's, invalid self-test vectors,
/// and a signing key the latest root metadata does not certify.
pub fn publish(
    store: &ModelStore,
    req: &PublishRequest,
    now_ms: u64,
) -> Result<StoredRelease, ModelsError> {
    if let Some(highest) = store.highest()? {
        if req.version <= highest {
            return Err(ModelsError::NotNewer {
                version: req.version,
                highest,
            });
        }
    }
    if req.version == 0 {
        return Err(ModelsError::NotNewer {
            version: 0,
            highest: 0,
        });
    }
    let key_path = store.signing_key();
    if !key_path.exists() {
        return Err(ModelsError::NoKeys(store.dir().into()));
    }
    let signer = SigningKey::load(&key_path)?;
    let root = store.latest_root()?;
    if root.signing_key(&signer.key_id()).is_none() {
        return Err(ModelsError::SigningKeyNotCertified {
            key_id: signer.key_id(),
            root_version: root.version,
        });
    }
    let releases = store.releases_dir();
    std::fs::create_dir_all(&releases).map_err(io_err(&releases))?;
    let tmp = releases.join(format!(".tmp-{}", req.version));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = stage(req, &signer, &tmp, now_ms);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    let dir = store.release_dir(req.version);
    std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    if let Ok(d) = std::fs::File::open(&releases) {
        let _ = d.sync_all();
    }
    let stored = store.release(req.version)?;
    tracing::info!(version = req.version, name = %stored.manifest.name, sha256 = %stored.manifest.model_sha256, "model release published");
    Ok(stored)
}

fn stage(
    req: &PublishRequest,
    signer: &SigningKey,
    tmp: &Path,
    now_ms: u64,
) -> Result<(), ModelsError> {
    let model = tmp.join(MODEL_FILE);
    std::fs::copy(&req.model, &model).map_err(io_err(&req.model))?;
    std::fs::File::open(&model)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&model))?;
    let manifest = build_manifest(req, &model, now_ms)?;
    let signed = signer.sign_release(&manifest)?;
    let bytes = signed.to_json()?.len();
    if bytes > MAX_OFFER_RELEASE_BYTES {
        return Err(ModelsError::TooLargeForOffer {
            bytes,
            limit: MAX_OFFER_RELEASE_BYTES,
        });
    }
    signed.write(&tmp.join(RELEASE_FILE))?;
    Ok(())
}
