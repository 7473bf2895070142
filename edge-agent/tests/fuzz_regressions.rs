//! Inputs the `deidentify_dicom` fuzzer found (fixtures/fuzz/deidentify_dicom/, see
//! docs/FUZZING.md): each gets a named error or a copy, never a panic or a runaway
//! allocation.

use std::path::PathBuf;

use edge_agent::deid::deidentify_dicom;
use pleura_shared::PseudonymKey;

#[test]
fn fuzzer_findings_get_a_named_error_not_a_crash() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/fuzz/deidentify_dicom");
    let key = PseudonymKey::new(vec![7; 32]).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let r = deidentify_dicom(&std::fs::read(&p).unwrap(), &key);
        if name.starts_with("oom-partial") {
            // refused by the length guard before dicom-rs could desynchronise
            let err = r.expect_err(&name).to_string();
            assert!(err.contains("is not a whole number of"), "{name}: {err}");
        }
        n += 1;
    }
    assert!(n >= 2, "no regression inputs in {}", dir.display());
}
