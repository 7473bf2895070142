//! Downloading a release's model file, stop-and-wait, without I/O: what to fetch next,
//! what an arriving chunk does, how long to pause (bandwidth cap, backoff). The worker
//! (`worker.rs`) writes each accepted chunk at its offset, fsyncs it and persists
//! `held` before asking for the next, so after a cut or a restart at most the one chunk
//! in flight is fetched again.

use std::time::Duration;

use pleura_shared::wire::{ModelChunk, ModelFetch};

/// Largest chunk asked for (the proto and MQTT payload limits: ≤ 32 KiB).
pub const MAX_CHUNK: u32 = 32 * 1024;

/// What to do with a chunk that arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkAction {
    /// Not the answer to the fetch in flight (another release, another offset, late).
    Ignore,
    /// Write `data` at `offset`, fsync, then call `committed`.
    Append { offset: u64 },
    /// The hub will not serve this release.
    Refused(String),
}

#[derive(Debug, Clone)]
pub struct Download {
    pub version: u64,
    pub sha256: Vec<u8>,
    pub size: u64,
    /// Bytes durably held.
    pub held: u64,
    in_flight: Option<u64>,
    chunk: u32,
    timeouts: u32,
}

impl Download {
    pub fn new(version: u64, sha256: Vec<u8>, size: u64, held: u64, chunk: u32) -> Self {
        Self {
            version,
            sha256,
            size,
            held: held.min(size),
            in_flight: None,
            chunk: chunk.clamp(1, MAX_CHUNK),
            timeouts: 0,
        }
    }

    pub fn complete(&self) -> bool {
        self.held >= self.size
    }

    /// The next fetch, from what is held (`None` once complete).
    pub fn next_fetch(&mut self) -> Option<ModelFetch> {
        if self.complete() {
            self.in_flight = None;
            return None;
        }
        let want = (self.size - self.held).min(u64::from(self.chunk)) as u32;
        self.in_flight = Some(self.held);
        Some(ModelFetch {
            release_version: self.version,
            sha256: self.sha256.clone(),
            offset: self.held,
            max_bytes: want,
        })
    }

    pub fn on_chunk(&self, c: &ModelChunk) -> ChunkAction {
        if c.release_version != self.version || c.sha256 != self.sha256 {
            return ChunkAction::Ignore;
        }
        if !c.refused.is_empty() {
            return ChunkAction::Refused(c.refused.clone());
        }
        let end = c.offset.saturating_add(c.data.len() as u64);
        if self.in_flight != Some(c.offset)
            || c.offset != self.held
            || c.data.is_empty()
            || end > self.size
        {
            return ChunkAction::Ignore;
        }
        ChunkAction::Append { offset: c.offset }
    }

    /// `n` bytes at `held` are written and fsynced.
    pub fn committed(&mut self, n: u64) {
        self.held = (self.held + n).min(self.size);
        self.in_flight = None;
        self.timeouts = 0;
    }

    /// No answer in time: how long to pause before fetching again (doubling from
    /// `base`, at most `max`).
    pub fn on_timeout(&mut self, base: Duration, max: Duration) -> Duration {
        self.in_flight = None;
        let pause = base.saturating_mul(1u32 << self.timeouts.min(16));
        self.timeouts = self.timeouts.saturating_add(1);
        pause.min(max)
    }
}

/// The pause after receiving `bytes` that keeps the average at `max_bytes_per_s`.
pub fn pace(bytes: u64, max_bytes_per_s: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / max_bytes_per_s.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(d: &Download, offset: u64, len: usize) -> ModelChunk {
        ModelChunk {
            release_version: d.version,
            sha256: d.sha256.clone(),
            offset,
            total: d.size,
            data: vec![1; len],
            refused: String::new(),
        }
    }

    #[test]
    fn fetches_in_order_and_ignores_other_offsets() {
        let mut d = Download::new(3, vec![9; 32], 100, 0, 40);
        let f = d.next_fetch().unwrap();
        assert_eq!((f.offset, f.max_bytes), (0, 40));
        assert_eq!(d.on_chunk(&chunk(&d, 40, 40)), ChunkAction::Ignore);
        let mut other = chunk(&d, 0, 40);
        other.release_version = 2;
        assert_eq!(d.on_chunk(&other), ChunkAction::Ignore);
        assert_eq!(
            d.on_chunk(&chunk(&d, 0, 40)),
            ChunkAction::Append { offset: 0 }
        );
        d.committed(40);
        // A late duplicate of the first chunk is ignored.
        assert_eq!(d.on_chunk(&chunk(&d, 0, 40)), ChunkAction::Ignore);
        let f = d.next_fetch().unwrap();
        assert_eq!((f.offset, f.max_bytes), (40, 40));
        d.committed(40);
        assert_eq!(d.next_fetch().unwrap().max_bytes, 20);
        assert_eq!(
            d.on_chunk(&chunk(&d, 80, 30)),
            ChunkAction::Ignore,
            "past the end"
        );
        d.committed(20);
        assert!(d.complete());
        assert!(d.next_fetch().is_none());
    }

    #[test]
    fn refusal_stops_and_timeouts_back_off() {
        let mut d = Download::new(3, vec![9; 32], 100, 0, 40);
        d.next_fetch();
        let mut c = chunk(&d, 0, 0);
        c.refused = "aborted".into();
        assert_eq!(d.on_chunk(&c), ChunkAction::Refused("aborted".into()));
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(5));
        let p: Vec<_> = (0..4).map(|_| d.on_timeout(b, m).as_secs()).collect();
        assert_eq!(p, vec![1, 2, 4, 5]);
        d.next_fetch();
        d.committed(40);
        assert_eq!(d.on_timeout(b, m).as_secs(), 1);
    }

    #[test]
    fn pacing_keeps_the_cap() {
        assert_eq!(pace(32768, 32768), Duration::from_secs(1));
        assert_eq!(pace(16384, 32768), Duration::from_millis(500));
    }

    /// An 8 MB file over a link that loses messages and a device killed now and then:
    /// bytes the hub sends stay under 1.1× the file.
    #[test]
    fn bytes_fetched_through_random_cuts_stay_under_1_1x() {
        use rand::{Rng, SeedableRng};
        let size = 8_000_000u64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let mut held_on_disk = 0u64;
        let mut sent = 0u64;
        let mut d = Download::new(7, vec![1; 32], size, 0, MAX_CHUNK);
        let mut rounds = 0;
        while !d.complete() {
            rounds += 1;
            assert!(rounds < 10_000);
            if rng.random_bool(0.02) {
                // Killed: restart from what was persisted.
                d = Download::new(7, vec![1; 32], size, held_on_disk, MAX_CHUNK);
            }
            let Some(f) = d.next_fetch() else { break };
            if rng.random_bool(0.05) {
                // The fetch is lost.
                d.on_timeout(Duration::from_millis(1), Duration::from_millis(8));
                continue;
            }
            let len = (size - f.offset).min(u64::from(f.max_bytes)) as usize;
            let c = ModelChunk {
                release_version: 7,
                sha256: vec![1; 32],
                offset: f.offset,
                total: size,
                data: vec![0; len],
                refused: String::new(),
            };
            sent += len as u64;
            if rng.random_bool(0.05) {
                // The chunk is lost on the way.
                d.on_timeout(Duration::from_millis(1), Duration::from_millis(8));
                continue;
            }
            if let ChunkAction::Append { .. } = d.on_chunk(&c) {
                d.committed(len as u64);
                held_on_disk = d.held;
            }
        }
        assert_eq!(held_on_disk, size);
        assert!(sent as f64 <= 1.1 * size as f64, "sent {sent} for {size}");
    }
}
