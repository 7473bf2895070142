//! De-identification of untrusted DICOM bytes: an output or a DeidError, never a panic.
#![no_main]
use std::sync::OnceLock;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static KEY: OnceLock<pleura_shared::PseudonymKey> = OnceLock::new();
    let key = KEY.get_or_init(|| pleura_shared::PseudonymKey::new(vec![7; 32]).expect("key"));
    let _ = edge_agent::deid::deidentify_dicom(data, key);
});
