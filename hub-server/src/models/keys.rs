//! Model keys: the offline root key, the model-signing key and the root metadata chain
//! (`init-keys`, `rotate-signing-key`, `revoke-signing-key`).

use std::path::Path;

use pleura_shared::release::{RootKey, RootMetadata, SigningKey};

use super::store::ModelStore;
use super::{io_err, ModelsError};

/// How long a newly certified signing key may sign releases.
pub const SIGNING_KEY_DAYS: u64 = 730;
const DAY_MS: u64 = 86_400_000;

/// What a key operation left behind.
#[derive(Debug, Clone)]
pub struct KeysOutcome {
    pub root_key_id: String,
    pub signing_key_id: Option<String>,
    pub root_version: u64,
}

/// Creates the root key, the signing key, root metadata version 1 certifying the signing
/// key, and `model-root.pub`. Refuses when any key or root document exists already.
pub fn init_keys(store: &ModelStore, now_ms: u64) -> Result<KeysOutcome, ModelsError> {
    for p in [store.root_key(), store.signing_key(), store.roots_dir()] {
        if p.exists() {
            return Err(ModelsError::KeysExist(store.dir().into()));
        }
    }
    pleura_shared::fsutil::private_dir(store.dir()).map_err(io_err(store.dir()))?;
    let root = RootKey::generate()?;
    let signer = SigningKey::generate()?;
    root.save(&store.root_key())?;
    signer.save(&store.signing_key())?;
    let mut meta = RootMetadata::first(&root, now_ms);
    meta.add_signing_key(
        &signer.public_key(),
        now_ms.saturating_add(SIGNING_KEY_DAYS * DAY_MS),
    );
    store.add_root(meta.version, &root.certify(&meta)?)?;
    let pub_path = store.root_public_key();
    pleura_shared::fsutil::write_atomic(&pub_path, root.public_key_file().as_bytes(), 0o644)
        .map_err(io_err(&pub_path))?;
    tracing::info!(root = %root.key_id(), signing = %signer.key_id(), "model keys created");
    Ok(KeysOutcome {
        root_key_id: root.key_id(),
        signing_key_id: Some(signer.key_id()),
        root_version: meta.version,
    })
}

fn load_root(store: &ModelStore, root_key: Option<&Path>) -> Result<RootKey, ModelsError> {
    let path = root_key.map_or_else(|| store.root_key(), Path::to_path_buf);
    if !path.exists() {
        return Err(ModelsError::NoKeys(path));
    }
    Ok(RootKey::load(&path)?)
}

/// Signs and stores root metadata `meta` (the next version) with the root key.
fn publish_root(
    store: &ModelStore,
    root: &RootKey,
    meta: &RootMetadata,
) -> Result<KeysOutcome, ModelsError> {
    store.add_root(meta.version, &root.certify(meta)?)?;
    Ok(KeysOutcome {
        root_key_id: root.key_id(),
        signing_key_id: None,
        root_version: meta.version,
    })
}

/// Replaces the signing key with a new one certified by the next root version; the old
/// key moves to `retired/` and, with `revoke_old`, is revoked in that same version.
pub fn rotate_signing_key(
    store: &ModelStore,
    root_key: Option<&Path>,
    revoke_old: bool,
    now_ms: u64,
) -> Result<KeysOutcome, ModelsError> {
    let root = load_root(store, root_key)?;
    let mut meta = store.latest_root()?.next(now_ms);
    let current = store.signing_key();
    if current.exists() {
        let old = SigningKey::load(&current)?;
        let retired = store.retired_dir();
        pleura_shared::fsutil::private_dir(&retired).map_err(io_err(&retired))?;
        let to = retired.join(format!("{}.key", old.key_id()));
        std::fs::rename(&current, &to).map_err(io_err(&current))?;
        if revoke_old {
            meta.revoke(&old.key_id());
        }
    }
    let signer = SigningKey::generate()?;
    signer.save(&current)?;
    meta.add_signing_key(
        &signer.public_key(),
        now_ms.saturating_add(SIGNING_KEY_DAYS * DAY_MS),
    );
    let mut out = publish_root(store, &root, &meta)?;
    out.signing_key_id = Some(signer.key_id());
    tracing::info!(signing = %signer.key_id(), root_version = meta.version, revoke_old, "model-signing key rotated");
    Ok(out)
}

/// Revokes signing key `key_id` (default: the current `signing.key`) in the next root
/// version. Devices refuse its releases once they hold that version.
pub fn revoke_signing_key(
    store: &ModelStore,
    root_key: Option<&Path>,
    key_id: Option<&str>,
    now_ms: u64,
) -> Result<(KeysOutcome, String), ModelsError> {
    let root = load_root(store, root_key)?;
    let id = match key_id {
        Some(id) => id.to_string(),
        None => SigningKey::load(&store.signing_key())?.key_id(),
    };
    let mut meta = store.latest_root()?.next(now_ms);
    meta.revoke(&id);
    let out = publish_root(store, &root, &meta)?;
    tracing::info!(key = %id, root_version = meta.version, "model-signing key revoked");
    Ok((out, id))
}
