//! Which ONNX engine runs the model. `ort` talks to one engine per process through a
//! global API table, so the choice is made once, at start-up, before any session exists.
//!
//! - `tract` (default): pure Rust, compiled in; nothing to install.
//! - `onnxruntime`: Microsoft's ONNX Runtime loaded at run time from a shared library
//!   (e.g. the one inside PyPI's `onnxruntime` wheel), never downloaded.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Tract,
    OnnxRuntime,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(Self::Tract),
            "onnxruntime" | "ort" => Ok(Self::OnnxRuntime),
            other => Err(format!(
                "unknown backend {other:?}; expected tract or onnxruntime"
            )),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tract => "tract",
            Self::OnnxRuntime => "onnxruntime",
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct BackendConfig {
    pub kind: BackendKind,
    /// Path to `libonnxruntime.so*`; falls back to `ORT_DYLIB_PATH`.
    pub onnxruntime_library: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("ONNX Runtime library not given: pass --ort-library or set ORT_DYLIB_PATH (pip's onnxruntime wheel ships it under onnxruntime/capi/)")]
    NoLibrary,
    #[error("loading ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("ONNX Runtime {found} at {path} is too old; need 1.{need} or newer")]
    TooOld {
        path: PathBuf,
        found: String,
        need: u32,
    },
    #[error("backend already initialised as {0}; one backend per process")]
    Conflict(BackendKind),
}

static ACTIVE: OnceLock<BackendKind> = OnceLock::new();
static ORT_LIBRARY: OnceLock<libloading::Library> = OnceLock::new();
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Selects the engine for this process. Idempotent for the same kind.
pub fn init(cfg: &BackendConfig) -> Result<BackendKind, BackendError> {
    // One set-up at a time: two threads initialising at once (parallel tests) would both
    // build the engine environment, and the second build fails.
    static SETTING_UP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SETTING_UP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(active) = ACTIVE.get() {
        return if *active == cfg.kind {
            Ok(*active)
        } else {
            Err(BackendError::Conflict(*active))
        };
    }
    match cfg.kind {
        BackendKind::Tract => {
            ort::set_api(ort_tract::api());
        }
        BackendKind::OnnxRuntime => {
            let path = cfg
                .onnxruntime_library
                .clone()
                .or_else(|| {
                    std::env::var_os("ORT_DYLIB_PATH")
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                })
                .ok_or(BackendError::NoLibrary)?;
            let api = load_onnxruntime(&path)?;
            ort::set_api(api);
        }
    }
    let env = ort::init()
        .with_name("pleura")
        .build()
        .map_err(|e| BackendError::Load {
            path: PathBuf::from(cfg.kind.to_string()),
            reason: e.to_string(),
        })?;
    let _ = ENVIRONMENT.set(env);
    let _ = ACTIVE.set(cfg.kind);
    tracing::info!(backend = %cfg.kind, "inference backend ready");
    Ok(cfg.kind)
}

pub fn active() -> Option<BackendKind> {
    ACTIVE.get().copied()
}

/// The process's engine environment, once [`init`] succeeded.
pub fn environment() -> Option<&'static ort::environment::Environment> {
    ENVIRONMENT.get()
}

fn load_onnxruntime(path: &Path) -> Result<ort::sys::OrtApi, BackendError> {
    let load_err = |reason: String| BackendError::Load {
        path: path.to_path_buf(),
        reason,
    };
    // SAFETY: loading a shared library runs its initialisers; the path is operator-given
    // configuration, the same trust as the binary itself.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| load_err(e.to_string()))?;
    let lib = ORT_LIBRARY.get_or_init(|| lib);
    // SAFETY: OrtGetApiBase is ONNX Runtime's stable C entry point with this signature.
    let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }
            .map_err(|_| load_err("no OrtGetApiBase symbol: not ONNX Runtime".into()))?;
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(load_err("OrtGetApiBase returned null".into()));
    }
    // SAFETY: base is non-null and points to a static table in the library.
    let version = unsafe { std::ffi::CStr::from_ptr(((*base).GetVersionString)()) }
        .to_string_lossy()
        .into_owned();
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minor < ort::MINOR_VERSION {
        return Err(BackendError::TooOld {
            path: path.to_path_buf(),
            found: version,
            need: ort::MINOR_VERSION,
        });
    }
    let api = unsafe { ((*base).GetApi)(ort::sys::ORT_API_VERSION) };
    if api.is_null() {
        return Err(load_err(format!(
            "version {version} refused API level {}",
            ort::sys::ORT_API_VERSION
        )));
    }
    tracing::info!(%version, path = %path.display(), "loaded onnx runtime");
    // SAFETY: the table lives as long as the library, which is kept in a static.
    Ok(unsafe { std::ptr::read(api) })
}
