//! The hub's MQTT payload handling (size check, SignedBatch and ResultBatch decode,
//! schema check, registry lookup and Ed25519 signature check for the enrolled device
//! c1/d1, identity and per-record validation), stopping short of the store.
#![no_main]
use std::sync::{Arc, OnceLock};

use hub_server::ingest::Ingest;
use hub_server::metrics::Metrics;
use hub_server::recovery::open_checked;

fn ingest() -> &'static Ingest {
    static I: OnceLock<(tempfile_dir::Dir, Ingest)> = OnceLock::new();
    &I.get_or_init(|| {
        let dir = tempfile_dir::Dir::new();
        let store = open_checked(&dir.0, Arc::new(Metrics::default())).expect("store");
        let pki_dir = dir.0.join("pki");
        let pki = hub_server::ca::Pki::init(&pki_dir, "fuzz", &[]).expect("CA");
        pki.enroll("c1", "d1", "r1", 0, 4_000_000_000, &dir.0.join("bundle"))
            .expect("enrol");
        let metrics = Arc::new(Metrics::default());
        let ing = Ingest::new(
            store,
            metrics,
            Some(Arc::new(
                hub_server::ca::Registry::new(&pki_dir).expect("registry"),
            )),
        );
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
