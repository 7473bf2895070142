//! Every decoder of untrusted scan bytes (PNG, JPEG, BMP, GIF, MP4/MOV, DICOM): any input
//! must give frames or a DecodeError, never a panic or a hang.
#![no_main]
use std::sync::Once;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // libFuzzer's panic hook aborts even on a panic the code catches. dicom-rs's pixel
    // codecs (RLE, JPEG) panic on frames that do not fit the image, and `decode_scan`
    // turns that into an error (docs/FUZZING.md, findings 2 and 6): let those through,
    // abort on every other.
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info
                .location()
                .is_some_and(|l| l.file().contains("dicom-transfer-syntax-registry"))
            {
                abort(info);
            }
        }));
    });
    let _ = pleura_inference::decode_scan(data, 8);
});
