//! Media for flagged results: key-frame previews and clips, prepared on the inference
//! pool from the scan kept in processed/, stored content-addressed beside the outbox
//! (`outbox`), and uploaded after the results, chunk by chunk, resumable (`upload`).

mod outbox;
pub mod prepare;
#[cfg(test)]
mod retry_tests;
mod run;
#[cfg(test)]
mod tests;
pub mod upload;

pub use outbox::{
    Entry, EntryState, MediaOutbox, MediaStats, Scheduled, SentBytes, MEDIA_DIR, MEDIA_TREE,
};
pub use prepare::MediaHook;
pub use run::{start, MediaInputs};

use pleura_proto::v1::MediaKind;
use serde::{Deserialize, Serialize};

pub type Sha256 = [u8; 32];

/// Where one media item of a result stands, as the clinic page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadState {
    /// To be made from the scan (waiting for, or on, the inference pool).
    Preparing,
    /// Made, nothing at the hub yet.
    Queued,
    /// The hub holds the first `held` of `total` bytes.
    Partial {
        held: u64,
        total: u64,
    },
    AtHub,
    /// Will not reach the hub (scan pruned, hub refused, no room): why.
    Unavailable(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultMedia {
    pub preview: Option<UploadState>,
    pub clip: Option<UploadState>,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("media store: {0}")]
    Store(String),
    #[error("media file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored media entry is damaged: {0}")]
    Damaged(String),
}

impl From<sled::Error> for MediaError {
    fn from(e: sled::Error) -> Self {
        MediaError::Store(e.to_string())
    }
}

/// The kinds the agent makes, as stored (the proto's numbers).
pub fn kind_code(kind: MediaKind) -> u8 {
    kind as i32 as u8
}
