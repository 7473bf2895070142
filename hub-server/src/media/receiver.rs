//! The hub's side of the media upload protocol: every chunk and query is checked against
//! the case store (the result must be held and be the sender's) and the size limits
//! before the media store sees it; the answer is always a `MediaAck` saying how much the
//! hub durably holds, or why it will never take the item.
//!
//! Blocking (fsync per chunk): call it from a blocking thread.

use std::sync::Arc;

use pleura_proto::v1::{MediaAck, MediaChunk, MediaKind, MediaQuery};
use pleura_shared::ResultId;

use super::{max_bytes, ItemClaim, MediaStore, Sha256, Written};
use crate::metrics::Metrics;
use crate::store::HubStore;

/// Largest chunk the hub writes (devices send 16 KiB).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

pub struct MediaReceiver {
    pub media: Arc<dyn MediaStore>,
    pub cases: Arc<dyn HubStore>,
    pub metrics: Arc<Metrics>,
}

fn refused(sha: &[u8], why: impl Into<String>) -> MediaAck {
    MediaAck {
        sha256: sha.to_vec(),
        held: 0,
        complete: false,
        refused: why.into(),
    }
}

impl MediaReceiver {
    pub fn new(
        media: Arc<dyn MediaStore>,
        cases: Arc<dyn HubStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            media,
            cases,
            metrics,
        }
    }

    pub fn chunk(&self, clinic: &str, device: &str, c: MediaChunk) -> MediaAck {
        let (ack, outcome) = self.chunk_inner(clinic, device, &c);
        self.metrics.media_outcome(outcome);
        if !ack.refused.is_empty() {
            tracing::warn!(%clinic, %device, sha = %hex::encode(&c.sha256), reason = %ack.refused,
                "media chunk refused");
        }
        ack
    }

    pub fn query(&self, clinic: &str, device: &str, q: MediaQuery) -> MediaAck {
        let sha: Sha256 = match q.sha256.as_slice().try_into() {
            Ok(s) => s,
            Err(_) => {
                self.metrics.media_outcome("query_refused");
                return refused(&q.sha256, "sha256 must be 32 bytes");
            }
        };
        self.metrics.media_outcome("query");
        match self.media.item(&sha) {
            Ok(None) => MediaAck {
                sha256: q.sha256,
                ..Default::default()
            },
            Ok(Some(i)) if i.clinic != clinic || i.device != device => {
                refused(&q.sha256, "item held for another device")
            }
            Ok(Some(i)) => MediaAck {
                sha256: q.sha256,
                held: i.held,
                complete: i.complete,
                refused: String::new(),
            },
            Err(e) => {
                tracing::error!(%clinic, %device, error = %e, "media store unreadable");
                self.metrics.media_outcome("store_error");
                MediaAck {
                    sha256: q.sha256,
                    ..Default::default()
                }
            }
        }
    }

    fn chunk_inner(&self, clinic: &str, device: &str, c: &MediaChunk) -> (MediaAck, &'static str) {
        let sha: Sha256 = match c.sha256.as_slice().try_into() {
            Ok(s) => s,
            Err(_) => return (refused(&c.sha256, "sha256 must be 32 bytes"), "refused_sha"),
        };
        let kind = MediaKind::try_from(c.kind).unwrap_or(MediaKind::Unspecified);
        let Some(limit) = max_bytes(kind) else {
            return (refused(&c.sha256, "unknown media kind"), "refused_kind");
        };
        if c.total == 0 || c.total > limit {
            return (
                refused(
                    &c.sha256,
                    format!(
                        "size {} outside 1..={limit} for {}",
                        c.total,
                        kind.as_str_name()
                    ),
                ),
                "refused_size",
            );
        }
        if c.data.len() > MAX_CHUNK_BYTES {
            return (
                refused(&c.sha256, format!("chunk over {MAX_CHUNK_BYTES} bytes")),
                "refused_chunk_size",
            );
        }
        if c.offset.saturating_add(c.data.len() as u64) > c.total {
            return (
                refused(&c.sha256, "chunk overruns the item"),
                "refused_overrun",
            );
        }
        let Ok(result_id) = ResultId::from_slice(&c.result_id) else {
            return (
                refused(&c.sha256, "result id must be 16 bytes"),
                "refused_result",
            );
        };
        match self.cases.get(&result_id) {
            Ok(Some(case)) if case.record.clinic == clinic && case.record.device == device => {
                if case.retraction.is_some() {
                    return (refused(&c.sha256, "result retracted"), "refused_retracted");
                }
            }
            Ok(Some(_)) => {
                return (
                    refused(&c.sha256, "result of another device"),
                    "refused_device",
                )
            }
            Ok(None) => {
                return (
                    refused(&c.sha256, "result unknown to the hub"),
                    "refused_unknown",
                )
            }
            Err(e) => {
                tracing::error!(%clinic, %device, error = %e, "case store unreadable for a media chunk");
                return (self.held_now(&sha), "store_error");
            }
        }
        let claim = ItemClaim {
            sha256: sha,
            kind,
            result_id,
            clinic: clinic.to_string(),
            device: device.to_string(),
            total: c.total,
        };
        match self
            .media
            .write_chunk(&claim, c.offset, &c.data, pleura_shared::now_ms())
        {
            Ok(Written::Held {
                held,
                complete,
                wrote,
            }) => {
                let outcome = if !wrote {
                    "out_of_order"
                } else if complete {
                    tracing::info!(%clinic, %device, result_id = %result_id, kind = kind.as_str_name(),
                        bytes = c.total, "media item complete");
                    "complete"
                } else {
                    "written"
                };
                let ack = MediaAck {
                    sha256: c.sha256.clone(),
                    held,
                    complete,
                    refused: String::new(),
                };
                (ack, outcome)
            }
            Ok(Written::Mismatch(why)) => (refused(&c.sha256, why), "refused_mismatch"),
            Ok(Written::BadHash) => (
                refused(&c.sha256, "bytes do not match the SHA-256"),
                "refused_hash",
            ),
            Err(e) => {
                tracing::error!(%clinic, %device, error = %e, "media chunk not written");
                (self.held_now(&sha), "store_error")
            }
        }
    }

    /// After an internal failure: what the store holds, so the device resumes there.
    fn held_now(&self, sha: &Sha256) -> MediaAck {
        let (held, complete) = match self.media.item(sha) {
            Ok(Some(i)) => (i.held, i.complete),
            _ => (0, false),
        };
        MediaAck {
            sha256: sha.to_vec(),
            held,
            complete,
            refused: String::new(),
        }
    }
}

impl crate::uplink::MediaSink for MediaReceiver {
    fn chunk(&self, clinic: &str, device: &str, chunk: MediaChunk) -> MediaAck {
        MediaReceiver::chunk(self, clinic, device, chunk)
    }

    fn query(&self, clinic: &str, device: &str, query: MediaQuery) -> MediaAck {
        MediaReceiver::query(self, clinic, device, query)
    }
}
