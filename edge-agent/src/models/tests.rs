//! Model lifecycle tests on real files, the real sled-free state and the shipped model:
//! fixtures here; offers and installs in `tests/offers.rs`, the worker's download,
//! switch and rollback in `tests/worker.rs`, crash consistency in `tests/crash.rs`.

mod crash;
mod offers;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pleura_inference::ModelFile;
use pleura_shared::release::{
    InputSpec, ReleaseManifest, RootKey, RootMetadata, SelfTest, SignedRelease, SigningKey,
};
use pleura_shared::wire::ModelOffer;
use sha2::{Digest, Sha256};

use super::{Layout, ModelStore};

pub(crate) const DAY: u64 = 24 * 60 * 60 * 1000;

pub(crate) fn shipped() -> PathBuf {
    pleura_inference::engine::default_model()
}

pub(crate) fn init_backend() {
    pleura_inference::backend::init(&pleura_inference::BackendConfig::default()).unwrap();
}

/// Self-test vectors of the shipped model on two frames (computed once).
pub(crate) fn vectors() -> SelfTest {
    static V: OnceLock<SelfTest> = OnceLock::new();
    V.get_or_init(|| {
        init_backend();
        let m = ModelFile::load(&shipped()).unwrap();
        let side = m.info.input_size();
        let frames = super::install::synthetic_frames(side);
        super::install::compute_vectors(&m, &frames).unwrap()
    })
    .clone()
}

pub(crate) struct Fx {
    pub _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub root: RootKey,
    pub signer: SigningKey,
    pub meta: RootMetadata,
    pub store: ModelStore,
}

/// A device whose root key is `root`, and a hub whose root v1 certifies `signer`.
pub(crate) fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let root = RootKey::generate().unwrap();
    let signer = SigningKey::generate().unwrap();
    let now = pleura_shared::now_ms();
    let mut meta = RootMetadata::first(&root, now - 2 * DAY);
    meta.add_signing_key(&signer.public_key(), now + 365 * DAY);
    let store = ModelStore::new(Layout::new(&data, &shipped()), Some(root.public_key()));
    Fx {
        _dir: dir,
        data,
        root,
        signer,
        meta,
        store,
    }
}

/// The manifest of the shipped model as release `version`.
pub(crate) fn manifest(version: u64, model: &Path) -> ReleaseManifest {
    let bytes = std::fs::read(model).unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    let mut sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shipped().with_extension("json")).unwrap()).unwrap();
    sidecar["sha256"] = sha.clone().into();
    let size = sidecar["input"]["size"].as_u64().unwrap() as u32;
    let labels = sidecar["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let now = pleura_shared::now_ms();
    ReleaseManifest {
        name: "pleura-lite".into(),
        version,
        model_sha256: sha,
        model_size: bytes.len() as u64,
        input: InputSpec { size, channels: 1 },
        class_labels: labels,
        severity_levels: 4,
        sidecar,
        card_summary: "test release".into(),
        min_agent_version: "0.1.0".into(),
        created_at_ms: now - DAY,
        expires_at_ms: now + 90 * DAY,
        self_test: vectors(),
    }
}

impl Fx {
    pub fn root_json(&self) -> Vec<u8> {
        self.root.certify(&self.meta).unwrap().to_json().unwrap()
    }

    pub fn offer_for(
        &self,
        signed: &SignedRelease,
        m: &ReleaseManifest,
        shadow: bool,
    ) -> ModelOffer {
        ModelOffer {
            model_version: format!("{} {}", m.name, m.version),
            sha256: hex::decode(&m.model_sha256).unwrap(),
            size: m.model_size,
            release: signed.to_json().unwrap(),
            release_version: m.version,
            shadow,
            roots: vec![self.root_json()],
        }
    }

    /// A properly signed offer of the shipped model as `version`.
    pub fn offer(&self, version: u64) -> (ModelOffer, ReleaseManifest) {
        let m = manifest(version, &shipped());
        let signed = self.signer.sign_release(&m).unwrap();
        (self.offer_for(&signed, &m, false), m)
    }

    pub fn current_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(self.store.layout.current_file()).ok()
    }
}
