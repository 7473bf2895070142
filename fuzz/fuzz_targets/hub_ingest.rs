//! The hub's MQTT payload handling (size check, ResultBatch decode, schema and identity
//! checks, per-record validation), stopping short of the store.
#![no_main]
use std::sync::{Arc, OnceLock};

use hub_server::ingest::Ingest;
use hub_server::metrics::Metrics;
use hub_server::store::SledStore;

fn ingest() -> &'static Ingest {
    static I: OnceLock<(tempfile_dir::Dir, Ingest)> = OnceLock::new();
    &I.get_or_init(|| {
        let dir = tempfile_dir::Dir::new();
        let store = SledStore::open(&dir.0).expect("store");
        let ing = Ingest {
            store: Arc::new(store),
            metrics: Arc::new(Metrics::default()),
            max_payload: 64 * 1024,
        };
        (dir, ing)
    })
    .1
}

mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!("pleura-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = ingest().prepare_mqtt("pleura/v1/clinic/c1/device/d1/results", data);
});
