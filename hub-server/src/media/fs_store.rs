//! `<data_dir>/media/`: `index/<sha>.json` (what an item is and how much of it is held,
//! replaced atomically after each chunk's data is fsynced), `partial/<sha>` (the bytes so
//! far), `objects/<sha>` (a complete, hash-checked item). At open every index entry is
//! read and its partial file cut back to the held length the entry records, so bytes
//! written but never acknowledged do not survive a crash.
//!
//! In memory: every item by hash and by result (so a case page's `items_for` reads only
//! that result's items). Writers go one at a time under their own lock, held through the
//! fsyncs and the hash check; the map's lock is only ever held briefly, so readers never
//! wait on a writer's disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pleura_proto::v1::MediaKind;
use pleura_shared::fsutil::{private_dir, write_atomic};
use pleura_shared::ResultId;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{ItemClaim, MediaError, MediaItem, MediaStore, Sha256, Written};

pub const MEDIA_DIR: &str = "media";

pub struct FsMediaStore {
    dir: PathBuf,
    items: Mutex<Items>,
    /// One writer at a time: uploads are stop-and-wait per device, and the fsyncs
    /// dominate whatever parallelism would buy.
    pub(super) writer: Mutex<()>,
}

/// The items held, by hash and by each result they are listed under.
#[derive(Default)]
struct Items {
    by_sha: HashMap<Sha256, Held>,
    by_result: HashMap<ResultId, Vec<Sha256>>,
}

impl Items {
    fn put(&mut self, h: Held) {
        let sha = h.item.sha256;
        for r in std::iter::once(&h.item.result_id).chain(&h.also) {
            let v = self.by_result.entry(*r).or_default();
            if !v.contains(&sha) {
                v.push(sha);
            }
        }
        self.by_sha.insert(sha, h);
    }

    fn remove(&mut self, sha: &Sha256) {
        let Some(h) = self.by_sha.remove(sha) else {
            return;
        };
        for r in std::iter::once(&h.item.result_id).chain(&h.also) {
            if let Some(v) = self.by_result.get_mut(r) {
                v.retain(|s| s != sha);
                if v.is_empty() {
                    self.by_result.remove(r);
                }
            }
        }
    }
}

/// An item and the other results of the same device it also belongs to (the same scan
/// exported twice makes the same bytes: kept once, listed under each).
#[derive(Clone)]
struct Held {
    item: MediaItem,
    also: Vec<ResultId>,
}

#[derive(Serialize, Deserialize)]
struct IndexEntry {
    sha256: String,
    kind: i32,
    result_id: String,
    clinic: String,
    device: String,
    total: u64,
    held: u64,
    complete: bool,
    created_at_ms: u64,
    completed_at_ms: Option<u64>,
    #[serde(default)]
    also: Vec<String>,
}

impl IndexEntry {
    fn of(i: &MediaItem, also: &[ResultId]) -> Self {
        Self {
            sha256: hex::encode(i.sha256),
            kind: i.kind as i32,
            result_id: i.result_id.to_string(),
            clinic: i.clinic.clone(),
            device: i.device.clone(),
            total: i.total,
            held: i.held,
            complete: i.complete,
            created_at_ms: i.created_at_ms,
            completed_at_ms: i.completed_at_ms,
            also: also.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn item(self) -> Result<Held, String> {
        let sha: Sha256 = hex::decode(&self.sha256)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("sha256 is not 32 hex bytes")?;
        let rid = hex::decode(&self.result_id).map_err(|e| e.to_string())?;
        let result_id = ResultId::from_slice(&rid).map_err(|e| e.to_string())?;
        let kind = MediaKind::try_from(self.kind).map_err(|_| "unknown kind")?;
        if self.held > self.total {
            return Err("held exceeds total".into());
        }
        let also = self
            .also
            .iter()
            .map(|h| {
                hex::decode(h)
                    .map_err(|e| e.to_string())
                    .and_then(|b| ResultId::from_slice(&b).map_err(|e| e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let item = MediaItem {
            sha256: sha,
            kind,
            result_id,
            clinic: self.clinic,
            device: self.device,
            total: self.total,
            held: self.held,
            complete: self.complete,
            created_at_ms: self.created_at_ms,
            completed_at_ms: self.completed_at_ms,
        };
        Ok(Held { item, also })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MediaError + '_ {
    move |source| MediaError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), MediaError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

impl FsMediaStore {
    /// Opens (creating, 0700) `<data_dir>/media/` and loads its index. A damaged index
    /// entry is logged and set aside, never a reason not to start.
    pub fn open(data_dir: &Path) -> Result<Self, MediaError> {
        let dir = data_dir.join(MEDIA_DIR);
        for sub in ["", "index", "partial", "objects"] {
            let d = dir.join(sub);
            private_dir(&d).map_err(io(&d))?;
        }
        let mut items = Items::default();
        let index = dir.join("index");
        for e in std::fs::read_dir(&index).map_err(io(&index))? {
            let path = e.map_err(io(&index))?.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue; // a `.tmp` left by a crash mid-replace
            }
            let loaded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<IndexEntry>(&b).map_err(|e| e.to_string()))
                .and_then(IndexEntry::item);
            match loaded {
                Ok(Held { item, also }) => {
                    let s = Self::paths(&dir, &item.sha256);
                    let mut item = item;
                    if !item.complete && !s.partial.exists() && s.object.exists() {
                        // Crashed between the rename to objects/ and the index update;
                        // the object was hash-checked before its rename.
                        item.held = item.total;
                        item.complete = true;
                        write_atomic(
                            &s.index,
                            &serde_json::to_vec(&IndexEntry::of(&item, &also)).unwrap_or_default(),
                            0o600,
                        )
                        .map_err(io(&s.index))?;
                    }
                    if !item.complete {
                        // Bytes past `held` were never acknowledged: drop them.
                        let f = OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .mode(0o600)
                            .open(&s.partial)
                            .map_err(io(&s.partial))?;
                        let len = f.metadata().map_err(io(&s.partial))?.len();
                        if len < item.held {
                            tracing::error!(sha = %hex::encode(item.sha256), len, held = item.held,
                                "partial media item shorter than its index entry: restarting it");
                            let _ = std::fs::remove_file(&s.partial);
                            let _ = std::fs::remove_file(&s.index);
                            continue;
                        }
                        f.set_len(item.held).map_err(io(&s.partial))?;
                        f.sync_all().map_err(io(&s.partial))?;
                    } else if !s.object.exists() {
                        tracing::error!(sha = %hex::encode(item.sha256), "complete media item's object is missing: forgetting it");
                        let _ = std::fs::remove_file(&s.index);
                        continue;
                    }
                    items.put(Held { item, also });
                }
                Err(reason) => {
                    tracing::error!(path = %path.display(), %reason, "damaged media index entry set aside");
                    let mut aside = path.clone().into_os_string();
                    aside.push(".damaged");
                    let _ = std::fs::rename(&path, aside);
                }
            }
        }
        Ok(Self {
            dir,
            items: Mutex::new(items),
            writer: Mutex::new(()),
        })
    }

    /// Where a complete item's bytes are (for serving files directly).
    pub fn object_path(&self, sha: &Sha256) -> PathBuf {
        Self::paths(&self.dir, sha).object
    }

    fn paths(dir: &Path, sha: &Sha256) -> Paths {
        let name = hex::encode(sha);
        Paths {
            index: dir.join("index").join(format!("{name}.json")),
            partial: dir.join("partial").join(&name),
            object: dir.join("objects").join(&name),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Items> {
        // A panic while holding the lock leaves the map as consistent as the disk.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, item: &MediaItem, also: &[ResultId]) -> Result<(), MediaError> {
        let p = Self::paths(&self.dir, &item.sha256).index;
        let bytes =
            serde_json::to_vec(&IndexEntry::of(item, also)).map_err(|e| MediaError::Damaged {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?;
        write_atomic(&p, &bytes, 0o600).map_err(io(&p))
    }

    fn append(&self, path: &Path, offset: u64, data: &[u8]) -> Result<(), MediaError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        f.seek(SeekFrom::Start(offset)).map_err(io(path))?;
        f.write_all(data).map_err(io(path))?;
        f.set_len(offset + data.len() as u64).map_err(io(path))?;
        f.sync_all().map_err(io(path))
    }

    fn hash_of(path: &Path) -> Result<Sha256, MediaError> {
        let mut f = File::open(path).map_err(io(path))?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(io(path))?;
            if n == 0 {
                return Ok(h.finalize().into());
            }
            h.update(&buf[..n]);
        }
    }

    fn discard(&self, sha: &Sha256) -> Result<(), MediaError> {
        let p = Self::paths(&self.dir, sha);
        for f in [&p.index, &p.partial] {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(f)(e)),
                _ => {}
            }
        }
        sync_dir(&self.dir.join("index"))
    }
}

struct Paths {
    index: PathBuf,
    partial: PathBuf,
    object: PathBuf,
}

fn mismatch(held: &MediaItem, claim: &ItemClaim) -> Option<&'static str> {
    if held.clinic != claim.clinic || held.device != claim.device {
        Some("item held for another device")
    } else if held.kind != claim.kind {
        Some("item held as another kind")
    } else if held.total != claim.total {
        Some("item held with another size")
    } else {
        None
    }
}

impl MediaStore for FsMediaStore {
    fn items_for(&self, result: &ResultId) -> Result<Vec<MediaItem>, MediaError> {
        let items = self.lock();
        let mut v: Vec<MediaItem> = items
            .by_result
            .get(result)
            .into_iter()
            .flatten()
            .filter_map(|sha| items.by_sha.get(sha))
            .filter_map(|h| {
                if &h.item.result_id == result {
                    Some(h.item.clone())
                } else if h.also.contains(result) {
                    Some(MediaItem {
                        result_id: *result,
                        ..h.item.clone()
                    })
                } else {
                    None
                }
            })
            .collect();
        drop(items);
        v.sort_by_key(|i| (i.kind as i32, i.created_at_ms));
        Ok(v)
    }

    fn item(&self, sha: &Sha256) -> Result<Option<MediaItem>, MediaError> {
        Ok(self.lock().by_sha.get(sha).map(|h| h.item.clone()))
    }

    fn read(
        &self,
        sha: &Sha256,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<Vec<u8>>, MediaError> {
        let total = match self.lock().by_sha.get(sha) {
            Some(h) if h.item.complete => h.item.total,
            _ => return Ok(None),
        };
        let path = self.object_path(sha);
        let r = range.unwrap_or(0..total);
        let (start, end) = (r.start.min(total), r.end.min(total));
        let mut f = File::open(&path).map_err(io(&path))?;
        f.seek(SeekFrom::Start(start)).map_err(io(&path))?;
        let mut buf = vec![0u8; end.saturating_sub(start) as usize];
        f.read_exact(&mut buf).map_err(io(&path))?;
        Ok(Some(buf))
    }

    fn write_chunk(
        &self,
        claim: &ItemClaim,
        offset: u64,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Written, MediaError> {
        let len = data.len() as u64;
        if offset.saturating_add(len) > claim.total {
            return Err(MediaError::Overrun {
                offset,
                len,
                total: claim.total,
            });
        }
        // One writer at a time (see `writer`); the map is only read and updated here,
        // each time briefly, never across the disk work.
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.lock().by_sha.get(&claim.sha256).cloned();
        let mut also_changed = false;
        let Held { mut item, mut also } = match held {
            Some(held) => {
                if let Some(why) = mismatch(&held.item, claim) {
                    return Ok(Written::Mismatch(why));
                }
                let mut h = held;
                if h.item.result_id != claim.result_id && !h.also.contains(&claim.result_id) {
                    h.also.push(claim.result_id);
                    also_changed = true;
                }
                h
            }
            None => Held {
                item: MediaItem {
                    sha256: claim.sha256,
                    kind: claim.kind,
                    result_id: claim.result_id,
                    clinic: claim.clinic.clone(),
                    device: claim.device.clone(),
                    total: claim.total,
                    held: 0,
                    complete: false,
                    created_at_ms: now_ms,
                    completed_at_ms: None,
                },
                also: Vec::new(),
            },
        };
        if item.complete || offset != item.held || data.is_empty() {
            // A claim on bytes already held (an empty chunk after a query said
            // complete) lists the item under its result too.
            if also_changed && item.held > 0 {
                self.save(&item, &also)?;
                self.lock().put(Held {
                    item: item.clone(),
                    also: std::mem::take(&mut also),
                });
            }
            return Ok(Written::Held {
                held: item.held,
                complete: item.complete,
                wrote: false,
            });
        }
        let p = Self::paths(&self.dir, &claim.sha256);
        self.append(&p.partial, offset, data)?;
        item.held += len;
        if item.held == item.total {
            if Self::hash_of(&p.partial)? != claim.sha256 {
                self.lock().remove(&claim.sha256);
                tracing::warn!(sha = %hex::encode(claim.sha256), clinic = %claim.clinic,
                    device = %claim.device, "media item's bytes do not match its SHA-256: discarded");
                self.discard(&claim.sha256)?;
                return Ok(Written::BadHash);
            }
            std::fs::rename(&p.partial, &p.object).map_err(io(&p.object))?;
            sync_dir(&self.dir.join("objects"))?;
            sync_dir(&self.dir.join("partial"))?;
            item.complete = true;
            item.completed_at_ms = Some(now_ms);
        }
        self.save(&item, &also)?;
        let w = Written::Held {
            held: item.held,
            complete: item.complete,
            wrote: true,
        };
        self.lock().put(Held { item, also });
        Ok(w)
    }
}
