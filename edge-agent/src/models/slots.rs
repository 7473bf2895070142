//! The on-disk layout of installed models and which one is active (`current.json`).
//! Every file that decides what runs is replaced atomically (temp, fsync, rename, fsync
//! the folder), and a slot only counts once its model hashes to what its release says,
//! so after a kill anywhere exactly one verified model is active.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use pleura_shared::fsutil::write_atomic;
use pleura_shared::release::{ReleaseManifest, SignedRelease, MODEL_FILE, RELEASE_FILE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ModelsError;

/// The sidecar the inference engine reads beside `model.onnx`.
pub const SIDECAR_FILE: &str = "model.json";

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    builtin: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
    /// The model the agent was installed with (config `inference.model`), release 0.
    Builtin,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
            Slot::Builtin => "builtin",
        }
    }

    /// Where a new release goes while `active` runs: the other of a and b.
    pub fn spare(active: Slot) -> Slot {
        if active == Slot::A {
            Slot::B
        } else {
            Slot::A
        }
    }
}

/// `current.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Current {
    pub active: Slot,
    #[serde(default)]
    pub previous: Option<Slot>,
    #[serde(default)]
    pub shadow: Option<Slot>,
}

impl Default for Current {
    fn default() -> Self {
        Self {
            active: Slot::Builtin,
            previous: None,
            shadow: None,
        }
    }
}

/// A model that checked out: where it is and which release it is.
#[derive(Debug, Clone)]
pub struct SlotModel {
    pub slot: Slot,
    pub model_path: PathBuf,
    /// 0 for the built-in model.
    pub version: u64,
    pub name: String,
    /// `None` for the built-in model.
    pub manifest: Option<ReleaseManifest>,
}

/// What runs after start, and why not what `current.json` named (the alarm).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub current: Current,
    pub model: SlotModel,
    pub alarm: Option<String>,
}

impl Layout {
    /// `<data_dir>/models/`, with `builtin` the configured model.
    pub fn new(data_dir: &Path, builtin: &Path) -> Self {
        Self {
            root: data_dir.join("models"),
            builtin: builtin.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn trust(&self) -> PathBuf {
        self.root.join(pleura_shared::release::TRUST_FILE)
    }
    pub fn current_file(&self) -> PathBuf {
        self.root.join("current.json")
    }
    pub fn rolled_back_file(&self) -> PathBuf {
        self.root.join("rolled_back.json")
    }
    pub fn command_file(&self) -> PathBuf {
        self.root.join("command.json")
    }
    pub fn reports_file(&self) -> PathBuf {
        self.root.join("reports.json")
    }
    pub fn download_dir(&self) -> PathBuf {
        self.root.join("download")
    }
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join("slots").join(slot.name())
    }

    pub fn builtin(&self) -> SlotModel {
        let name = self
            .builtin
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "builtin".into());
        SlotModel {
            slot: Slot::Builtin,
            model_path: self.builtin.clone(),
            version: 0,
            name,
            manifest: None,
        }
    }

    /// `current.json`; the default (built-in) when there is none.
    pub fn read_current(&self) -> Result<Current, ModelsError> {
        let path = self.current_file();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ModelsError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Current::default()),
            Err(e) => Err(ModelsError::io(&path, e)),
        }
    }

    pub fn write_current(&self, c: &Current) -> Result<(), ModelsError> {
        let path = self.current_file();
        let bytes = serde_json::to_vec_pretty(c).map_err(|e| ModelsError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes, 0o600).map_err(|e| ModelsError::io(&path, e))
    }

    /// Checks that `slot` holds a complete release whose model hashes to its manifest.
    /// The signature was checked when it was installed; this catches a slot half
    /// written when the agent was killed, or damaged since.
    pub fn check_slot(&self, slot: Slot) -> Result<SlotModel, ModelsError> {
        if slot == Slot::Builtin {
            return Ok(self.builtin());
        }
        let dir = self.slot_dir(slot);
        let signed = SignedRelease::read(&dir.join(RELEASE_FILE))?;
        let manifest: ReleaseManifest =
            serde_json::from_slice(&signed.manifest).map_err(|e| ModelsError::Corrupt {
                path: dir.join(RELEASE_FILE).display().to_string(),
                reason: e.to_string(),
            })?;
        let model_path = dir.join(MODEL_FILE);
        let (sha, size) = hash_file(&model_path)?;
        if size != manifest.model_size || sha != manifest.model_sha256 {
            return Err(ModelsError::Corrupt {
                path: model_path.display().to_string(),
                reason: format!(
                    "{size} bytes with SHA-256 {sha}, the release says {} bytes with {}",
                    manifest.model_size, manifest.model_sha256
                ),
            });
        }
        let side = dir.join(SIDECAR_FILE);
        if !side.is_file() {
            return Err(ModelsError::Corrupt {
                path: side.display().to_string(),
                reason: "missing".into(),
            });
        }
        Ok(SlotModel {
            slot,
            model_path,
            version: manifest.version,
            name: manifest.name.clone(),
            manifest: Some(manifest),
        })
    }

    /// Decides what runs at start: the active slot if it checks out, else the previous
    /// one, else the built-in model, rewriting `current.json` (with an alarm) when it
    /// had to fall back. A shadow slot that does not check out is dropped.
    pub fn resolve(&self) -> Result<Resolved, ModelsError> {
        let mut alarm = None;
        let mut current = match self.read_current() {
            Ok(c) => c,
            Err(e) => {
                alarm = Some(format!("{e}: running the built-in model"));
                Current::default()
            }
        };
        let written = current.clone();
        let mut tried = vec![current.active];
        // Never the shadow slot: an unpromoted release must not become active by a fall-back.
        tried.extend(current.previous.filter(|p| Some(*p) != current.shadow));
        tried.push(Slot::Builtin);
        let mut chosen = None;
        for slot in tried {
            match self.check_slot(slot) {
                Ok(m) => {
                    chosen = Some(m);
                    break;
                }
                Err(e) => {
                    tracing::warn!(slot = slot.name(), error = %e, "model slot does not verify");
                    alarm
                        .get_or_insert(format!("model slot {} does not verify ({e})", slot.name()));
                }
            }
        }
        let model = chosen.unwrap_or_else(|| self.builtin());
        if model.slot != current.active {
            current = Current {
                active: model.slot,
                previous: None,
                shadow: None,
            };
            if let Some(a) = alarm.as_mut() {
                a.push_str(&format!(": running {} {}", model.name, model.version));
            }
        }
        if let Some(s) = current.shadow {
            if s == current.active || self.check_slot(s).is_err() {
                current.shadow = None;
            }
        }
        if current != written {
            self.write_current(&current)?;
        }
        Ok(Resolved {
            current,
            model,
            alarm,
        })
    }

    /// Installs `signed` with the model file at `model` into `slot`: model, sidecar,
    /// then `release.json` last, each fsynced (a slot without `release.json`, or whose
    /// model does not hash, never counts).
    pub fn write_slot(
        &self,
        slot: Slot,
        signed: &SignedRelease,
        manifest: &ReleaseManifest,
        model: &Path,
    ) -> Result<SlotModel, ModelsError> {
        let dir = self.slot_dir(slot);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ModelsError::io(&dir, e)),
        }
        pleura_shared::fsutil::private_dir(&dir).map_err(|e| ModelsError::io(&dir, e))?;
        let dest = dir.join(MODEL_FILE);
        copy_synced(model, &dest)?;
        let mut sidecar = manifest.sidecar.clone();
        if let Some(o) = sidecar.as_object_mut() {
            // The engine checks the model against the sidecar's digest.
            o.entry("sha256")
                .or_insert_with(|| manifest.model_sha256.clone().into());
            o.entry("name")
                .or_insert_with(|| manifest.name.clone().into());
            o.entry("version")
                .or_insert_with(|| manifest.version.to_string().into());
        }
        let side = dir.join(SIDECAR_FILE);
        let bytes = serde_json::to_vec_pretty(&sidecar).map_err(|e| ModelsError::Corrupt {
            path: side.display().to_string(),
            reason: e.to_string(),
        })?;
        write_atomic(&side, &bytes, 0o600).map_err(|e| ModelsError::io(&side, e))?;
        signed.write(&dir.join(RELEASE_FILE))?;
        self.check_slot(slot)
    }

    /// Removes a slot's files (an aborted shadow, a rolled-back release's leftovers).
    pub fn clear_slot(&self, slot: Slot) -> Result<(), ModelsError> {
        if slot == Slot::Builtin {
            return Ok(());
        }
        let dir = self.slot_dir(slot);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ModelsError::io(&dir, e)),
        }
    }

    /// Versions this device rolled back.
    pub fn rolled_back(&self) -> Vec<u64> {
        std::fs::read(self.rolled_back_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn add_rolled_back(&self, version: u64) -> Result<(), ModelsError> {
        let mut v = self.rolled_back();
        if !v.contains(&version) {
            v.push(version);
        }
        let path = self.rolled_back_file();
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        write_atomic(&path, &bytes, 0o600).map_err(|e| ModelsError::io(&path, e))
    }
}

/// Hex SHA-256 and size of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(String, u64), ModelsError> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelsError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| ModelsError::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), ModelsError> {
    let tmp = to.with_extension("tmp");
    let mut src = std::fs::File::open(from).map_err(|e| ModelsError::io(from, e))?;
    let mut dst = std::fs::File::create(&tmp).map_err(|e| ModelsError::io(&tmp, e))?;
    std::io::copy(&mut src, &mut dst).map_err(|e| ModelsError::io(&tmp, e))?;
    dst.flush().map_err(|e| ModelsError::io(&tmp, e))?;
    dst.sync_all().map_err(|e| ModelsError::io(&tmp, e))?;
    std::fs::rename(&tmp, to).map_err(|e| ModelsError::io(to, e))?;
    sync_dir(to)
}

pub(crate) fn sync_dir(path: &Path) -> Result<(), ModelsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ModelsError::io(dir, e))
}
