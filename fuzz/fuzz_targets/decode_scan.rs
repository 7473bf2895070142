//! Every decoder of untrusted scan bytes (PNG, JPEG, BMP, GIF, MP4/MOV, DICOM): any input
//! must give frames or a DecodeError, never a panic or a hang.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pleura_inference::decode_scan(data, 8);
});
