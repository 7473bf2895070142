//! The release store and key files under `<data_dir>/models/`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use pleura_shared::release::{
    ReleaseManifest, RootMetadata, SignedRelease, SignedRoot, MODEL_FILE, RELEASE_FILE,
    ROOT_PUBLIC_KEY_FILE,
};

use super::{io_err, ModelsError};

/// One published release as stored.
#[derive(Debug, Clone)]
pub struct StoredRelease {
    pub version: u64,
    /// `release.json` verbatim (what an offer carries).
    pub envelope: Vec<u8>,
    pub manifest: ReleaseManifest,
    /// The model file's SHA-256, raw.
    pub sha256: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
}

impl ModelStore {
    /// The store of the hub whose data directory is `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self::at(data_dir.join("models"))
    }

    /// A store in `dir` itself.
    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn root_key(&self) -> PathBuf {
        self.dir.join("root.key")
    }
    pub fn signing_key(&self) -> PathBuf {
        self.dir.join("signing.key")
    }
    pub fn retired_dir(&self) -> PathBuf {
        self.dir.join("retired")
    }
    pub fn roots_dir(&self) -> PathBuf {
        self.dir.join("roots")
    }
    pub fn root_public_key(&self) -> PathBuf {
        self.dir.join(ROOT_PUBLIC_KEY_FILE)
    }
    pub fn releases_dir(&self) -> PathBuf {
        self.dir.join("releases")
    }
    pub fn release_dir(&self, version: u64) -> PathBuf {
        self.releases_dir().join(version.to_string())
    }
    pub fn model_path(&self, version: u64) -> PathBuf {
        self.release_dir(version).join(MODEL_FILE)
    }
    pub fn rollout_path(&self) -> PathBuf {
        self.dir.join("rollout.json")
    }
    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    /// The shadow comparison the running hub refreshes (`shadow::ShadowReport`).
    pub fn shadow_path(&self) -> PathBuf {
        self.dir.join("shadow.json")
    }
    pub fn delivered_path(&self) -> PathBuf {
        self.dir.join("delivered.json")
    }

    /// Numeric entries of `dir` (`<n>` or `<n>.json`), ascending.
    fn numbered(dir: &Path, suffix: &str) -> Result<Vec<u64>, ModelsError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(dir)(e)),
        };
        let mut out: Vec<u64> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(suffix)?.parse().ok()
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Published release versions, ascending (a folder counts once its envelope exists).
    pub fn versions(&self) -> Result<Vec<u64>, ModelsError> {
        let mut v = Self::numbered(&self.releases_dir(), "")?;
        v.retain(|n| self.release_dir(*n).join(RELEASE_FILE).is_file());
        Ok(v)
    }

    pub fn highest(&self) -> Result<Option<u64>, ModelsError> {
        Ok(self.versions()?.last().copied())
    }

    /// A published release; `UnknownRelease` when there is none under `version`.
    pub fn release(&self, version: u64) -> Result<StoredRelease, ModelsError> {
        let path = self.release_dir(version).join(RELEASE_FILE);
        if !path.is_file() {
            return Err(ModelsError::UnknownRelease(version));
        }
        let signed = SignedRelease::read(&path)?;
        let envelope = signed.to_json()?;
        let manifest: ReleaseManifest =
            serde_json::from_slice(&signed.manifest).map_err(|e| ModelsError::Corrupt {
                path: path.clone(),
                reason: format!("manifest: {e}"),
            })?;
        if manifest.version != version {
            return Err(ModelsError::Corrupt {
                path,
                reason: format!("manifest says version {}", manifest.version),
            });
        }
        let sha256 = hex::decode(&manifest.model_sha256).map_err(|e| ModelsError::Corrupt {
            path: path.clone(),
            reason: format!("model_sha256: {e}"),
        })?;
        Ok(StoredRelease {
            version,
            envelope,
            manifest,
            sha256,
        })
    }

    /// Up to `max` bytes of release `version`'s model file from `offset` (empty at the end).
    pub fn read_chunk(
        &self,
        version: u64,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, ModelsError> {
        let path = self.model_path(version);
        let mut f = std::fs::File::open(&path).map_err(io_err(&path))?;
        f.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
        let mut buf = Vec::with_capacity(max);
        f.take(max as u64)
            .read_to_end(&mut buf)
            .map_err(io_err(&path))?;
        Ok(buf)
    }

    /// Every signed root document, oldest first, as `(version, roots/<v>.json bytes)`.
    pub fn root_chain(&self) -> Result<Vec<(u64, Vec<u8>)>, ModelsError> {
        let dir = self.roots_dir();
        Self::numbered(&dir, ".json")?
            .into_iter()
            .map(|v| {
                let path = dir.join(format!("{v}.json"));
                Ok((v, SignedRoot::read(&path)?.to_json()?))
            })
            .collect()
    }

    /// The newest root metadata (what certifies the signing key now).
    pub fn latest_root(&self) -> Result<RootMetadata, ModelsError> {
        let dir = self.roots_dir();
        let v = Self::numbered(&dir, ".json")?
            .pop()
            .ok_or_else(|| ModelsError::NoKeys(self.dir.clone()))?;
        let path = dir.join(format!("{v}.json"));
        let signed = SignedRoot::read(&path)?;
        serde_json::from_slice(&signed.root).map_err(|e| ModelsError::Corrupt {
            path,
            reason: format!("root metadata: {e}"),
        })
    }

    /// Stores a new root document; never replaces one.
    pub fn add_root(&self, version: u64, signed: &SignedRoot) -> Result<PathBuf, ModelsError> {
        let dir = self.roots_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(format!("{version}.json"));
        if path.exists() {
            return Err(ModelsError::Corrupt {
                path,
                reason: "a root document of this version already exists".into(),
            });
        }
        signed.write(&path)?;
        Ok(path)
    }
}
