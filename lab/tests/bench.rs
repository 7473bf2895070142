//! `bench` end to end, briefly: every measurement is made and the table printed.

mod support;
use support::*;

#[test]
fn bench_measures_model_baseline_pipeline_and_analyze_memory() {
    let out = lab(&["bench", "--json", "--seconds", "0.05"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["backend"], "tract");
    for key in ["model_1t", "model_2t", "vgg_1t", "vgg_2t"] {
        assert!(
            doc[key]["frames_per_s"].as_f64().unwrap() > 0.0,
            "{key}: {doc}"
        );
    }
    // the edge budget: the model costs at most 1/50 of the VGG baseline per frame
    assert!(doc["vgg_macs"].as_u64().unwrap() > 50 * doc["model_macs"].as_u64().unwrap());
    assert!(doc["pipeline"]["ratio"].as_f64().unwrap() > 0.0, "{doc}");
    // From a child `analyze` process: the bench re-runs its own binary.
    assert!(doc["analyze_peak_rss_mb"].as_f64().unwrap() > 1.0, "{doc}");
}
