//! Media items the devices upload for flagged results (key-frame previews, clips):
//! content-addressed blobs written chunk by chunk, resumable across cuts and restarts of
//! either side, checked against their SHA-256 once whole. `MediaStore` is the storage
//! seam (the web application reads through it); `MediaReceiver` is the protocol the
//! uplink dispatcher calls for each `MediaChunk` / `MediaQuery`.

mod fs_store;
mod receiver;
#[cfg(test)]
mod tests;

pub use fs_store::{FsMediaStore, MEDIA_DIR};
pub use receiver::{MediaReceiver, MAX_CHUNK_BYTES};

use pleura_proto::v1::MediaKind;
use pleura_shared::ResultId;

pub type Sha256 = [u8; 32];

/// Largest item of each kind the hub accepts.
pub const PREVIEW_MAX_BYTES: u64 = 256 * 1024;
pub const CLIP_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// The most bytes an item of `kind` may have; None for a kind the hub does not take.
pub fn max_bytes(kind: MediaKind) -> Option<u64> {
    match kind {
        MediaKind::Preview => Some(PREVIEW_MAX_BYTES),
        MediaKind::Clip => Some(CLIP_MAX_BYTES),
        MediaKind::Unspecified => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaItem {
    pub sha256: Sha256,
    pub kind: MediaKind,
    pub result_id: ResultId,
    pub clinic: String,
    pub device: String,
    pub total: u64,
    /// Bytes durably held (== total once complete).
    pub held: u64,
    pub complete: bool,
    pub created_at_ms: u64,
    pub completed_at_ms: Option<u64>,
}

/// What an upload claims an item is; every chunk of one item must claim the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemClaim {
    pub sha256: Sha256,
    pub kind: MediaKind,
    pub result_id: ResultId,
    pub clinic: String,
    pub device: String,
    pub total: u64,
}

/// What the store did with one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The store durably holds the first `held` bytes (the chunk was written if it
    /// started at the store's previous `held`, else ignored).
    Held {
        held: u64,
        complete: bool,
        /// Whether this chunk's bytes were written (false: ignored, not at `held`).
        wrote: bool,
    },
    /// The item is held with another claim (kind, result, device or size).
    Mismatch(&'static str),
    /// All bytes arrived but their SHA-256 is not the item's name: the partial item is
    /// discarded.
    BadHash,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("media store i/o at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("media index entry {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    #[error("media chunk of {len} bytes at {offset} overruns the item's {total} bytes")]
    Overrun { offset: u64, len: u64, total: u64 },
}

pub trait MediaStore: Send + Sync {
    /// Every item (partial or complete) of one result.
    fn items_for(&self, result: &ResultId) -> Result<Vec<MediaItem>, MediaError>;
    fn item(&self, sha: &Sha256) -> Result<Option<MediaItem>, MediaError>;
    /// A complete item's bytes in `range` (None: whole; clamped to the item), None if
    /// not held complete.
    fn read(
        &self,
        sha: &Sha256,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<Vec<u8>>, MediaError>;
    /// Writes `data` at `offset` if that is where the held bytes end; durable (fsynced)
    /// before it returns. Verifies the whole item's hash when it completes.
    fn write_chunk(
        &self,
        claim: &ItemClaim,
        offset: u64,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Written, MediaError>;
}
