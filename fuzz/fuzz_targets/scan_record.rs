//! Protobuf records as the hub receives them: decode + validation never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pleura_shared::ScanRecord::decode(data);
});
