//! Inputs the fuzzers found (fixtures/fuzz/decode_scan/, see docs/FUZZING.md): each must
//! decode to a named error or a scan, never panic or abort.

use std::path::PathBuf;

#[test]
fn fuzzer_findings_decode_to_an_error_not_a_crash() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/fuzz/decode_scan");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        match pleura_inference::decode_scan(&bytes, 8) {
            Ok(s) => assert!(!s.frames.is_empty(), "{}", p.display()),
            Err(e) => assert!(!e.to_string().is_empty(), "{}", p.display()),
        }
        n += 1;
    }
    assert!(n >= 1, "no regression inputs in {}", dir.display());
}
